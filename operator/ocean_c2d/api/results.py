"""GET /getResult's fetcher: streams a published result from where the publish step put it.

`ResultFetcher.fetch_result` is app.py's FetchResult hook and `read_manifest` its ReadManifest hook
(the result list of a job with too many results for its status: publish's "results.json").

Where a result is comes from its URL, and only a URL this operator's own storage made is followed (never
any other address, so a status cannot make the API fetch from elsewhere):
- S3 (storage.s3's plain object URL under AWS_BUCKET_OUTPUT): GetObject with the operator's own
  credentials (storage.s3.make_client), in a thread, the body read in CHUNK-sized pieces;
- IPFS (storage.ipfs's "<IPFS_OUTPUT_PREFIX><cid>/<filename>"): through the kubo RPC API IPFS_OUTPUT
  names (IPFS_TYPE=CLIENT: files/stat for the size, then cat with offset/length), else, when the prefix
  is an http(s) gateway (an ipfs-cluster has no cat), a GET of the URL itself.
Nothing is ever read whole into memory (the manifest alone, capped at MANIFEST_LIMIT).

Range (an improvement: the original echoed the Range header back with text/html and the whole file): one
`bytes=` range is answered 206 with Content-Range, Content-Length and Accept-Ranges; one past the end
416 with "Content-Range: bytes */<size>"; several ranges, another unit or a malformed one are ignored
(RFC 9110 lets a server answer 200 with the whole file). Failures: the object is gone, 404; storage
refused or cannot be reached, 502; both as {"error": ...} like the original's other errors.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from ocean_c2d.api.app import Download, ResultUnavailableError
from ocean_c2d.resilience import DETAIL_LIMIT, redact
from ocean_c2d.settings import PublishSettings
from ocean_c2d.storage import describe_failure, ipfs, s3

CHUNK = 256 * 1024  # what one read takes from storage, and so what the handler holds at a time
MANIFEST_LIMIT = 16 * 1024 * 1024  # results.json of PUBLISH_MAX_FILES entries is far smaller
# The manifests read, by URL, up to this many bytes of their text: a job's results.json never changes once
# publish wrote it (a new publish writes under a new prefix), so every poll of a job with more results than
# its status holds need not read storage again. A cache of what storage holds, not a source of truth: a
# restarted or second replica reads it once more and answers the same.
MANIFEST_CACHE_BYTES = 32 * 1024 * 1024
IPFS_STAT_TIMEOUT = 30.0  # a CID the node does not hold is searched for; a consumer should not wait long
OCTET_STREAM = frozenset({"application/octet-stream", "binary/octet-stream"})


# --- Range: pure -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ByteRange:
    """One `bytes=first-last` range; first None: the last `last` bytes (a suffix); last None: to the end."""

    first: int | None
    last: int | None

    @property
    def header(self) -> str:
        if self.first is None:
            return f"bytes=-{self.last}"
        return f"bytes={self.first}-{'' if self.last is None else self.last}"


class UnsatisfiableError(Exception):
    pass


RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


def parse_range(header: str | None) -> ByteRange | None:
    """The single byte range of a Range header; None for none, or for one a server may ignore (several
    ranges, another unit, bad syntax, last before first)."""
    match = RANGE.fullmatch(header or "")
    if match is None or not (match[1] or match[2]):
        return None
    first = int(match[1]) if match[1] else None
    last = int(match[2]) if match[2] else None
    if first is not None and last is not None and last < first:
        return None
    return ByteRange(first, last)


def resolve(byte_range: ByteRange, size: int) -> tuple[int, int]:
    """(first, last) byte, inclusive, of `byte_range` in `size` bytes; UnsatisfiableError past the end."""
    if byte_range.first is None:
        wanted = byte_range.last or 0
        if wanted == 0 or size == 0:
            raise UnsatisfiableError
        return max(0, size - wanted), size - 1
    if byte_range.first >= size:
        raise UnsatisfiableError
    last = size - 1 if byte_range.last is None else min(byte_range.last, size - 1)
    return byte_range.first, last


def not_satisfiable(size: int | None) -> ResultUnavailableError:
    headers = {"Content-Range": f"bytes */{size}"} if size is not None else {}
    return ResultUnavailableError(416, "Requested range not satisfiable", headers)


def content_type(entry: Mapping[str, Any], stored: str | None) -> str | None:
    """What to answer as Content-Type: storage's own, unless it only says "bytes" (publish's guess found
    nothing); logs are text (the recordings: text/plain for algorithm.log); None: app.py guesses."""
    if stored and stored.split(";")[0].strip().lower() not in OCTET_STREAM:
        return stored
    name = str(entry.get("filename") or "")
    if entry.get("type", "output") != "output" or name.endswith(".log"):
        return "text/plain"
    return stored


def _name(entry: Mapping[str, Any]) -> str:
    return str(entry.get("filename") or entry.get("url") or "?")


def gone(entry: Mapping[str, Any]) -> ResultUnavailableError:
    return ResultUnavailableError(404, f"Result {_name(entry)} is no longer in storage")


def failed(detail: str) -> ResultUnavailableError:
    return ResultUnavailableError(502, f"Result storage failed: {detail}")


# --- S3 ----------------------------------------------------------------------------------------------


class S3Results:
    """Reads the objects storage.s3 published to `bucket` (the client: storage.s3.make_client's)."""

    def __init__(self, client: Any, bucket: str, endpoint_url: str | None, region: str | None) -> None:
        self._client = client
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region

    def key_of(self, url: str) -> str | None:
        return s3.key_from_url(url, self.bucket, self.endpoint_url, self.region)

    async def fetch(self, key: str, entry: Mapping[str, Any], byte_range: ByteRange | None) -> Download:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if byte_range is not None:
            args["Range"] = byte_range.header
        try:
            answer = await asyncio.to_thread(self._client.get_object, **args)
        except ClientError as error:
            raise await self._problem(error, key, entry) from error
        except Exception as error:  # unreachable, no credentials: botocore's own errors
            raise failed(s3.classify(error).message) from error
        headers = {"Accept-Ranges": "bytes"}
        if "ContentLength" in answer:
            headers["Content-Length"] = str(answer["ContentLength"])
        if answer.get("ContentRange"):
            headers["Content-Range"] = str(answer["ContentRange"])
        kind = content_type(entry, answer.get("ContentType"))
        if kind:
            headers["Content-Type"] = kind
        status = 206 if "Content-Range" in headers else 200
        return Download(status=status, headers=headers, chunks=_body_chunks(answer["Body"]))

    async def _problem(
        self, error: ClientError, key: str, entry: Mapping[str, Any]
    ) -> ResultUnavailableError:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            return gone(entry)
        if code == "InvalidRange":
            try:
                head = await asyncio.to_thread(self._client.head_object, Bucket=self.bucket, Key=key)
            except Exception:
                return not_satisfiable(None)
            return not_satisfiable(int(head["ContentLength"]))
        return failed(s3.classify(error).message)

    async def read_all(self, key: str, limit: int) -> bytes:
        download = await self.fetch(key, {"filename": key}, None)
        return await _collect(download.chunks, limit)

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)


async def _body_chunks(body: Any) -> AsyncIterator[bytes]:
    """botocore's StreamingBody, CHUNK bytes per read in a thread, closed when done or abandoned."""
    try:
        while True:
            data: bytes = await asyncio.to_thread(body.read, CHUNK)
            if not data:
                return
            yield data
    finally:
        await asyncio.to_thread(body.close)


async def _collect(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise failed(f"the results manifest is over {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


# --- IPFS --------------------------------------------------------------------------------------------


class IpfsResults:
    """Reads what storage.ipfs published: by the kubo RPC API at `api_url`, else (None) by GET of the URL
    when the prefix is an http(s) gateway. The API key headers go to the RPC API only, never to a gateway."""

    def __init__(
        self,
        prefix: str | None,
        api_url: str | None,
        api_key: str | None = None,
        client_id: str | None = None,
    ) -> None:
        self.prefix = ipfs.normalize_prefix(prefix)
        self._api: str | None = None
        if api_url:
            scheme, host, port = ipfs.api_base(api_url, ipfs.CLIENT)
            self._api = f"{scheme}://{host}:{port}/api/v0"
        self._api_headers = ipfs.api_headers(api_key, client_id)
        self._session: aiohttp.ClientSession | None = None

    def path_of(self, url: str) -> str | None:
        """ "<cid>/<filename>" (unquoted) of a URL storage.ipfs made with this prefix, else None."""
        cid = ipfs.cid_from_url(url, self.prefix)
        if cid is None:
            return None
        rest = unquote(url[len(self.prefix) + len(cid) :].lstrip("/"))
        if any(part in (".", "..") for part in rest.split("/")):
            return None  # publish never names a file so; a path that climbs out of the CID is not ours
        return f"{cid}/{rest}" if rest else cid

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use: a ClientSession needs the running loop
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=120))
        return self._session

    async def fetch(self, url: str, entry: Mapping[str, Any], byte_range: ByteRange | None) -> Download:
        path = self.path_of(url)
        if path is None:
            raise failed("not an IPFS URL of this operator")
        try:
            if self._api is not None:
                return await self._from_api(path, entry, byte_range)
            if urlsplit(self.prefix).scheme in ("http", "https"):
                return await self._from_gateway(url, entry, byte_range)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise failed(describe_failure(error)) from error
        raise failed("no IPFS API (IPFS_OUTPUT, IPFS_TYPE=CLIENT) or http(s) gateway prefix to read from")

    async def _rpc(self, command: str, params: Mapping[str, str], timeout: float | None) -> Any:
        response = await self.session.post(
            f"{self._api}/{command}",
            params=params,
            headers=self._api_headers,
            timeout=aiohttp.ClientTimeout(total=timeout, sock_read=120),
        )
        if response.status != 200:
            text = await response.text()
            response.release()
            raise _rpc_error(response.status, text)
        return response

    async def _from_api(self, path: str, entry: Mapping[str, Any], byte_range: ByteRange | None) -> Download:
        try:
            stat = await self._rpc("files/stat", {"arg": f"/ipfs/{path}"}, IPFS_STAT_TIMEOUT)
            info = await stat.json(content_type=None)
            stat.release()
        except _NotFoundError as error:
            raise gone(entry) from error
        size = int(info.get("Size", 0))
        first, last = 0, size - 1
        status = 200
        headers = {"Accept-Ranges": "bytes"}
        if byte_range is not None:
            try:
                first, last = resolve(byte_range, size)
            except UnsatisfiableError:
                raise not_satisfiable(size) from None
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        length = max(0, last - first + 1)
        headers["Content-Length"] = str(length)
        kind = content_type(entry, None)
        if kind:
            headers["Content-Type"] = kind
        if length == 0:
            return Download(status=status, headers=headers, chunks=_nothing())
        params = {"arg": path, "offset": str(first), "length": str(length)}
        try:
            response = await self._rpc("cat", params, None)
        except _NotFoundError as error:
            raise gone(entry) from error
        return Download(status=status, headers=headers, chunks=_response_chunks(response))

    async def _from_gateway(
        self, url: str, entry: Mapping[str, Any], byte_range: ByteRange | None
    ) -> Download:
        request_headers = {"Range": byte_range.header} if byte_range is not None else {}
        response = await self.session.get(url, headers=request_headers)
        if response.status in (200, 206):
            headers = {"Accept-Ranges": "bytes"}
            for name in ("Content-Length", "Content-Range"):
                if name in response.headers:
                    headers[name] = response.headers[name]
            kind = content_type(entry, response.headers.get("Content-Type"))
            if kind:
                headers["Content-Type"] = kind
            return Download(status=response.status, headers=headers, chunks=_response_chunks(response))
        response.release()
        if response.status == 404:
            raise gone(entry)
        if response.status == 416:
            total = response.headers.get("Content-Range", "").rpartition("/")[2]
            raise not_satisfiable(int(total) if total.isdigit() else None)
        raise failed(f"the IPFS gateway answered HTTP {response.status}")

    async def read_all(self, url: str, limit: int) -> bytes:
        download = await self.fetch(url, {"filename": "results.json"}, None)
        return await _collect(download.chunks, limit)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class _NotFoundError(Exception):
    pass


def _rpc_error(status: int, text: str) -> Exception:
    """kubo's error answer ({"Message": ...}, HTTP 500) as _NotFoundError (no such link or block) or a 502."""
    try:
        document = json.loads(text)
        message = str(document.get("Message", "")) if isinstance(document, dict) else ""
    except ValueError:
        message = ""
    if "no link named" in message or "not found" in message:
        return _NotFoundError(message)
    detail = f": {redact(message)[:DETAIL_LIMIT]}" if message else ""
    return failed(f"the IPFS node answered HTTP {status}{detail}")


async def _response_chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for data in response.content.iter_chunked(CHUNK):
            yield data
    finally:
        response.release()


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


# --- the hooks ---------------------------------------------------------------------------------------


class ResultFetcher:
    """app.py's fetch_result and read_manifest over this operator's result storage (either may be None)."""

    def __init__(
        self,
        *,
        s3_results: S3Results | None = None,
        ipfs_results: IpfsResults | None = None,
        manifest_cache_bytes: int = MANIFEST_CACHE_BYTES,
    ) -> None:
        self.s3 = s3_results
        self.ipfs = ipfs_results
        self._manifests: OrderedDict[str, tuple[int, list[dict[str, Any]]]] = OrderedDict()
        self._manifest_bytes = 0
        self._manifest_cache_bytes = manifest_cache_bytes

    async def fetch_result(self, entry: Mapping[str, Any], range_header: str | None) -> Download:
        url = str(entry.get("url") or "")
        byte_range = parse_range(range_header)
        # IPFS first, as publish chose it first (IPFS_OUTPUT before AWS_BUCKET_OUTPUT).
        if self.ipfs is not None and self.ipfs.path_of(url) is not None:
            return await self.ipfs.fetch(url, entry, byte_range)
        key = self.s3.key_of(url) if self.s3 is not None else None
        if self.s3 is not None and key is not None:
            return await self.s3.fetch(key, entry, byte_range)
        raise failed(f"result {_name(entry)} is not in this operator's result storage")

    async def read_manifest(self, url: str) -> list[dict[str, Any]]:
        """publish's results.json: the job's result list, in index order (a copy: callers may change it)."""
        cached = self._manifests.get(url)
        if cached is not None:
            self._manifests.move_to_end(url)
            return copy.deepcopy(cached[1])
        text = await self._read_manifest_text(url)
        try:
            document = json.loads(text)
        except ValueError as error:
            raise failed("the results manifest is not JSON") from error
        if not isinstance(document, list):
            raise failed("the results manifest is not a list")
        entries = [entry for entry in document if isinstance(entry, dict)]
        self._remember(url, len(text), entries)
        return copy.deepcopy(entries)

    def _remember(self, url: str, size: int, entries: list[dict[str, Any]]) -> None:
        if size > self._manifest_cache_bytes:
            return
        self._manifests[url] = (size, entries)
        self._manifest_bytes += size
        while self._manifest_bytes > self._manifest_cache_bytes:
            _, (dropped, _) = self._manifests.popitem(last=False)
            self._manifest_bytes -= dropped

    async def _read_manifest_text(self, url: str) -> bytes:
        if self.ipfs is not None and self.ipfs.path_of(url) is not None:
            text = await self.ipfs.read_all(url, MANIFEST_LIMIT)
        elif self.s3 is not None and (key := self.s3.key_of(url)) is not None:
            text = await self.s3.read_all(key, MANIFEST_LIMIT)
        else:
            raise failed("the results manifest is not in this operator's result storage")
        return text

    async def close(self) -> None:
        for store in (self.s3, self.ipfs):
            if store is not None:
                await store.close()


def fetcher_from_settings(publish: PublishSettings) -> ResultFetcher | None:
    """The fetcher of the storage the operator's publish settings name; None when they name none."""
    s3_results = None
    if publish.aws_bucket_output:
        client = s3.make_client(
            publish.aws_region,
            publish.aws_endpoint_url,
            publish.aws_access_key_id,
            publish.aws_secret_access_key,
        )
        s3_results = S3Results(
            client, publish.aws_bucket_output, publish.aws_endpoint_url, publish.aws_region
        )
    ipfs_results = None
    if publish.ipfs_output:
        # An ipfs-cluster's REST API has no cat: read through the gateway prefix then.
        api = publish.ipfs_output if (publish.ipfs_type or ipfs.CLIENT) == ipfs.CLIENT else None
        ipfs_results = IpfsResults(
            publish.ipfs_output_prefix, api, publish.ipfs_api_key, publish.ipfs_api_client
        )
    if s3_results is None and ipfs_results is None:
        return None
    return ResultFetcher(s3_results=s3_results, ipfs_results=ipfs_results)
