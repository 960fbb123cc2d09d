"""The operator's own requests to the result stores (expiry: S3 deletes, IPFS unpins) against a store that
is down (port closed) or hangs (accepts connections, never answers): each is bounded, and however many
records are due, the expiry never holds more than STORE_CONCURRENCY of the work queue's workers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from ocean_c2d import effects, expiry
from ocean_c2d.effects import STORE_BUSY_RETRY_SECONDS, STORE_CONCURRENCY, StoreUnavailableError
from ocean_c2d.model import Workflow
from ocean_c2d.steps.contract import EXIT_RESULTS_UPLOAD_FAILED, StepError
from ocean_c2d.steps.publish import RetryPolicy, upload_with_retries
from ocean_c2d.storage import ipfs, s3
from ocean_c2d.storage.ipfs import UnpinError, kubo_client, unpin_expired
from ocean_c2d.view import RECORD_INDEX
from unit_tests.factories import workflow_object
from unit_tests.test_retention import expiry_with, finished, result

CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"


class Hanging:
    """A TCP server on loopback that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.connections = 0
        self._open: list[asyncio.StreamWriter] = []
        self._accepted = asyncio.Condition()

    async def handle(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.append(writer)  # held open, unanswered, until the test ends
        async with self._accepted:
            self.connections += 1
            self._accepted.notify_all()

    async def reached(self, connections: int) -> None:
        async with self._accepted:
            await self._accepted.wait_for(lambda: self.connections >= connections)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def hanging() -> AsyncIterator[Hanging]:
    server = Hanging()
    server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    yield server
    for writer in server._open:
        writer.close()
    server.server.close()


def closed_port() -> str:
    """A loopback URL nothing listens on (the port was just free)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_an_unpin_from_a_hanging_node_gives_up_within_its_timeout(hanging: Hanging) -> None:
    client = kubo_client(hanging.url, timeout=0.5)
    try:
        async with asyncio.timeout(20):  # before the fix: aioipfs's 10 minutes without a byte
            with pytest.raises((TimeoutError, aiohttp.ClientError)):
                await unpin_expired(client, [(CID, 0.0)], time.time())
    finally:
        await client.close()
    assert hanging.connections >= 1


async def keep_due(resultexpiry: effects.ResultExpiry, uid: str) -> str:
    """A results record of a (deleted) Workflow, due now, naming a CID of its own; its name."""
    workflow = Workflow.from_object(workflow_object(metadata={"name": f"job-{uid}", "uid": uid}))
    cid = CID[: -len(uid)] + uid.replace("-", "")[: len(uid)].ljust(len(uid), "a")
    await resultexpiry.keep(workflow, finished(results=[result(f"ipfs://{cid}/a", int(time.time()) - 5)]), 0)
    return f"ocean-c2d-results-{uid}"


async def test_a_removal_from_a_hanging_store_fails_within_the_deadline_and_the_record_stays(
    hanging: Hanging, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(effects, "STORE_DEADLINE_SECONDS", 0.5)
    monkeypatch.setattr(expiry, "IPFS_TIMEOUT", 60.0)  # the whole removal's deadline must fire first
    resultexpiry, cluster, indexes = expiry_with(IPFS_OUTPUT=hanging.url)
    name = await keep_due(resultexpiry, "uid-1")

    async with asyncio.timeout(20):
        with pytest.raises(StoreUnavailableError, match=r"did not answer within 0\.5 s"):
            await resultexpiry.run("c2d", name)

    assert ("c2d", name) in indexes[RECORD_INDEX]
    assert ("delete", name) not in cluster.calls  # kept: the work queue tries again later


async def test_a_store_that_is_down_fails_the_removal_at_once() -> None:
    resultexpiry, cluster, _ = expiry_with(IPFS_OUTPUT=closed_port())
    name = await keep_due(resultexpiry, "uid-1")
    async with asyncio.timeout(20):
        with pytest.raises(UnpinError, match="did not confirm"):  # before: the CID counted as unpinned
            await resultexpiry.run("c2d", name)
    assert ("delete", name) not in cluster.calls


async def test_s3_deletes_against_a_hanging_endpoint_are_bounded(
    hanging: Hanging, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(expiry, "S3_READ_TIMEOUT", 0.5)
    resultexpiry, _, _ = expiry_with(
        AWS_BUCKET_OUTPUT="results",
        AWS_ENDPOINT_URL=hanging.url,
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test-secret",
    )
    workflow = Workflow.from_object(workflow_object())
    await resultexpiry.keep(workflow, finished(reason="ResultsUploadFailed"), 0)
    async with asyncio.timeout(30):  # before the fix: 3 attempts of 120 s each
        with pytest.raises(Exception, match=r"(?i)timeout|timed out"):
            await resultexpiry.run("c2d", "ocean-c2d-results-uid-1")
    assert hanging.connections >= 1


async def test_records_due_while_a_store_hangs_hold_at_most_store_concurrency_workers(
    hanging: Hanging,
) -> None:
    resultexpiry, _, _ = expiry_with(IPFS_OUTPUT=hanging.url)
    names = [await keep_due(resultexpiry, f"uid-{i}") for i in range(STORE_CONCURRENCY + 3)]
    waiting = [asyncio.ensure_future(resultexpiry.run("c2d", name)) for name in names[:STORE_CONCURRENCY]]
    try:
        async with asyncio.timeout(10):
            await hanging.reached(STORE_CONCURRENCY)  # both removals wait on the hanging node
        async with asyncio.timeout(5):
            later = [await resultexpiry.run("c2d", name) for name in names[STORE_CONCURRENCY:]]
        assert later == [STORE_BUSY_RETRY_SECONDS] * 3  # come back later, without holding a worker
        assert not any(task.done() for task in waiting)
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)


# ---- the publish step's uploads (in its pod) ----------------------------------------------------------


async def test_an_s3_upload_to_a_hanging_store_is_one_bounded_attempt_and_the_step_gives_up(
    hanging: Hanging, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(s3, "UPLOAD_READ_TIMEOUT", 0.5)
    destination = s3.S3Destination(
        bucket="results",
        workflow_id="c2d/job1/uid-1",
        region="us-east-1",
        endpoint_url=hanging.url,
        access_key_id="test",
        secret_access_key="test-secret",
        now=time.time(),
    )
    path = tmp_path / "out.csv"
    path.write_bytes(b"1,2,3\n")
    try:
        async with asyncio.timeout(30):  # before: boto3's 3 attempts of 120 s, each of the step's 5
            with pytest.raises(StepError) as failed:
                await upload_with_retries(destination, path, "outputs/out.csv", RetryPolicy(2, 0.0, 0.0))
    finally:
        await destination.close()
    assert failed.value.exit_code == EXIT_RESULTS_UPLOAD_FAILED
    assert "2 attempts" in str(failed.value)
    assert hanging.connections == 2  # one connection per attempt of the step: boto3 retries nothing


async def test_an_ipfs_add_to_a_hanging_node_fails_each_attempt_when_the_node_stays_silent(
    hanging: Hanging, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(ipfs, "UPLOAD_READ_TIMEOUT", 0.5)
    destination = ipfs.IpfsDestination(hanging.url)
    path = tmp_path / "out.csv"
    path.write_bytes(b"1,2,3\n")
    try:
        async with asyncio.timeout(30):  # before: 10 minutes without a byte, per attempt
            with pytest.raises(StepError) as failed:
                await upload_with_retries(destination, path, "outputs/out.csv", RetryPolicy(2, 0.0, 0.0))
    finally:
        await destination.close()
    assert failed.value.exit_code == EXIT_RESULTS_UPLOAD_FAILED
    assert hanging.connections == 2
