"""The sources and the streaming rules under them, piece by piece (HTTP against providers.py's servers)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from ocean_c2d.resilience import safe_url, scrub
from ocean_c2d.signing import NonceSource, OperatorKey
from ocean_c2d.steps.sources import (
    FetchContext,
    HttpSource,
    IpfsSource,
    ProviderSource,
    S3Source,
    ServiceAllowlist,
    file_name_from_url,
    sanitise_name,
    url_source,
)
from ocean_c2d.steps.streaming import (
    DiskBudget,
    DiskLimitError,
    Expectation,
    FetchError,
    HttpRequest,
    Limits,
    PartialFile,
    http_json,
    stream_to_file,
)
from unit_tests.steps.providers import Asset, KeySigner, OceanStack

KEY = OperatorKey.from_hex("0x95c716e9df3bc4ffd7299e7861ce401de810e8d245d3127b8e7b430f4ca7fd27")
DID = "did:op:" + "c3" * 32


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def entries(path: Path) -> list[Path]:
    return sorted(path.iterdir())


def context(
    http: httpx.AsyncClient, budget: DiskBudget | None = None
) -> tuple[FetchContext, FakeSleep, list[str]]:
    sleep = FakeSleep()
    lines: list[str] = []
    limits = Limits(budget=budget or DiskBudget(), sleep=sleep)
    return FetchContext(http=http, limits=limits, log=lines.append), sleep, lines


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://example.org/data/iris.csv", "iris.csv"),
        ("https://example.org/data/iris.csv?X-Amz-Signature=abc", "iris.csv"),
        ("https://example.org/a%20b%2Fc.csv", "a_b_c.csv"),
        ("https://example.org/", "0"),
        ("https://example.org", "0"),
        ("https://example.org/..", "0"),
        ("https://example.org/.hidden", "hidden"),
        ("ipfs://QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "0"),
        ("ipfs://QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG/readme", "readme"),
        ("s3://bucket/some/key.parquet", "key.parquet"),
    ],
)
def test_file_name_from_url(url: str, name: str) -> None:
    assert file_name_from_url(url) == name


def test_sanitise_name_keeps_one_safe_component() -> None:
    assert sanitise_name("../../etc/passwd") == "_.._etc_passwd"
    assert sanitise_name("") == "0"
    assert len(sanitise_name("x" * 1000)) == 200


def test_url_source_dispatches_on_the_scheme() -> None:
    assert isinstance(url_source("https://example.org/x"), HttpSource)
    assert isinstance(url_source("http://example.org/x"), HttpSource)
    assert isinstance(url_source("ipfs://Qm/x"), IpfsSource)
    assert isinstance(url_source("s3://bucket/key"), S3Source)
    with pytest.raises(FetchError, match="unsupported URL scheme 'ftp'"):
        url_source("ftp://example.org/x")


def test_safe_url_and_scrub_drop_what_may_be_secret() -> None:
    assert safe_url("https://user:pw@example.org:8443/a/b?sig=1#f") == "https://example.org:8443/a/b"
    assert safe_url("ipfs://QmCaseSensitive/path") == "ipfs://QmCaseSensitive/path"
    signature = "0x" + "ab" * 65
    text = f"error for https://p.example/api/download?nonce=1&signature={signature} and {signature}"
    assert scrub(text) == "error for https://p.example/api/download and <signature>"


def test_nonces_strictly_increase_even_when_the_clock_does_not() -> None:
    times = iter([5, 5, 3, 10])
    nonces = NonceSource(clock=lambda: next(times))
    assert [nonces.next() for _ in range(4)] == ["5", "6", "7", "10"]


def test_expectation_rejects_a_malformed_checksum() -> None:
    with pytest.raises(FetchError, match="sha256"):
        Expectation(checksum="md5:abc")
    assert Expectation(checksum="sha256:" + "AB" * 32).sha256 == "ab" * 32


def test_disk_budget_charges_refunds_and_names_its_limit() -> None:
    budget = DiskBudget(100)
    budget.charge(60)
    with pytest.raises(DiskLimitError, match="DISK_LIMIT_BYTES=100 "):
        budget.charge(41)
    budget.refund(60)
    budget.charge(100)
    assert budget.remaining == 0


def test_a_partial_file_is_invisible_until_committed(tmp_path: Path) -> None:
    budget = DiskBudget(10)
    target = tmp_path / "out"
    partial = PartialFile(target, budget, Expectation(size=6))
    partial.write(b"abc", b"def")
    assert not target.exists()
    assert partial.path.name.startswith(".out.")
    assert partial.path.name.endswith(".partial")
    partial.commit()
    assert target.read_bytes() == b"abcdef"
    assert list(tmp_path.iterdir()) == [target]

    other = PartialFile(tmp_path / "other", budget, Expectation())
    other.write(b"xy")
    assert budget.used == 8
    other.discard()
    assert budget.used == 6
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("failure", [OSError("connection lost"), asyncio.CancelledError()])
async def test_a_stream_that_fails_midway_leaves_nothing(tmp_path: Path, failure: BaseException) -> None:
    budget = DiskBudget()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"z" * 300_000
        raise failure

    with pytest.raises(type(failure)):
        await stream_to_file(chunks(), tmp_path / "out", budget, batch_size=100_000)
    assert entries(tmp_path) == []
    assert budget.used == 0


async def test_429_honours_retry_after(tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack) -> None:
    stack.files.files["data"] = b"ok"
    ctx, sleep, lines = context(http)

    result = await HttpSource(stack.files.url_of("data", "ratelimited")).fetch(
        ctx, lambda i: tmp_path / "data"
    )

    assert result.size == 2
    assert sleep.delays == [3.0, 3.0]
    assert "HTTP 429 Too Many Requests; retry 1 of 4 in 3.0 s" in lines[1]


async def test_json_answers_are_capped(http: httpx.AsyncClient, stack: OceanStack) -> None:
    stack.files.files["big.json"] = json.dumps(["x" * 1000] * 10).encode()
    ctx, _, _ = context(http)
    request = HttpRequest("GET", stack.files.url_of("big.json"))

    with pytest.raises(FetchError, match=r"larger than 1\.0 KiB"):
        await http_json(http, lambda: request, ctx.limits, max_bytes=1024)


def provider_source(
    stack: OceanStack, tmp_path: Path, service_id: str | None = None, metadata_uri: str | None = None
) -> ProviderSource:
    asset = stack.add_asset(Asset(DID, [b"one", b"two"]))
    (tmp_path / "ddos").mkdir(exist_ok=True)
    return ProviderSource(
        did=DID,
        service_id=asset.service_id if service_id is None else service_id,
        transfer_tx_id=asset.transfer_tx_id,
        metadata_uri=stack.metadata.url if metadata_uri is None else metadata_uri,
        ddo_dir=tmp_path / "ddos",
        signer=KeySigner(KEY),
        services=ServiceAllowlist((stack.metadata.url,), (stack.provider.url,)),
    )


async def test_provider_source_downloads_every_file_of_the_asset(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    ctx, _, lines = context(http)
    source = provider_source(stack, tmp_path)

    result = await source.fetch(ctx, lambda i: tmp_path / f"file-{i}", Expectation(size=6))

    assert [f.path.read_bytes() for f in result.files] == [b"one", b"two"]
    assert result.size == 6
    assert (tmp_path / "ddos" / DID.removeprefix("did:op:")).exists()
    assert not any("signature=" in line or "nonce=" in line for line in lines)


async def test_provider_source_refuses_a_checksum_for_several_files(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    ctx, _, _ = context(http)
    source = provider_source(stack, tmp_path)

    with pytest.raises(FetchError, match="a checksum is given, but the asset has 2 files"):
        await source.fetch(ctx, lambda i: tmp_path / str(i), Expectation(checksum="sha256:" + "0" * 64))
    assert stack.provider.downloads == []


async def test_provider_source_needs_the_ordered_service_in_the_ddo(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    ctx, _, _ = context(http)
    source = provider_source(stack, tmp_path, service_id="not-there")

    with pytest.raises(FetchError, match="the DDO has no service with id 'not-there'"):
        await source.fetch(ctx, lambda i: tmp_path / str(i))
    assert stack.provider.requests == []


async def test_provider_source_needs_a_metadata_uri(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    ctx, _, _ = context(http)
    source = provider_source(stack, tmp_path, metadata_uri="")

    with pytest.raises(FetchError, match="the workflow names no metadataUri"):
        await source.fetch(ctx, lambda i: tmp_path / str(i))
