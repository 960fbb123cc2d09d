"""The publish step without a storage server: the plan (what, in which order, types, names), the
message, retries and failures with an in-memory destination; the pure S3 / IPFS naming functions; and
the destinations' wiring against a recording S3 client and a local HTTP server that answers like kubo
and ipfs-cluster. Tests against real versitygw and kubo servers live elsewhere."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import BodyPartReader, web
from botocore.exceptions import ClientError, EndpointConnectionError  # type: ignore[import-untyped]

from ocean_c2d.resilience import redact
from ocean_c2d.steps.contract import EXIT_OK, EXIT_RESULTS_UPLOAD_FAILED, TERMINATION_MESSAGE_LIMIT
from ocean_c2d.steps.publish import (
    PUBLISH_LOG,
    PlannedUpload,
    RetryPolicy,
    destination_from_env,
    plan_uploads,
    publish_outputs_from,
    result_filename,
    result_type,
    results_message,
    run_publish,
)
from ocean_c2d.storage import Destination, UploadError
from ocean_c2d.storage.ipfs import (
    IpfsDestination,
    add_params,
    cid_from_url,
    ipfs_url,
    normalize_prefix,
    parent_directories,
    parse_add_answer,
    root_cid,
    unpin_expired,
    wrapped_name,
)
from ocean_c2d.storage.s3 import (
    S3Destination,
    classify,
    expiry_args,
    object_url,
    s3_key,
    upload_args,
)

JOB = "job1"


# --- an in-memory destination ---------------------------------------------------------------------


@dataclass
class MemoryDestination:
    """Keeps what is uploaded; `failing` maps a name to the error every attempt at it raises, and
    `flaky` to how many attempts fail (transiently) before one works."""

    description: str = "memory://bucket/job1/"
    expires_at: int | None = None
    failing: dict[str, Exception] = field(default_factory=dict)
    flaky: dict[str, int] = field(default_factory=dict)
    uploads: list[tuple[str, bytes]] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    closed: bool = False

    async def upload(self, path: Path, name: str) -> str:
        self.attempts[name] += 1
        if name in self.failing:
            raise self.failing[name]
        if self.attempts[name] <= self.flaky.get(name, 0):
            raise UploadError("HTTP 503", transient=True)
        self.uploads.append((name, await asyncio.to_thread(path.read_bytes)))
        return f"memory://bucket/{JOB}/{name}"

    async def close(self) -> None:
        self.closed = True

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.uploads]


def as_destination(destination: MemoryDestination) -> Destination:
    return destination  # checks, for mypy, that the fake keeps to the protocol


def write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write(root / "outputs" / "result.csv", "mean,150\n")
    write(root / "outputs" / "plots" / "a.png", b"\x89PNG")
    write(root / "outputs" / "plots" / "deep" / "b.txt", "b")
    write(root / "outputs" / "z.txt", "z")
    write(root / "logs" / "algorithm.log", "algorithm says hi\n")
    write(root / "logs" / "extra.log", "more\n")
    write(root / "adminlogs" / "configure.log", "configured\n")
    write(root / "adminlogs" / "filter.log", "verdict: Pass\n")
    write(root / "inputs" / "did1" / "0", "secret input")  # never published
    write(root / "transformations" / "algorithm", "code")  # never published
    return root


def env_for(volume: Path, **extra: str) -> dict[str, str]:
    return {"VOLUME": str(volume), "WORKFLOWID": JOB, "PUBLISH_OUTPUTS": "true", **extra}


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


async def publish(
    volume: Path,
    destination: MemoryDestination,
    termination: Path,
    env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> int:
    recorder = kwargs.pop("recorder", Recorder())
    return await run_publish(
        env if env is not None else env_for(volume),
        termination,
        lambda _env: as_destination(destination),
        sleep=recorder.sleep,
        **kwargs,
    )


# --- the plan: pure -------------------------------------------------------------------------------


def test_plan_order_types_and_names() -> None:
    names = [
        "adminlogs/filter.log",
        "adminlogs/publish.log",
        "logs/algorithm.log",
        "outputs/z.txt",
        "outputs/plots/deep/b.txt",
        "adminlogs/configure.log",
        "outputs/a.csv",
        "outputs/plots/a.png",
        "adminlogs/zz-other.log",
        "logs/extra.log",
        "inputs/did/0",
        "ddos/did",
        "stray-top-level-file",
    ]
    plan = plan_uploads(names, publish_outputs=True)
    assert plan == [
        PlannedUpload("outputs/a.csv", "a.csv", "output"),
        PlannedUpload("outputs/plots/a.png", "plots/a.png", "output"),
        PlannedUpload("outputs/plots/deep/b.txt", "plots/deep/b.txt", "output"),
        PlannedUpload("outputs/z.txt", "z.txt", "output"),
        PlannedUpload("logs/algorithm.log", "algorithm.log", "algorithmLog"),
        PlannedUpload("logs/extra.log", "extra.log", "log"),
        PlannedUpload("adminlogs/configure.log", "configure.log", "configrationLog"),
        PlannedUpload("adminlogs/filter.log", "filter.log", "filteringLog"),
        PlannedUpload("adminlogs/zz-other.log", "zz-other.log", "log"),
        PlannedUpload("adminlogs/publish.log", "publish.log", "publishLog"),
    ]


def test_plan_without_outputs_keeps_only_the_admin_logs() -> None:
    """Withheld means nothing the algorithm wrote: its log (its stdout) and logs/ are outputs too."""
    names = ["outputs/a.csv", "logs/algorithm.log", "logs/x.bin", "adminlogs/configure.log"]
    plan = plan_uploads(names, publish_outputs=False)
    assert [p.name for p in plan] == ["adminlogs/configure.log", PUBLISH_LOG]


def test_publish_log_is_always_planned_last() -> None:
    assert plan_uploads([], publish_outputs=True) == [PlannedUpload(PUBLISH_LOG, "publish.log", "publishLog")]


def test_types_and_filenames() -> None:
    assert result_type("outputs/algorithm.log") == "output"
    assert result_type("logs/sub/algorithm.log") == "log"
    assert result_type("adminlogs/configure.log") == "configrationLog"
    assert result_filename("outputs/plots/a.png") == "plots/a.png"
    assert result_filename("results.json") == "results.json"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, True), ("true", True), ("True", True), ("false", False), ("", True), ("no", False)],
)
def test_publish_outputs_flag(value: str | None, expected: bool) -> None:
    assert publish_outputs_from(value) is expected


def test_results_message_size_limit() -> None:
    small = [{"filename": "a", "filesize": 1, "url": "u", "type": "output"}]
    assert results_message(small) == {"results": small}
    big = [{"filename": f"f{i}", "filesize": 1, "url": "x" * 80, "type": "output"} for i in range(60)]
    assert results_message(big) is None


def test_retry_delays_back_off_and_are_capped() -> None:
    policy = RetryPolicy(attempts=8, base_delay=1.0, max_delay=20.0)
    assert [policy.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 20, 20]


# --- the step with the in-memory destination ------------------------------------------------------


async def test_uploads_everything_in_order_with_types(volume: Path, tmp_path: Path) -> None:
    destination = MemoryDestination(expires_at=1_700_000_000)
    termination = tmp_path / "termination-log"
    assert await publish(volume, destination, termination) == EXIT_OK
    assert destination.closed
    message = json.loads(termination.read_text())
    assert list(message) == ["results"]
    results = message["results"]
    assert [(r["filename"], r["type"]) for r in results] == [
        ("plots/a.png", "output"),
        ("plots/deep/b.txt", "output"),
        ("result.csv", "output"),
        ("z.txt", "output"),
        ("algorithm.log", "algorithmLog"),
        ("extra.log", "log"),
        ("configure.log", "configrationLog"),
        ("filter.log", "filteringLog"),
        ("publish.log", "publishLog"),
    ]
    assert results[0] == {
        "filename": "plots/a.png",
        "filesize": 4,
        "url": "memory://bucket/job1/outputs/plots/a.png",
        "type": "output",
        "expiresAt": 1_700_000_000,
    }
    assert results[2]["filesize"] == len("mean,150\n")
    # Nothing outside outputs/, logs/ and adminlogs/ leaves.
    assert not [n for n in destination.names if n.split("/")[0] not in ("outputs", "logs", "adminlogs")]


async def test_result_order_does_not_depend_on_concurrency(volume: Path, tmp_path: Path) -> None:
    serial, parallel = MemoryDestination(), MemoryDestination()
    await publish(volume, serial, tmp_path / "one", concurrency=1)
    await publish(volume, parallel, tmp_path / "four", concurrency=4)
    first = [r["filename"] for r in json.loads((tmp_path / "one").read_text())["results"]]
    second = [r["filename"] for r in json.loads((tmp_path / "four").read_text())["results"]]
    assert first == second
    assert serial.names[:-1] == [f"outputs/{n}" for n in first[:4]] + [
        "logs/algorithm.log",
        "logs/extra.log",
        "adminlogs/configure.log",
        "adminlogs/filter.log",
    ]


async def test_withheld_outputs_upload_only_the_admin_logs(volume: Path, tmp_path: Path) -> None:
    destination = MemoryDestination()
    termination = tmp_path / "termination-log"
    env = env_for(volume, PUBLISH_OUTPUTS="false")
    assert await publish(volume, destination, termination, env, concurrency=1) == EXIT_OK
    assert destination.names == [
        "adminlogs/configure.log",
        "adminlogs/filter.log",
        "adminlogs/publish.log",
    ]
    types = [r["type"] for r in json.loads(termination.read_text())["results"]]
    assert "output" not in types
    assert "algorithmLog" not in types
    assert "outputs withheld" in (volume / PUBLISH_LOG).read_text()


async def test_publish_log_is_complete_and_uploaded_last(volume: Path, tmp_path: Path) -> None:
    destination = MemoryDestination()
    assert await publish(volume, destination, tmp_path / "t") == EXIT_OK
    name, uploaded = destination.uploads[-1]
    assert name == PUBLISH_LOG
    text = uploaded.decode()
    assert text == (volume / PUBLISH_LOG).read_text()  # nothing was written after the upload
    for other in destination.names[:-1]:
        assert f"uploaded {other} " in text
    assert text.rstrip().endswith("adminlogs/publish.log goes last")
    results = json.loads((tmp_path / "t").read_text())["results"]
    assert results[-1]["filesize"] == len(uploaded)


async def test_symbolic_links_are_not_published(volume: Path, tmp_path: Path) -> None:
    (volume / "outputs" / "leak.csv").symlink_to(volume / "inputs" / "did1" / "0")
    (volume / "outputs" / "inputs-dir").symlink_to(volume / "inputs", target_is_directory=True)
    destination = MemoryDestination()
    assert await publish(volume, destination, tmp_path / "t") == EXIT_OK
    assert not [n for n in destination.names if "leak" in n or "inputs-dir" in n]


async def test_no_destination_fails_with_62(volume: Path, tmp_path: Path) -> None:
    termination = tmp_path / "termination-log"
    assert await run_publish(env_for(volume), termination) == EXIT_RESULTS_UPLOAD_FAILED
    assert termination.read_text() == "no destination configured: set IPFS_OUTPUT or AWS_BUCKET_OUTPUT"
    assert "failed: no destination configured" in (volume / PUBLISH_LOG).read_text()


async def test_a_destination_failing_after_retries_names_the_file(volume: Path, tmp_path: Path) -> None:
    destination = MemoryDestination(
        failing={"outputs/plots/deep/b.txt": UploadError("HTTP 503", transient=True)}
    )
    recorder = Recorder()
    termination = tmp_path / "termination-log"
    code = await publish(volume, destination, termination, concurrency=1, recorder=recorder)
    assert code == EXIT_RESULTS_UPLOAD_FAILED
    assert destination.attempts["outputs/plots/deep/b.txt"] == 5
    assert recorder.sleeps == [1.0, 2.0, 4.0, 8.0]
    assert termination.read_text() == (
        "outputs/plots/deep/b.txt: upload to memory://bucket/job1/ failed after 5 attempts: HTTP 503"
    )
    # It stops there: nothing after it went up, and publish.log records the failure.
    assert destination.names == ["outputs/plots/a.png"]
    assert "failed: outputs/plots/deep/b.txt" in (volume / PUBLISH_LOG).read_text()
    assert destination.closed


async def test_a_permanent_error_is_not_retried(volume: Path, tmp_path: Path) -> None:
    destination = MemoryDestination(
        failing={"logs/algorithm.log": UploadError("AccessDenied", transient=False)}
    )
    recorder = Recorder()
    termination = tmp_path / "termination-log"
    code = await publish(volume, destination, termination, recorder=recorder)
    assert code == EXIT_RESULTS_UPLOAD_FAILED
    assert destination.attempts["logs/algorithm.log"] == 1
    assert recorder.sleeps == []
    assert termination.read_text().startswith("logs/algorithm.log: upload to memory://")
    assert termination.read_text().endswith("after 1 attempt: AccessDenied")


async def test_an_unclassified_error_is_retried_and_named_by_its_type_only(
    volume: Path, tmp_path: Path
) -> None:
    secret_error = RuntimeError("https://bucket/key?X-Amz-Signature=abc secret-key-material")
    destination = MemoryDestination(failing={"outputs/z.txt": secret_error})
    termination = tmp_path / "termination-log"
    code = await publish(volume, destination, termination, retry=RetryPolicy(attempts=2))
    assert code == EXIT_RESULTS_UPLOAD_FAILED
    assert termination.read_text().endswith("failed after 2 attempts: RuntimeError")
    assert "secret" not in (volume / PUBLISH_LOG).read_text()


async def test_transient_errors_that_clear_are_retried(volume: Path, tmp_path: Path) -> None:
    destination = MemoryDestination(flaky={"outputs/result.csv": 2})
    recorder = Recorder()
    assert await publish(volume, destination, tmp_path / "t", recorder=recorder) == EXIT_OK
    assert destination.attempts["outputs/result.csv"] == 3
    assert recorder.sleeps == [1.0, 2.0]


async def test_publish_log_failing_last_fails_the_step(volume: Path, tmp_path: Path) -> None:
    destination = MemoryDestination(failing={PUBLISH_LOG: UploadError("HTTP 500", transient=True)})
    termination = tmp_path / "termination-log"
    code = await publish(volume, destination, termination, retry=RetryPolicy(attempts=1))
    assert code == EXIT_RESULTS_UPLOAD_FAILED
    assert termination.read_text().startswith("adminlogs/publish.log: upload to ")


async def test_a_huge_result_list_goes_to_a_manifest(volume: Path, tmp_path: Path) -> None:
    for i in range(150):
        write(volume / "outputs" / "many" / f"part-{i:04}.csv", f"{i}\n")
    destination = MemoryDestination()
    termination = tmp_path / "termination-log"
    assert await publish(volume, destination, termination) == EXIT_OK
    message = json.loads(termination.read_text())
    total = 4 + 150 + 2 + 2 + 1
    assert message == {"manifest": f"memory://bucket/{JOB}/results.json", "count": total}
    assert len(termination.read_bytes()) <= TERMINATION_MESSAGE_LIMIT
    assert destination.names[-2:] == [PUBLISH_LOG, "results.json"]
    manifest = json.loads(destination.uploads[-1][1])
    assert len(manifest) == total
    assert manifest[0]["filename"] == "many/part-0000.csv"
    assert manifest[-1]["type"] == "publishLog"


async def test_an_empty_job_still_publishes_its_log(tmp_path: Path) -> None:
    destination = MemoryDestination()
    termination = tmp_path / "termination-log"
    assert await publish(tmp_path, destination, termination) == EXIT_OK
    assert [r["type"] for r in json.loads(termination.read_text())["results"]] == ["publishLog"]


# --- choosing the destination ---------------------------------------------------------------------


async def test_ipfs_has_priority_over_s3(tmp_path: Path) -> None:
    env = env_for(
        tmp_path,
        IPFS_OUTPUT="http://kubo:5001",
        IPFS_API_KEY="k",
        AWS_BUCKET_OUTPUT="bucket",
        IPFS_EXPIRY_TIME="3600",
    )
    destination = destination_from_env(env)
    try:
        assert isinstance(destination, IpfsDestination)
        assert destination.description == "IPFS node http://kubo:5001"
        assert destination.expires_at is not None
    finally:
        await destination.close()


async def test_s3_when_no_ipfs(tmp_path: Path) -> None:
    env = env_for(
        tmp_path,
        AWS_BUCKET_OUTPUT="bucket",
        AWS_ENDPOINT_URL="http://user:pw@versitygw:7070",
        AWS_REGION="eu-west-1",
        AWS_ACCESS_KEY_ID="AKIA",
        AWS_SECRET_ACCESS_KEY="very-secret",
        STORAGE_EXPIRY="0",
    )
    destination = destination_from_env(env)
    try:
        assert isinstance(destination, S3Destination)
        assert destination.description == "s3://bucket/job1/ (versitygw:7070)"
        assert "very-secret" not in destination.description
        assert destination.expires_at is None
    finally:
        await destination.close()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"AWS_BUCKET_OUTPUT": "b", "STORAGE_EXPIRY": "soon"}, "STORAGE_EXPIRY must be a whole number"),
        ({"IPFS_OUTPUT": "http://kubo:5001", "IPFS_TYPE": "gateway"}, "IPFS_TYPE must be CLIENT or CLUSTER"),
    ],
)
async def test_bad_destination_settings_fail_with_62(
    volume: Path, tmp_path: Path, extra: dict[str, str], message: str
) -> None:
    termination = tmp_path / "termination-log"
    assert await run_publish(env_for(volume, **extra), termination) == EXIT_RESULTS_UPLOAD_FAILED
    assert termination.read_text().startswith(message)


# --- S3: pure naming, and the wiring against a recording client -----------------------------------


def test_s3_key_layout() -> None:
    assert s3_key("job1", "outputs/plots/a.png") == "job1/outputs/plots/a.png"
    assert s3_key("job1", "logs/algorithm.log") == "job1/logs/algorithm.log"
    assert s3_key("job1", "results.json") == "job1/results.json"


def test_s3_object_urls() -> None:
    assert (
        object_url("bucket", "job1/outputs/a b.csv", "http://versitygw:7070/", None)
        == "http://versitygw:7070/bucket/job1/outputs/a%20b.csv"
    )
    assert (
        object_url("bucket", "job1/outputs/a.csv", None, "eu-west-1")
        == "https://bucket.s3.eu-west-1.amazonaws.com/job1/outputs/a.csv"
    )
    assert object_url("b", "k", None, None) == "https://b.s3.us-east-1.amazonaws.com/k"


def test_s3_expiry_marks() -> None:
    assert expiry_args(0, None) == {}
    args = expiry_args(36, 1_700_000_000)
    assert args["Expires"] == datetime.fromtimestamp(1_700_000_000, UTC)
    assert args["Tagging"] == "ocean-c2d-expires=1700000000&ocean-c2d-retention-days=2"
    assert upload_args("outputs/a.csv", 0, None) == {"ContentType": "text/csv"}
    assert upload_args("outputs/blob", 0, None) == {"ContentType": "application/octet-stream"}


class RecordingS3Client:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.error = error

    def upload_file(self, filename: str, bucket: str, key: str, **kwargs: Any) -> None:
        self.calls.append({"filename": filename, "bucket": bucket, "key": key, **kwargs})
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        pass


async def test_s3_destination_uploads_with_multipart_and_expiry(tmp_path: Path) -> None:
    client = RecordingS3Client()
    destination = S3Destination(
        bucket="results",
        workflow_id="job1",
        endpoint_url="http://versitygw:7070",
        expiry_hours=24,
        now=1_700_000_000.5,
        client=client,
    )
    file = write(tmp_path / "a.png", b"png")
    url = await destination.upload(file, "outputs/plots/a.png")
    assert url == "http://versitygw:7070/results/job1/outputs/plots/a.png"
    assert destination.expires_at == 1_700_000_000 + 86_400
    [call] = client.calls
    assert (call["filename"], call["bucket"], call["key"]) == (
        str(file),
        "results",
        "job1/outputs/plots/a.png",
    )
    assert call["ExtraArgs"]["Tagging"] == "ocean-c2d-expires=1700086400&ocean-c2d-retention-days=1"
    assert call["ExtraArgs"]["ContentType"] == "image/png"
    assert call["Config"].multipart_threshold == 16 * 1024 * 1024


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


async def test_s3_errors_are_classified_without_secrets(tmp_path: Path) -> None:
    client = RecordingS3Client(client_error("AccessDenied", 403))
    destination = S3Destination(bucket="b", workflow_id="j", now=0, client=client)
    with pytest.raises(UploadError) as caught:
        await destination.upload(write(tmp_path / "f", "x"), "outputs/f")
    assert (caught.value.message, caught.value.transient) == ("AccessDenied (HTTP 403)", False)

    assert classify(client_error("SlowDown", 503)).transient
    assert classify(client_error("InternalError", 500)).transient
    assert not classify(client_error("NoSuchBucket", 404)).transient
    # boto3's managed transfer re-raises a ClientError as S3UploadFailedError inside its except block,
    # so the ClientError is the wrapper's context.
    wrapped = RuntimeError("Failed to upload /data/outputs/f to b/j/outputs/f: ...")
    wrapped.__context__ = client_error("RequestTimeout", 400)
    assert classify(wrapped).message == "RequestTimeout (HTTP 400)"
    assert classify(wrapped).transient
    unreachable = classify(
        EndpointConnectionError(endpoint_url="http://h:1/b/k?uploadId=1&X-Amz-Signature=s")
    )
    assert unreachable.transient
    assert "Signature" not in unreachable.message


def test_redact_strips_userinfo_and_queries() -> None:
    assert redact("see https://u:p@host/x?sig=1 now") == "see https://host/x now"


# --- IPFS: pure naming ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (None, "ipfs://"),
        ("", "ipfs://"),
        ("ipfs://", "ipfs://"),
        ("https://gw.example/ipfs", "https://gw.example/ipfs/"),
        ("https://gw.example/ipfs/", "https://gw.example/ipfs/"),
        ("https://gw.example/ipfs//", "https://gw.example/ipfs/"),
    ],
)
def test_ipfs_prefix_gets_exactly_one_slash(prefix: str | None, expected: str) -> None:
    assert normalize_prefix(prefix) == expected


def test_ipfs_urls() -> None:
    assert ipfs_url(None, "bafyroot", "result.csv") == "ipfs://bafyroot/result.csv"
    assert (
        ipfs_url("https://gw/ipfs", "bafyroot", "plots/a b.png") == "https://gw/ipfs/bafyroot/plots/a%20b.png"
    )
    assert "//" not in ipfs_url("https://gw/ipfs/", "cid", "/x").split("://", 1)[1]
    assert cid_from_url("https://gw/ipfs/bafyroot/plots/a.png", "https://gw/ipfs") == "bafyroot"
    assert cid_from_url("https://other/x", "https://gw/ipfs") is None


def test_ipfs_wrapping_names() -> None:
    assert wrapped_name("outputs/plots/a.png") == "plots/a.png"
    assert wrapped_name("results.json") == "results.json"
    assert parent_directories("plots/deep/a.png") == ["plots", "plots/deep"]
    assert parent_directories("a.png") == []


def test_ipfs_add_params() -> None:
    assert add_params("CLIENT", 3600) == {"wrap-with-directory": "true", "cid-version": "1", "pin": "true"}
    assert add_params("CLUSTER", 3600) == {
        "wrap-with-directory": "true",
        "cid-version": "1",
        "stream-channels": "false",
        "expire-in": "3600s",
    }
    assert "expire-in" not in add_params("CLUSTER", None)


def test_ipfs_answers() -> None:
    kubo = '{"Name":"a.png","Hash":"bafyfile"}\n{"Name":"","Hash":"bafyroot"}\n'
    assert root_cid(parse_add_answer(kubo)) == "bafyroot"
    cluster = '[{"name":"a.png","cid":"bafyfile"},{"name":"","cid":{"/":"bafyroot"}}]'
    assert root_cid(parse_add_answer(cluster)) == "bafyroot"
    assert root_cid(parse_add_answer('{"Name":"a.png","Hash":"bafyfile"}')) is None  # cut short
    with pytest.raises(UploadError):
        parse_add_answer('{"Message":"no space left","Code":0,"Type":"error"}')


class FakePins:
    def __init__(self, pinned: set[str]) -> None:
        self.pinned = pinned
        self.removed: list[str] = []

    async def rm(self, path: str, recursive: bool = True) -> Any:
        import aioipfs  # type: ignore[import-untyped]

        if path not in self.pinned:
            raise aioipfs.NotPinnedError(message="not pinned or pinned indirectly")
        self.pinned.discard(path)
        self.removed.append(path)
        return {"Pins": [path]}


@dataclass
class FakeKubo:
    pin: FakePins


async def test_unpin_expired_removes_only_due_pins() -> None:
    client = FakeKubo(FakePins({"old", "new", "also-old"}))
    pins = [("old", 100.0), ("new", 1000.0), ("gone", 50.0), ("also-old", 500.0), ("old", 100.0)]
    assert await unpin_expired(client, pins, now=500.0) == ["old", "gone", "also-old"]
    assert client.pin.removed == ["old", "also-old"]
    assert client.pin.pinned == {"new"}


# --- IPFS: the wiring against a local HTTP server that answers like kubo / ipfs-cluster -------------


@dataclass
class AddRequest:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    parts: list[tuple[str, str, bytes]]  # (raw Content-Disposition, Content-Type, body)


@dataclass
class FakeIpfs:
    requests: list[AddRequest] = field(default_factory=list)
    status: int = 200
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        reader = await request.multipart()
        parts = []
        while (part := await reader.next()) is not None:
            assert isinstance(part, BodyPartReader)
            body = await part.read()
            parts.append((part.headers["Content-Disposition"], part.headers["Content-Type"], bytes(body)))
        self.requests.append(AddRequest(request.path, dict(request.query), dict(request.headers), parts))
        if self.status != 200:
            return web.json_response({"Message": "denied", "Code": 0}, status=self.status)
        if request.path == "/add":  # ipfs-cluster, stream-channels=false
            return web.json_response(
                [{"name": "x", "cid": "bafyfile"}, {"name": "", "cid": {"/": "bafyroot"}}]
            )
        lines = '{"Name":"x","Hash":"bafyfile"}\n{"Name":"","Hash":"bafyroot"}\n'
        return web.Response(text=lines, content_type="application/json")


@pytest.fixture
async def fake_ipfs() -> AsyncIterator[FakeIpfs]:
    server = FakeIpfs()
    app = web.Application()
    app.router.add_post("/api/v0/add", server.handle)
    app.router.add_post("/add", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}"
    yield server
    await runner.cleanup()


async def test_kubo_add_keeps_subfolders_and_sends_the_headers(fake_ipfs: FakeIpfs, tmp_path: Path) -> None:
    destination = IpfsDestination(
        fake_ipfs.url, prefix="https://gw.example/ipfs", api_key="key-1", client_id="client-1", now=0
    )
    try:
        url = await destination.upload(write(tmp_path / "b.txt", "hello"), "outputs/plots/deep/b.txt")
    finally:
        await destination.close()
    assert url == "https://gw.example/ipfs/bafyroot/plots/deep/b.txt"
    [request] = fake_ipfs.requests
    assert request.path == "/api/v0/add"
    assert request.query == {"wrap-with-directory": "true", "cid-version": "1", "pin": "true"}
    assert request.headers["X-API-KEY"] == "key-1"
    assert request.headers["CLIENT-ID"] == "client-1"
    assert [(disposition, kind) for disposition, kind, _ in request.parts] == [
        ('form-data; name="file"; filename="plots"', "application/x-directory"),
        ('form-data; name="file"; filename="plots%2Fdeep"', "application/x-directory"),
        ('form-data; name="file"; filename="plots%2Fdeep%2Fb.txt"', "application/octet-stream"),
    ]
    assert request.parts[-1][2] == b"hello"
    assert destination.expires_at is None


async def test_cluster_add_passes_the_expiry(fake_ipfs: FakeIpfs, tmp_path: Path) -> None:
    destination = IpfsDestination(fake_ipfs.url, kind="CLUSTER", expiry_seconds=7200, now=1000)
    try:
        url = await destination.upload(write(tmp_path / "r.csv", "1"), "outputs/r.csv")
    finally:
        await destination.close()
    assert url == "ipfs://bafyroot/r.csv"
    [request] = fake_ipfs.requests
    assert request.path == "/add"
    assert request.query["expire-in"] == "7200s"
    assert "X-API-KEY" not in request.headers
    assert destination.expires_at == 8200


@pytest.mark.parametrize(("status", "transient"), [(401, False), (403, False), (502, True), (500, True)])
async def test_ipfs_http_errors_are_classified(
    fake_ipfs: FakeIpfs, tmp_path: Path, status: int, transient: bool
) -> None:
    fake_ipfs.status = status
    destination = IpfsDestination(fake_ipfs.url, api_key="key-1", now=0)
    try:
        with pytest.raises(UploadError) as caught:
            await destination.upload(write(tmp_path / "r.csv", "1"), "outputs/r.csv")
    finally:
        await destination.close()
    assert caught.value.transient is transient
    assert caught.value.message == f"HTTP {status}: denied"
    assert "key-1" not in caught.value.message


async def test_an_unreachable_ipfs_node_is_transient(tmp_path: Path) -> None:
    destination = IpfsDestination("http://127.0.0.1:9", now=0)  # discard port: nothing listens
    try:
        with pytest.raises(UploadError) as caught:
            await destination.upload(write(tmp_path / "r.csv", "1"), "outputs/r.csv")
    finally:
        await destination.close()
    assert caught.value.transient


@pytest.mark.parametrize(
    ("endpoint", "region"), [("http://127.0.0.1:9000", None), (None, "eu-west-1")], ids=["endpoint", "aws"]
)
def test_an_object_url_leads_back_to_its_key(endpoint: str | None, region: str | None) -> None:
    from ocean_c2d.storage.s3 import key_from_url, object_url

    url = object_url("results", "job1/outputs/a b.csv", endpoint, region)
    assert key_from_url(url, "results", endpoint, region) == "job1/outputs/a b.csv"
    assert key_from_url(url, "other-bucket", endpoint, region) is None
    assert key_from_url("ipfs://bafy/out.csv", "results", endpoint, region) is None
