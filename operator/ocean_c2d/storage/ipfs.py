"""Results on IPFS: a kubo node (IPFS_TYPE=CLIENT, the default) or an ipfs-cluster REST API (CLUSTER).

Each file is added on its own, wrapped in a directory under its result filename (its name without the
top folder: "outputs/plots/a.png" -> "plots/a.png"), so its URL is
    <IPFS_OUTPUT_PREFIX><directory CID>/<filename>
with exactly one "/" between the prefix and the CID (the original produced "<cid>//data/outputs/x") and
the default prefix "ipfs://" (the original's default pointed at the node's API port, not a gateway).
IPFS_API_KEY and IPFS_API_CLIENT go in the X-API-KEY and CLIENT-ID headers of every request, as the
original's client sent them.

Expiry (IPFS_EXPIRY_TIME seconds; unset or 0 = never):
- CLUSTER: the cluster expires the pin itself: the add carries "expire-in=<n>s" (a Go duration; the
  original sent a bare number of minutes, which the cluster cannot parse).
- CLIENT: a kubo node cannot expire a pin: a pin stays until someone removes it. The add pins, the
  expiry time goes in the result list ("expiresAt"), and a later sweep calls `unpin_expired` with the
  (CID, expiry) pairs that are due (a CID comes back from a result URL with `cid_from_url`). Unpinning
  frees nothing by itself; the node's garbage collection (`ipfs repo gc`, or --enable-gc) does.

The adds are made on the aioipfs client's HTTP session (which carries the headers), not with its `add`:
that names every part by its basename (no subfolders), and its response reader skips statuses other
than 400/403/404/405/500, so a 401 or 502 from an authenticating proxy would look like an empty answer.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import aiohttp
import aioipfs  # type: ignore[import-untyped]

from ocean_c2d.resilience import DETAIL_LIMIT, is_transient_status, redact
from ocean_c2d.storage import UploadError, describe_failure

CLIENT = "CLIENT"
CLUSTER = "CLUSTER"
DEFAULT_PREFIX = "ipfs://"
KUBO_DEFAULT_PORT = 5001
CLUSTER_DEFAULT_PORT = 9094
# The publish step's adds: 10 s to connect, and the node may stay silent at most 120 s (aioipfs's default
# is 10 minutes, with 30 minutes a request), so a node that hangs fails each attempt in about two minutes
# and the step (5 attempts) well inside PUBLISH_TIMEOUT_SECONDS. No overall limit: a large add takes long.
UPLOAD_CONNECT_TIMEOUT = 10.0
UPLOAD_READ_TIMEOUT = 120.0


def normalize_prefix(prefix: str | None) -> str:
    """IPFS_OUTPUT_PREFIX ending in exactly one "/" ("ipfs://" stays as it is); default "ipfs://"."""
    if not prefix:
        return DEFAULT_PREFIX
    if prefix.endswith("://"):
        return prefix
    return prefix.rstrip("/") + "/"


def ipfs_url(prefix: str | None, cid: str, filename: str) -> str:
    """The URL of `filename` inside the directory `cid`; the filename is percent-encoded but its "/"."""
    return f"{normalize_prefix(prefix)}{cid}/{quote(filename.lstrip('/'), safe='/')}"


def cid_from_url(url: str, prefix: str | None) -> str | None:
    """The directory CID of a URL made by `ipfs_url` with the same prefix (for a sweep), else None."""
    start = normalize_prefix(prefix)
    if not url.startswith(start):
        return None
    cid = url[len(start) :].split("/", 1)[0]
    return cid or None


def wrapped_name(name: str) -> str:
    """The name a file gets inside its wrapping directory: its result filename, i.e. `name` without
    its top folder ("outputs/plots/a.png" -> "plots/a.png"; "results.json" stays)."""
    parts = name.strip("/").split("/", 1)
    return parts[-1]


def parent_directories(filename: str) -> list[str]:
    """The directories to send before a file so the node builds its subfolders, outermost first:
    "a/b/c.png" -> ["a", "a/b"]."""
    parts = filename.strip("/").split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def go_duration(seconds: int) -> str:
    """Seconds as a Go duration string, as ipfs-cluster's expire-in parses it: 3600 -> "3600s"."""
    return f"{seconds}s"


def add_params(kind: str, expiry_seconds: int | None) -> dict[str, str]:
    """Query parameters of the add call: pinned, wrapped in a directory, CIDv1; for a cluster, the
    whole answer as one JSON array and the pin's expiry."""
    params = {"wrap-with-directory": "true", "cid-version": "1"}
    if kind == CLIENT:
        params["pin"] = "true"
    else:
        params["stream-channels"] = "false"
        if expiry_seconds:
            params["expire-in"] = go_duration(expiry_seconds)
    return params


def api_headers(api_key: str | None, client_id: str | None) -> dict[str, str]:
    """The original's authentication headers, only those that are set."""
    headers = {}
    if api_key:
        headers["X-API-KEY"] = api_key
    if client_id:
        headers["CLIENT-ID"] = client_id
    return headers


def root_cid(entries: Iterable[Mapping[str, Any]]) -> str | None:
    """The wrapping directory's CID in an add's answer: the entry with an empty name (kubo: Name/Hash;
    ipfs-cluster: name/cid, the CID as a string or {"/": cid}). None when it is missing: an add that
    failed half-way reports the error only in an HTTP trailer, and then the answer has no root."""
    for entry in entries:
        name = entry.get("Name", entry.get("name"))
        cid = entry.get("Hash", entry.get("cid"))
        if isinstance(cid, Mapping):
            cid = cid.get("/")
        if name == "" and isinstance(cid, str) and cid:
            return cid
    return None


def parse_add_answer(body: str) -> list[dict[str, Any]]:
    """An add's answer: kubo streams one JSON object per line, a cluster (stream-channels=false)
    sends one JSON array. An error object in the stream raises UploadError."""
    text = body.strip()
    if not text:
        return []
    documents: list[Any]
    if text.startswith("["):
        documents = json.loads(text)
    else:
        documents = [json.loads(line) for line in text.splitlines() if line.strip()]
    entries = [d for d in documents if isinstance(d, dict)]
    for entry in entries:
        if entry.get("Type") == "error" or ("Message" in entry and "Code" in entry):
            raise UploadError(f"the node refused the add: {str(entry.get('Message'))[:200]}", transient=True)
    return entries


def api_base(api_url: str, kind: str) -> tuple[str, str, int]:
    """(scheme, host, port) of IPFS_OUTPUT, with the default port of its kind."""
    parts = urlsplit(api_url if "://" in api_url else f"http://{api_url}")
    port = parts.port or (CLUSTER_DEFAULT_PORT if kind == CLUSTER else KUBO_DEFAULT_PORT)
    return parts.scheme or "http", parts.hostname or "localhost", port


class _HeaderedIPFS(aioipfs.AsyncIPFS):  # type: ignore[misc]
    """aioipfs's client with fixed headers on every request (it has no option for them)."""

    def __init__(self, headers: Mapping[str, str], **kwargs: Any) -> None:
        self._fixed_headers = dict(headers)
        super().__init__(**kwargs)

    def get_session(self, conn_timeout: float = 0, read_timeout: float = 0) -> Any:
        return aiohttp.ClientSession(headers=self._fixed_headers, timeout=upload_timeout())


def upload_timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None, sock_connect=UPLOAD_CONNECT_TIMEOUT, sock_read=UPLOAD_READ_TIMEOUT
    )


class _BoundedIPFS(_HeaderedIPFS):
    """The operator's own client (unpinning): every request over within `timeout` seconds, so a node
    that accepts connections and never answers cannot hold the operator (aioipfs's own default session
    allows 30 minutes a request, 10 of them without a byte)."""

    def __init__(self, headers: Mapping[str, str], *, timeout: float, **kwargs: Any) -> None:
        self._timeout = timeout
        super().__init__(headers, **kwargs)

    def get_session(self, conn_timeout: float = 0, read_timeout: float = 0) -> Any:
        return aiohttp.ClientSession(
            headers=self._fixed_headers,
            timeout=aiohttp.ClientTimeout(
                total=self._timeout, sock_connect=min(self._timeout, 10), sock_read=self._timeout
            ),
        )


def kubo_client(
    api_url: str, api_key: str | None = None, client_id: str | None = None, *, timeout: float = 30
) -> Any:
    """An aioipfs client for the kubo node at `api_url` (e.g. "http://kubo:5001"), sending the
    X-API-KEY / CLIENT-ID headers, each request bounded by `timeout` seconds; for `unpin_expired`.
    Call it inside a running event loop."""
    scheme, host, port = api_base(api_url, CLIENT)
    headers = api_headers(api_key, client_id)
    return _BoundedIPFS(headers, timeout=timeout, host=host, port=port, scheme=scheme)


class _PinAPI(Protocol):
    async def rm(self, path: str, recursive: bool = True) -> Any: ...


class PinningClient(Protocol):
    """What `unpin_expired` needs of a client: aioipfs's `client.pin.rm`."""

    @property
    def pin(self) -> _PinAPI: ...


async def unpin_expired(client: PinningClient, pins: Iterable[tuple[str, float]], now: float) -> list[str]:
    """Unpin every CID whose expiry time (Unix seconds) is at or before `now`; a CID that is not
    pinned any more counts as done. Returns the CIDs unpinned (or found unpinned), in order. Errors
    other than "not pinned" propagate, so a sweep tries again later."""
    done: list[str] = []
    for cid, expires in pins:
        if expires > now or cid in done:
            continue
        with contextlib.suppress(aioipfs.NotPinnedError):
            answer = await client.pin.rm(cid)
            # aioipfs answers None, not an error, when the connection failed (refused, reset, cut short):
            # only the node's own answer naming the pins removed says it is done.
            if not isinstance(answer, Mapping) or "Pins" not in answer:
                raise UnpinError(f"the IPFS node did not confirm unpinning {cid} (no answer)")
        done.append(cid)
    return done


class UnpinError(Exception):
    """An unpin the node did not confirm: the record stays, and the expiry tries again."""


class IpfsDestination:
    """Adds files to a kubo node or an ipfs-cluster; see the module docstring."""

    def __init__(
        self,
        api_url: str,
        *,
        kind: str = CLIENT,
        prefix: str | None = None,
        api_key: str | None = None,
        client_id: str | None = None,
        expiry_seconds: int | None = None,
        now: float | None = None,
    ) -> None:
        if kind not in (CLIENT, CLUSTER):
            raise ValueError(f"IPFS_TYPE must be {CLIENT} or {CLUSTER}, not {kind!r}")
        self.kind = kind
        self.prefix = normalize_prefix(prefix)
        self.expiry_seconds = expiry_seconds or None
        moment = time.time() if now is None else now
        self._expires = int(moment) + expiry_seconds if expiry_seconds else None
        scheme, host, port = api_base(api_url, kind)
        self._where = f"{scheme}://{host}:{port}"
        headers = api_headers(api_key, client_id)
        self.client: Any = None
        if kind == CLIENT:
            self.client = _HeaderedIPFS(headers, host=host, port=port, scheme=scheme)
            self._session: aiohttp.ClientSession = self.client.session
            self._add_url = str(self.client.api_endpoint("add"))
        else:
            path = urlsplit(api_url if "://" in api_url else f"http://{api_url}").path.rstrip("/")
            self._session = aiohttp.ClientSession(headers=headers, timeout=upload_timeout())
            self._add_url = f"{self._where}{path}/add"

    @property
    def description(self) -> str:
        return f"IPFS {'cluster' if self.kind == CLUSTER else 'node'} {self._where}"

    @property
    def expires_at(self) -> int | None:
        return self._expires

    async def upload(self, path: Path, name: str) -> str:
        filename = wrapped_name(name)
        try:
            body = await self._add(path, filename)
        except UploadError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise UploadError(describe_failure(error), transient=True) from error
        try:
            entries = parse_add_answer(body)
        except ValueError as error:
            raise UploadError("the add's answer is not JSON", transient=True) from error
        cid = root_cid(entries)
        if cid is None:
            raise UploadError(
                "the add's answer has no wrapping directory (it failed half-way?)", transient=True
            )
        return ipfs_url(self.prefix, cid, filename)

    async def _add(self, path: Path, filename: str) -> str:
        with path.open("rb") as handle, aiohttp.MultipartWriter("form-data") as form:
            for directory in parent_directories(filename):
                part = form.append("", {"Content-Type": "application/x-directory"})
                part.set_content_disposition("form-data", name="file", filename=directory)
            part = form.append(handle, {"Content-Type": "application/octet-stream"})
            part.set_content_disposition("form-data", name="file", filename=filename)
            params = add_params(self.kind, self.expiry_seconds)
            async with self._session.post(self._add_url, data=form, params=params) as response:
                body = await response.text()
                if response.status != 200:
                    transient = is_transient_status(response.status)
                    detail = _error_detail(body)
                    raise UploadError(f"HTTP {response.status}{detail}", transient=transient)
                return body

    async def close(self) -> None:
        await self._session.close()


def _error_detail(body: str) -> str:
    """A short reason from an error answer (kubo and the cluster send {"Message": ...}/{"message": ...})."""
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    if isinstance(document, dict):
        message = document.get("Message", document.get("message"))
        if isinstance(message, str) and message:
            return f": {redact(message)[:DETAIL_LIMIT]}"
    return ""
