"""The configure step's egress guard: every TCP connection it opens goes to a public address, or to one
the operator allowed, checked on the address actually dialled (addresses.py says which are refused).

How, with httpx: httpx hands each new connection to httpcore's connection pool, which asks its
*network backend* to `connect_tcp(host, port)` and later wraps the socket in TLS with
`server_hostname=host`. `GuardedBackend` is that backend. It resolves `host` itself, refuses the whole
name when any of its addresses is refused, and then dials the vetted IP literal, so the address checked
is the address connected to: a DNS answer that changes between a check and a connect (rebinding) cannot
slip through, because there is no second lookup. The Host header and the TLS SNI and certificate check
still use the name from the URL, since httpcore passes that name to TLS, not the IP. A redirect to
another origin needs a new connection, so every hop is checked; a kept-alive connection was checked when
it was opened. `GuardedTransport` is httpx's own AsyncHTTPTransport (request and error mapping
unchanged) with its pool rebuilt around this backend, and `trust_env=False`, so no HTTP(S)_PROXY from
the environment can take the connections elsewhere (a proxy would be the only address checked).
`guarded_client` is the client configure uses.

A refusal is a `FetchError` (never retried) whose message is the operator's words only: no address, no
host name (a redirect's Location is the remote's text), and the reason ("private", "loopback", ...).

Origins the operator configured itself (IPFS_API, the ALLOWED_METADATA_CACHES and ALLOWED_PROVIDERS
entries) are exempt by (host, port): they may live inside the cluster. An input URL naming such an
origin reaches it too; that is the price of one client for all requests, and those are services the
operator chose to expose to Workflows.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx

from ocean_c2d.addresses import Network, origin_of, parse_networks, refusal
from ocean_c2d.steps.streaming import FetchError

DEFAULT_LIMITS = httpx.Limits(max_connections=20, max_keepalive_connections=10)
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""(host, port) -> the addresses to dial, as text."""


class EgressRefusedError(FetchError):
    """A connection the egress rule does not allow; nothing was sent to the address."""


def _list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@dataclass(frozen=True)
class EgressPolicy:
    """What configure may connect to besides public addresses (EGRESS_ALLOW_CIDRS), what it never may
    (CLUSTER_CIDRS, on top of the non-public ranges), and the operator's own origins."""

    allow: tuple[Network, ...] = ()
    cluster: tuple[Network, ...] = ()
    trusted_origins: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EgressPolicy:
        """From the step's environment; a malformed value is an error, never "no restriction"."""
        try:
            allow = parse_networks(_list(env.get("EGRESS_ALLOW_CIDRS", "")))
            cluster = parse_networks(_list(env.get("CLUSTER_CIDRS", "")))
        except ValueError as error:
            raise FetchError(f"EGRESS_ALLOW_CIDRS or CLUSTER_CIDRS is not a list of CIDRs: {error}") from None
        origins: set[tuple[str, int]] = set()
        urls = [env.get("IPFS_API", "")]
        urls += _list(env.get("ALLOWED_METADATA_CACHES", "")) + _list(env.get("ALLOWED_PROVIDERS", ""))
        for url in filter(None, urls):
            try:
                origins.add(origin_of(url))
            except ValueError:
                raise FetchError("an operator-configured service URL is not an http(s) URL") from None
        return cls(allow, cluster, frozenset(origins))

    def check(self, host: str, port: int, addresses: Iterable[str]) -> None:
        """Raise EgressRefusedError unless each of `addresses` (what `host` resolved to) may be dialled."""
        if (host.lower().rstrip("."), port) in self.trusted_origins:
            return
        for text in addresses:
            try:
                address = ipaddress.ip_address(text.partition("%")[0])  # fe80::1%eth0: a scoped address
            except ValueError:
                raise EgressRefusedError("refused by the egress rule: not an IP address") from None
            why = refusal(address, self.allow, self.cluster)
            if why is not None:
                raise EgressRefusedError(
                    f"refused by the egress rule: the server's address is {why}, not a public address"
                )


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of `host` from the system resolver (getaddrinfo), in its order, without repeats."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the egress rule in front of every connect (module docstring)."""

    def __init__(
        self,
        policy: EgressPolicy,
        resolver: Resolver = system_resolver,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self.resolver = resolver
        self.inner = inner or httpcore.AnyIOBackend()

    async def _resolve(self, host: str, port: int, timeout: float | None) -> list[str]:
        if _is_literal(host):
            return [host]
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.resolver(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout("name resolution timed out") from None
        except OSError as error:
            raise httpcore.ConnectError(f"cannot resolve the host name ({error.strerror or error})") from None
        if not addresses:
            raise httpcore.ConnectError("the host name has no address")
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port, timeout)
        self.policy.check(host, port, addresses)
        failure: Exception | None = None
        for address in addresses:  # happy eyeballs' fallback, in sequence: each one was vetted above
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefusedError("refused by the egress rule: not a TCP connection")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport whose connection pool dials through `GuardedBackend` and ignores proxy env.

    It replaces the `_pool` that AsyncHTTPTransport built (httpx offers no network-backend argument);
    unit_tests/steps/test_egress.py fails if a new httpx stops using it."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        resolver: Resolver = system_resolver,
        inner: httpcore.AsyncNetworkBackend | None = None,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(verify=verify, trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy, resolver, inner),
        )


def guarded_client(
    policy: EgressPolicy, *, resolver: Resolver = system_resolver, **kwargs: Any
) -> httpx.AsyncClient:
    """An AsyncClient (redirects followed, each hop checked) that connects only where `policy` allows."""
    return httpx.AsyncClient(
        transport=GuardedTransport(policy, resolver=resolver),
        trust_env=False,
        follow_redirects=True,
        **kwargs,
    )
