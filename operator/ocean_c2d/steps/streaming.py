"""Downloads streamed to disk: bounded memory, one disk budget, integrity checks, retries, atomic files.

Rules every download of the configure step follows:

- Memory: the body goes to disk in batches of about `Limits.chunk_size` (1 MiB): a worker thread
  hashes and writes one batch while the next arrives, so at most two are held; never a whole file.
- Disk: one `DiskBudget` (DISK_LIMIT_BYTES) is charged for every byte written by any download; going
  over it aborts at once (a Content-Length that would not fit aborts before the first byte).
- Integrity: an `Expectation` (`sha256:<hex>` and/or a size in bytes) is checked before the file is
  given its name; a mismatch is an error, never retried (the server sent other content).
- Atomicity: bytes go to a hidden temporary file next to the target (`.<name>.<random>.partial`),
  which is fsynced and renamed over the target only when complete and verified. On any failure
  (including cancellation) it is removed and its bytes are given back to the budget.
- Retries (resilience.py's rules): transport errors (connect errors, timeouts, a connection closed
  mid-body), HTTP 5xx, 408 and 429 are retried `Limits.retries` times (4), after `backoff * 2**(n-1)`
  seconds (+-20 %, at most 30 s; a numeric Retry-After on 429/503 is honoured, capped at 30 s). Any
  other 4xx is final.
  Every attempt asks its `request` factory for a fresh request, so a signed URL is signed again.
- Remote text: an error names the HTTP status and its standard phrase, never the server's body or
  reason phrase (they would reach status.message through the termination message).
- Egress: the client decides where a connection may go (steps/egress.py); a refusal is final.
- Secrets: a request's `params` (query string) may carry a nonce and a signature; they never appear
  in a message or a log line. Messages name URLs by `safe_url` (no userinfo, query or fragment).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx

from ocean_c2d.resilience import (
    DETAIL_LIMIT,
    describe_error,
    is_transient_status,
    retry_after_seconds,
    retry_delay,
    safe_url,
    scrub,
)

CHUNK_SIZE = 1 << 20
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF_SECONDS = 1.0
ERROR_BODY_LIMIT = 4096
FILE_MODE = 0o644

Sleep = Callable[[float], Awaitable[None]]
Log = Callable[[str], None]
T = TypeVar("T")

_CHECKSUM = re.compile(r"sha256:[0-9a-fA-F]{64}")


class FetchError(Exception):
    """A download that failed for good; `message` is safe to show the consumer (no secrets)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TransientError(FetchError):
    """A failed attempt that may succeed when tried again; `retry_after` is the server's wish, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def status_text(status: int) -> str:
    """ "HTTP 404 Not Found": the code and the standard phrase, never the server's own words."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP {status} {phrase}".rstrip()


class HttpStatusError(FetchError):
    """A final HTTP answer that is not a success (4xx other than 408/429, or 5xx after the retries).

    Its message is `status_text` only: the body (`detail`, kept for the caller's decisions, e.g. a
    provider refusing a nonce) is the remote's text and never reaches a message or a log line."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status_text(status))
        self.status = status
        self.detail = detail


class DiskLimitError(FetchError):
    pass


class IntegrityError(FetchError):
    pass


def format_bytes(count: int) -> str:
    """ "512 bytes", "1.5 MiB", "2.0 GiB"..."""
    if count < 1024:
        return f"{count} bytes"
    value = count / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


@dataclass(frozen=True)
class Expectation:
    """What the workflow says a file is: `checksum` ("sha256:<hex>") and/or `size` in bytes."""

    checksum: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        if self.checksum is not None and not _CHECKSUM.fullmatch(self.checksum):
            raise FetchError("the checksum must be 'sha256:' and 64 hex digits")
        if self.size is not None and (isinstance(self.size, bool) or self.size < 0):
            raise FetchError("the size must be a number of bytes")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Expectation:
        checksum = spec.get("checksum")
        size = spec.get("size")
        if checksum is not None and not isinstance(checksum, str):
            raise FetchError("the checksum must be a string")
        if size is not None and not isinstance(size, int):
            raise FetchError("the size must be a number of bytes")
        return cls(checksum=checksum, size=size)

    @property
    def sha256(self) -> str | None:
        return self.checksum.split(":", 1)[1].lower() if self.checksum else None


NO_EXPECTATION = Expectation()


class DiskBudget:
    """Bytes written so far by all downloads of the step, against a limit (None: no limit). Thread-safe."""

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and limit < 0:
            raise ValueError("a disk limit is at least 0 bytes")
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self._used, 0)

    def exceeded_message(self, needed: int | None = None) -> str:
        assert self.limit is not None
        need = f" (this file needs {format_bytes(needed)})" if needed is not None else ""
        return (
            f"disk limit exceeded: the downloads need more than DISK_LIMIT_BYTES={self.limit} bytes "
            f"({format_bytes(self.limit)}), {format_bytes(self._used)} already written{need}"
        )

    def check_fits(self, size: int) -> None:
        """Fail before downloading when `size` more bytes cannot fit."""
        with self._lock:
            if self.limit is not None and self._used + size > self.limit:
                raise DiskLimitError(self.exceeded_message(size))

    def charge(self, count: int) -> None:
        with self._lock:
            if self.limit is not None and self._used + count > self.limit:
                raise DiskLimitError(self.exceeded_message())
            self._used += count

    def refund(self, count: int) -> None:
        with self._lock:
            self._used = max(self._used - count, 0)


@dataclass
class Limits:
    """How downloads behave; tests inject `sleep` (and small backoffs)."""

    budget: DiskBudget = field(default_factory=DiskBudget)
    retries: int = DEFAULT_RETRIES
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS
    sleep: Sleep = asyncio.sleep
    chunk_size: int = CHUNK_SIZE
    timeout: httpx.Timeout = field(default_factory=lambda: httpx.Timeout(60.0, connect=10.0))

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """The pause before retry `retry` (1-based)."""
        return retry_delay(retry, self.backoff_seconds, retry_after)


@dataclass(frozen=True)
class FileResult:
    """One file that landed at `path`."""

    path: Path
    size: int
    sha256: str
    seconds: float

    @property
    def rate(self) -> str:
        mb_per_s = self.size / 1e6 / self.seconds if self.seconds > 0 else float("inf")
        return f"{mb_per_s:.1f} MB/s"


class PartialFile:
    """A file being written next to `target` under a hidden temporary name (blocking calls: use from a
    thread or for small data). `commit` checks it and renames it to `target`; `discard` removes it."""

    def __init__(self, target: Path, budget: DiskBudget, expect: Expectation, mode: int = FILE_MODE) -> None:
        self.target = target
        self.budget = budget
        self.expect = expect
        self.mode = mode
        self.size = 0
        self.started = time.monotonic()
        self._hash = hashlib.sha256()
        self._lock = threading.Lock()  # a write in flight finishes before discard closes the file
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
        self.path = Path(name)
        self._file: IO[bytes] | None = os.fdopen(handle, "wb")

    def write(self, *chunks: bytes) -> None:
        with self._lock:
            if self._file is None:
                raise FetchError("the file was discarded")
            for chunk in chunks:
                if self.expect.size is not None and self.size + len(chunk) > self.expect.size:
                    raise IntegrityError(
                        f"size mismatch: more than the expected {self.expect.size} bytes were received"
                    )
                self.budget.charge(len(chunk))
                self.size += len(chunk)
                self._hash.update(chunk)
                self._file.write(chunk)

    def commit(self) -> FileResult:
        with self._lock:
            return self._commit()

    def _commit(self) -> FileResult:
        assert self._file is not None, "the file is closed"
        if self.expect.size is not None and self.size != self.expect.size:
            raise IntegrityError(
                f"size mismatch: expected {self.expect.size} bytes, received {self.size} bytes"
            )
        digest = self._hash.hexdigest()
        if self.expect.sha256 is not None and digest != self.expect.sha256:
            raise IntegrityError(
                f"checksum mismatch: expected sha256:{self.expect.sha256}, got sha256:{digest}"
            )
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.chmod(self.path, self.mode)
        os.replace(self.path, self.target)
        return FileResult(self.target, self.size, digest, time.monotonic() - self.started)

    def discard(self) -> None:
        with self._lock:
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.budget.refund(self.size)
            self.size = 0


def check_announced_size(size: int | None, expect: Expectation, budget: DiskBudget) -> None:
    """Fail before downloading when the announced size already contradicts the expectation or the budget."""
    if size is None:
        return
    if expect.size is not None and size != expect.size:
        raise IntegrityError(
            f"size mismatch: expected {expect.size} bytes, the server announces {size} bytes"
        )
    budget.check_fits(size)


async def stream_to_file(
    chunks: AsyncIterable[bytes],
    target: Path,
    budget: DiskBudget,
    expect: Expectation = NO_EXPECTATION,
    *,
    mode: int = FILE_MODE,
    batch_size: int = CHUNK_SIZE,
) -> FileResult:
    """Write `chunks` to `target` atomically.

    Chunks are gathered into batches of about `batch_size` bytes; a worker thread hashes and writes one
    batch while the next one is received (double buffering: at most two batches in memory)."""
    partial = await asyncio.to_thread(PartialFile, target, budget, expect, mode)
    pending: asyncio.Future[None] | None = None
    try:
        batch: list[bytes] = []
        batched = 0
        async for chunk in chunks:
            if not chunk:
                continue
            batch.append(chunk)
            batched += len(chunk)
            if batched >= batch_size:
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(asyncio.to_thread(partial.write, *batch))
                batch, batched = [], 0
        if pending is not None:
            await pending
        if batch:
            await asyncio.to_thread(partial.write, *batch)
        return await asyncio.to_thread(partial.commit)
    except BaseException:
        if pending is not None:
            # Never leave its outcome unretrieved; discard() waits for a write still in flight.
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        partial.discard()
        raise


async def write_bytes(
    target: Path,
    data: bytes,
    budget: DiskBudget,
    *,
    mode: int = FILE_MODE,
    expect: Expectation = NO_EXPECTATION,
) -> FileResult:
    """Small in-memory content (raw code, custom data), written like a download: budget, atomic rename."""

    async def single() -> AsyncIterable[bytes]:
        yield data

    return await stream_to_file(single(), target, budget, expect, mode=mode)


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP request. `params` become the query string: they may be secret, so they are never logged;
    `url` must not carry a query string of its own that is secret."""

    method: str
    url: str
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] | None = None
    json: Any = None

    @property
    def label(self) -> str:
        return f"{self.method} {safe_url(self.url)}"


RequestFactory = Callable[[], HttpRequest]
# A request that must be made afresh for every attempt by asking someone first (a signed provider download).
AsyncRequestFactory = Callable[[], Awaitable[HttpRequest]]


async def with_retries(limits: Limits, attempt: Callable[[], Awaitable[T]], what: str, log: Log) -> T:
    """Run `attempt` until it succeeds, fails for good, or has been retried `limits.retries` times."""
    retry = 0
    while True:
        try:
            return await attempt()
        except TransientError as error:
            if retry >= limits.retries:
                tries = retry + 1
                raise FetchError(
                    f"{error.message} (gave up after {tries} attempt{'s' if tries > 1 else ''})"
                ) from None
            retry += 1
            delay = limits.delay(retry, error.retry_after)
            log(f"{what}: {error.message}; retry {retry} of {limits.retries} in {delay:.1f} s")
            await limits.sleep(delay)


def _detail_from_body(body: bytes, reason: str) -> str:
    """A short reason from an error body: a JSON "error"/"message"-like field, or the text itself."""
    text = body.decode("utf-8", "replace").strip()
    try:
        document = json.loads(text) if text else None
    except ValueError:
        document = None
    if isinstance(document, dict):
        for key in ("error", "errors", "message", "Message", "detail", "msg"):
            if document.get(key):
                value = document[key]
                text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
                break
    elif isinstance(document, str):
        text = document
    text = scrub(text)
    if len(text) > DETAIL_LIMIT:
        text = text[: DETAIL_LIMIT - 3] + "..."
    return text or reason


async def _raise_for_status(response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    body = b""
    with contextlib.suppress(httpx.HTTPError):
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= ERROR_BODY_LIMIT:
                break
    detail = _detail_from_body(body[:ERROR_BODY_LIMIT], response.reason_phrase)
    if is_transient_status(status):
        raise TransientError(status_text(status), retry_after_seconds(status, response.headers))
    raise HttpStatusError(status, detail)


def _announced_size(response: httpx.Response) -> int | None:
    """The body's size from Content-Length, when the bytes stored are the bytes sent (no encoding)."""
    if response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity"):
        return None
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The stored bytes: as received when not content-encoded (no re-chunking copies), else decoded."""
    if response.headers.get("Content-Encoding", "identity").lower() in ("", "identity"):
        return response.aiter_raw()
    return response.aiter_bytes()


def _describe_http_error(error: httpx.HTTPError) -> str:
    """An httpx error in our words: its type, plus its text only for connect and timeout errors (the
    system's words). Protocol and URL errors may quote what the server sent (a redirect's Location,
    a header), so they are named by type alone."""
    if isinstance(error, httpx.ConnectError | httpx.TimeoutException):
        return describe_error(error)
    return type(error).__name__


@contextlib.asynccontextmanager
async def _translated_errors() -> AsyncIterator[None]:
    """httpx errors as TransientError (worth retrying) or FetchError (not). An egress refusal
    (steps/egress.py) is already a FetchError and passes through: it is never retried."""
    try:
        yield
    except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as error:
        raise TransientError(_describe_http_error(error)) from None
    except httpx.HTTPError as error:
        raise FetchError(_describe_http_error(error)) from None


def _stream(
    http: httpx.AsyncClient, request: HttpRequest, limits: Limits
) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
    headers = {"Accept-Encoding": "identity", **(request.headers or {})}
    return http.stream(
        request.method,
        request.url,
        params=dict(request.params) if request.params else None,
        headers=headers,
        json=request.json,
        timeout=limits.timeout,
        follow_redirects=True,
    )


async def http_download(
    http: httpx.AsyncClient,
    request: RequestFactory | AsyncRequestFactory,
    target: Path,
    limits: Limits,
    expect: Expectation = NO_EXPECTATION,
    *,
    mode: int = FILE_MODE,
    what: str = "download",
    log: Log = lambda _: None,
) -> FileResult:
    """Stream the answer to `request()` into `target`, retrying transient failures; `request` is called
    again for every attempt (and awaited when it must ask someone first)."""

    async def attempt() -> FileResult:
        made = request()
        prepared = made if isinstance(made, HttpRequest) else await made
        async with _translated_errors(), _stream(http, prepared, limits) as response:
            await _raise_for_status(response)
            check_announced_size(_announced_size(response), expect, limits.budget)
            return await stream_to_file(
                _body(response), target, limits.budget, expect, mode=mode, batch_size=limits.chunk_size
            )

    return await with_retries(limits, attempt, what, log)


async def http_json(
    http: httpx.AsyncClient,
    request: RequestFactory,
    limits: Limits,
    *,
    max_bytes: int = 1 << 20,
    what: str = "request",
    log: Log = lambda _: None,
) -> Any:
    """The JSON answer to `request()` (at most `max_bytes`), retrying transient failures."""

    async def attempt() -> Any:
        async with _translated_errors(), _stream(http, request(), limits) as response:
            await _raise_for_status(response)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise FetchError(f"the answer is larger than {format_bytes(max_bytes)}")
        try:
            return json.loads(bytes(body))
        except ValueError:
            raise FetchError("the answer is not JSON") from None

    return await with_retries(limits, attempt, what, log)
