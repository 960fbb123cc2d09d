"""Publish uploads exactly what the filter judged (its manifest), against the real S3 server (versitygw)
of e2e/services.py: files swapped for links or FIFOs, grown, replaced or added after the filter never go
up, and the publish caps stop a sparse file that reads far larger than it weighs on disk."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e2e.services import new_bucket
from ocean_c2d.steps.contract import EXIT_OK, EXIT_RESULTS_UPLOAD_FAILED
from ocean_c2d.steps.filter import run_filter
from ocean_c2d.steps.publish import RetryPolicy, run_publish

if TYPE_CHECKING:
    from e2e.services import S3Server

FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)
SECRET = b"the private dataset: alice,100\n"


class Bucket:
    def __init__(self, server: S3Server) -> None:
        self.client = server.client()
        self.name = new_bucket(self.client, "judged")
        self.prefix = f"wf-{uuid.uuid4().hex[:8]}"
        self.server = server

    def env(self, volume: Path, **extra: str) -> dict[str, str]:
        return {
            "AWS_BUCKET_OUTPUT": self.name,
            "AWS_ENDPOINT_URL": self.server.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.server.access_key,
            "AWS_SECRET_ACCESS_KEY": self.server.secret_key,
            "AWS_REGION": self.server.region,
            "WORKFLOWID": self.prefix,
            "VOLUME": str(volume),
            **extra,
        }

    def objects(self) -> dict[str, bytes]:
        listed = self.client.list_objects_v2(Bucket=self.name, Prefix=f"{self.prefix}/")
        return {
            o["Key"].removeprefix(f"{self.prefix}/"): self.client.get_object(Bucket=self.name, Key=o["Key"])[
                "Body"
            ].read()
            for o in listed.get("Contents", [])
        }


def make_volume(root: Path) -> Path:
    for name, data in {
        "inputs/did1/0": SECRET,
        "outputs/a.txt": b"first result\n",
        "outputs/result.txt": b"42\n",
        "logs/algorithm.log": b"algorithm done\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "adminlogs").mkdir()
    return root


def filtered(volume: Path, tmp_path: Path, **caps: str) -> dict[str, str]:
    """Run the built-in filter; the publish env a Pass gives (PUBLISH_MANIFEST*)."""
    termination = tmp_path / "filter-termination"
    code = run_filter({"VOLUME": str(volume), **caps}, termination)
    document = json.loads(termination.read_text())
    assert code == EXIT_OK, document
    return {"PUBLISH_MANIFEST": "required", "PUBLISH_MANIFEST_SHA256": document["manifestSha256"]}


async def publish(bucket: Bucket, volume: Path, tmp_path: Path, **extra: str) -> tuple[int, str]:
    termination = tmp_path / "publish-termination"
    # concurrency 1: the order is the plan's, so a refusal comes after a.txt went up (and is taken back).
    code = await asyncio.wait_for(
        run_publish(bucket.env(volume, **extra), termination, retry=FAST, concurrency=1), timeout=60
    )
    return code, termination.read_text()


def algorithm_objects(objects: dict[str, Any]) -> list[str]:
    return sorted(n for n in objects if n.startswith(("outputs/", "logs/")))


async def test_publish_uploads_the_manifests_files_and_never_one_added_after_the_filter(
    s3_server: S3Server, tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "data")
    bucket = Bucket(s3_server)
    judged = filtered(volume, tmp_path)
    (volume / "outputs" / "late.txt").write_bytes(SECRET)
    (volume / "logs" / "late.log").write_bytes(SECRET)

    code, message = await publish(bucket, volume, tmp_path, **judged)

    assert code == EXIT_OK, message
    objects = bucket.objects()
    assert algorithm_objects(objects) == ["logs/algorithm.log", "outputs/a.txt", "outputs/result.txt"]
    assert objects["outputs/result.txt"] == b"42\n"
    assert "filtering/manifest.json" not in objects  # the manifest never leaves
    assert not any(SECRET in body for body in objects.values())
    log = (volume / "adminlogs" / "publish.log").read_text()
    assert "not in the filter's manifest, never uploaded: 2 files: logs/late.log, outputs/late.txt" in log


async def test_a_file_swapped_for_a_symlink_after_the_filter_is_refused_and_nothing_of_it_leaves(
    s3_server: S3Server, tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "data")
    bucket = Bucket(s3_server)
    judged = filtered(volume, tmp_path)
    (volume / "outputs" / "result.txt").unlink()
    (volume / "outputs" / "result.txt").symlink_to(volume / "inputs" / "did1" / "0")

    code, message = await publish(bucket, volume, tmp_path, **judged)

    assert code == EXIT_RESULTS_UPLOAD_FAILED
    assert message.startswith("outputs/result.txt: a symbolic link"), message
    objects = bucket.objects()
    # a.txt went up before the refusal and was taken back; nothing of the input ever went up.
    assert algorithm_objects(objects) == []
    assert not any(SECRET in body for body in objects.values())


async def test_a_folder_swapped_for_a_symlink_is_refused(s3_server: S3Server, tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "data")
    (volume / "outputs" / "sub").mkdir()
    (volume / "outputs" / "sub" / "0").write_bytes(b"x" * len(SECRET))
    bucket = Bucket(s3_server)
    judged = filtered(volume, tmp_path)
    (volume / "outputs" / "sub" / "0").unlink()
    (volume / "outputs" / "sub").rmdir()
    (volume / "outputs" / "sub").symlink_to(volume / "inputs" / "did1")

    code, message = await publish(bucket, volume, tmp_path, **judged)

    assert code == EXIT_RESULTS_UPLOAD_FAILED
    assert "outputs/sub/0: a symbolic link" in message, message
    assert not any(SECRET in body for body in bucket.objects().values())


async def test_a_fifo_in_place_of_a_judged_file_is_refused_without_hanging(
    s3_server: S3Server, tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "data")
    bucket = Bucket(s3_server)
    judged = filtered(volume, tmp_path)
    (volume / "outputs" / "result.txt").unlink()
    os.mkfifo(volume / "outputs" / "result.txt")

    code, message = await publish(bucket, volume, tmp_path, **judged)

    assert code == EXIT_RESULTS_UPLOAD_FAILED
    assert "outputs/result.txt: not a regular file" in message, message
    assert algorithm_objects(bucket.objects()) == []


async def test_without_a_manifest_links_and_fifos_are_never_published(
    s3_server: S3Server, tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "data")
    (volume / "outputs" / "environ").symlink_to("/proc/self/environ")
    (volume / "outputs" / "input").symlink_to(volume / "inputs" / "did1" / "0")
    os.mkfifo(volume / "outputs" / "pipe")
    bucket = Bucket(s3_server)

    code, message = await publish(bucket, volume, tmp_path)

    assert code == EXIT_OK, message
    objects = bucket.objects()
    assert algorithm_objects(objects) == ["logs/algorithm.log", "outputs/a.txt", "outputs/result.txt"]
    assert not any(s3_server.secret_key.encode() in body for body in objects.values())


async def test_a_file_grown_after_the_filter_is_refused(s3_server: S3Server, tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "data")
    bucket = Bucket(s3_server)
    judged = filtered(volume, tmp_path)
    with (volume / "outputs" / "result.txt").open("ab") as handle:
        handle.write(SECRET)

    code, message = await publish(bucket, volume, tmp_path, **judged)

    assert code == EXIT_RESULTS_UPLOAD_FAILED
    assert message.startswith(f"outputs/result.txt: {3 + len(SECRET)} bytes, the filter judged 3"), message
    assert algorithm_objects(bucket.objects()) == []


async def test_a_file_replaced_after_the_filter_is_refused(s3_server: S3Server, tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "data")
    bucket = Bucket(s3_server)
    judged = filtered(volume, tmp_path)
    replacement = volume / "outputs" / ".new"
    replacement.write_bytes(b"43\n")  # same size, another inode
    replacement.replace(volume / "outputs" / "result.txt")

    code, message = await publish(bucket, volume, tmp_path, **judged)

    assert code == EXIT_RESULTS_UPLOAD_FAILED
    assert "outputs/result.txt: not the file the filter judged" in message, message
    assert algorithm_objects(bucket.objects()) == []


async def test_a_file_rewritten_in_place_after_the_filter_is_refused(
    s3_server: S3Server, tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "data")
    bucket = Bucket(s3_server)
    judged = filtered(volume, tmp_path)
    with (volume / "outputs" / "result.txt").open("r+b") as handle:
        handle.write(b"43\n")  # same inode, same size, other bytes

    code, message = await publish(bucket, volume, tmp_path, **judged)

    assert code == EXIT_RESULTS_UPLOAD_FAILED
    assert "outputs/result.txt: its content changed since the filter judged it" in message, message
    assert algorithm_objects(bucket.objects()) == []


async def test_a_tampered_or_missing_manifest_uploads_nothing_of_the_algorithms(
    s3_server: S3Server, tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "data")
    bucket = Bucket(s3_server)
    judged = filtered(volume, tmp_path)
    manifest = volume / "filtering" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b"result.txt", b"resulu.txt"))

    code, message = await publish(bucket, volume, tmp_path, **judged)
    assert code == EXIT_RESULTS_UPLOAD_FAILED
    assert "is not the" in message, message
    assert "the filter recorded" in message, message

    manifest.unlink()
    code, message = await publish(bucket, volume, tmp_path, PUBLISH_MANIFEST="required")
    assert code == EXIT_RESULTS_UPLOAD_FAILED
    assert "the filter's manifest is missing" in message, message
    assert algorithm_objects(bucket.objects()) == []


async def test_the_byte_cap_counts_what_a_sparse_file_reads(s3_server: S3Server, tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "data")
    sparse = volume / "outputs" / "sparse.bin"
    with sparse.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)  # 64 MiB to read, (almost) nothing on disk
    assert sparse.stat().st_blocks * 512 < 1024 * 1024
    bucket = Bucket(s3_server)

    code, message = await publish(bucket, volume, tmp_path, PUBLISH_MAX_BYTES=str(8 * 1024 * 1024))

    assert code == EXIT_RESULTS_UPLOAD_FAILED
    assert "outputs/sparse.bin: over the cap of 8388608 bytes read" in message, message
    assert algorithm_objects(bucket.objects()) == []  # a.txt and result.txt went up first, taken back
    assert "deleted the 2 files this run uploaded" in (volume / "adminlogs" / "publish.log").read_text()

    code, message = await publish(bucket, volume, tmp_path, PUBLISH_MAX_BYTES=str(65 * 1024 * 1024))
    assert code == EXIT_OK, message  # under the cap, the same files go up


async def test_the_file_cap_stops_publish(s3_server: S3Server, tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "data")
    bucket = Bucket(s3_server)

    code, message = await publish(bucket, volume, tmp_path, PUBLISH_MAX_FILES="2")

    assert code == EXIT_RESULTS_UPLOAD_FAILED
    assert "over the cap of 2 files" in message, message
    assert algorithm_objects(bucket.objects()) == []
    code, message = await publish(bucket, volume, tmp_path, PUBLISH_MAX_FILES="3")
    assert code == EXIT_OK, message


async def test_a_judged_file_deleted_before_publish_stops_it_and_what_went_up_is_taken_back(
    s3_server: S3Server, tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "data")
    bucket = Bucket(s3_server)
    judged = filtered(volume, tmp_path)
    (volume / "outputs" / "result.txt").unlink()

    code, message = await publish(bucket, volume, tmp_path, **judged)

    assert code == EXIT_RESULTS_UPLOAD_FAILED
    assert message.startswith("outputs/result.txt: cannot read it (No such file or directory)"), message
    assert algorithm_objects(bucket.objects()) == []  # a.txt went up first, and was deleted
