"""Notifications against a real HTTP receiver on 127.0.0.1 (an asyncio server, not a mock transport)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from typing import Any

import httpx
import pytest

from ocean_c2d import identity
from ocean_c2d.notify import Delivery, send_notification
from ocean_c2d.resilience import backoff_delay, redact_url
from ocean_c2d.signing import OperatorKey, notification_message, notification_payload, recover_personal

KEY = OperatorKey.from_hex("0x95c716e9df3bc4ffd7299e7861ce401de810e8d245d3127b8e7b430f4ca7fd27")
ADDRESS = "0x6D39A833d1a6789AECa50dB85CB830bc08319F45"
SECRET = "fedcba9876543210fedcba9876543210"
DIDS = ["did:op:bbbb", "did:op:cccc"]
JOB_ID = "0123456789abcdef0123456789abcdef"
ALGO_DID = "did:op:aaaa"
PAYLOAD = notification_payload(KEY, SECRET, DIDS, JOB_ID, ALGO_DID)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Receiver:
    """A minimal HTTP/1.1 server: one request per connection, answered from `script`.

    Each script entry is a status code or (status code, headers); the last entry repeats once the script
    runs out. With `stall`, it reads and records the request, then never answers.
    """

    script: list[int | tuple[int, dict[str, str]]] = field(default_factory=lambda: [200])
    stall: bool = False
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/notify"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            request_line = (await reader.readline()).decode("latin-1").strip()
            if not request_line:
                return
            method, path, _version = request_line.split(" ", 2)
            headers: dict[str, str] = {}
            while line := (await reader.readline()).decode("latin-1").strip():
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Received(method, path, headers, json.loads(raw) if raw else None))
            if self.stall:
                await asyncio.Event().wait()  # never set: cancelled at teardown
                return
            entry = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            status, extra = (entry, {}) if isinstance(entry, int) else entry
            lines = [f"HTTP/1.1 {status} Scripted", "Content-Length: 0", "Connection: close"]
            lines += [f"{name}: {value}" for name, value in extra.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def close_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()


class FakeSleep:
    """Records the delays asked for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await state.handle(reader, writer)
        finally:
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        state.close_connections()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


@pytest.fixture
def sleep() -> FakeSleep:
    return FakeSleep()


async def test_delivered_on_first_200(
    receiver: Receiver, client: httpx.AsyncClient, sleep: FakeSleep
) -> None:
    delivery = await send_notification(client, receiver.url, PAYLOAD, sleep=sleep)

    assert delivery == Delivery(delivered=True, attempts=1, message="HTTP 200 after 1 attempt")
    assert sleep.delays == []
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert (request.method, request.path) == ("POST", "/notify")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("ocean-c2d/")
    assert request.body == PAYLOAD
    message = notification_message(
        request.body["secret"], request.body["DID"], request.body["jobId"], request.body["algoDID"]
    )
    assert recover_personal(message.encode(), request.body["signature"]) == ADDRESS


async def test_retries_5xx_with_increasing_delays(
    receiver: Receiver, client: httpx.AsyncClient, sleep: FakeSleep
) -> None:
    receiver.script = [503, 503, 200]

    delivery = await send_notification(client, receiver.url, PAYLOAD, backoff_seconds=0.5, sleep=sleep)

    assert delivery == Delivery(delivered=True, attempts=3, message="HTTP 200 after 3 attempts")
    assert len(receiver.requests) == 3
    assert len(sleep.delays) == 2
    first, second = sleep.delays
    # 0.5 s then 1 s, each within +-20 %: the ranges do not overlap, so the delays always increase.
    assert 0.4 <= first <= 0.6
    assert 0.8 <= second <= 1.2
    assert first < second


async def test_429_honours_retry_after_without_jitter(
    receiver: Receiver, client: httpx.AsyncClient, sleep: FakeSleep
) -> None:
    receiver.script = [(429, {"Retry-After": "2"}), 200]

    delivery = await send_notification(client, receiver.url, PAYLOAD, sleep=sleep)

    assert delivery.delivered
    assert delivery.attempts == 2
    assert sleep.delays == [2.0]


async def test_retry_after_is_capped_and_dates_are_ignored(
    receiver: Receiver, client: httpx.AsyncClient, sleep: FakeSleep
) -> None:
    receiver.script = [
        (503, {"Retry-After": "3600"}),
        (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
        (500, {"Retry-After": "7"}),  # only 429 and 503 carry a Retry-After we honour
        200,
    ]

    delivery = await send_notification(client, receiver.url, PAYLOAD, backoff_seconds=1.0, sleep=sleep)

    assert delivery.delivered
    assert delivery.attempts == 4
    capped, from_date, from_500 = sleep.delays
    assert capped == 30.0
    assert 1.6 <= from_date <= 2.4  # backoff for retry 2: 2 s +-20 %
    assert 3.2 <= from_500 <= 4.8  # backoff for retry 3: 4 s +-20 %


async def test_400_is_not_retried(receiver: Receiver, client: httpx.AsyncClient, sleep: FakeSleep) -> None:
    receiver.script = [400]

    delivery = await send_notification(client, receiver.url, PAYLOAD, sleep=sleep)

    assert not delivery.delivered
    assert delivery.attempts == 1
    assert "400" in delivery.message
    assert len(receiver.requests) == 1
    assert sleep.delays == []


async def test_408_is_retried(receiver: Receiver, client: httpx.AsyncClient, sleep: FakeSleep) -> None:
    receiver.script = [408, 200]

    delivery = await send_notification(client, receiver.url, PAYLOAD, sleep=sleep)

    assert delivery.delivered
    assert delivery.attempts == 2


async def test_always_500_gives_up_after_max_attempts(
    receiver: Receiver, client: httpx.AsyncClient, sleep: FakeSleep
) -> None:
    receiver.script = [500]

    delivery = await send_notification(client, receiver.url, PAYLOAD, max_attempts=3, sleep=sleep)

    assert delivery == Delivery(delivered=False, attempts=3, message="gave up after 3 attempts: HTTP 500")
    assert len(receiver.requests) == 3
    assert len(sleep.delays) == 2


async def test_nothing_listening(client: httpx.AsyncClient, sleep: FakeSleep) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/notify"

    delivery = await send_notification(client, url, PAYLOAD, max_attempts=3, sleep=sleep)

    assert not delivery.delivered
    assert delivery.attempts == 3
    assert delivery.message.startswith("gave up after 3 attempts: ConnectError")
    assert len(sleep.delays) == 2


async def test_stalled_receiver_times_out(
    receiver: Receiver, client: httpx.AsyncClient, sleep: FakeSleep
) -> None:
    receiver.stall = True
    started = time.monotonic()

    delivery = await send_notification(
        client, receiver.url, PAYLOAD, max_attempts=2, timeout_seconds=0.2, sleep=sleep
    )

    assert time.monotonic() - started < 5
    assert not delivery.delivered
    assert delivery.attempts == 2
    assert len(receiver.requests) == 2
    assert len(sleep.delays) == 1


async def test_cancellation_propagates(receiver: Receiver, client: httpx.AsyncClient) -> None:
    receiver.stall = True
    task = asyncio.create_task(send_notification(client, receiver.url, PAYLOAD, timeout_seconds=30))
    for _ in range(200):
        if receiver.requests:
            break
        await asyncio.sleep(0.01)
    assert receiver.requests

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


async def test_logs_name_neither_secret_nor_signature_nor_url_credentials(
    receiver: Receiver, client: httpx.AsyncClient, sleep: FakeSleep, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.script = [503, 200, 500]
    url = f"http://alice:hunter2@127.0.0.1:{receiver.port}/notify?token=tok-SEKRET-123#frag"
    signature = PAYLOAD["signature"]

    delivered = await send_notification(client, url, PAYLOAD, sleep=sleep)
    failed = await send_notification(client, url, PAYLOAD, max_attempts=2, sleep=sleep)

    assert delivered.delivered
    assert not failed.delivered
    # The credentials still reach the receiver: redaction is for the logs only.
    assert receiver.requests[0].path == "/notify?token=tok-SEKRET-123"
    assert receiver.requests[0].headers["authorization"].startswith("Basic ")

    everything = "\n".join(record.getMessage() for record in caplog.records)
    assert SECRET not in everything
    assert signature not in everything
    assert signature.removeprefix("0x") not in everything

    ours = [record for record in caplog.records if record.name == "ocean_c2d.notify"]
    assert {record.levelno for record in ours} == {logging.DEBUG, logging.INFO, logging.WARNING}
    for record in ours:
        text = record.getMessage()
        assert f"http://127.0.0.1:{receiver.port}/notify" in text
        assert JOB_ID in text
        for leak in ("tok-SEKRET-123", "token", "alice", "hunter2", "frag", SECRET, signature):
            assert leak not in text
    for delivery in (delivered, failed):
        for leak in (SECRET, signature, "tok-SEKRET-123", "hunter2"):
            assert leak not in delivery.message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pass@example.org:8443/hook/start?token=abc#x", "https://example.org:8443/hook/start"),
        ("http://example.org/notify?token=abc", "http://example.org/notify"),
        ("http://token@example.org", "http://example.org"),
        ("http://[::1]:8080/a", "http://[::1]:8080/a"),
        ("http://example.org:notaport/a", "<unparseable URL>"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_backoff_doubles_and_caps_with_bounded_jitter() -> None:
    for retry, base in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0)]:
        for _ in range(50):
            assert base * 0.8 <= backoff_delay(retry, 0.5) <= base * 1.2
    for _ in range(50):
        assert 24.0 <= backoff_delay(20, 0.5) <= 30.0


def test_user_agent_without_installed_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(_name: str) -> str:
        raise PackageNotFoundError(_name)

    identity.package_version.cache_clear()
    monkeypatch.setattr(identity, "version", missing)
    try:
        assert identity.user_agent() == "ocean-c2d/unknown"
    finally:
        identity.package_version.cache_clear()
