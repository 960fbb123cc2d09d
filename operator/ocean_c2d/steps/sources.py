"""Where inputs and algorithms come from: an Ocean provider (by DID), http(s), IPFS, S3, or inline code.

Every source has one interface, `await source.fetch(ctx, place, expect) -> FetchResult`: it writes its
file number i at `place(i)` (through `streaming`: bounded memory, disk budget, atomic files, retries),
checks `expect` (checksum and size), and raises `FetchError` with a message safe to show the consumer.

The provider source follows the original pod-configuration (reference §5.2) with its bugs fixed: the
pod holds no operator key (a `Signer`, the operator's signer in production, signs each request with a
fresh nonce), a request refused for its nonce or signature is signed again once, the algorithm's
`userData` is forwarded, and nothing secret is ever logged.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from ocean_c2d.addresses import parse_base_url, url_allowed
from ocean_c2d.resilience import describe_error, is_transient_status, safe_url
from ocean_c2d.signing import DownloadSignature
from ocean_c2d.steps.streaming import (
    NO_EXPECTATION,
    DiskLimitError,
    Expectation,
    FetchError,
    FileResult,
    HttpRequest,
    HttpStatusError,
    IntegrityError,
    Limits,
    Log,
    PartialFile,
    TransientError,
    check_announced_size,
    http_download,
    http_json,
    with_retries,
    write_bytes,
)

DID_PREFIX = "did:op:"
DDO_PATH = "/api/aquarius/assets/ddo/"
DDO_LIMIT = 16 << 20
HTTP_METHODS = frozenset({"GET", "POST"})
_AUTH_REFUSAL = re.compile(r"nonce|signature", re.IGNORECASE)
_NONCE_VALUE = re.compile(r"(?<![0-9A-Za-z.])[0-9]{10,}(?:\.[0-9]+)?(?![0-9A-Za-z])")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_DID = re.compile(r"did:op:[0-9a-fA-F]{64}")
_S3_CODE = re.compile(r"[A-Za-z0-9.]{1,64}")

Placement = Callable[[int], Path]
"""Where file number i of a source lands."""


@dataclass(frozen=True)
class FetchResult:
    files: tuple[FileResult, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class FetchContext:
    """What sources share: the HTTP client, the download limits, the log and the environment."""

    http: httpx.AsyncClient
    limits: Limits
    log: Log = lambda _: None
    env: Mapping[str, str] = field(default_factory=dict)


class Source(Protocol):
    @property
    def label(self) -> str:
        """How the source is named in logs and messages: a DID, or a URL without its query string."""
        ...

    async def fetch(self, ctx: FetchContext, place: Placement, expect: Expectation) -> FetchResult: ...


def strip_did(did: str) -> str:
    return did.removeprefix(DID_PREFIX)


def did_directory_name(did: str) -> str:
    """The DID without "did:op:", refused when it could not be a single safe path component."""
    name = strip_did(did)
    if not _DID.fullmatch(did) and (not name or name != sanitise_name(name)):
        raise FetchError("not a DID that can name a directory")
    return name


def sanitise_name(name: str) -> str:
    """A file name safe to create: letters, digits, '.', '_' and '-' only, no leading dot; "0" if empty."""
    cleaned = _UNSAFE_NAME.sub("_", name).lstrip(".")[:200]
    return cleaned or "0"


def file_name_from_url(url: str) -> str:
    """The last segment of the URL's path, sanitised; "0" when there is none."""
    try:
        path = urllib.parse.urlsplit(url).path
    except ValueError:
        return "0"
    return sanitise_name(urllib.parse.unquote(path.rstrip("/").rpartition("/")[2]))


def join_url(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")


def _checked(result: FileResult, ctx: FetchContext, what: str) -> FileResult:
    ctx.log(
        f"{what}: {result.size} bytes to {result.path} in {result.seconds:.2f} s ({result.rate}), "
        f"sha256:{result.sha256}"
    )
    return result


@dataclass(frozen=True)
class InlineSource:
    """Content given in the workflow itself (an algorithm's rawCode)."""

    data: bytes
    name: str = "rawCode"
    mode: int = 0o644

    @property
    def label(self) -> str:
        return self.name

    async def fetch(
        self, ctx: FetchContext, place: Placement, expect: Expectation = NO_EXPECTATION
    ) -> FetchResult:
        result = await write_bytes(place(0), self.data, ctx.limits.budget, mode=self.mode, expect=expect)
        return FetchResult((_checked(result, ctx, self.name),))


@dataclass(frozen=True)
class HttpSource:
    """A plain GET of an http(s) URL."""

    url: str
    mode: int = 0o644

    @property
    def label(self) -> str:
        return safe_url(self.url)

    async def fetch(
        self, ctx: FetchContext, place: Placement, expect: Expectation = NO_EXPECTATION
    ) -> FetchResult:
        ctx.log(f"downloading {self.label}")
        return await _download_one(ctx, HttpRequest("GET", self.url), place, expect, self.mode, self.label)


async def _download_one(
    ctx: FetchContext, request: HttpRequest, place: Placement, expect: Expectation, mode: int, label: str
) -> FetchResult:
    """One HTTP download to the source's first place, checked against what the input promised."""
    result = await http_download(
        ctx.http, lambda: request, place(0), ctx.limits, expect, mode=mode, what=label, log=ctx.log
    )
    return FetchResult((_checked(result, ctx, label),))


@dataclass(frozen=True)
class IpfsSource:
    """ipfs://<cid>[/path] through the IPFS HTTP API (kubo's POST /api/v0/cat) at env IPFS_API, with the
    X-API-KEY / CLIENT-ID headers from IPFS_API_KEY / IPFS_API_CLIENT when they are set."""

    url: str
    mode: int = 0o644

    @property
    def path(self) -> str:
        return self.url.split("://", 1)[1].strip("/")

    @property
    def label(self) -> str:
        return safe_url(self.url)

    async def fetch(
        self, ctx: FetchContext, place: Placement, expect: Expectation = NO_EXPECTATION
    ) -> FetchResult:
        api = ctx.env.get("IPFS_API", "")
        if not api:
            raise FetchError("an ipfs:// URL needs the IPFS HTTP API, and IPFS_API is not set")
        if not self.path:
            raise FetchError("the ipfs:// URL names no CID")
        headers = {}
        if ctx.env.get("IPFS_API_KEY"):
            headers["X-API-KEY"] = ctx.env["IPFS_API_KEY"]
        if ctx.env.get("IPFS_API_CLIENT"):
            headers["CLIENT-ID"] = ctx.env["IPFS_API_CLIENT"]
        request = HttpRequest(
            "POST", join_url(api, "/api/v0/cat"), params={"arg": self.path}, headers=headers
        )
        ctx.log(f"downloading {self.label} through {safe_url(api)}")
        return await _download_one(ctx, request, place, expect, self.mode, self.label)


@dataclass(frozen=True)
class S3Source:
    """s3://bucket/key with boto3: the explicit AWS_* keys of the env, else unsigned, never boto3's
    ambient chain (AWS_ENDPOINT_URL for S3-compatible stores, which then use path-style addressing).
    boto3 blocks: it runs in a thread and streams the object to disk in chunks."""

    url: str
    mode: int = 0o644

    @property
    def bucket_and_key(self) -> tuple[str, str]:
        parts = urllib.parse.urlsplit(self.url)
        return parts.netloc, parts.path.lstrip("/")

    @property
    def label(self) -> str:
        return safe_url(self.url)

    async def fetch(
        self, ctx: FetchContext, place: Placement, expect: Expectation = NO_EXPECTATION
    ) -> FetchResult:
        bucket, key = self.bucket_and_key
        if not bucket or not key:
            raise FetchError("an s3:// URL is s3://<bucket>/<key>")
        client = await asyncio.to_thread(_s3_client, ctx.env)
        target = place(0)
        ctx.log(f"downloading {self.label}")

        async def attempt() -> FileResult:
            return await asyncio.to_thread(
                _s3_download, client, bucket, key, target, ctx.limits, expect, self.mode
            )

        result = await with_retries(ctx.limits, attempt, self.label, ctx.log)
        return FetchResult((_checked(result, ctx, self.label),))


def _s3_client(env: Mapping[str, str]) -> Any:
    """The S3 client the step's env describes; boto3 is imported on first use, only s3:// inputs need it.

    No ambient credentials: the explicit keys (the Secret's INPUTS_AWS_* keys, as AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY), else unsigned requests (public buckets). boto3's own chain (instance
    metadata, a web identity token, container credentials, shared files) is never asked, since it would
    hand a Workflow author's s3:// URL the node's or the pod's cloud identity. The endpoint and region
    are the operator's (the template sets them); a missing region is us-east-1, not a metadata lookup."""
    from ocean_c2d.storage.s3 import make_client

    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    key_id, secret = env.get("AWS_ACCESS_KEY_ID") or None, env.get("AWS_SECRET_ACCESS_KEY") or None
    if key_id and secret:
        return make_client(
            region,
            endpoint,
            key_id,
            secret,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            read_timeout=60,
            max_attempts=1,  # streaming.with_retries retries
            addressing_style="auto",
        )
    return _unsigned_s3_client(region, endpoint)


def _unsigned_s3_client(region: str, endpoint: str | None) -> Any:
    import boto3  # type: ignore[import-untyped]
    from botocore import UNSIGNED  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    config = Config(
        signature_version=UNSIGNED,  # botocore then never resolves credentials
        connect_timeout=10,
        read_timeout=60,
        retries={"mode": "standard", "max_attempts": 1},
        s3={"addressing_style": "path" if endpoint else "auto"},
    )
    return boto3.session.Session(region_name=region).client("s3", endpoint_url=endpoint, config=config)


def _s3_download(
    client: Any,
    bucket: str,
    key: str,
    target: Path,
    limits: Limits,
    expect: Expectation,
    mode: int,
) -> FileResult:
    """One attempt (blocking): get_object, then the body in chunks to a partial file."""
    from botocore.exceptions import (  # type: ignore[import-untyped]
        BotoCoreError,
        ClientError,
        HTTPClientError,
        IncompleteReadError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    transient = (HTTPClientError, BotoConnectionError, IncompleteReadError)
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", "error"))
        code = code if _S3_CODE.fullmatch(code) else "error"  # the server's text: only a code-like word
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        text = f"S3 answered {code} (HTTP {status})"
        if is_transient_status(status) or code in ("SlowDown", "Throttling", "RequestTimeout"):
            raise TransientError(text) from None
        raise FetchError(text) from None
    except transient as error:
        raise TransientError(describe_error(error)) from None
    except BotoCoreError as error:
        raise FetchError(describe_error(error)) from None
    body = response["Body"]
    try:
        size = response.get("ContentLength")
        check_announced_size(size if isinstance(size, int) else None, expect, limits.budget)
        partial = PartialFile(target, limits.budget, expect, mode)
        try:
            for chunk in body.iter_chunks(limits.chunk_size):
                partial.write(chunk)
            return partial.commit()
        except BaseException:
            partial.discard()
            raise
    except transient as error:
        raise TransientError(describe_error(error)) from None
    except BotoCoreError as error:
        raise FetchError(describe_error(error)) from None
    finally:
        body.close()


def url_source(url: str, mode: int = 0o644) -> Source:
    """The source for an http(s)://, ipfs:// or s3:// URL."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in ("http", "https"):
        return HttpSource(url, mode)
    if scheme == "ipfs":
        return IpfsSource(url, mode)
    if scheme == "s3":
        return S3Source(url, mode)
    raise FetchError(f"unsupported URL scheme {scheme!r}: use https, http, ipfs or s3")


@dataclass(frozen=True)
class ServiceAllowlist:
    """The operator's ALLOWED_METADATA_CACHES and ALLOWED_PROVIDERS: base URLs (addresses.url_allowed).

    A Workflow names its metadata cache (spec.output.metadataUri) and the DDO names its provider, and the
    provider receives a fresh download signature of the operator: without these lists, any server could
    collect one and replay it at the real provider. Empty means none is allowed (downloads by DID then
    fail until the operator lists its services); the lists are checked before the first request."""

    metadata_caches: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServiceAllowlist:
        def entries(name: str) -> tuple[str, ...]:
            try:
                return tuple(parse_base_url(item) for item in env.get(name, "").split(",") if item.strip())
            except ValueError as error:
                raise FetchError(f"{name} holds an entry that is not a base URL: {error}") from None

        return cls(entries("ALLOWED_METADATA_CACHES"), entries("ALLOWED_PROVIDERS"))

    def check_metadata_cache(self, url: str) -> None:
        if not url_allowed(url, self.metadata_caches):
            empty = ", empty: none is allowed" if not self.metadata_caches else ""
            raise FetchError(
                "the metadata cache (metadataUri) is not one the operator allows "
                f"(ALLOWED_METADATA_CACHES{empty}; https only): nothing was asked of it"
            )

    def check_provider(self, url: str) -> None:
        """The DDO's provider; its URL is the DDO's text, so the message does not quote it."""
        if not url_allowed(url, self.providers):
            empty = ", empty: none is allowed" if not self.providers else ""
            raise FetchError(
                f"the DDO's provider is not one the operator allows (ALLOWED_PROVIDERS{empty}; https "
                "only): nothing was sent to it"
            )


class Signer(Protocol):
    """Who signs provider downloads: the operator's signer (steps/signer_client.py), never a key in the
    pod. Raises FetchError when it refuses, TransientError when it may answer later."""

    async def sign_download(self, did: str) -> DownloadSignature: ...


@dataclass(frozen=True)
class ProviderSource:
    """An Ocean asset by DID, downloaded through its provider with the operator's signature.

    1. the DDO from `{metadata_uri}/api/aquarius/assets/ddo/{did}`, saved as `ddo_dir/<did w/o prefix>`;
    2. the service whose id is `service_id`: its serviceEndpoint is the provider;
    3. `GET provider` lists serviceEndpoints; `fileinfo` (POST {did, serviceId}) counts the files;
    4. each file i: `download` with fileIndex, documentId, transferTxId, serviceId, and the signer's
       consumerAddress, nonce and signature (a fresh one for every attempt), and userdata (JSON) when given.

    `checksum` applies to an asset of one file only; `size` is the asset's total size.

    `services` (the operator's allowlists) is checked before the DDO is asked for (metadataUri) and before
    the provider receives anything; the DDO's `id` must be the DID asked for.
    """

    did: str
    service_id: str
    transfer_tx_id: str
    metadata_uri: str
    ddo_dir: Path
    signer: Signer
    user_data: Any = None
    mode: int = 0o644
    # The operator's allowlists; None: the step's env (ALLOWED_METADATA_CACHES, ALLOWED_PROVIDERS).
    services: ServiceAllowlist | None = None

    @property
    def label(self) -> str:
        return self.did

    async def fetch(
        self, ctx: FetchContext, place: Placement, expect: Expectation = NO_EXPECTATION
    ) -> FetchResult:
        ddo = await self.resolve(ctx)
        provider = self.provider_url(ddo)
        self.allowlist(ctx).check_provider(provider)
        endpoints = await self.service_endpoints(ctx, provider)
        count = await self.file_count(ctx, provider, endpoints["fileinfo"])
        ctx.log(f"provider {safe_url(provider)} lists {count} file{'s' if count != 1 else ''}")
        if expect.checksum is not None and count != 1:
            raise FetchError(f"a checksum is given, but the asset has {count} files")
        file_expect = expect if count == 1 else NO_EXPECTATION
        files: list[FileResult] = []
        for index in range(count):
            files.append(
                await self.download(ctx, provider, endpoints["download"], index, place(index), file_expect)
            )
        total = sum(f.size for f in files)
        if count > 1 and expect.size is not None and total != expect.size:
            raise IntegrityError(
                f"size mismatch: expected {expect.size} bytes, the {count} files hold {total}"
            )
        return FetchResult(tuple(files))

    def allowlist(self, ctx: FetchContext) -> ServiceAllowlist:
        return self.services if self.services is not None else ServiceAllowlist.from_env(ctx.env)

    async def resolve(self, ctx: FetchContext) -> dict[str, Any]:
        """The asset's DDO, also saved to the ddos/ directory."""
        if not self.metadata_uri:
            raise FetchError("cannot resolve the DDO: the workflow names no metadataUri")
        url = join_url(self.metadata_uri, DDO_PATH + self.did)
        self.allowlist(ctx).check_metadata_cache(url)
        target = self.ddo_dir / did_directory_name(self.did)
        try:
            result = await http_download(
                ctx.http,
                lambda: HttpRequest("GET", url, headers={"Accept": "application/json"}),
                target,
                ctx.limits,
                what=f"DDO {safe_url(url)}",
                log=ctx.log,
            )
            if result.size > DDO_LIMIT:
                raise FetchError(f"the DDO is larger than {DDO_LIMIT} bytes")
            ddo = json.loads(await asyncio.to_thread(target.read_bytes))
        except ValueError:
            raise FetchError("cannot resolve the DDO: the metadata cache did not answer JSON") from None
        except FetchError as error:
            raise FetchError(f"cannot resolve the DDO: {error.message}") from None
        if not isinstance(ddo, dict):
            raise FetchError("cannot resolve the DDO: the metadata cache did not answer a DDO")
        if not isinstance(ddo.get("id"), str) or ddo["id"].lower() != self.did.lower():
            raise FetchError("the metadata cache answered the DDO of another asset (its id is not the DID)")
        ctx.log(f"DDO from {safe_url(url)}: {result.size} bytes, saved to {target}")
        return ddo

    def provider_url(self, ddo: Mapping[str, Any]) -> str:
        services = ddo.get("services")
        if not isinstance(services, list):
            raise FetchError("the DDO lists no services")
        for service in services:
            if isinstance(service, dict) and service.get("id") == self.service_id:
                endpoint = service.get("serviceEndpoint")
                if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
                    raise FetchError(f"the DDO's service {self.service_id!r} has no http(s) serviceEndpoint")
                return endpoint
        raise FetchError(f"the DDO has no service with id {self.service_id!r}")

    async def service_endpoints(self, ctx: FetchContext, provider: str) -> dict[str, tuple[str, str]]:
        """{"fileinfo": (method, path), "download": (method, path)} from the provider's root."""
        try:
            root = await http_json(
                ctx.http, lambda: HttpRequest("GET", provider), ctx.limits, what="provider", log=ctx.log
            )
        except FetchError as error:
            raise FetchError(f"provider {safe_url(provider)} did not answer: {error.message}") from None
        listed = root.get("serviceEndpoints") if isinstance(root, dict) else None
        endpoints: dict[str, tuple[str, str]] = {}
        for name in ("fileinfo", "download"):
            entry = listed.get(name) if isinstance(listed, dict) else None
            if (
                not isinstance(entry, list | tuple)
                or len(entry) != 2
                or not all(isinstance(part, str) for part in entry)
                or entry[0].upper() not in HTTP_METHODS
            ):
                raise FetchError(f"provider {safe_url(provider)} does not list a {name} endpoint")
            endpoints[name] = (entry[0].upper(), entry[1])
        return endpoints

    async def file_count(self, ctx: FetchContext, provider: str, fileinfo: tuple[str, str]) -> int:
        method, path = fileinfo
        body = {"did": self.did, "serviceId": self.service_id}
        url = join_url(provider, path)
        try:
            files = await http_json(
                ctx.http,
                lambda: HttpRequest(method, url, json=body),
                ctx.limits,
                what="fileinfo",
                log=ctx.log,
            )
        except FetchError as error:
            raise FetchError(f"provider fileinfo failed: {error.message}") from None
        if not isinstance(files, list):
            raise FetchError("provider fileinfo did not answer a list of files")
        if not files:
            raise FetchError("provider fileinfo lists no files")
        return len(files)

    async def signed_request(self, method: str, url: str, index: int) -> HttpRequest:
        """A download request, signed by the signer with a fresh nonce (never logged: see HttpRequest)."""
        signed = await self.signer.sign_download(self.did)
        params = {
            "fileIndex": str(index),
            "documentId": self.did,
            "transferTxId": self.transfer_tx_id,
            "serviceId": self.service_id,
            "consumerAddress": signed.address,
            "nonce": signed.nonce,
            "signature": signed.signature,
        }
        if self.user_data is not None:
            params["userdata"] = json.dumps(self.user_data, separators=(",", ":"))
        return HttpRequest(method, url, params=params)

    async def download(
        self,
        ctx: FetchContext,
        provider: str,
        endpoint: tuple[str, str],
        index: int,
        target: Path,
        expect: Expectation,
    ) -> FileResult:
        method, path = endpoint
        url = join_url(provider, path)
        what = f"file {index}"
        ctx.log(f"{what}: {method} {safe_url(url)} (signed by the operator)")
        for signing in (1, 2):
            try:
                result = await http_download(
                    ctx.http,
                    lambda: self.signed_request(method, url, index),
                    target,
                    ctx.limits,
                    expect,
                    mode=self.mode,
                    what=what,
                    log=ctx.log,
                )
                return _checked(result, ctx, what)
            except HttpStatusError as error:
                # The provider may quote the refused nonce: keep it out of the log and the message.
                refusal = _NONCE_VALUE.sub("<nonce>", error.message)
                if signing == 1 and error.status in (400, 401) and _AUTH_REFUSAL.search(error.detail):
                    delay = ctx.limits.delay(1)
                    ctx.log(
                        f"{what}: the provider refused the signed request ({refusal}); "
                        f"signing again with a fresh nonce in {delay:.1f} s"
                    )
                    await ctx.limits.sleep(delay)
                    continue
                raise FetchError(f"provider refused the download of {what}: {refusal}") from None
            except (IntegrityError, DiskLimitError):
                raise
            except FetchError as error:
                raise FetchError(f"download of {what} failed: {error.message}") from None
        raise AssertionError("unreachable")  # pragma: no cover
