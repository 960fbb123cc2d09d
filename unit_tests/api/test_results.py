"""GET /getResult streaming from the real storage publish uses: versitygw (S3) and kubo (IPFS) on loopback.

Each result is put where the publish step puts it, by publish's own destinations (storage.s3 /
storage.ipfs), so the URLs in the Workflow's status are exactly the ones a real run records; the API
then streams them through api/results.py. The headers and 404 texts are the recorded ones (the getResult
exchanges of fixtures/ocean-compat); Range -> 206 is our documented improvement.
"""

from __future__ import annotations

import hashlib
import json
import time
import tracemalloc
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from e2e.services import IPFSNode, S3Server, free_port, new_bucket
from ocean_c2d.api.app import ApiConfig, Download, ResultUnavailableError, build_app
from ocean_c2d.api.results import (
    CHUNK,
    ByteRange,
    IpfsResults,
    ResultFetcher,
    S3Results,
    UnsatisfiableError,
    content_type,
    fetcher_from_settings,
    parse_range,
    resolve,
)
from ocean_c2d.api.store import InMemoryStore
from ocean_c2d.settings import PublishSettings
from ocean_c2d.storage import s3
from ocean_c2d.storage.ipfs import IpfsDestination
from ocean_c2d.storage.s3 import S3Destination
from unit_tests.api.fixtures import COMPAT

OWNER = "0xBE5449a6A97aD46c8558A3356267Ee5D2731ab5e"
JOB = "38c8ca27d61e4f42ab352c5598162241"
PREFIX = f"default/{JOB}/uid-1"  # RESULTS_PREFIX: <namespace>/<name>/<uid>
HELLO = b"hello world\n"  # the recordings' out.txt
ALGO_LOG = b"algo log\n"  # and algorithm.log
MIB = 1024 * 1024
GET_RESULT = "/api/v1/operator/getResult"


def recorded(file: str, seq: int) -> dict[str, Any]:
    exchange: dict[str, Any] = next(e for e in json.loads((COMPAT / file).read_text()) if e["seq"] == seq)
    return exchange


def recorded_headers(exchange: Mapping[str, Any]) -> dict[str, str]:
    return {name: value for name, value in exchange["response"]["headers"]}


def s3_results(server: S3Server, bucket: str) -> S3Results:
    client = s3.make_client(server.region, server.endpoint_url, server.access_key, server.secret_key)
    return S3Results(client, bucket, server.endpoint_url, server.region)


async def publish_s3(server: S3Server, bucket: str, tmp_path: Path, files: Mapping[str, bytes]) -> list[str]:
    """Upload each file as the publish step does; their URLs, in order."""
    destination = S3Destination(
        bucket=bucket,
        workflow_id=PREFIX,
        endpoint_url=server.endpoint_url,
        region=server.region,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
        now=time.time(),
    )
    urls = []
    try:
        for name, data in files.items():
            path = tmp_path / name.replace("/", "_")
            path.write_bytes(data)
            urls.append(await destination.upload(path, name))
    finally:
        await destination.close()
    return urls


def entry(filename: str, url: str, size: int, kind: str = "output") -> dict[str, Any]:
    return {"filename": filename, "filesize": size, "url": url, "type": kind}


def store_with(status: dict[str, Any]) -> InMemoryStore:
    store = InMemoryStore()
    store.workflows[JOB] = {
        "metadata": {"name": JOB, "namespace": "default", "uid": "uid-1"},
        "spec": {"owner": OWNER},
        "status": status,
    }
    return store


def query(index: int | str, job: str = JOB) -> dict[str, str]:
    return {"owner": OWNER, "jobId": job, "index": str(index), "providerSignature": "0x00", "nonce": "1"}


async def get(
    client: TestClient[Any, Any], index: int | str, headers: dict[str, str] | None = None, job: str = JOB
) -> tuple[int, Mapping[str, str], bytes]:
    async with client.get(GET_RESULT, params=query(index, job), headers=headers) as answer:
        return answer.status, answer.headers, await answer.read()


def api(store: InMemoryStore, fetcher: ResultFetcher) -> TestClient[Any, Any]:
    config = ApiConfig(store=store, fetch_result=fetcher.fetch_result, read_manifest=fetcher.read_manifest)
    return TestClient(TestServer(build_app(config)))


# --- Range: pure ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-4", ByteRange(0, 4)),
        ("bytes=5-", ByteRange(5, None)),
        ("bytes=-3", ByteRange(None, 3)),
        (" bytes = 2 - 2 ", ByteRange(2, 2)),
        (None, None),
        ("", None),
        ("bytes=0-1,3-4", None),  # several ranges: ignored, 200 whole
        ("items=0-4", None),
        ("bytes=4-0", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header) == expected


@pytest.mark.parametrize(
    ("byte_range", "size", "expected"),
    [
        (ByteRange(0, 4), 12, (0, 4)),
        (ByteRange(5, None), 12, (5, 11)),
        (ByteRange(0, 100), 12, (0, 11)),
        (ByteRange(None, 3), 12, (9, 11)),
        (ByteRange(None, 100), 12, (0, 11)),
        (ByteRange(12, None), 12, None),
        (ByteRange(None, 0), 12, None),
        (ByteRange(0, None), 0, None),
    ],
)
def test_resolve(byte_range: ByteRange, size: int, expected: tuple[int, int] | None) -> None:
    if expected is None:
        with pytest.raises(UnsatisfiableError):
            resolve(byte_range, size)
    else:
        assert resolve(byte_range, size) == expected


def test_content_type_keeps_storages_own_and_answers_logs_as_text() -> None:
    assert content_type({"filename": "a.png"}, "image/png") == "image/png"
    # publish stores .log as octet-stream (mimetypes knows no .log); the recordings answered text/plain.
    assert content_type(
        {"filename": "algorithm.log", "type": "algorithmLog"}, "application/octet-stream"
    ) == ("text/plain")
    assert (
        content_type({"filename": "x.bin", "type": "output"}, "binary/octet-stream") == "binary/octet-stream"
    )
    assert content_type({"filename": "x.bin", "type": "output"}, None) is None


# --- S3 ----------------------------------------------------------------------------------------------


async def test_s3_result_is_streamed_with_the_recorded_headers(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = new_bucket(s3_server.client())
    out_url, log_url = await publish_s3(
        s3_server, bucket, tmp_path, {"outputs/out.txt": HELLO, "logs/algorithm.log": ALGO_LOG}
    )
    assert out_url == f"{s3_server.endpoint_url}/{bucket}/{PREFIX}/outputs/out.txt"
    results = [entry("out.txt", out_url, 12), entry("algorithm.log", log_url, 9, "algorithmLog")]
    fetcher = ResultFetcher(s3_results=s3_results(s3_server, bucket))
    try:
        async with api(store_with({"results": results}), fetcher) as client:
            for index, seq, body in ((0, 21, HELLO), (1, 22, ALGO_LOG)):
                exchange = recorded("provider-v4.json", seq)
                status, headers, answer = await get(client, index)
                assert (status, answer) == (
                    exchange["response"]["status"],
                    exchange["response"]["body"].encode(),
                )
                assert answer == body
                want = recorded_headers(exchange)
                for name in (
                    "Content-Disposition",
                    "Access-Control-Expose-Headers",
                    "Content-Type",
                    "Access-Control-Allow-Origin",
                ):
                    assert headers[name] == want[name], name
    finally:
        await fetcher.close()


async def test_s3_range_answers_206_with_content_range(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = new_bucket(s3_server.client())
    (url,) = await publish_s3(s3_server, bucket, tmp_path, {"outputs/out.txt": HELLO})
    # The recording: provider v4 forwarded "Range: bytes=0-4"; the original answered 200, text/html, all.
    original = recorded("provider-v4.json", 23)
    assert original["request"]["headers"][-1] == ["Range", "bytes=0-4"]
    assert original["response"]["status"] == 200
    fetcher = ResultFetcher(s3_results=s3_results(s3_server, bucket))
    try:
        async with api(store_with({"results": [entry("out.txt", url, 12)]}), fetcher) as client:
            status, headers, body = await get(client, 0, {"Range": "bytes=0-4"})
            assert (status, body) == (206, b"hello")
            assert headers["Content-Range"] == "bytes 0-4/12"
            assert headers["Content-Length"] == "5"
            assert headers["Accept-Ranges"] == "bytes"
            assert headers["Content-Type"] == "text/plain"
            assert headers["Content-Disposition"] == "attachment;filename=out.txt"

            status, headers, body = await get(client, 0, {"Range": "bytes=-3"})
            assert (status, body, headers["Content-Range"]) == (206, b"ld\n", "bytes 9-11/12")

            status, headers, body = await get(client, 0, {"Range": "bytes=100-"})
            assert status == 416
            assert headers["Content-Range"] == "bytes */12"
            assert json.loads(body) == {"error": "Requested range not satisfiable"}

            status, headers, body = await get(client, 0, {"Range": "bytes=0-1,3-4"})  # ignored
            assert (status, body) == (200, HELLO)
    finally:
        await fetcher.close()


async def test_a_missing_object_is_404_and_unreachable_storage_502(
    s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = new_bucket(s3_server.client())
    gone = s3.object_url(bucket, f"{PREFIX}/outputs/never.txt", s3_server.endpoint_url, s3_server.region)
    elsewhere = "https://example.org/results/out.txt"
    results = [entry("never.txt", gone, 1), entry("out.txt", elsewhere, 12)]
    fetcher = ResultFetcher(s3_results=s3_results(s3_server, bucket))
    try:
        async with api(store_with({"results": results}), fetcher) as client:
            status, headers, body = await get(client, 0)
            assert (status, json.loads(body)) == (404, {"error": "Result never.txt is no longer in storage"})
            assert headers["Content-type"] == "application/json"
            # A URL that is not this operator's storage is never fetched.
            status, _, body = await get(client, 1)
            assert status == 502
            assert json.loads(body) == {
                "error": "Result storage failed: result out.txt is not in this operator's result storage"
            }
    finally:
        await fetcher.close()

    closed = f"http://127.0.0.1:{free_port()}"
    client = s3.make_client(
        s3_server.region, closed, s3_server.access_key, s3_server.secret_key, max_attempts=1
    )
    down = ResultFetcher(s3_results=S3Results(client, bucket, closed, s3_server.region))
    url = s3.object_url(bucket, f"{PREFIX}/outputs/out.txt", closed, s3_server.region)
    try:
        async with api(store_with({"results": [entry("out.txt", url, 12)]}), down) as api_client:
            status, _, body = await get(api_client, 0)
            assert status == 502
            assert json.loads(body)["error"].startswith("Result storage failed: EndpointConnectionError")
    finally:
        await down.close()


async def test_the_recorded_404_texts_with_a_fetcher(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = new_bucket(s3_server.client())
    (url,) = await publish_s3(s3_server, bucket, tmp_path, {"outputs/out.txt": HELLO})
    fetcher = ResultFetcher(s3_results=s3_results(s3_server, bucket))
    try:
        async with api(store_with({"results": [entry("out.txt", url, 12)]}), fetcher) as client:
            for file, seq, index, job in (
                ("provider-v4.json", 24, "7", JOB),  # "No such index 7 in this compute job"
                ("probe.json", 43, "-1", JOB),  # "Negative index -1"
                ("probe.json", 37, "0", "f" * 32),  # unknown job: "Owner ... mismatch for job ..."
            ):
                exchange = recorded(file, seq)
                status, _, body = await get(client, index, job=job)
                assert (status, json.loads(body)) == (
                    exchange["response"]["status"],
                    exchange["response"]["body"],
                )
    finally:
        await fetcher.close()


async def test_a_list_only_in_the_manifest_is_read_from_it(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = new_bucket(s3_server.client())
    out_url, log_url = await publish_s3(
        s3_server, bucket, tmp_path, {"outputs/out.txt": HELLO, "logs/algorithm.log": ALGO_LOG}
    )
    listed = [entry("out.txt", out_url, 12), entry("algorithm.log", log_url, 9, "algorithmLog")]
    (manifest,) = await publish_s3(s3_server, bucket, tmp_path, {"results.json": json.dumps(listed).encode()})
    assert manifest.endswith(f"/{PREFIX}/results.json")
    fetcher = ResultFetcher(s3_results=s3_results(s3_server, bucket))
    try:
        # What stages._published records for {"manifest": url, "count": N}: an empty list and the URL.
        async with api(store_with({"results": [], "resultsManifest": manifest}), fetcher) as client:
            status, headers, body = await get(client, 1)
            assert (status, body) == (200, ALGO_LOG)
            assert headers["Content-Disposition"] == "attachment;filename=algorithm.log"
            status, _, body = await get(client, 2)
            assert (status, json.loads(body)) == (404, {"error": "No such index 2 in this compute job"})
    finally:
        await fetcher.close()


async def test_a_64_mib_result_is_streamed_in_bounded_chunks(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = new_bucket(s3_server.client())
    size = 64 * MIB
    path = tmp_path / "big.bin"
    expected = hashlib.sha256()
    with path.open("wb") as handle:
        for n in range(64):
            piece = bytes([n]) * MIB
            expected.update(piece)
            handle.write(piece)
    destination = S3Destination(
        bucket=bucket,
        workflow_id=PREFIX,
        endpoint_url=s3_server.endpoint_url,
        region=s3_server.region,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
        now=time.time(),
    )
    url = await destination.upload(path, "outputs/big.bin")
    await destination.close()
    path.unlink()

    fetcher = ResultFetcher(s3_results=s3_results(s3_server, bucket))
    seen: list[int] = []

    async def counted(result: Mapping[str, Any], range_header: str | None) -> Download:
        download = await fetcher.fetch_result(result, range_header)

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in download.chunks:
                seen.append(len(chunk))
                yield chunk

        return Download(download.status, download.headers, chunks())

    store = store_with({"results": [entry("big.bin", url, size)]})
    received = hashlib.sha256()
    total = 0
    tracemalloc.start()
    try:
        app = build_app(ApiConfig(store=store, fetch_result=counted))
        async with TestClient(TestServer(app)) as client, client.get(GET_RESULT, params=query(0)) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Length"] == str(size)
            async for piece in answer.content.iter_chunked(CHUNK):
                received.update(piece)
                total += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await fetcher.close()
    assert total == size
    assert received.hexdigest() == expected.hexdigest()
    assert sum(seen) == size
    assert max(seen) <= CHUNK
    assert len(seen) >= size // CHUNK
    # The server and the client together never held a sizeable part of the 64 MiB.
    assert peak < 16 * MIB, peak


# --- IPFS --------------------------------------------------------------------------------------------


async def test_ipfs_result_is_streamed_whole_and_by_range(ipfs_api: IPFSNode, tmp_path: Path) -> None:
    destination = IpfsDestination(ipfs_api.api_url, prefix="ipfs://", now=time.time())
    urls = []
    try:
        for name, data in (("outputs/plots/out.txt", HELLO), ("logs/algorithm.log", ALGO_LOG)):
            path = tmp_path / name.replace("/", "_")
            path.write_bytes(data)
            urls.append(await destination.upload(path, name))
    finally:
        await destination.close()
    assert urls[0].startswith("ipfs://")
    assert urls[0].endswith("/plots/out.txt")
    cid = urls[0].removeprefix("ipfs://").split("/")[0]
    results = [
        entry("plots/out.txt", urls[0], 12),
        entry("algorithm.log", urls[1], 9, "algorithmLog"),
        entry("plots/never.txt", f"ipfs://{cid}/plots/never.txt", 1),
    ]
    fetcher = ResultFetcher(ipfs_results=IpfsResults("ipfs://", ipfs_api.api_url))
    try:
        async with api(store_with({"results": results}), fetcher) as client:
            status, headers, body = await get(client, 0)
            assert (status, body) == (200, HELLO)
            assert headers["Content-Disposition"] == "attachment;filename=out.txt"
            assert headers["Content-Type"] == "text/plain"
            assert headers["Content-Length"] == "12"

            status, headers, body = await get(client, 1)
            assert (status, body, headers["Content-Type"]) == (200, ALGO_LOG, "text/plain")

            status, headers, body = await get(client, 0, {"Range": "bytes=6-"})
            assert (status, body) == (206, b"world\n")
            assert headers["Content-Range"] == "bytes 6-11/12"
            assert headers["Content-Length"] == "6"

            status, headers, body = await get(client, 0, {"Range": "bytes=12-"})
            assert (status, headers["Content-Range"]) == (416, "bytes */12")

            status, _, body = await get(client, 2)
            assert (status, json.loads(body)) == (
                404,
                {"error": "Result plots/never.txt is no longer in storage"},
            )
    finally:
        await fetcher.close()


async def test_ipfs_through_an_http_gateway_prefix(tmp_path: Path) -> None:
    """IPFS_OUTPUT_PREFIX an http(s) gateway and no kubo API (IPFS_TYPE=CLUSTER): the URL itself is read,
    the Range passed on. The gateway here is aiohttp's own file answer (its real Range handling) on
    loopback; the API key headers are not sent to it."""
    cid = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
    (tmp_path / "out.txt").write_bytes(HELLO)
    seen_headers: list[Mapping[str, str]] = []

    async def gateway(request: web.Request) -> web.StreamResponse:
        seen_headers.append(dict(request.headers))
        if request.match_info["path"] != "plots/out.txt":
            raise web.HTTPNotFound()
        return web.FileResponse(tmp_path / "out.txt")

    app = web.Application()
    app.router.add_get(f"/ipfs/{cid}/{{path:.+}}", gateway)
    async with TestServer(app) as server:
        prefix = f"http://127.0.0.1:{server.port}/ipfs/"
        results = [
            entry("plots/out.txt", f"{prefix}{cid}/plots/out.txt", 12),
            entry("plots/never.txt", f"{prefix}{cid}/plots/never.txt", 1),
        ]
        fetcher = ResultFetcher(ipfs_results=IpfsResults(prefix, None, api_key="secret"))
        try:
            async with api(store_with({"results": results}), fetcher) as client:
                status, headers, body = await get(client, 0)
                assert (status, body, headers["Content-Type"]) == (200, HELLO, "text/plain")
                status, headers, body = await get(client, 0, {"Range": "bytes=0-4"})
                assert (status, body, headers["Content-Range"]) == (206, b"hello", "bytes 0-4/12")
                status, _, body = await get(client, 1)
                assert (status, json.loads(body)) == (
                    404,
                    {"error": "Result plots/never.txt is no longer in storage"},
                )
        finally:
            await fetcher.close()
    assert seen_headers
    assert all("X-API-KEY" not in h for h in seen_headers)


def publish_settings(**changes: Any) -> PublishSettings:
    values: dict[str, Any] = {
        "ipfs_output": None,
        "ipfs_output_prefix": None,
        "ipfs_api_key": None,
        "ipfs_api_client": None,
        "ipfs_type": None,
        "ipfs_expiry_time_seconds": None,
        "aws_access_key_id": "key",
        "aws_secret_access_key": "secret",
        "aws_region": None,
        "aws_bucket_output": None,
        "aws_endpoint_url": None,
    }
    return PublishSettings(**(values | changes))


async def test_the_fetcher_follows_the_publish_settings() -> None:
    assert fetcher_from_settings(publish_settings()) is None
    fetcher = fetcher_from_settings(
        publish_settings(aws_bucket_output="results", ipfs_output="http://kubo:5001", ipfs_type="CLIENT")
    )
    assert fetcher is not None
    assert fetcher.s3 is not None
    assert fetcher.ipfs is not None
    # AWS's URL of publish (no endpoint, default region) is read back as its key; no other URL is.
    assert fetcher.s3.key_of("https://results.s3.us-east-1.amazonaws.com/c2d/j/u/outputs/a%20b.txt") == (
        "c2d/j/u/outputs/a b.txt"
    )
    assert fetcher.s3.key_of("https://other.s3.us-east-1.amazonaws.com/c2d/j/u/outputs/a.txt") is None
    assert fetcher.ipfs.path_of("ipfs://bafy/plots/a%20b.png") == "bafy/plots/a b.png"
    assert fetcher.ipfs.path_of("ipfs://bafy/../bafz/a.png") is None
    assert fetcher.ipfs.path_of("https://gateway/ipfs/bafy/a.png") is None
    await fetcher.close()
    # An ipfs-cluster has no cat: no RPC API then, only an http(s) gateway prefix.
    cluster = fetcher_from_settings(publish_settings(ipfs_output="http://cluster:9094", ipfs_type="CLUSTER"))
    assert cluster is not None
    assert cluster.ipfs is not None
    with pytest.raises(ResultUnavailableError) as raised:
        await cluster.fetch_result({"filename": "a.png", "url": "ipfs://bafy/a.png"}, None)
    assert raised.value.status == 502
    assert "no IPFS API" in raised.value.message
    await cluster.close()


async def test_a_manifest_is_read_from_storage_once_and_the_cache_keeps_to_its_bytes() -> None:
    """results.json never changes once written, so polls of a job whose list is only there read it once."""
    reads: list[str] = []
    documents = {
        f"s3://bucket/job{n}/results.json": json.dumps([{"filename": f"f{n}"}]).encode() for n in range(3)
    }

    class CountingS3:
        def key_of(self, url: str) -> str | None:
            return url

        async def read_all(self, key: str, limit: int) -> bytes:
            reads.append(key)
            return documents[key]

        async def close(self) -> None:
            pass

    size = len(documents["s3://bucket/job0/results.json"])
    fetcher = ResultFetcher(s3_results=CountingS3(), manifest_cache_bytes=2 * size)  # type: ignore[arg-type]
    first = await fetcher.read_manifest("s3://bucket/job0/results.json")
    first[0]["filename"] = "changed by a caller"
    assert await fetcher.read_manifest("s3://bucket/job0/results.json") == [{"filename": "f0"}]
    assert reads == ["s3://bucket/job0/results.json"]
    # Room for two: reading a third pushes out the least recently used (job1, as job0 was just read).
    await fetcher.read_manifest("s3://bucket/job1/results.json")
    await fetcher.read_manifest("s3://bucket/job0/results.json")
    await fetcher.read_manifest("s3://bucket/job2/results.json")
    await fetcher.read_manifest("s3://bucket/job0/results.json")
    await fetcher.read_manifest("s3://bucket/job1/results.json")
    assert [r.split("/")[3] for r in reads] == ["job0", "job1", "job2", "job1"]
