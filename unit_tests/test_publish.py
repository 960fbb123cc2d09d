"""The publish step (`run_publish`) against the real S3 (versitygw) and IPFS (kubo) servers of
e2e/services.py: what goes up, where, with which bytes, expiry and result list.

These need no Kubernetes cluster, only `toolchain/build.sh kubo versitygw`
(`make unit` runs it).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import httpx

from e2e.services import new_bucket
from ocean_c2d.steps.publish import RetryPolicy, destination_from_env, run_publish
from ocean_c2d.storage import Destination
from ocean_c2d.storage.ipfs import cid_from_url, kubo_client, unpin_expired

if TYPE_CHECKING:
    from e2e.services import IPFSNode, S3Server

MiB = 1024 * 1024
BIG_SIZE = 21 * MiB + 123  # > 20 MiB: above the 16 MiB multipart threshold, two parts
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)

EXPECTED_TYPES = {
    "result.txt": "output",
    "plots/deep/chart.csv": "output",
    "big.bin": "output",
    "algorithm.log": "algorithmLog",
    "configure.log": "configrationLog",
    "publish.log": "publishLog",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_volume(root: Path, big: bool = True) -> dict[str, bytes]:
    """A /data tree; returns {name relative to the volume: bytes} of the files it holds."""
    files = {
        "outputs/result.txt": b"42\n",
        "outputs/plots/deep/chart.csv": b"x,y\n1,2\n3,4\n",
        "logs/algorithm.log": b"algorithm started\nalgorithm done\n",
        "adminlogs/configure.log": b"configure: inputs fetched\n",
    }
    if big:
        files["outputs/big.bin"] = os.urandom(BIG_SIZE)
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def s3_env(server: S3Server, bucket: str, volume: Path, workflow_id: str) -> dict[str, str]:
    return {
        "AWS_BUCKET_OUTPUT": bucket,
        "AWS_ENDPOINT_URL": server.endpoint_url,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_REGION": server.region,
        "WORKFLOWID": workflow_id,
        "VOLUME": str(volume),
        "STORAGE_EXPIRY": "24",
    }


class TimedDestination:
    """Wraps the real destination, timing each upload (for the big file's throughput)."""

    def __init__(self, inner: Destination) -> None:
        self.inner = inner
        self.seconds: dict[str, float] = {}

    @property
    def description(self) -> str:
        return self.inner.description

    @property
    def expires_at(self) -> int | None:
        return self.inner.expires_at

    async def upload(self, path: Path, name: str) -> str:
        started = time.perf_counter()
        url = await self.inner.upload(path, name)
        self.seconds[name] = time.perf_counter() - started
        return url

    async def close(self) -> None:
        await self.inner.close()


def read_results(termination: Path) -> list[dict[str, Any]]:
    document = json.loads(termination.read_text())
    assert set(document) == {"results"}, document
    results: list[dict[str, Any]] = document["results"]
    return results


def check_shape(results: list[dict[str, Any]], expected_names: set[str]) -> None:
    assert {r["filename"] for r in results} == expected_names
    for entry in results:
        assert {"filename", "filesize", "url", "type"} <= set(entry), entry
        assert entry["type"] == EXPECTED_TYPES[entry["filename"]], entry
    assert results[-1]["filename"] == "publish.log"  # always last


# --- S3 --------------------------------------------------------------------------------------------


async def test_publish_to_s3(s3_server: S3Server, tmp_path: Path) -> None:
    client = s3_server.client()
    bucket = new_bucket(client, "publish")
    volume = tmp_path / "data"
    files = make_volume(volume)
    workflow_id = f"wf-{uuid.uuid4().hex[:8]}"
    env = s3_env(s3_server, bucket, volume, workflow_id)
    termination = tmp_path / "termination-log"
    timed: list[TimedDestination] = []

    def factory(environment: Any) -> Destination:
        timed.append(TimedDestination(destination_from_env(environment)))
        return timed[0]

    before = int(time.time())
    code = await run_publish(env, termination, factory, retry=FAST)
    after = int(time.time())
    assert code == 0, termination.read_text()

    results = read_results(termination)
    check_shape(results, set(EXPECTED_TYPES))
    # outputs first (sorted by path), then logs, then adminlogs, publish.log last.
    assert [r["type"] for r in results] == [
        "output",
        "output",
        "output",
        "algorithmLog",
        "configrationLog",
        "publishLog",
    ]

    for entry in results:
        url = entry["url"]
        assert url.startswith(f"{s3_server.endpoint_url}/{bucket}/{workflow_id}/"), url
        key = unquote(urlsplit(url).path).removeprefix(f"/{bucket}/")
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        name = key.removeprefix(f"{workflow_id}/")
        if name != "adminlogs/publish.log":
            assert sha256(body) == sha256(files[name]), name
        assert entry["filesize"] == len(body), entry
        # Expiry: STORAGE_EXPIRY=24 hours, as the Expires header and the tags.
        assert before + 24 * 3600 <= entry["expiresAt"] <= after + 24 * 3600
        head = client.head_object(Bucket=bucket, Key=key)
        assert int(head["Expires"].timestamp()) == entry["expiresAt"], head
        tags = {t["Key"]: t["Value"] for t in client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
        assert tags == {"ocean-c2d-expires": str(entry["expiresAt"]), "ocean-c2d-retention-days": "1"}

    # Multipart for the big file: "<md5>-<parts>".
    big_key = f"{workflow_id}/outputs/big.bin"
    etag = client.head_object(Bucket=bucket, Key=big_key)["ETag"].strip('"')
    assert etag.endswith("-2"), etag

    # Nothing else under the job's prefix, and no multipart upload left open.
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{workflow_id}/")
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(
        f"{workflow_id}/{n}" for n in [*files, "adminlogs/publish.log"]
    )
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    # publish.log went up complete: the uploaded copy is the local file, last line included.
    local_log = (volume / "adminlogs" / "publish.log").read_bytes()
    uploaded_log = client.get_object(Bucket=bucket, Key=f"{workflow_id}/adminlogs/publish.log")["Body"].read()
    assert uploaded_log == local_log
    last_line = local_log.decode().splitlines()[-1]
    assert "publish.log goes last" in last_line, last_line

    seconds = timed[0].seconds["outputs/big.bin"]
    print(f"\nS3 upload of {BIG_SIZE / MiB:.1f} MiB: {seconds:.3f} s, {BIG_SIZE / 1e6 / seconds:.1f} MB/s")


async def test_publish_to_s3_admin_logs_only_when_outputs_withheld(
    s3_server: S3Server, tmp_path: Path
) -> None:
    client = s3_server.client()
    bucket = new_bucket(client, "publish")
    volume = tmp_path / "data"
    make_volume(volume, big=False)
    workflow_id = f"wf-{uuid.uuid4().hex[:8]}"
    env = s3_env(s3_server, bucket, volume, workflow_id) | {"PUBLISH_OUTPUTS": "false"}
    termination = tmp_path / "termination-log"

    assert await run_publish(env, termination, retry=FAST) == 0, termination.read_text()

    results = read_results(termination)
    assert [r["type"] for r in results] == ["configrationLog", "publishLog"]  # nothing the algorithm wrote
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{workflow_id}/")
    assert sorted(o["Key"] for o in listed["Contents"]) == [
        f"{workflow_id}/adminlogs/configure.log",
        f"{workflow_id}/adminlogs/publish.log",
    ]
    log = (volume / "adminlogs" / "publish.log").read_text()
    assert "outputs withheld" in log


async def test_publish_to_s3_down_fails_with_62(tmp_path: Path) -> None:
    from e2e.services import free_port

    volume = tmp_path / "data"
    make_volume(volume, big=False)
    port = free_port()  # nothing listens there: connections are refused
    env = {
        "AWS_BUCKET_OUTPUT": "results",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret-that-must-not-leak",
        "AWS_REGION": "us-east-1",
        "WORKFLOWID": "wf-down",
        "VOLUME": str(volume),
    }
    termination = tmp_path / "termination-log"
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    started = time.monotonic()
    code = await run_publish(env, termination, retry=FAST, sleep=fake_sleep, concurrency=1)
    elapsed = time.monotonic() - started

    assert code == 62
    message = termination.read_text()
    # The first file in order is outputs/plots/deep/chart.csv ("plots" < "result.txt").
    assert message.startswith("outputs/plots/deep/chart.csv: upload to s3://results/wf-down/"), message
    assert f"127.0.0.1:{port}" in message, message
    assert "after 3 attempts" in message, message
    assert "secret-that-must-not-leak" not in message
    assert sleeps == [FAST.delay(1), FAST.delay(2)]  # bounded: attempts - 1 waits
    assert elapsed < 60, elapsed
    assert "failed" in (volume / "adminlogs" / "publish.log").read_text()


# --- IPFS ------------------------------------------------------------------------------------------


async def pinned_recursively(http: httpx.AsyncClient) -> set[str]:
    answer = (await http.post("/pin/ls", params={"type": "recursive"})).raise_for_status().json()
    return set(answer["Keys"])


async def test_publish_to_ipfs(ipfs_api: IPFSNode, tmp_path: Path) -> None:
    volume = tmp_path / "data"
    files = make_volume(volume)
    env = {
        "IPFS_OUTPUT": ipfs_api.api_url,
        "IPFS_TYPE": "CLIENT",
        "IPFS_OUTPUT_PREFIX": "ipfs://",
        "WORKFLOWID": "wf-ipfs",
        "VOLUME": str(volume),
    }
    termination = tmp_path / "termination-log"
    timed: list[TimedDestination] = []

    def factory(environment: Any) -> Destination:
        timed.append(TimedDestination(destination_from_env(environment)))
        return timed[0]

    assert await run_publish(env, termination, factory, retry=FAST) == 0, termination.read_text()
    results = read_results(termination)
    check_shape(results, set(EXPECTED_TYPES))
    by_filename = {n.split("/", 1)[1]: n for n in files}

    async with httpx.AsyncClient(base_url=f"{ipfs_api.api_url}/api/v0", timeout=60) as http:
        pins = await pinned_recursively(http)
        for entry in results:
            url = entry["url"]
            assert url.startswith("ipfs://"), url
            assert "//" not in url.removeprefix("ipfs://"), url
            assert "expiresAt" not in entry  # no IPFS_EXPIRY_TIME
            cid = cid_from_url(url, "ipfs://")
            assert cid is not None
            path = unquote(url.removeprefix(f"ipfs://{cid}/"))
            assert path == entry["filename"]
            cat = await http.post("/cat", params={"arg": f"{cid}/{path}"})
            assert cat.status_code == 200, cat.text
            if path == "publish.log":
                assert cat.content == (volume / "adminlogs" / "publish.log").read_bytes()
            else:
                assert sha256(cat.content) == sha256(files[by_filename[path]]), path
            assert entry["filesize"] == len(cat.content)
            assert cid in pins, cid

    seconds = timed[0].seconds["outputs/big.bin"]
    print(f"\nIPFS add of {BIG_SIZE / MiB:.1f} MiB: {seconds:.3f} s, {BIG_SIZE / 1e6 / seconds:.1f} MB/s")


async def test_ipfs_expiry_unpins_after_the_expiry(ipfs_api: IPFSNode, tmp_path: Path) -> None:
    volume = tmp_path / "data"
    # Unique bytes, so these CIDs are this test's own.
    files = make_volume(volume, big=False)
    (volume / "outputs" / "result.txt").write_bytes(uuid.uuid4().bytes)
    (volume / "logs" / "algorithm.log").write_bytes(uuid.uuid4().bytes)
    (volume / "adminlogs" / "configure.log").write_bytes(uuid.uuid4().bytes)
    (volume / "outputs" / "plots" / "deep" / "chart.csv").write_bytes(uuid.uuid4().bytes)
    assert files
    env = {
        "IPFS_OUTPUT": ipfs_api.api_url,
        "IPFS_TYPE": "CLIENT",
        "IPFS_EXPIRY_TIME": "3600",
        "WORKFLOWID": "wf-ipfs-expiry",
        "VOLUME": str(volume),
    }
    termination = tmp_path / "termination-log"
    before = int(time.time())
    assert await run_publish(env, termination, retry=FAST) == 0, termination.read_text()
    after = int(time.time())
    results = read_results(termination)

    pins: list[tuple[str, float]] = []
    for entry in results:
        assert before + 3600 <= entry["expiresAt"] <= after + 3600
        cid = cid_from_url(entry["url"], None)
        assert cid is not None
        pins.append((cid, entry["expiresAt"]))
    cids = {cid for cid, _ in pins}

    async with httpx.AsyncClient(base_url=f"{ipfs_api.api_url}/api/v0", timeout=60) as http:
        assert cids <= await pinned_recursively(http)

        async with kubo_client(ipfs_api.api_url) as client:
            # Not due yet: nothing is unpinned.
            assert await unpin_expired(client, pins, now=float(before)) == []
            assert cids <= await pinned_recursively(http)
            # Past the expiry: every CID is unpinned.
            done = await unpin_expired(client, pins, now=float(after + 3601))
            assert set(done) == cids
            assert not cids & await pinned_recursively(http)
            # Again: "not pinned" counts as done.
            assert set(await unpin_expired(client, pins, now=float(after + 3601))) == cids


async def test_same_named_workflows_of_two_namespaces_never_share_keys(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """Keys carry namespace and uid (RESULTS_PREFIX): "job1" of team-a and of team-b, or a job1 deleted
    and re-created, never overwrite (nor, at expiry, delete) each other's results."""
    client = s3_server.client()
    bucket = new_bucket(client, "publish")
    keys: dict[str, set[str]] = {}
    for namespace in ("team-a", "team-b"):
        volume = tmp_path / namespace
        make_volume(volume, big=False)
        prefix = f"{namespace}/job1/uid-{namespace}"
        env = s3_env(s3_server, bucket, volume, "job1") | {"RESULTS_PREFIX": prefix}
        termination = tmp_path / f"{namespace}-termination"
        assert await run_publish(env, termination, retry=FAST) == 0, termination.read_text()
        listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")["Contents"]
        keys[namespace] = {o["Key"] for o in listed}
        assert all(f"/{prefix}/" in r["url"] for r in read_results(termination))
    assert keys["team-a"]
    assert not keys["team-a"] & keys["team-b"]
    assert not client.list_objects_v2(Bucket=bucket, Prefix="job1/").get("Contents")
