"""server.py's wiring of app.py: a Workflow the API server refuses (the CRD schema) is the client's 400
with the API server's words and nothing created; GET /compute lists a job's results from its manifest
when its status holds none (the result fetcher's read_manifest); getResult streams through the service's
fetcher, which is closed with the Application; the publish settings are parsed as the operator parses
them, and bad ones stop `ocean-c2d api`'s start."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ocean_c2d.api.app import ApiConfig, Download, ResultUnavailableError, build_app
from ocean_c2d.api.auth import MemoryNonceStore
from ocean_c2d.api.cluster_store import ApiError, ClusterStore
from ocean_c2d.api.results import ResultFetcher
from ocean_c2d.api.server import build_service, main
from ocean_c2d.api.settings import load_api_settings
from ocean_c2d.api.store import InMemoryStore
from ocean_c2d.settings import SettingsError, load_publish_settings, load_settings
from unit_tests.api.fixtures import COMPAT
from unit_tests.api.test_cluster_store import NS, FakeKube, environment, workflow

PREFIX = "/api/v1/operator"
OPERATOR = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"
# What a kube-apiserver says for a Workflow over the CRD's bounds (its words, as kr8s passes them on).
SCHEMA_REFUSAL = (
    'Workflow.oceanprotocol.com "38c8ca27d61e4f42ab352c5598162241" is invalid: spec.inputs: '
    "Too many: 300: must have at most 64 items"
)


def recorded_post() -> dict[str, Any]:
    exchanges = json.loads((COMPAT / "provider-v4.json").read_text())
    post = next(e for e in exchanges if e["request"]["method"] == "POST")
    return copy.deepcopy(post["request"]["params"])


async def test_a_create_the_api_server_refuses_is_400_with_its_words_and_creates_nothing() -> None:
    kube = FakeKube()
    kube.put("computeenvironments", environment("ocean-compute"))
    store = ClusterStore(kube, NS)
    settings = load_api_settings({"API_AUTH": "off", "OPERATOR_ADDRESS": OPERATOR})
    app = build_service(settings, store, MemoryNonceStore(), lambda: store.synced)

    def refuse() -> None:
        raise ApiError(422, SCHEMA_REFUSAL)

    kube.before_write.append(refuse)
    task = asyncio.create_task(store.run())
    await asyncio.wait_for(store.environments.synced.wait(), 2)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            response = await client.post(f"{PREFIX}/compute", json=recorded_post())
            assert response.status == 400
            assert response.headers["Content-type"] == "application/json"
            assert await response.json(content_type=None) == {"error": SCHEMA_REFUSAL}
            assert ("POST", "workflows", "") in kube.requests  # it was the API server that refused
            assert not [key for key in kube.objects if key[0] == "workflows"]
            assert await store.list_workflows() == []
            # Any other failure of the API server is not the client's: not answered as a 400.
            kube.before_write[:] = [lambda: (_ for _ in ()).throw(ApiError(403, "forbidden"))]
            response = await client.post(f"{PREFIX}/compute", json=recorded_post())
            assert response.status == 500
    finally:
        task.cancel()


def published(name: str, **status: Any) -> dict[str, Any]:
    obj = workflow(name, owner="0xowner")
    obj["status"] = {"stage": "Finished", "statusCode": 70, "finishedAt": "2026-12-01T12:00:05Z", **status}
    return obj


async def test_get_compute_lists_the_results_only_the_manifest_holds() -> None:
    store = InMemoryStore(NS)
    manifest = "s3://bucket/c2d/many/results.json"
    entries = [{"filename": f"out{i}.txt", "filesize": i, "type": "output", "url": f"u{i}"} for i in range(3)]
    for name, status in (
        ("many", {"resultsManifest": manifest}),
        ("broken", {"resultsManifest": "s3://bucket/c2d/broken/results.json"}),
        ("few", {"results": entries[:1]}),
    ):
        await store.create_workflow(published(name))
        store.set_status(name, published(name, **status)["status"])
    read: list[str] = []

    async def read_manifest(url: str) -> list[dict[str, Any]]:
        read.append(url)
        if url != manifest:
            raise ResultUnavailableError(502, "Result storage failed: down")
        return entries

    app = build_app(ApiConfig(store=store, read_manifest=read_manifest))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.get(f"{PREFIX}/compute", params={"owner": "0xowner"})
        assert response.status == 200
        answer = {job["jobId"]: job["results"] for job in await response.json(content_type=None)}
    assert answer == {
        "many": [{"filename": f"out{i}.txt", "filesize": i, "type": "output"} for i in range(3)],
        "broken": "",  # storage failed: the poll still answers, without the list
        "few": [{"filename": "out0.txt", "filesize": 0, "type": "output"}],
    }
    assert sorted(read) == sorted([manifest, "s3://bucket/c2d/broken/results.json"])  # never for "few"


class RecordingFetcher(ResultFetcher):
    """A fetcher over no storage that records what the service asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, str | None]] = []
        self.closed = False

    async def fetch_result(self, entry: Mapping[str, Any], range_header: str | None) -> Download:
        self.asked.append((str(entry["url"]), range_header))

        async def chunks() -> AsyncIterator[bytes]:
            yield b"hello world\n"

        return Download(200, {"Content-Type": "text/plain", "Content-Length": "12"}, chunks())

    async def close(self) -> None:
        self.closed = True


async def test_the_service_downloads_through_its_fetcher_and_closes_it() -> None:
    kube = FakeKube()
    done = published(
        "job1", results=[{"filename": "out.txt", "filesize": 12, "type": "output", "url": "s3://b/k"}]
    )
    kube.put("workflows", done)
    store = ClusterStore(kube, NS)
    settings = load_api_settings({"API_AUTH": "off", "OPERATOR_ADDRESS": OPERATOR})
    fetcher = RecordingFetcher()
    app = build_service(settings, store, MemoryNonceStore(), lambda: store.synced, fetcher=fetcher)
    task = asyncio.create_task(store.run())
    await asyncio.wait_for(store.workflows.synced.wait(), 2)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            query = {
                "owner": "0xowner",
                "jobId": "job1",
                "index": "0",
                "nonce": "1",
                "providerSignature": "x",
            }
            response = await client.get(f"{PREFIX}/getResult", params=query, headers={"Range": "bytes=0-4"})
            assert response.status == 200
            assert await response.read() == b"hello world\n"
            assert response.headers["Content-Disposition"] == "attachment;filename=k"
            assert fetcher.asked == [("s3://b/k", "bytes=0-4")]
            assert not fetcher.closed
    finally:
        task.cancel()
    assert fetcher.closed  # with the Application


def test_invalid_publish_settings_stop_the_start(capsys: pytest.CaptureFixture[str]) -> None:
    environ = {"API_AUTH": "off", "OPERATOR_ADDRESS": OPERATOR, "IPFS_TYPE": "bogus"}
    assert main(environ) == 2
    assert "IPFS_TYPE" in capsys.readouterr().err


def test_the_api_reads_the_publish_settings_as_the_operator_does() -> None:
    environ = {
        "AWS_BUCKET_OUTPUT": "c2d-results",
        "AWS_REGION": "eu-central-1",
        "IPFS_EXPIRY_TIME": "60",
        "OPERATOR_PRIVATE_KEY": "00" * 31 + "01",  # the operator's, for load_settings; no publish variable
    }
    publish = load_publish_settings(environ)
    assert publish == load_settings(environ).publish
    assert (publish.aws_bucket_output, publish.ipfs_expiry_time_seconds) == ("c2d-results", 60)
    with pytest.raises(SettingsError) as error:
        load_publish_settings({"IPFS_TYPE": "bogus", "IPFS_EXPIRY_TIME": "-1", "OPERATOR_ADDRESS": "x"})
    assert [p.split(":")[0] for p in error.value.problems] == ["IPFS_TYPE", "IPFS_EXPIRY_TIME"]
