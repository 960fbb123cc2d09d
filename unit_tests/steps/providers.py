"""Real HTTP servers on 127.0.0.1 for the configure step's tests (http.server in a thread: no mocks).

- `MetadataCache`: Aquarius' `GET /api/aquarius/assets/ddo/<did>`.
- `Provider`: an Ocean provider's root (serviceEndpoints), `POST /api/services/fileinfo` and
  `GET /api/services/download`, which checks the download exactly like the real provider: the nonce
  must be greater than the last one seen for the address, the signature over keccak256(did + nonce)
  must recover to consumerAddress (and that address must be the one the provider expects), and the
  transferTxId must be the asset's order.
- `FileServer`: plain URLs, including a 404, a file that fails with 503 a few times first, a body cut
  short, and large bodies generated on the fly (never held in memory), with or without Content-Length.
- `OceanStack`: the three together, with assets registered in both the cache and the provider.
- `KeySigner`: signs downloads with a key in the test process (tests only: in a pod, the operator's
  signer signs, see ocean_c2d/signer.py).
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eth_utils.crypto import keccak

from ocean_c2d.signing import DownloadSignature, NonceSource, OperatorKey, recover_personal, sign_download

BLOCK = bytes(range(256)) * 4096  # 1 MiB, the unit of generated bodies
DOWNLOAD_PATH = "/api/services/download"
FILEINFO_PATH = "/api/services/fileinfo"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Response:
    """`body` is bytes, or an iterable of chunks sent with `length` as Content-Length (chunked transfer
    encoding when None). Sending fewer bytes than `length` closes the connection: a body cut short."""

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    length: int | None = None

    @classmethod
    def json(cls, document: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(document).encode(), {"Content-Type": "application/json"})


App = Callable[[Request], Response]


def generated(size: int) -> Iterator[bytes]:
    """`size` bytes of BLOCK repeated, one MiB at a time."""
    remaining = size
    while remaining > 0:
        chunk = BLOCK if remaining >= len(BLOCK) else BLOCK[:remaining]
        remaining -= len(chunk)
        yield chunk


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: App, host: str = "127.0.0.1") -> None:
        super().__init__((host, 0), _Handler)
        self.app = app

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that closes or resets its connection is normal here (retries, aborted downloads)."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request = Request(
            method=self.command,
            path=parts.path,
            query=dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True)),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
        )
        try:
            response = self.server.app(request)
        except Exception as error:  # a bug in a test server: make it visible to the client
            response = Response(500, f"test server error: {error!r}".encode())
        try:
            self._send(response)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if isinstance(response.body, bytes):
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
            return
        if response.length is not None:
            self.send_header("Content-Length", str(response.length))
            self.end_headers()
            sent = 0
            for chunk in response.body:
                self.wfile.write(chunk)
                sent += len(chunk)
            if sent != response.length:
                self.close_connection = True
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in response.body:
            if chunk:
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


class LocalServer:
    """An HTTP/1.1 server on 127.0.0.1 (or `host`) in a daemon thread; every request goes to `self.handle`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self._server = _HttpServer(self._record, host)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _record(self, request: Request) -> Response:
        with self.lock:
            self.requests.append(request)
        return self.handle(request)

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class FileServer(LocalServer):
    """Plain URLs, by path:

    - /files/<name>: `files[name]`; anything unknown: 404;
    - /flaky/<name>: 503 `flaky_failures` times, then the file; /ratelimited/<name>: the same with 429
      and Retry-After: 3; /unavailable: always 503;
    - /large/<n>, /chunked/<n>: n generated bytes, with Content-Length or chunked;
    - /truncated/<n>: announces n bytes, sends half and closes the connection."""

    def __init__(
        self, files: dict[str, bytes] | None = None, flaky_failures: int = 2, host: str = "127.0.0.1"
    ) -> None:
        self.files = dict(files or {})
        self.flaky_failures = flaky_failures
        self._failed: dict[str, int] = {}
        super().__init__(host)

    def handle(self, request: Request) -> Response:
        kind, _, name = request.path.lstrip("/").partition("/")
        if kind == "files" and name in self.files:
            return Response(200, self.files[name], {"Content-Type": "application/octet-stream"})
        if kind == "flaky" and name in self.files:
            with self.lock:
                failed = self._failed.get(name, 0)
                self._failed[name] = failed + 1
            if failed < self.flaky_failures:
                return Response.json({"error": "busy, try later"}, 503)
            return Response(200, self.files[name])
        if kind == "ratelimited" and name in self.files:
            with self.lock:
                failed = self._failed.get(name, 0)
                self._failed[name] = failed + 1
            if failed < self.flaky_failures:
                return Response(429, b"slow down", {"Retry-After": "3"})
            return Response(200, self.files[name])
        if kind == "unavailable":
            return Response.json({"error": "down for maintenance"}, 503)
        if kind in ("large", "chunked") and name.isdigit():
            size = int(name)
            return Response(200, generated(size), length=size if kind == "large" else None)
        if kind == "truncated" and name.isdigit():
            size = int(name)
            return Response(200, [b"t" * (size // 2)], length=size)
        return Response.json({"error": f"{request.path} not found"}, 404)

    def url_of(self, name: str, kind: str = "files") -> str:
        return f"{self.url}/{kind}/{name}"


@dataclass
class Asset:
    did: str
    files: list[bytes]
    service_id: str = "compute"
    transfer_tx_id: str = "0x" + "ab" * 32

    def ddo(self, provider_url: str) -> dict[str, Any]:
        return {
            "@context": ["https://w3id.org/did/v1"],
            "id": self.did,
            "version": "4.1.0",
            "chainId": 8996,
            "nftAddress": "0x" + "12" * 20,
            "metadata": {"type": "dataset", "name": f"asset {self.did[-6:]}"},
            "services": [
                {"id": "access", "type": "access", "serviceEndpoint": "http://127.0.0.1:9/unused"},
                {
                    "id": self.service_id,
                    "type": "compute",
                    "files": "0x" + "ef" * 16,
                    "datatokenAddress": "0x" + "34" * 20,
                    "serviceEndpoint": provider_url,
                    "timeout": 0,
                },
            ],
        }


class MetadataCache(LocalServer):
    """Aquarius: GET /api/aquarius/assets/ddo/<did> from `ddos`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.ddos: dict[str, dict[str, Any]] = {}
        super().__init__(host)

    def handle(self, request: Request) -> Response:
        prefix = "/api/aquarius/assets/ddo/"
        did = request.path.removeprefix(prefix)
        if request.method == "GET" and request.path.startswith(prefix) and did in self.ddos:
            return Response.json(self.ddos[did])
        return Response.json({"error": f"Asset DID {did} not found in Elasticsearch."}, 404)


class Provider(LocalServer):
    """An Ocean provider that checks downloads like the real one (see the module docstring)."""

    def __init__(self, expected_consumer: str, host: str = "127.0.0.1") -> None:
        self.expected_consumer = expected_consumer
        self.assets: dict[tuple[str, str], Asset] = {}
        self.last_nonce: dict[str, float] = {}
        self.downloads: list[Request] = []
        self.refusals: list[str] = []
        self.userdata: list[tuple[str, Any]] = []
        super().__init__(host)

    def handle(self, request: Request) -> Response:
        if request.method == "GET" and request.path == "/":
            return Response.json(
                {
                    "software": "Provider",
                    "version": "2.1.0",
                    "chainIds": [8996],
                    "serviceEndpoints": {
                        "nonce": ["GET", "/api/services/nonce"],
                        "fileinfo": ["POST", FILEINFO_PATH],
                        "download": ["GET", DOWNLOAD_PATH],
                        "initialize": ["GET", "/api/services/initialize"],
                    },
                }
            )
        if request.method == "POST" and request.path == FILEINFO_PATH:
            body = request.json() or {}
            asset = self.assets.get((str(body.get("did")), str(body.get("serviceId"))))
            if asset is None:
                return Response.json({"error": "Asset or service not found"}, 400)
            return Response.json(
                [
                    {"index": i, "valid": True, "contentLength": str(len(f)), "type": "url"}
                    for i, f in enumerate(asset.files)
                ]
            )
        if request.method == "GET" and request.path == DOWNLOAD_PATH:
            with self.lock:
                self.downloads.append(request)
                response = self._download(request.query)
                if response.status != 200:
                    self.refusals.append(json.loads(bytes(response.body))["error"])  # type: ignore[arg-type]
                return response
        return Response.json({"error": "not found"}, 404)

    def _download(self, query: dict[str, str]) -> Response:
        required = (
            "fileIndex",
            "documentId",
            "serviceId",
            "transferTxId",
            "consumerAddress",
            "nonce",
            "signature",
        )
        missing = [name for name in required if not query.get(name)]
        if missing:
            return Response.json({"error": f"Missing parameters: {', '.join(missing)}"}, 400)
        did, address, nonce_text = query["documentId"], query["consumerAddress"], query["nonce"]
        asset = self.assets.get((did, query["serviceId"]))
        if asset is None:
            return Response.json({"error": f"Service {query['serviceId']} of {did} not found"}, 400)
        try:
            nonce = float(nonce_text)
        except ValueError:
            return Response.json({"error": "Invalid nonce: not a number"}, 400)
        last = self.last_nonce.get(address.lower())
        if last is not None and nonce <= last:
            return Response.json(
                {
                    "error": f"Invalid nonce: {nonce_text} is not greater than the last nonce seen "
                    f"({last:.0f})"
                },
                400,
            )
        try:
            signer = recover_personal(keccak((did + nonce_text).encode()), query["signature"])
        except Exception:
            signer = ""
        if signer.lower() != address.lower() or address.lower() != self.expected_consumer.lower():
            return Response.json({"error": "Invalid signature provided."}, 401)
        self.last_nonce[address.lower()] = nonce
        if query["transferTxId"] != asset.transfer_tx_id:
            return Response.json(
                {"error": f"Order with tx_id {query['transferTxId']} could not be validated: no such order"},
                400,
            )
        index = query["fileIndex"]
        if not index.isdigit() or int(index) >= len(asset.files):
            return Response.json({"error": f"Invalid fileIndex {index}"}, 400)
        if "userdata" in query:
            self.userdata.append((did, json.loads(query["userdata"])))
        return Response(200, asset.files[int(index)], {"Content-Type": "application/octet-stream"})


class OceanStack:
    """A metadata cache, a provider and a file server; `add_asset` publishes to the first two."""

    def __init__(
        self, expected_consumer: str, files: dict[str, bytes] | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.metadata = MetadataCache(host)
        self.provider = Provider(expected_consumer, host)
        self.files = FileServer(files, host=host)

    def add_asset(self, asset: Asset) -> Asset:
        self.metadata.ddos[asset.did] = asset.ddo(self.provider.url)
        self.provider.assets[(asset.did, asset.service_id)] = asset
        return asset

    def close(self) -> None:
        for server in (self.metadata, self.provider, self.files):
            server.close()

    def __enter__(self) -> OceanStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class KeySigner:
    """A `Signer` with the key in the test process (unit tests only); counts what it signed."""

    key: OperatorKey
    nonces: NonceSource = field(default_factory=NonceSource)
    signed: list[str] = field(default_factory=list)

    async def sign_download(self, did: str) -> DownloadSignature:
        self.signed.append(did)
        return sign_download(self.key, did, self.nonces)
