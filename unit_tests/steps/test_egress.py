"""The configure step's egress guard (steps/egress.py) against real servers on loopback addresses.

The allowed server listens on 127.0.0.2 (EGRESS_ALLOW_CIDRS=127.0.0.2/32, as the e2e suite allows its own
test addresses); the "internal" server on 127.0.0.1 counts every request that reaches it, and must count
zero. Addresses no test can listen on (169.254.169.254, 10.x) are checked one level lower: the backend
under the guard records every address it is asked to dial, and must never see them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from ocean_c2d.addresses import parse_networks, policy_excepts, refusal, url_allowed
from ocean_c2d.steps.configure import main as configure_main
from ocean_c2d.steps.contract import EXIT_DATA_PROVISIONING_FAILED, EXIT_OK
from ocean_c2d.steps.egress import EgressPolicy, EgressRefusedError, GuardedTransport, guarded_client
from ocean_c2d.steps.sources import HttpSource
from ocean_c2d.steps.streaming import FetchError, Limits
from unit_tests.steps.providers import LocalServer, Request, Response
from unit_tests.steps.test_configure import RAW_CODE, make_job

ALLOWED = "127.0.0.2"
POLICY = EgressPolicy(allow=parse_networks([f"{ALLOWED}/32"]))


class Counter(LocalServer):
    """Answers 200 "secret" to everything, and counts: the witness that nothing reached it."""

    def handle(self, request: Request) -> Response:
        return Response(200, b"internal secret")


class Redirector(LocalServer):
    """/to?url=<where>: a 302 there; /file: a small body; records the Host header of every request."""

    def handle(self, request: Request) -> Response:
        if request.path == "/to":
            return Response(302, b"", {"Location": request.query["url"]})
        return Response(200, b"public data", {"Content-Type": "text/plain"})


@pytest.fixture
def internal() -> Iterator[Counter]:
    server = Counter("127.0.0.1")
    yield server
    server.close()


@pytest.fixture
def public() -> Iterator[Redirector]:
    server = Redirector(ALLOWED)
    yield server
    server.close()


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """The real backend, recording which (address, port) it was asked to dial."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.dialled: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.dialled.append((host, port))
        return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise AssertionError("no unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def client_with(
    backend: RecordingBackend, policy: EgressPolicy = POLICY, resolver: Any = None
) -> httpx.AsyncClient:
    kwargs = {"resolver": resolver} if resolver else {}
    return httpx.AsyncClient(
        transport=GuardedTransport(policy, inner=backend, **kwargs), follow_redirects=True, trust_env=False
    )


async def fetch(http: httpx.AsyncClient, url: str, tmp_path: Path) -> bytes:
    """One download through the configure step's HttpSource (its retries included), the body returned."""
    from ocean_c2d.steps.sources import FetchContext

    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    ctx = FetchContext(http=http, limits=Limits(sleep=sleep))
    result = await HttpSource(url).fetch(ctx, lambda i: tmp_path / f"file{i}")
    assert not sleeps
    return result.files[0].path.read_bytes()


def redirect(public: Redirector, target: str) -> str:
    return str(httpx.URL(f"{public.url}/to", params={"url": target}))


async def test_an_allowed_server_is_fetched_and_a_redirect_to_loopback_reaches_nothing(
    tmp_path: Path, public: Redirector, internal: Counter
) -> None:
    async with guarded_client(POLICY) as http:
        assert await fetch(http, f"{public.url}/file", tmp_path) == b"public data"
        with pytest.raises(FetchError) as refused:
            await fetch(http, redirect(public, f"{internal.url}/latest/meta-data"), tmp_path)

    assert "refused by the egress rule" in refused.value.message
    assert "loopback" in refused.value.message
    assert "127.0.0.1" not in refused.value.message  # the operator's words only, no address
    assert len(internal.requests) == 0
    assert [r.path for r in public.requests] == ["/file", "/to"]


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/", "link-local"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "private"),
        ("http://10.1.2.3:8080/admin", "private"),
        ("http://100.100.100.200/latest/meta-data/", "CGNAT"),
        ("http://[::ffff:127.0.0.1]:8080/", "IPv4 address in IPv6 form (loopback)"),
        ("http://0.0.0.0:8080/", "unspecified"),
        ("http://224.0.0.251/", "multicast"),
    ],
)
async def test_a_redirect_to_a_non_public_address_is_never_dialled(
    tmp_path: Path, public: Redirector, target: str, why: str
) -> None:
    backend = RecordingBackend()
    async with client_with(backend) as http:
        with pytest.raises(EgressRefusedError) as refused:
            await fetch(http, redirect(public, target), tmp_path)
    assert why in refused.value.message
    assert {address for address, _ in backend.dialled} == {ALLOWED}  # only the first hop was dialled


async def test_a_name_that_resolves_to_loopback_is_refused(tmp_path: Path, internal: Counter) -> None:
    port = internal.url.rpartition(":")[2]
    async with guarded_client(POLICY) as http:
        with pytest.raises(EgressRefusedError):
            await fetch(http, f"http://localhost:{port}/", tmp_path)
    assert len(internal.requests) == 0


async def test_the_address_checked_is_the_address_dialled_and_the_host_header_is_kept(
    tmp_path: Path, public: Redirector, internal: Counter
) -> None:
    """DNS rebinding: the first answer is allowed, the next one is loopback. Each connection resolves
    once and dials what it vetted, so the second one is refused and nothing reaches 127.0.0.1."""
    port = int(public.url.rpartition(":")[2])
    answers = [[ALLOWED], ["127.0.0.1"]]

    async def rebinding(host: str, _port: int) -> list[str]:
        assert host == "files.test"
        return answers.pop(0)

    backend = RecordingBackend()
    async with client_with(backend, resolver=rebinding) as http:
        assert await fetch(http, f"http://files.test:{port}/file", tmp_path) == b"public data"
    async with client_with(backend, resolver=rebinding) as http:
        with pytest.raises(EgressRefusedError):
            await fetch(http, f"http://files.test:{port}/file", tmp_path)

    assert public.requests[0].headers["host"] == f"files.test:{port}"
    assert backend.dialled == [(ALLOWED, port)]
    assert len(internal.requests) == 0


async def test_a_name_with_one_refused_address_among_allowed_ones_is_refused_whole(
    tmp_path: Path, public: Redirector
) -> None:
    async def mixed(_host: str, _port: int) -> list[str]:
        return [ALLOWED, "169.254.169.254"]

    backend = RecordingBackend()
    async with client_with(backend, resolver=mixed) as http:
        with pytest.raises(EgressRefusedError):
            await fetch(http, f"http://mixed.test:{public.url.rpartition(':')[2]}/file", tmp_path)
    assert backend.dialled == []
    assert public.requests == []


async def test_proxy_variables_cannot_route_the_step_elsewhere(
    tmp_path: Path, public: Redirector, internal: Counter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy would be the only address the guard sees: the client ignores HTTP(S)_PROXY."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, internal.url)
    async with guarded_client(POLICY) as http:
        assert await fetch(http, f"{public.url}/file", tmp_path) == b"public data"
    assert len(internal.requests) == 0


async def test_without_the_allowlist_a_loopback_input_fails_the_step_with_our_words(
    tmp_path: Path, public: Redirector
) -> None:
    """The default policy (nothing allowed): the configure step ends 31, its message names the input and
    the rule, and the server got nothing."""
    job = make_job(tmp_path, [{"url": f"{public.url}/file"}], {"rawCode": RAW_CODE})
    async with guarded_client(EgressPolicy.from_env(job.env)) as http:
        assert await job.run(http) == EXIT_DATA_PROVISIONING_FAILED
    assert job.message()["message"] == (
        f"input 0 ({public.url}/file): refused by the egress rule: the server's address is loopback, "
        "not a public address"
    )
    assert public.requests == []


async def test_the_settings_allow_and_deny_by_cidr() -> None:
    policy = EgressPolicy.from_env(
        {
            "EGRESS_ALLOW_CIDRS": "127.0.0.2/32, 10.250.0.1",
            "CLUSTER_CIDRS": "203.0.112.0/24",
            "ALLOWED_PROVIDERS": "https://provider.example:8443/api",
        }
    )
    policy.check("a.test", 80, ["127.0.0.2", "::ffff:10.250.0.1"])
    with pytest.raises(EgressRefusedError, match="cluster"):
        policy.check("a.test", 80, ["203.0.112.7"])
    # The operator's own service is exempt by (host, port), whatever it resolves to.
    policy.check("provider.example", 8443, ["10.96.0.10"])
    with pytest.raises(EgressRefusedError):
        policy.check("provider.example", 443, ["10.96.0.10"])
    with pytest.raises(FetchError, match="not a list of CIDRs"):
        EgressPolicy.from_env({"EGRESS_ALLOW_CIDRS": "10.0.0.1/8"})  # host bits: a typo, not /8


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("fe80::1", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),
        ("fc00::1", False),
        ("::", False),
        ("::1", False),
        ("240.0.0.1", False),
        ("2002:a00:1::1", False),  # 6to4 around 10.0.0.1
        ("64:ff9b::7f00:1", False),  # NAT64 around 127.0.0.1
    ],
)
def test_which_addresses_are_public(address: str, public: bool) -> None:
    assert (refusal(ipaddress.ip_address(address)) is None) is public


def test_the_policy_excepts_hold_every_non_public_range_and_the_cluster_ones() -> None:
    v4, v6 = policy_excepts(parse_networks(["10.96.0.0/12", "198.51.0.0/16", "fd10::/64"]))
    for probe in ("169.254.169.254", "10.0.0.1", "100.64.0.1", "127.0.0.1", "192.168.0.1", "198.51.3.4"):
        assert any(ipaddress.ip_address(probe) in ipaddress.ip_network(c) for c in v4), probe
    for probe in ("fe80::1", "fd00:ec2::254", "::1", "fd10::5"):
        assert any(ipaddress.ip_address(probe) in ipaddress.ip_network(c) for c in v6), probe
    assert v4.count("10.0.0.0/8") == 1
    # The API server takes an IPv4-mapped range for IPv4 and refuses it under ::/0 ("must be a strict
    # subset"): no except of the IPv6 block may lie in ::ffff:0:0/96.
    mapped = ipaddress.ip_network("::ffff:0:0/96")
    assert not [c for c in v6 if ipaddress.ip_network(c).subnet_of(mapped)]  # type: ignore[arg-type]
    assert not any(ipaddress.ip_address("8.8.8.8") in ipaddress.ip_network(c) for c in v4)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://aquarius.example/api/aquarius/assets/ddo/x", True),
        ("HTTPS://Aquarius.Example./api/x", True),
        ("http://aquarius.example/api/x", False),  # https only, unless the entry is http
        ("https://aquarius.example:8443/api/x", False),
        ("https://aquarius.example.evil/api/x", False),
        ("https://aquarius.example@evil.example/api/x", False),
        ("https://aquarius.example/apix", False),
        ("https://aquarius.example/api/../admin", False),
        ("http://127.0.0.2:5000/", True),
    ],
)
def test_service_allowlist_entries_match_scheme_host_port_and_path(url: str, allowed: bool) -> None:
    assert url_allowed(url, ["https://aquarius.example/api", "http://127.0.0.2:5000"]) is allowed


async def test_the_configure_command_fetches_through_the_guard(tmp_path: Path, public: Redirector) -> None:
    """`ocean-c2d configure` (configure.main) builds the guarded client from its env: without
    EGRESS_ALLOW_CIDRS the loopback input is refused unasked, with it the input is fetched."""
    for name in ("refused", "allowed"):
        (tmp_path / name).mkdir()
    refused = make_job(tmp_path / "refused", [{"url": f"{public.url}/file"}], {"rawCode": RAW_CODE})
    assert await configure_main(refused.env) == EXIT_DATA_PROVISIONING_FAILED
    assert public.requests == []

    allowed = make_job(tmp_path / "allowed", [{"url": f"{public.url}/file"}], {"rawCode": RAW_CODE})
    assert await configure_main({**allowed.env, "EGRESS_ALLOW_CIDRS": f"{ALLOWED}/32"}) == EXIT_OK
    assert (allowed.volume / "inputs" / "0" / "file").read_bytes() == b"public data"
