"""The S3 and IPFS servers of e2e/services.py are real ones: they store, list, return and forget data.

These need no Kubernetes cluster (they use none of the cluster fixtures), only the tools built by
`toolchain/build.sh kubo versitygw` (`make unit` runs it).
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aioipfs  # type: ignore[import-untyped]
import httpx
import pytest
from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from e2e.services import new_bucket

if TYPE_CHECKING:
    from e2e.services import IPFSNode, S3Server

# The fixtures come as a plugin (imported by pytest, with assertion rewriting), not by import here.

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent


def pinned_version(name: str) -> str:
    """A version from toolchain/versions.env, e.g. pinned_version("KUBO_VERSION") -> "v0.43.1"."""
    for line in (REPO / "toolchain" / "versions.env").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == name:
            return value.strip()
    raise KeyError(name)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def test_s3_multipart_upload_list_download(s3_server: S3Server, tmp_path: Path) -> None:
    client = s3_server.client()
    bucket = new_bucket(client)
    assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]
    # The posix backend: the bucket is a directory under the server's root.
    assert (s3_server.root / bucket).is_dir()

    source = tmp_path / "upload.bin"
    source.write_bytes(os.urandom(20 * MiB))
    transfer = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2)
    client.upload_file(str(source), bucket, "results/output.bin", Config=transfer)

    head = client.head_object(Bucket=bucket, Key="results/output.bin")
    assert head["ContentLength"] == 20 * MiB
    # A multipart object's ETag is "<md5 of the part md5s>-<number of parts>": 20 MiB in 5 MiB parts.
    assert head["ETag"].strip('"').endswith("-4"), head["ETag"]

    listed = client.list_objects_v2(Bucket=bucket, Prefix="results/")
    assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [("results/output.bin", 20 * MiB)]
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    target = tmp_path / "download.bin"
    client.download_file(bucket, "results/output.bin", str(target), Config=transfer)
    assert sha256_of(target) == sha256_of(source)
    # ... and the bytes really are on the server's disk, as one file.
    assert sha256_of(s3_server.root / bucket / "results" / "output.bin") == sha256_of(source)


def test_s3_metadata_and_expires_round_trip(s3_server: S3Server) -> None:
    client = s3_server.client()
    bucket = new_bucket(client)
    expires = datetime(2031, 5, 17, 8, 30, tzinfo=UTC)
    metadata = {"workflow-id": "wf-123", "sha256": hashlib.sha256(b"{}").hexdigest()}
    client.put_object(
        Bucket=bucket,
        Key="manifest.json",
        Body=b"{}",
        ContentType="application/json",
        Metadata=metadata,
        Expires=expires,
    )

    head = client.head_object(Bucket=bucket, Key="manifest.json")
    assert head["Metadata"] == metadata
    assert head["ContentType"] == "application/json"
    assert head["ExpiresString"] == format_datetime(expires, usegmt=True)  # the HTTP-date
    assert head["Expires"] == expires
    got = client.get_object(Bucket=bucket, Key="manifest.json")
    assert got["Body"].read() == b"{}"
    assert got["Metadata"] == metadata


def test_s3_refuses_a_wrong_secret(s3_server: S3Server) -> None:
    with pytest.raises(ClientError) as refused:
        s3_server.client(secret_key="not-the-secret").list_buckets()
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


async def test_ipfs_http_api_add_cat_pin(ipfs_api: IPFSNode) -> None:
    # Larger than one chunk (256 KiB or 1 MiB, by the import profile), so the node builds a DAG.
    data = os.urandom(MiB + 12345)
    async with httpx.AsyncClient(base_url=f"{ipfs_api.api_url}/api/v0", timeout=30) as client:
        version = (await client.post("/version")).raise_for_status().json()
        assert version["Version"] == pinned_version("KUBO_VERSION").removeprefix("v")

        added = (await client.post("/add", files={"file": ("result.bin", data)})).raise_for_status().json()
        cid = added["Hash"]
        assert added["Name"] == "result.bin"
        assert int(added["Size"]) > len(data)  # the file's bytes plus its DAG's links

        links = (await client.post("/ls", params={"arg": cid})).raise_for_status().json()
        assert len(links["Objects"][0]["Links"]) >= 2  # one per chunk

        cat = await client.post("/cat", params={"arg": cid})
        assert cat.status_code == 200
        assert cat.content == data

        pins = (await client.post("/pin/ls", params={"type": "recursive"})).raise_for_status().json()
        assert pins["Keys"][cid]["Type"] == "recursive"

        removed = (await client.post("/pin/rm", params={"arg": cid})).raise_for_status().json()
        assert removed["Pins"] == [cid]

        pins = (await client.post("/pin/ls", params={"type": "recursive"})).raise_for_status().json()
        assert cid not in pins["Keys"]
        not_pinned = await client.post("/pin/ls", params={"arg": cid})
        assert not_pinned.status_code == 500
        assert "not pinned" in not_pinned.json()["Message"]


async def test_aioipfs_add_and_cat(ipfs_api: IPFSNode) -> None:
    data = b"published by the publish step " + os.urandom(4096)
    api = urlsplit(ipfs_api.api_url)
    async with aioipfs.AsyncIPFS(host=api.hostname, port=api.port) as client:
        added = await client.add_bytes(data)
        cid = added["Hash"]
        assert await client.cat(cid) == data

    # The same node, asked over plain HTTP, has it, and the same bytes give the same CID.
    async with httpx.AsyncClient(base_url=f"{ipfs_api.api_url}/api/v0", timeout=30) as http:
        pins = (await http.post("/pin/ls", params={"type": "recursive"})).raise_for_status().json()
        assert cid in pins["Keys"]
        again = await http.post("/add", params={"only-hash": "true"}, files={"file": ("x", data)})
        assert again.raise_for_status().json()["Hash"] == cid
