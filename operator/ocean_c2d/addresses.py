"""Which IP addresses a Workflow may make its pods reach: the rule the configure step's egress guard
(steps/egress.py) applies at connect time and the NetworkPolicies (templates) write as ipBlocks. Pure.

An address is refused unless it is public: loopback, "this network" and unspecified, link-local
(169.254/16 and fe80::/10, where the cloud metadata services live), RFC 1918 private, CGNAT 100.64/10,
ULA fc00::/7, multicast, reserved and documentation ranges are not, nor are the IPv6 forms that carry
an IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo, IPv4-compatible) when the IPv4 address is not
public. The operator's own cluster and service ranges (CLUSTER_CIDRS) are refused too, public or not.
Only the operator's EGRESS_ALLOW_CIDRS (test servers, a known endpoint) override the rule.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Written into the NetworkPolicies' `except` lists: every IPv4 / IPv6 range that is not public. (The
# guard uses ipaddress' own is_global as well, which knows a few more small special-purpose blocks.)
NON_PUBLIC_V4: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network", 0.0.0.0
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # CGNAT shared address space
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local: 169.254.169.254 is the cloud metadata service
    "172.16.0.0/12",  # RFC 1918
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # documentation
    "192.168.0.0/16",  # RFC 1918
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation
    "203.0.113.0/24",  # documentation
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and the broadcast address
)
NON_PUBLIC_V6: tuple[str, ...] = (
    "::/96",  # unspecified, loopback, IPv4-compatible
    # Not ::ffff:0:0/96 (IPv4-mapped): the API server reads it as IPv4 0.0.0.0/0 and refuses it under
    # ::/0; and such an address goes on the wire as IPv4, where the IPv4 except list judges it.
    "64:ff9b::/96",  # NAT64 (well-known prefix)
    "64:ff9b:1::/48",  # NAT64 (local use)
    "100::/64",  # discard
    "2001::/32",  # Teredo
    "2001:db8::/32",  # documentation
    "2002::/16",  # 6to4
    "fc00::/7",  # unique local (ULA)
    "fe80::/10",  # link-local (fd00:ec2::254 is in fc00::/7 above)
    "fec0::/10",  # site-local (deprecated)
    "ff00::/8",  # multicast
)


def parse_network(text: str) -> Network:
    """A CIDR ("10.96.0.0/12", "fd00::/108") or a single address (a /32 or /128); ValueError if neither.
    Host bits must be zero, so that "10.0.0.1/8" is not silently read as 10.0.0.0/8."""
    return ipaddress.ip_network(text.strip(), strict=True)


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    return tuple(parse_network(item) for item in items if item.strip())


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the forms that carry one."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in ipaddress.IPv6Network("64:ff9b::/96") or address in ipaddress.IPv6Network("::/96"):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _category(address: Address) -> str | None:
    """Why `address` is not public ("loopback", "private", ...), or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and not (address.is_loopback or address.is_unspecified):
        if address.ipv4_mapped is not None:  # the same socket address as the IPv4 one: judged as it
            inner = _category(address.ipv4_mapped)
            return f"an IPv4 address in IPv6 form ({inner})" if inner else None
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = _category(embedded)
            # A tunnel or translation prefix: refused even around a public IPv4 address.
            return f"an IPv4 address in IPv6 form ({inner})" if inner else "an IPv4 address in IPv6 form"
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local (cloud metadata)", address.is_link_local),
        ("multicast", address.is_multicast),
        ("shared CGNAT", address in ipaddress.IPv4Network("100.64.0.0/10")),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("not globally routable", not address.is_global),
    )
    for name, matches in checks:
        if matches:
            return name
    return None


def refusal(address: Address, allow: Iterable[Network] = (), cluster: Iterable[Network] = ()) -> str | None:
    """None when `address` may be reached, else why not, in the operator's words (no address in it).

    `allow` (EGRESS_ALLOW_CIDRS) wins over everything; `cluster` (CLUSTER_CIDRS) is refused even when
    public. An IPv4-mapped IPv6 address is judged as the IPv4 address it is (so an allowed 10.0.0.5 is
    allowed as ::ffff:10.0.0.5 too)."""
    plain = address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        plain = address.ipv4_mapped
    if any(plain in network or address in network for network in allow):
        return None
    if any(plain in network or address in network for network in cluster):
        return "in the cluster's pod or service ranges"
    return _category(address)


def policy_excepts(cluster: Iterable[Network]) -> tuple[list[str], list[str]]:
    """The `except` lists of the "public internet" ipBlocks (0.0.0.0/0 and ::/0): the non-public ranges
    plus the cluster's, IPv4 and IPv6 apart, without repeats (a NetworkPolicy takes them as strings)."""
    v4 = list(NON_PUBLIC_V4)
    v6 = list(NON_PUBLIC_V6)
    for network in cluster:
        target = v4 if network.version == 4 else v6
        text = str(network)
        if network.prefixlen > 0 and text not in target:
            target.append(text)
    return v4, v6


# ---- operator allowlists of services (ALLOWED_METADATA_CACHES, ALLOWED_PROVIDERS) -------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_and_path(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an http(s) URL; ValueError for anything else (userinfo included:
    `https://allowed@other/` must never read as `allowed`)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        raise ValueError("expected an http:// or https:// URL with a host and no user name")
    port = parts.port or _DEFAULT_PORTS[scheme]  # parts.port raises ValueError for a bad port
    return scheme, parts.hostname.lower().rstrip("."), port, parts.path


def parse_base_url(text: str) -> str:
    """An allowlist entry: an https:// base URL (http:// too: the operator listed it, for tests), without
    query or fragment. ValueError with the reason otherwise."""
    parts = urlsplit(text.strip())
    _origin_and_path(text)
    if parts.query or parts.fragment:
        raise ValueError("a base URL has no query string or fragment")
    return text.strip()


def url_allowed(url: str, bases: Iterable[str]) -> bool:
    """Whether `url` lies under one of `bases`: the same scheme (so https only, unless the base itself is
    http://), host and port, and a path that is the base's path or below it (by whole segments)."""
    try:
        scheme, host, port, path = _origin_and_path(url)
    except ValueError:
        return False
    if any(segment in (".", "..") for segment in unquote(path).split("/")):
        return False  # "/api/../admin" is under "/api" only as text; the server walks up
    for base in bases:
        base_scheme, base_host, base_port, base_path = _origin_and_path(base)
        prefix = base_path.rstrip("/")
        if (scheme, host, port) == (base_scheme, base_host, base_port) and (
            not prefix or path == prefix or path.startswith(prefix + "/")
        ):
            return True
    return False


def origin_of(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL, as the connection to it is made."""
    _, host, port, _ = _origin_and_path(url)
    return host, port


# ---- what the templates need (settings.py builds it from EGRESS_ALLOW_CIDRS, CLUSTER_CIDRS, ...) ---------


@dataclass(frozen=True)
class Endpoint:
    """An in-cluster service the configure and publish pods may reach: a CIDR and a TCP port."""

    cidr: str
    port: int


@dataclass(frozen=True)
class EgressValues:
    """The operator's egress settings, as the child templates use them (never a secret).

    `public_except_v4` / `_v6` are the "public internet" ipBlocks' except lists (`policy_excepts`)."""

    allow_cidrs: tuple[str, ...] = ()  # EGRESS_ALLOW_CIDRS
    cluster_cidrs: tuple[str, ...] = ()  # CLUSTER_CIDRS
    stage_endpoints: tuple[Endpoint, ...] = ()  # STAGE_EGRESS_ENDPOINTS (+ the signer, by IP)
    allowed_metadata_caches: tuple[str, ...] = ()  # ALLOWED_METADATA_CACHES
    allowed_providers: tuple[str, ...] = ()  # ALLOWED_PROVIDERS
    public_except_v4: tuple[str, ...] = NON_PUBLIC_V4
    public_except_v6: tuple[str, ...] = NON_PUBLIC_V6
    # SIGNER_POD_SELECTOR: the operator pods serving the signer (a Service name in SIGNER_URL resolves to
    # them, and a NetworkPolicy sees the pod address): their namespace, labels and the signer's port.
    signer_namespace: str = ""
    signer_labels: tuple[tuple[str, str], ...] = ()
    signer_port: int = 0


def parse_endpoint(text: str) -> Endpoint:
    """`CIDR:port` ("10.96.0.20/32:9000", "fd00::20/128:9000"); ValueError otherwise."""
    cidr, separator, port = text.strip().rpartition(":")
    if not separator or "/" not in cidr or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected CIDR:port (e.g. 10.96.0.20/32:9000), got {text.strip()!r}")
    return Endpoint(str(parse_network(cidr)), int(port))


def host_endpoint(url: str) -> Endpoint | None:
    """The endpoint of an http(s) URL whose host is an IP literal (the signer's, say), else None: a
    NetworkPolicy cannot name a host by its DNS name."""
    try:
        host, port = origin_of(url)
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return Endpoint(f"{address}/{address.max_prefixlen}", port)


def parse_pod_selector(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """`namespace:key=value[,key=value...]` -> (namespace, labels); ValueError otherwise."""
    namespace, separator, labels = text.strip().partition(":")
    pairs = [item.strip().partition("=") for item in labels.split(",") if item.strip()]
    if not separator or not namespace or not pairs or any(not k or not eq or not v for k, eq, v in pairs):
        raise ValueError(f"expected namespace:key=value[,key=value], got {text.strip()!r}")
    return namespace, tuple((key, value) for key, _, value in pairs)
