"""Every environment variable the operator reads, validated once at start-up.

The names are the original Ocean operator-engine's (so existing deployments keep working) plus ours.
`load_settings` takes the environment as an argument and reports *every* problem in one `SettingsError`,
so an operator fixes a broken deployment in one round instead of one crash-loop per variable.

Pure: nothing here reads os.environ, logs or prints; the caller decides what to do with the result
(e.g. warn loudly when `operator_key_generated` is set).
"""

from __future__ import annotations

import ipaddress
import math
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from ocean_c2d.addresses import (
    EgressValues,
    host_endpoint,
    parse_base_url,
    parse_endpoint,
    parse_network,
    parse_pod_selector,
    policy_excepts,
)
from ocean_c2d.identity import PACKAGE, package_version
from ocean_c2d.leadership import LeaderElectionSettings
from ocean_c2d.model import PlanSettings, TemplateValues
from ocean_c2d.signing import OperatorKey
from ocean_c2d.steps.contract import split_host_port

# The original operator-engine defined its single compute environment by the mere presence of any of these.
DEFAULT_ENVIRONMENT_VARIABLES: tuple[str, ...] = (
    "nCPU",
    "cpuType",
    "nGPU",
    "gpuRam",
    "gpuType",
    "ramGB",
    "diskGB",
    "priceMinute",
    "description",
    "maxJobs",
    "maxJobDuration",
    "STORAGE_EXPIRY",
)

PULL_POLICIES: tuple[str, ...] = ("Always", "IfNotPresent", "Never")
IPFS_TYPES: tuple[str, ...] = ("CLIENT", "CLUSTER")
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
T = TypeVar("T")
_TRUTHY = frozenset({"1", "true", "yes"})
# Kubernetes names (environments become labels, namespaces are labels): RFC 1123 label, at most 63 chars.
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class SettingsError(ValueError):
    """One or more invalid variables; `problems` holds one "NAME: what is wrong" line per variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class DefaultEnvironment:
    """The original's one compute environment, kept so old deployments need no new configuration."""

    cpu_count: int  # nCPU
    cpu_type: str  # cpuType
    gpu_count: int  # nGPU
    gpu_ram_gb: float  # gpuRam
    gpu_type: str  # gpuType
    ram_gb: float  # ramGB
    disk_gb: float  # diskGB
    price_per_minute: float  # priceMinute
    description: str  # description
    max_jobs: int  # maxJobs
    max_job_duration_seconds: int  # maxJobDuration
    storage_expiry_hours: int  # STORAGE_EXPIRY; 0 = never expire


@dataclass(frozen=True)
class PublishSettings:
    """Passed through to the publish step; credentials stay out of repr so they never reach a log."""

    ipfs_output: str | None
    ipfs_output_prefix: str | None
    ipfs_api_key: str | None = field(repr=False)
    ipfs_api_client: str | None
    ipfs_type: str | None  # None, "CLIENT" or "CLUSTER"
    ipfs_expiry_time_seconds: int | None
    aws_access_key_id: str | None = field(repr=False)
    aws_secret_access_key: str | None = field(repr=False)
    aws_region: str | None
    aws_bucket_output: str | None
    aws_endpoint_url: str | None  # ours: an S3-compatible endpoint (MinIO, Ceph, ...)


@dataclass(frozen=True)
class Settings:
    """Everything the operator takes from its environment; build it with `load_settings`."""

    operator_key: OperatorKey
    # True when dev mode made up a throwaway key: signatures then verify against nobody's address.
    operator_key_generated: bool
    default_environment: DefaultEnvironment | None
    default_environment_name: str

    storage_class: str  # "" = the cluster's default class (the original hard-wired gp2, i.e. AWS)
    service_account: str
    # The algorithm pod's own service account and pull secret: it runs the Workflow author's code, so it
    # never shares the stage pods' identity (workload identity, a token) or their registry credentials.
    algorithm_service_account: str
    node_selector: str | None
    pull_secret: str | None
    algorithm_pull_secret: str | None
    # USER_NAMESPACES: algorithm and filter pods run with hostUsers: false (needs kernel and runtime support).
    user_namespaces: bool
    pull_policy: str
    filtering_container: str | None
    image: str  # OCEAN_C2D_IMAGE: our own image, the default for the configure and publish steps
    pod_configuration_container: str
    pod_publish_container: str
    templates_dir: str | None  # None = the templates shipped in the package
    # The Secret (in each Workflow's namespace) holding the storage credentials; stage pods read it by
    # secretKeyRef, so no credential is ever a plain env value. No stage pod reads the operator key.
    credentials_secret: str

    notify_start_url: str | None
    notify_stop_url: str | None
    notify_timeout_seconds: float
    notify_max_attempts: int

    publish: PublishSettings

    debug_no_cleanup: bool
    workflow_ttl_seconds: int | None  # None = keep finished Workflows
    configure_timeout_seconds: int
    filter_timeout_seconds: int
    publish_timeout_seconds: int
    resync_seconds: int
    # The isolation check of algorithm and filter pods (steps/isolation.py): the address they must fail to
    # reach before the algorithm starts (None = the API server, KUBERNETES_SERVICE_HOST:PORT in the pod),
    # and how long the policy may take to hold before the Workflow ends NetworkNotIsolated.
    isolation_probe_address: str | None
    isolation_timeout_seconds: int

    watch_namespace: str | None  # None = the operator's own namespace; "*" = all namespaces
    log_level: str | None  # upper-case
    log_cfg: str | None  # the original only used it when LOG_LEVEL is unset; the caller keeps that rule
    metrics_port: int
    health_port: int
    # The download signer (signer.py): where the operator serves it, and the URL configure pods use to reach
    # it (None: downloads by DID fail, saying so). A NetworkPolicy must let configure pods reach it.
    signer_host: str
    signer_port: int
    signer_url: str | None
    # EGRESS_ALLOW_CIDRS, CLUSTER_CIDRS, STAGE_EGRESS_ENDPOINTS, ALLOWED_METADATA_CACHES, ALLOWED_PROVIDERS:
    # where a Workflow's pods may connect, and which services receive the operator's signed requests.
    egress: EgressValues = field(default_factory=EgressValues)
    # LEADER_ELECTION: act only while holding a Lease (leadership.py); None (the default for a bare
    # `ocean-c2d run`) acts at once, as a single replica must. The chart turns it on.
    leader_election: LeaderElectionSettings | None = None

    def plan_settings(self) -> PlanSettings:
        """The part of these settings the reconcile reads, including what the child templates use."""
        publish = self.publish
        publish_env = {
            "IPFS_OUTPUT": publish.ipfs_output,
            "IPFS_OUTPUT_PREFIX": publish.ipfs_output_prefix,
            "IPFS_API_CLIENT": publish.ipfs_api_client,
            "IPFS_TYPE": publish.ipfs_type,
            "IPFS_EXPIRY_TIME": publish.ipfs_expiry_time_seconds,
            "AWS_REGION": publish.aws_region,
            "AWS_BUCKET_OUTPUT": publish.aws_bucket_output,
            "AWS_ENDPOINT_URL": publish.aws_endpoint_url,
        }
        return PlanSettings(
            cleanup=not self.debug_no_cleanup,
            notify_start=self.notify_start_url is not None,
            notify_stop=self.notify_stop_url is not None,
            workflow_ttl_seconds=self.workflow_ttl_seconds,
            filtering_container=self.filtering_container,
            configure_timeout=self.configure_timeout_seconds,
            filter_timeout=self.filter_timeout_seconds,
            publish_timeout=self.publish_timeout_seconds,
            template_values=TemplateValues(
                service_account=self.service_account,
                algorithm_service_account=self.algorithm_service_account,
                pull_secret=self.pull_secret,
                algorithm_pull_secret=self.algorithm_pull_secret,
                user_namespaces=self.user_namespaces,
                node_selector_scope=self.node_selector,
                pull_policy=self.pull_policy,
                configure_image=self.pod_configuration_container,
                publish_image=self.pod_publish_container,
                credentials_secret=self.credentials_secret,
                storage_class=self.storage_class,
                publish_env={k: v for k, v in publish_env.items() if v is not None},
                isolation_probe_address=self.isolation_probe_address,
                signer_url=self.signer_url or "",
                isolation_timeout=self.isolation_timeout_seconds,
                egress=self.egress,
            ),
        )


# --- parse helpers: each appends "NAME: problem" to `errors` and returns a fallback instead of raising ---


def _str(environ: Mapping[str, str], name: str) -> str | None:
    """The stripped value, or None when unset; an empty value means "not set" (Helm renders unset as "")."""
    value = environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _text(environ: Mapping[str, str], name: str, default: str) -> str:
    value = _str(environ, name)
    return default if value is None else value


def _describe_int(minimum: int, maximum: int | None) -> str:
    if maximum is not None:
        return f"an integer from {minimum} to {maximum}"
    if minimum == 0:
        return "a non-negative integer"
    if minimum == 1:
        return "a positive integer"
    return f"an integer >= {minimum}"


def _optional_int(
    environ: Mapping[str, str], name: str, errors: list[str], *, minimum: int, maximum: int | None = None
) -> int | None:
    raw = _str(environ, name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        errors.append(f"{name}: expected {_describe_int(minimum, maximum)}, got {raw!r}")
        return None
    return value


def _int(
    environ: Mapping[str, str],
    name: str,
    errors: list[str],
    *,
    default: int,
    minimum: int,
    maximum: int | None = None,
) -> int:
    value = _optional_int(environ, name, errors, minimum=minimum, maximum=maximum)
    return default if value is None else value


def _float(
    environ: Mapping[str, str], name: str, errors: list[str], *, default: float, positive: bool
) -> float:
    """A finite number, > 0 when `positive` else >= 0 ("nan" and "inf" parse as floats but mean nothing)."""
    raw = _str(environ, name)
    if raw is None:
        return default
    try:
        value: float | None = float(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < 0 or (positive and value == 0):
        expected = "a positive number" if positive else "a non-negative number"
        errors.append(f"{name}: expected {expected}, got {raw!r}")
        return default
    return value


def _choice(
    environ: Mapping[str, str],
    name: str,
    errors: list[str],
    choices: tuple[str, ...],
    *,
    ignore_case: bool = False,
) -> str | None:
    """One of `choices` (returned in their spelling), or None when unset."""
    raw = _str(environ, name)
    if raw is None:
        return None
    for choice in choices:
        if raw == choice or (ignore_case and raw.upper() == choice.upper()):
            return choice
    errors.append(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
    return None


def _url(environ: Mapping[str, str], name: str, errors: list[str]) -> str | None:
    """An http(s) URL with a host, or None; caught here rather than at the first job's notification."""
    raw = _str(environ, name)
    if raw is None:
        return None
    try:
        parts = urlsplit(raw)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        valid = False
    if not valid:
        errors.append(f"{name}: expected an http:// or https:// URL with a host, got {raw!r}")
        return None
    return raw


def _label(environ: Mapping[str, str], name: str, errors: list[str], *, default: str) -> str:
    raw = _str(environ, name)
    if raw is None:
        return default
    if not _DNS1123_LABEL.fullmatch(raw):
        errors.append(
            f"{name}: expected a DNS-1123 label (lower-case letters, digits and '-', "
            f"at most 63 characters, starting and ending with a letter or digit), got {raw!r}"
        )
        return default
    return raw


def _algorithm_service_account(environ: Mapping[str, str], stage_account: str, errors: list[str]) -> str:
    """ALGORITHM_SERVICE_ACCOUNT, by default the namespace's `default` (never the stage pods' account: a
    workload identity bound to it would reach the algorithm). Both `default` is allowed: no identity."""
    account = _text(environ, "ALGORITHM_SERVICE_ACCOUNT", "default")
    if account == stage_account and account != "default":
        errors.append(f"ALGORITHM_SERVICE_ACCOUNT: must differ from SERVICE_ACCOUNT (both are {account!r})")
    return account


def _parse_key(value: str) -> OperatorKey | None:
    """The key, or None. Catches everything: eth_keys rejects out-of-range keys with its own
    ValidationError (not a ValueError) whose text quotes the key, so no exception text may escape."""
    try:
        return OperatorKey.from_hex(value)
    except Exception:
        return None


def _generate_key() -> OperatorKey:
    # A random 32-byte string is outside 1..n-1 with probability ~2**-128, but retrying costs nothing.
    while True:
        key = _parse_key(secrets.token_bytes(32).hex())
        if key is not None:
            return key


def _operator_key(environ: Mapping[str, str], errors: list[str]) -> tuple[OperatorKey | None, bool]:
    raw = _str(environ, "OPERATOR_PRIVATE_KEY")
    if raw is not None:
        key = _parse_key(raw)
        if key is None:
            # Never echo the value: this message ends up in logs and events.
            errors.append(
                "OPERATOR_PRIVATE_KEY: expected 64 hex digits (optionally 0x-prefixed) of a valid key"
            )
        return key, False
    if (_str(environ, "OCEAN_C2D_DEV_MODE") or "").lower() in _TRUTHY:
        return _generate_key(), True
    errors.append(
        "OPERATOR_PRIVATE_KEY: required (set OCEAN_C2D_DEV_MODE=1 to use a throwaway key for testing)"
    )
    return None, False


def _default_image() -> str:
    installed = package_version()
    # A source tree that was never installed runs the latest image.
    return f"{PACKAGE}:{'latest' if installed == 'unknown' else installed}"


def _default_environment(environ: Mapping[str, str], errors: list[str]) -> DefaultEnvironment | None:
    env = DefaultEnvironment(
        cpu_count=_int(environ, "nCPU", errors, default=1, minimum=1),
        cpu_type=_text(environ, "cpuType", ""),
        gpu_count=_int(environ, "nGPU", errors, default=0, minimum=0),
        gpu_ram_gb=_float(environ, "gpuRam", errors, default=0.0, positive=False),
        gpu_type=_text(environ, "gpuType", ""),
        ram_gb=_float(environ, "ramGB", errors, default=1.0, positive=True),
        disk_gb=_float(environ, "diskGB", errors, default=1.0, positive=True),
        price_per_minute=_float(environ, "priceMinute", errors, default=0.0, positive=False),
        description=_text(environ, "description", ""),
        max_jobs=_int(environ, "maxJobs", errors, default=10, minimum=1),
        # The original defaulted to 60 s, which kills almost any real algorithm; an hour is a sane default.
        max_job_duration_seconds=_int(environ, "maxJobDuration", errors, default=3600, minimum=1),
        storage_expiry_hours=_int(environ, "STORAGE_EXPIRY", errors, default=0, minimum=0),
    )
    # Parsed regardless so that bad values are reported, but only "present" (non-empty) ones define it.
    if all(_str(environ, name) is None for name in DEFAULT_ENVIRONMENT_VARIABLES):
        return None
    return env


def _publish(environ: Mapping[str, str], errors: list[str]) -> PublishSettings:
    return PublishSettings(
        ipfs_output=_str(environ, "IPFS_OUTPUT"),
        ipfs_output_prefix=_str(environ, "IPFS_OUTPUT_PREFIX"),
        ipfs_api_key=_str(environ, "IPFS_API_KEY"),
        ipfs_api_client=_str(environ, "IPFS_API_CLIENT"),
        ipfs_type=_choice(environ, "IPFS_TYPE", errors, IPFS_TYPES),
        ipfs_expiry_time_seconds=_optional_int(environ, "IPFS_EXPIRY_TIME", errors, minimum=0),
        aws_access_key_id=_str(environ, "AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=_str(environ, "AWS_SECRET_ACCESS_KEY"),
        aws_region=_str(environ, "AWS_REGION"),
        aws_bucket_output=_str(environ, "AWS_BUCKET_OUTPUT"),
        aws_endpoint_url=_str(environ, "AWS_ENDPOINT_URL"),
    )


def _host_port(environ: Mapping[str, str], name: str, errors: list[str]) -> str | None:
    """`host:port` (an IPv6 host in brackets), or None when unset."""
    raw = _str(environ, name)
    if raw is None:
        return None
    try:
        split_host_port(raw)
    except ValueError as error:
        errors.append(f"{name}: {error}")
        return None
    return raw


def _items(environ: Mapping[str, str], name: str) -> list[str]:
    return [item.strip() for item in (_str(environ, name) or "").split(",") if item.strip()]


def _parsed(environ: Mapping[str, str], name: str, errors: list[str], parse: Callable[[str], T]) -> list[T]:
    """Each comma-separated item of `name` through `parse`; one error per bad item."""
    values: list[T] = []
    for item in _items(environ, name):
        try:
            values.append(parse(item))
        except ValueError as error:
            errors.append(f"{name}: {item!r}: {error}")
    return values


def _egress(
    environ: Mapping[str, str], errors: list[str], signer_url: str | None, signer_port: int
) -> EgressValues:
    """Where the Workflows' pods may connect (addresses.py). The defaults allow no private, link-local,
    CGNAT or other non-public address, and no metadata cache or provider at all."""
    allow = _parsed(environ, "EGRESS_ALLOW_CIDRS", errors, parse_network)
    cluster = _parsed(environ, "CLUSTER_CIDRS", errors, parse_network)
    endpoints = _parsed(environ, "STAGE_EGRESS_ENDPOINTS", errors, parse_endpoint)
    signer = host_endpoint(signer_url) if signer_url else None
    if signer is not None and signer not in endpoints:
        endpoints.append(signer)  # configure pods ask the signer; by IP it can go in their policy
    v4, v6 = policy_excepts(cluster)
    selector = _str(environ, "SIGNER_POD_SELECTOR")
    signer_namespace = ""
    signer_labels: tuple[tuple[str, str], ...] = ()
    if selector is not None:
        try:
            signer_namespace, signer_labels = parse_pod_selector(selector)
        except ValueError as error:
            errors.append(f"SIGNER_POD_SELECTOR: {error}")
    return EgressValues(
        allow_cidrs=tuple(str(network) for network in allow),
        cluster_cidrs=tuple(str(network) for network in cluster),
        stage_endpoints=tuple(endpoints),
        allowed_metadata_caches=tuple(_parsed(environ, "ALLOWED_METADATA_CACHES", errors, parse_base_url)),
        allowed_providers=tuple(_parsed(environ, "ALLOWED_PROVIDERS", errors, parse_base_url)),
        public_except_v4=tuple(v4),
        public_except_v6=tuple(v6),
        signer_namespace=signer_namespace,
        signer_labels=signer_labels,
        signer_port=signer_port if signer_namespace else 0,  # the pod's port: what the policy sees
    )


def _pod_ip(environ: Mapping[str, str], errors: list[str]) -> str | None:
    """POD_IP (the downward API's status.podIP): an IPv4 or IPv6 address, or None."""
    raw = _str(environ, "POD_IP")
    if raw is None:
        return None
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        errors.append(f"POD_IP: expected an IP address, got {raw!r}")
        return None


def _leader_election(environ: Mapping[str, str], errors: list[str]) -> LeaderElectionSettings | None:
    """LEADER_ELECTION and the Lease's settings; parsed (and reported) even when it is off."""
    default = LeaderElectionSettings()
    on = _choice(environ, "LEADER_ELECTION", errors, ("true", "false"), ignore_case=True) == "true"
    lease_namespace = _str(environ, "LEASE_NAMESPACE")
    if lease_namespace is not None and not _DNS1123_LABEL.fullmatch(lease_namespace):
        errors.append(f"LEASE_NAMESPACE: expected a namespace name, got {lease_namespace!r}")
    signer_slice = _str(environ, "SIGNER_ENDPOINT_SLICE")
    if signer_slice is not None and not _DNS1123_LABEL.fullmatch(signer_slice):
        errors.append(f"SIGNER_ENDPOINT_SLICE: expected a DNS-1123 label, got {signer_slice!r}")
    election = LeaderElectionSettings(
        lease_name=_label(environ, "LEASE_NAME", errors, default=default.lease_name),
        lease_namespace=lease_namespace,
        identity=_str(environ, "LEADER_IDENTITY"),
        lease_duration_seconds=_int(
            environ, "LEASE_DURATION_SECONDS", errors, default=default.lease_duration_seconds, minimum=2
        ),
        renew_deadline_seconds=_float(
            environ, "RENEW_DEADLINE_SECONDS", errors, default=default.renew_deadline_seconds, positive=True
        ),
        retry_period_seconds=_float(
            environ, "RETRY_PERIOD_SECONDS", errors, default=default.retry_period_seconds, positive=True
        ),
        signer_endpoint_slice=signer_slice,
        pod_ip=_pod_ip(environ, errors),
    )
    errors.extend(election.problems())
    return election if on else None


def _watch_namespace(environ: Mapping[str, str], errors: list[str]) -> str | None:
    """None (the operator's own namespace), "*" (all namespaces) or a namespace name."""
    raw = _str(environ, "WATCH_NAMESPACE")
    if raw is None or raw == "*":
        return raw
    if not _DNS1123_LABEL.fullmatch(raw):
        errors.append(f"WATCH_NAMESPACE: expected a namespace name or '*', got {raw!r}")
        return None
    return raw


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Parse and validate `environ` (normally os.environ); raise one SettingsError listing every problem."""
    errors: list[str] = []
    operator_key, key_generated = _operator_key(environ, errors)
    default_environment = _default_environment(environ, errors)
    default_environment_name = _label(environ, "DEFAULT_ENVIRONMENT_NAME", errors, default="default")
    storage_class = _text(environ, "STORAGE_CLASS", "")
    service_account = _text(environ, "SERVICE_ACCOUNT", "default")
    algorithm_service_account = _algorithm_service_account(environ, service_account, errors)
    node_selector = _str(environ, "NODE_SELECTOR")
    pull_secret = _str(environ, "PULL_SECRET")
    algorithm_pull_secret = _str(environ, "ALGORITHM_PULL_SECRET")
    user_namespaces = (
        _choice(environ, "USER_NAMESPACES", errors, ("true", "false"), ignore_case=True) == "true"
    )
    pull_policy = _choice(environ, "PULL_POLICY", errors, PULL_POLICIES) or "IfNotPresent"
    filtering_container = _str(environ, "FILTERING_CONTAINER")
    image = _str(environ, "OCEAN_C2D_IMAGE") or _default_image()
    pod_configuration_container = _text(environ, "POD_CONFIGURATION_CONTAINER", image)
    pod_publish_container = _text(environ, "POD_PUBLISH_CONTAINER", image)
    templates_dir = _str(environ, "TEMPLATES_DIR")
    credentials_secret = _text(environ, "CREDENTIALS_SECRET", "ocean-c2d-credentials")
    notify_start_url = _url(environ, "NOTIFY_START_URL", errors)
    notify_stop_url = _url(environ, "NOTIFY_STOP_URL", errors)
    notify_timeout_seconds = _float(environ, "NOTIFY_TIMEOUT_SECONDS", errors, default=10.0, positive=True)
    notify_max_attempts = _int(environ, "NOTIFY_MAX_ATTEMPTS", errors, default=5, minimum=1)
    publish = _publish(environ, errors)
    # As in the original: any non-empty value, even "0" or "false", keeps the job's resources.
    debug_no_cleanup = bool(environ.get("DEBUG_NO_CLEANUP"))
    workflow_ttl_seconds = _optional_int(environ, "WORKFLOW_TTL_SECONDS", errors, minimum=0)
    configure_timeout_seconds = _int(environ, "CONFIGURE_TIMEOUT_SECONDS", errors, default=3600, minimum=1)
    filter_timeout_seconds = _int(environ, "FILTER_TIMEOUT_SECONDS", errors, default=1800, minimum=1)
    publish_timeout_seconds = _int(environ, "PUBLISH_TIMEOUT_SECONDS", errors, default=3600, minimum=1)
    # The slow safety timer that catches missed events; below 10 s it would hammer the API server.
    resync_seconds = _int(environ, "RESYNC_SECONDS", errors, default=600, minimum=10)
    isolation_probe_address = _host_port(environ, "ISOLATION_PROBE_ADDRESS", errors)
    isolation_timeout_seconds = _int(
        environ, "ISOLATION_TIMEOUT_SECONDS", errors, default=60, minimum=1, maximum=3600
    )
    watch_namespace = _watch_namespace(environ, errors)
    leader_election = _leader_election(environ, errors)
    log_level = _choice(environ, "LOG_LEVEL", errors, LOG_LEVELS, ignore_case=True)
    log_cfg = _str(environ, "LOG_CFG")
    metrics_port = _int(environ, "METRICS_PORT", errors, default=8000, minimum=1, maximum=65535)
    health_port = _int(environ, "HEALTH_PORT", errors, default=8080, minimum=1, maximum=65535)
    if metrics_port == health_port:
        errors.append(f"HEALTH_PORT: must differ from METRICS_PORT (both are {health_port})")
    signer_host = _text(environ, "SIGNER_HOST", "0.0.0.0")
    signer_port = _int(environ, "SIGNER_PORT", errors, default=8090, minimum=1, maximum=65535)
    if signer_port in (metrics_port, health_port):
        errors.append(f"SIGNER_PORT: must differ from METRICS_PORT and HEALTH_PORT (it is {signer_port})")
    signer_url = _url(environ, "SIGNER_URL", errors)
    egress = _egress(environ, errors, signer_url, signer_port)

    if errors or operator_key is None:  # a missing or bad key always adds an error
        raise SettingsError(errors)
    return Settings(
        operator_key=operator_key,
        operator_key_generated=key_generated,
        default_environment=default_environment,
        default_environment_name=default_environment_name,
        storage_class=storage_class,
        service_account=service_account,
        algorithm_service_account=algorithm_service_account,
        node_selector=node_selector,
        pull_secret=pull_secret,
        algorithm_pull_secret=algorithm_pull_secret,
        user_namespaces=user_namespaces,
        pull_policy=pull_policy,
        filtering_container=filtering_container,
        image=image,
        pod_configuration_container=pod_configuration_container,
        pod_publish_container=pod_publish_container,
        templates_dir=templates_dir,
        credentials_secret=credentials_secret,
        notify_start_url=notify_start_url,
        notify_stop_url=notify_stop_url,
        notify_timeout_seconds=notify_timeout_seconds,
        notify_max_attempts=notify_max_attempts,
        publish=publish,
        debug_no_cleanup=debug_no_cleanup,
        workflow_ttl_seconds=workflow_ttl_seconds,
        configure_timeout_seconds=configure_timeout_seconds,
        filter_timeout_seconds=filter_timeout_seconds,
        publish_timeout_seconds=publish_timeout_seconds,
        resync_seconds=resync_seconds,
        isolation_probe_address=isolation_probe_address,
        isolation_timeout_seconds=isolation_timeout_seconds,
        watch_namespace=watch_namespace,
        log_level=log_level,
        log_cfg=log_cfg,
        metrics_port=metrics_port,
        health_port=health_port,
        signer_host=signer_host,
        signer_port=signer_port,
        signer_url=signer_url,
        egress=egress,
        leader_election=leader_election,
    )


def load_publish_settings(environ: Mapping[str, str]) -> PublishSettings:
    """Only the publish variables (IPFS_*, AWS_*), parsed as load_settings parses them: for `ocean-c2d
    api`, which reads results from where publish put them. SettingsError lists every problem."""
    errors: list[str] = []
    publish = _publish(environ, errors)
    if errors:
        raise SettingsError(errors)
    return publish
