"""`ocean-c2d api`'s settings, from the environment (pure).

Separate from ocean_c2d.settings: the API is its own process and needs neither the operator's key nor its
templates. The names:
- API_HOST (default 0.0.0.0), API_PORT (default 8050, operator-service's port): the API, /readyz, /healthz;
- API_METRICS_PORT (default 9050; not API_PORT): /metrics alone, on its own listener (same host), so a
  scraper can be admitted to the metrics without being admitted to the API;
- API_ALLOWED_PROVIDERS: the provider addresses whose providerSignature is accepted (a JSON list, or
  separated by commas or white space). Not ALLOWED_PROVIDERS: the operator already reads that name as the
  provider base URLs it may download from, and one deployment usually sets both;
- API_AUTH=off: accept unsigned requests. Only together with an empty API_ALLOWED_PROVIDERS, and only when
  set explicitly. An empty allowlist alone is refused rather than read as "everyone": the API creates
  Workflows that spend the operator's compute and stops anyone's job, so a forgotten variable must stop the
  start, not open the API (the original operator-service answered everyone when ALLOWED_PROVIDERS was
  empty; that default is what this refuses);
- OPERATOR_ADDRESS: the operator key's public address, GET /'s `address` and every environment's
  `consumerAddress` (provider refuses a job whose consumer is not the address that ordered the assets). The
  API needs only the address; OPERATOR_PRIVATE_KEY is read (for its address) only when OPERATOR_ADDRESS is
  not set, so a deployment can keep the key out of the API's pod; both set must agree;
- API_NAMESPACE, else WATCH_NAMESPACE: where Workflows are created and watched, and the nonce ConfigMaps
  kept (unset: the pod's own namespace, or the kubeconfig's). One namespace: "*" is refused;
- ALGO_POD_TIMEOUT: shown as GET /'s algoTimeLimit, as the original did.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ocean_c2d.api.auth import checksum_address, parse_allowed_providers
from ocean_c2d.settings import SettingsError
from ocean_c2d.signing import OperatorKey

DEFAULT_PORT = 8050
DEFAULT_METRICS_PORT = 9050
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True)
class ApiSettings:
    host: str
    port: int
    metrics_port: int  # /metrics only; never `port`
    allowed_providers: frozenset[str]  # checksummed; empty only when auth is off
    auth: bool  # False only for API_AUTH=off with an empty allowlist
    operator_address: str  # checksummed
    namespace: str | None  # None: the pod's own (or the kubeconfig's) namespace
    algo_time_limit: str | None


def _str(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _port(environ: Mapping[str, str], name: str, default: int, errors: list[str]) -> int:
    raw = _str(environ, name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        errors.append(f"{name}: expected a port number 1..65535, got {raw[:40]!r}")
        return default
    return int(raw)


def _ports(environ: Mapping[str, str], errors: list[str]) -> tuple[int, int]:
    """API_PORT and API_METRICS_PORT, which must differ (each its own listener)."""
    before = len(errors)
    port = _port(environ, "API_PORT", DEFAULT_PORT, errors)
    metrics_port = _port(environ, "API_METRICS_PORT", DEFAULT_METRICS_PORT, errors)
    if len(errors) == before and port == metrics_port:  # an invalid one is reported as such, not as this
        errors.append(f"API_METRICS_PORT: must differ from API_PORT (both are {port})")
    return port, metrics_port


def _auth(environ: Mapping[str, str], errors: list[str]) -> tuple[frozenset[str], bool]:
    try:
        allowed = parse_allowed_providers(environ.get("API_ALLOWED_PROVIDERS", ""))
    except ValueError as error:
        errors.append(f"API_ALLOWED_PROVIDERS: {error}")
        return frozenset(), True
    switch = (_str(environ, "API_AUTH") or "on").lower()
    if switch not in ("on", "off"):
        errors.append(f"API_AUTH: expected on or off, got {switch[:20]!r}")
    elif switch == "off" and allowed:
        # Contradictory: which did the operator mean? Refuse rather than guess either way.
        errors.append("API_AUTH: off, but API_ALLOWED_PROVIDERS names providers; unset one of them")
    elif switch == "off":
        return allowed, False
    elif not allowed:
        errors.append(
            "API_ALLOWED_PROVIDERS: required (the provider addresses allowed to call the API); "
            "set API_AUTH=off explicitly to accept unsigned requests"
        )
    return allowed, True


def _operator_address(environ: Mapping[str, str], errors: list[str]) -> str:
    given, raw_key = _str(environ, "OPERATOR_ADDRESS"), _str(environ, "OPERATOR_PRIVATE_KEY")
    address = None
    if given is not None:
        try:
            address = checksum_address(given)
        except ValueError as error:
            errors.append(f"OPERATOR_ADDRESS: {error}")
            return ""
    if raw_key is not None:
        try:
            derived = OperatorKey.from_hex(raw_key).address
        except Exception:
            # Never echo the value (as ocean_c2d.settings): this message reaches logs.
            errors.append(
                "OPERATOR_PRIVATE_KEY: expected 64 hex digits (optionally 0x-prefixed) of a valid key"
            )
            return address or ""
        if address is not None and address != derived:
            errors.append(f"OPERATOR_ADDRESS: {address} is not OPERATOR_PRIVATE_KEY's address")
        return address or derived
    if address is None:
        errors.append(
            "OPERATOR_ADDRESS: required (the operator key's address, the environments' consumerAddress)"
        )
        return ""
    return address


def _namespace(environ: Mapping[str, str], errors: list[str]) -> str | None:
    name = "API_NAMESPACE" if _str(environ, "API_NAMESPACE") else "WATCH_NAMESPACE"
    raw = _str(environ, name)
    if raw is None:
        return None
    if not _NAMESPACE.fullmatch(raw) or len(raw) > 63:
        # "*" too: the API creates Workflows and keeps nonces in one namespace.
        errors.append(f"{name}: expected one namespace name, got {raw[:70]!r}")
        return None
    return raw


def load_api_settings(environ: Mapping[str, str]) -> ApiSettings:
    """The settings, or SettingsError listing every invalid variable."""
    errors: list[str] = []
    allowed, auth = _auth(environ, errors)
    port, metrics_port = _ports(environ, errors)
    settings = ApiSettings(
        host=_str(environ, "API_HOST") or "0.0.0.0",
        port=port,
        metrics_port=metrics_port,
        allowed_providers=allowed,
        auth=auth,
        operator_address=_operator_address(environ, errors),
        namespace=_namespace(environ, errors),
        algo_time_limit=_str(environ, "ALGO_POD_TIMEOUT"),
    )
    if errors:
        raise SettingsError(errors)
    return settings
