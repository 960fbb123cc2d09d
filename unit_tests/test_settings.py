"""load_settings: defaults, typed parsing, and one error that lists every bad variable."""

from __future__ import annotations

import dataclasses
import re
import secrets
from importlib.metadata import version
from typing import Any

import pytest

from ocean_c2d.settings import (
    DEFAULT_ENVIRONMENT_VARIABLES,
    DefaultEnvironment,
    Settings,
    SettingsError,
    load_settings,
)

KEY_HEX = "0x95c716e9df3bc4ffd7299e7861ce401de810e8d245d3127b8e7b430f4ca7fd27"
ADDRESS = "0x6D39A833d1a6789AECa50dB85CB830bc08319F45"
BASE = {"OPERATOR_PRIVATE_KEY": KEY_HEX}


def load(**extra: str) -> Settings:
    return load_settings({**BASE, **extra})


def load_error(environ: dict[str, str]) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    return caught.value


def test_defaults_with_only_the_key() -> None:
    settings = load()
    assert settings.operator_key.address == ADDRESS
    assert settings.operator_key_generated is False
    assert settings.default_environment is None
    assert settings.default_environment_name == "default"
    assert settings.storage_class == ""
    assert settings.service_account == "default"
    assert (settings.node_selector, settings.pull_secret, settings.filtering_container) == (None, None, None)
    assert settings.pull_policy == "IfNotPresent"
    image = f"ocean-c2d:{version('ocean-c2d')}"
    assert (settings.image, settings.pod_configuration_container, settings.pod_publish_container) == (
        image,
        image,
        image,
    )
    assert settings.templates_dir is None
    assert (settings.notify_start_url, settings.notify_stop_url) == (None, None)
    assert settings.notify_timeout_seconds == 10.0
    assert settings.notify_max_attempts == 5
    assert all(value is None for value in dataclasses.astuple(settings.publish))
    assert settings.debug_no_cleanup is False
    assert settings.workflow_ttl_seconds is None
    assert settings.configure_timeout_seconds == 3600
    assert settings.filter_timeout_seconds == 1800
    assert settings.publish_timeout_seconds == 3600
    assert settings.resync_seconds == 600
    assert (settings.watch_namespace, settings.log_level, settings.log_cfg) == (None, None, None)
    assert (settings.metrics_port, settings.health_port) == (8000, 8080)


def test_settings_are_frozen() -> None:
    settings = load(nCPU="2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.metrics_port = 1  # type: ignore[misc]
    assert settings.default_environment is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.default_environment.max_jobs = 1  # type: ignore[misc]


@pytest.mark.parametrize("with_prefix", [True, False])
def test_key_with_or_without_0x(with_prefix: bool) -> None:
    key = KEY_HEX if with_prefix else KEY_HEX.removeprefix("0x")
    assert load_settings({"OPERATOR_PRIVATE_KEY": key}).operator_key.address == ADDRESS


# --- the default compute environment -----------------------------------------------------------------

DEFAULT_ENVIRONMENT = DefaultEnvironment(
    cpu_count=1,
    cpu_type="",
    gpu_count=0,
    gpu_ram_gb=0.0,
    gpu_type="",
    ram_gb=1.0,
    disk_gb=1.0,
    price_per_minute=0.0,
    description="",
    max_jobs=10,
    max_job_duration_seconds=3600,
    storage_expiry_hours=0,
)


@pytest.mark.parametrize(
    ("name", "value", "field_name", "expected"),
    [
        ("nCPU", "4", "cpu_count", 4),
        ("cpuType", "AMD EPYC", "cpu_type", "AMD EPYC"),
        ("nGPU", "0", "gpu_count", 0),
        ("nGPU", "2", "gpu_count", 2),
        ("gpuRam", "24.5", "gpu_ram_gb", 24.5),
        ("gpuType", "nvidia-a100", "gpu_type", "nvidia-a100"),
        ("ramGB", "0.5", "ram_gb", 0.5),
        ("diskGB", "100", "disk_gb", 100.0),
        ("priceMinute", "0.01", "price_per_minute", 0.01),
        ("description", "small CPU box", "description", "small CPU box"),
        ("maxJobs", "3", "max_jobs", 3),
        ("maxJobDuration", "60", "max_job_duration_seconds", 60),
        ("STORAGE_EXPIRY", "48", "storage_expiry_hours", 48),
    ],
)
def test_each_seed_variable_creates_the_default_environment(
    name: str, value: str, field_name: str, expected: Any
) -> None:
    environment = load(**{name: value}).default_environment
    assert environment == dataclasses.replace(DEFAULT_ENVIRONMENT, **{field_name: expected})
    assert type(getattr(environment, field_name)) is type(expected)


def test_every_seed_variable_is_covered() -> None:
    assert set(DEFAULT_ENVIRONMENT_VARIABLES) == {
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
    }


def test_empty_seed_variables_do_not_create_the_default_environment() -> None:
    assert load(**dict.fromkeys(DEFAULT_ENVIRONMENT_VARIABLES, "")).default_environment is None


@pytest.mark.parametrize("name", ["default-env", "a", "cpu1", "x" * 63])
def test_default_environment_name_accepts_dns_labels(name: str) -> None:
    assert load(DEFAULT_ENVIRONMENT_NAME=name).default_environment_name == name


# --- other typed values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        ("STORAGE_CLASS", "standard", "storage_class", "standard"),
        ("SERVICE_ACCOUNT", "c2d-jobs", "service_account", "c2d-jobs"),
        ("NODE_SELECTOR", "pool=c2d", "node_selector", "pool=c2d"),
        ("PULL_SECRET", "registry-creds", "pull_secret", "registry-creds"),
        ("FILTERING_CONTAINER", "example/filter:1", "filtering_container", "example/filter:1"),
        ("TEMPLATES_DIR", "/etc/c2d/templates", "templates_dir", "/etc/c2d/templates"),
        ("NOTIFY_TIMEOUT_SECONDS", "2.5", "notify_timeout_seconds", 2.5),
        ("NOTIFY_MAX_ATTEMPTS", "1", "notify_max_attempts", 1),
        ("WORKFLOW_TTL_SECONDS", "0", "workflow_ttl_seconds", 0),
        ("WORKFLOW_TTL_SECONDS", "86400", "workflow_ttl_seconds", 86400),
        ("CONFIGURE_TIMEOUT_SECONDS", "120", "configure_timeout_seconds", 120),
        ("FILTER_TIMEOUT_SECONDS", "60", "filter_timeout_seconds", 60),
        ("PUBLISH_TIMEOUT_SECONDS", "90", "publish_timeout_seconds", 90),
        ("RESYNC_SECONDS", "10", "resync_seconds", 10),
        ("WATCH_NAMESPACE", "c2d", "watch_namespace", "c2d"),
        ("WATCH_NAMESPACE", "*", "watch_namespace", "*"),
        ("LOG_CFG", "/etc/c2d/logging.yaml", "log_cfg", "/etc/c2d/logging.yaml"),
        ("METRICS_PORT", "65535", "metrics_port", 65535),
        ("HEALTH_PORT", "1", "health_port", 1),
        ("NOTIFY_START_URL", "", "notify_start_url", None),
        ("NODE_SELECTOR", "", "node_selector", None),
        ("WORKFLOW_TTL_SECONDS", "", "workflow_ttl_seconds", None),
        ("RESYNC_SECONDS", "", "resync_seconds", 600),
    ],
)
def test_typed_values(name: str, value: str, attribute: str, expected: Any) -> None:
    parsed = getattr(load(**{name: value}), attribute)
    assert parsed == expected
    assert type(parsed) is type(expected)


def test_step_images_default_to_our_image() -> None:
    settings = load(OCEAN_C2D_IMAGE="registry.example/ocean-c2d:dev")
    assert settings.image == "registry.example/ocean-c2d:dev"
    assert settings.pod_configuration_container == "registry.example/ocean-c2d:dev"
    assert settings.pod_publish_container == "registry.example/ocean-c2d:dev"
    overridden = load(POD_CONFIGURATION_CONTAINER="cfg:1", POD_PUBLISH_CONTAINER="pub:1")
    assert (overridden.pod_configuration_container, overridden.pod_publish_container) == ("cfg:1", "pub:1")


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("yes", True), ("0", True), ("false", True), ("", False)]
)
def test_debug_no_cleanup_is_any_non_empty_value(value: str, expected: bool) -> None:
    assert load(DEBUG_NO_CLEANUP=value).debug_no_cleanup is expected


@pytest.mark.parametrize("policy", ["Always", "IfNotPresent", "Never"])
def test_pull_policy_choices(policy: str) -> None:
    assert load(PULL_POLICY=policy).pull_policy == policy


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("debug", "DEBUG"),
        ("Info", "INFO"),
        ("WARNING", "WARNING"),
        ("error", "ERROR"),
        ("critical", "CRITICAL"),
    ],
)
def test_log_level_is_case_insensitive_and_stored_upper_case(value: str, expected: str) -> None:
    assert load(LOG_LEVEL=value).log_level == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://provider:8030/api/notify/start",
        "https://provider.example.com/notify",
        "https://10.0.0.1:8443/notify?token=x",
        "http://[::1]:8030/notify",
    ],
)
def test_notify_urls_accept_http_and_https(url: str) -> None:
    settings = load(NOTIFY_START_URL=url, NOTIFY_STOP_URL=url)
    assert (settings.notify_start_url, settings.notify_stop_url) == (url, url)


# --- publishing --------------------------------------------------------------------------------------

PUBLISH_ENV = {
    "IPFS_OUTPUT": "http://ipfs:5001",
    "IPFS_OUTPUT_PREFIX": "https://gateway.example/ipfs/",
    "IPFS_API_KEY": "ipfs-secret-value",
    "IPFS_API_CLIENT": "client-id",
    "IPFS_TYPE": "CLUSTER",
    "IPFS_EXPIRY_TIME": "3600",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEACCESSID",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
    "AWS_REGION": "eu-west-1",
    "AWS_BUCKET_OUTPUT": "c2d-results",
    "AWS_ENDPOINT_URL": "http://minio:9000",
}


def test_publish_settings_are_parsed() -> None:
    publish = load(**PUBLISH_ENV).publish
    assert publish.ipfs_output == "http://ipfs:5001"
    assert publish.ipfs_output_prefix == "https://gateway.example/ipfs/"
    assert publish.ipfs_api_key == "ipfs-secret-value"
    assert publish.ipfs_api_client == "client-id"
    assert publish.ipfs_type == "CLUSTER"
    assert publish.ipfs_expiry_time_seconds == 3600
    assert publish.aws_access_key_id == "AKIAEXAMPLEACCESSID"
    assert publish.aws_secret_access_key == "aws-secret-value"
    assert publish.aws_region == "eu-west-1"
    assert publish.aws_bucket_output == "c2d-results"
    assert publish.aws_endpoint_url == "http://minio:9000"


def test_secrets_are_not_in_repr() -> None:
    text = repr(load(**PUBLISH_ENV))
    for secret in (
        "ipfs-secret-value",
        "AKIAEXAMPLEACCESSID",
        "aws-secret-value",
        KEY_HEX.removeprefix("0x"),
    ):
        assert secret not in text
    # ...while the rest stays visible for debugging.
    assert "eu-west-1" in text
    assert "c2d-results" in text
    assert ADDRESS in text


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("nCPU", "0"),
        ("nCPU", "two"),
        ("nCPU", "1.5"),
        ("nGPU", "-1"),
        ("gpuRam", "-1"),
        ("gpuRam", "lots"),
        ("ramGB", "0"),
        ("ramGB", "nan"),
        ("diskGB", "-5"),
        ("diskGB", "inf"),
        ("priceMinute", "-0.1"),
        ("maxJobs", "ten"),
        ("maxJobs", "0"),
        ("maxJobDuration", "0"),
        ("STORAGE_EXPIRY", "-1"),
        ("DEFAULT_ENVIRONMENT_NAME", "Default"),
        ("DEFAULT_ENVIRONMENT_NAME", "-env"),
        ("DEFAULT_ENVIRONMENT_NAME", "x" * 64),
        ("DEFAULT_ENVIRONMENT_NAME", "under_score"),
        ("PULL_POLICY", "always"),
        ("PULL_POLICY", "Sometimes"),
        ("NOTIFY_START_URL", "ftp://provider/notify"),
        ("NOTIFY_START_URL", "provider:8030/notify"),
        ("NOTIFY_STOP_URL", "http://"),
        ("NOTIFY_STOP_URL", "https://host:notaport/x"),
        ("NOTIFY_STOP_URL", "http://[::1/x"),
        ("NOTIFY_TIMEOUT_SECONDS", "0"),
        ("NOTIFY_TIMEOUT_SECONDS", "soon"),
        ("NOTIFY_MAX_ATTEMPTS", "0"),
        ("IPFS_TYPE", "client"),
        ("IPFS_TYPE", "GATEWAY"),
        ("IPFS_EXPIRY_TIME", "-1"),
        ("IPFS_EXPIRY_TIME", "1h"),
        ("WORKFLOW_TTL_SECONDS", "-1"),
        ("CONFIGURE_TIMEOUT_SECONDS", "0"),
        ("FILTER_TIMEOUT_SECONDS", "x"),
        ("PUBLISH_TIMEOUT_SECONDS", "-3"),
        ("RESYNC_SECONDS", "9"),
        ("WATCH_NAMESPACE", "Bad_Namespace"),
        ("LOG_LEVEL", "VERBOSE"),
        ("METRICS_PORT", "0"),
        ("METRICS_PORT", "65536"),
        ("HEALTH_PORT", "http"),
        ("HEALTH_PORT", "8000"),
        ("SIGNER_PORT", "8000"),
        ("SIGNER_PORT", "0"),
        ("SIGNER_URL", "signer:8090"),
    ],
)
def test_invalid_value_names_the_variable(name: str, value: str) -> None:
    error = load_error({**BASE, name: value})
    assert isinstance(error, ValueError)
    assert len(error.problems) == 1
    assert str(error).startswith(f"{name}: ")


def test_error_message_format() -> None:
    error = load_error({**BASE, "maxJobs": "ten"})
    assert str(error) == "maxJobs: expected a positive integer, got 'ten'"


def test_all_problems_are_reported_at_once() -> None:
    environ = {
        **BASE,
        "nCPU": "zero",
        "ramGB": "-1",
        "PULL_POLICY": "sometimes",
        "NOTIFY_START_URL": "ftp://x",
        "METRICS_PORT": "70000",
        "LOG_LEVEL": "loud",
    }
    error = load_error(environ)
    lines = str(error).splitlines()
    assert len(lines) == 6
    assert [line.split(":", 1)[0] for line in lines] == [
        "nCPU",
        "ramGB",
        "PULL_POLICY",
        "NOTIFY_START_URL",
        "LOG_LEVEL",
        "METRICS_PORT",
    ]
    assert error.problems == tuple(lines)


def test_a_missing_key_is_reported_with_the_other_problems() -> None:
    error = load_error({"maxJobs": "0"})
    names = {line.split(":", 1)[0] for line in str(error).splitlines()}
    assert names == {"OPERATOR_PRIVATE_KEY", "maxJobs"}


# --- the operator key --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OPERATOR_PRIVATE_KEY": ""},
        {"OCEAN_C2D_DEV_MODE": "0"},
        {"OCEAN_C2D_DEV_MODE": "false"},
        {"OCEAN_C2D_DEV_MODE": ""},
    ],
)
def test_missing_key_without_dev_mode_fails(environ: dict[str, str]) -> None:
    error = load_error(environ)
    assert str(error).startswith("OPERATOR_PRIVATE_KEY: ")
    assert "required" in str(error)


@pytest.mark.parametrize("flag", ["1", "true", "TRUE", "yes", "Yes"])
def test_dev_mode_generates_a_throwaway_key(flag: str) -> None:
    settings = load_settings({"OCEAN_C2D_DEV_MODE": flag})
    assert settings.operator_key_generated is True
    assert re.fullmatch(r"0x[0-9a-fA-F]{40}", settings.operator_key.address)
    assert settings.operator_key.address != ADDRESS
    assert load_settings({"OCEAN_C2D_DEV_MODE": flag}).operator_key != settings.operator_key


def test_dev_mode_keeps_a_configured_key() -> None:
    settings = load_settings({**BASE, "OCEAN_C2D_DEV_MODE": "1"})
    assert settings.operator_key.address == ADDRESS
    assert settings.operator_key_generated is False


def test_dev_mode_retries_an_invalid_random_key(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([b"\x00" * 32, b"\xff" * 32, bytes.fromhex(KEY_HEX.removeprefix("0x"))])
    monkeypatch.setattr(secrets, "token_bytes", lambda n: next(draws))
    settings = load_settings({"OCEAN_C2D_DEV_MODE": "1"})
    assert settings.operator_key.address == ADDRESS
    assert settings.operator_key_generated is True


@pytest.mark.parametrize(
    "bad_key",
    [
        KEY_HEX[:-2],  # too short
        KEY_HEX + "00",  # too long
        KEY_HEX[:-1] + "g",  # not hex
        "0x" + "00" * 32,  # zero: outside the curve's key range
        "0x" + "ff" * 32,  # above the curve order
    ],
)
def test_a_bad_key_is_not_echoed(bad_key: str) -> None:
    error = load_error({"OPERATOR_PRIVATE_KEY": bad_key, "OCEAN_C2D_DEV_MODE": "1"})
    message = str(error)
    assert message.startswith("OPERATOR_PRIVATE_KEY: ")
    digits = bad_key.removeprefix("0x")
    assert digits not in message
    assert digits[:16] not in message
    # eth_keys quotes an out-of-range key as a decimal integer ("0" is too short to check for).
    if re.fullmatch(r"[0-9a-f]+", digits) and int(digits, 16) > 0:
        assert str(int(digits, 16)) not in message


def test_plan_settings_carry_what_the_reconcile_and_the_templates_read() -> None:
    settings = load_settings(
        {
            **BASE,
            "DEBUG_NO_CLEANUP": "1",
            "NOTIFY_STOP_URL": "https://receiver.example/stop",
            "OCEAN_C2D_IMAGE": "ocean-c2d:9",
            "AWS_BUCKET_OUTPUT": "results",
            "AWS_SECRET_ACCESS_KEY": "never-in-a-template",
            "NODE_SELECTOR": "c2d",
            "FILTERING_CONTAINER": "filter:1",
        }
    )
    planned = settings.plan_settings()

    assert (planned.cleanup, planned.notify_start, planned.notify_stop) == (False, False, True)
    assert planned.filtering_container == "filter:1"
    values = planned.template_values
    assert (values.configure_image, values.publish_image) == ("ocean-c2d:9", "ocean-c2d:9")
    assert values.node_selector_scope == "c2d"
    assert values.credentials_secret == "ocean-c2d-credentials"
    assert values.publish_env == {"AWS_BUCKET_OUTPUT": "results"}  # credentials go by secretKeyRef only
    assert "never-in-a-template" not in repr(values)


def test_the_isolation_check_settings() -> None:
    default = load().plan_settings().template_values
    assert (default.isolation_probe_address, default.isolation_timeout) == (None, 60)
    values = load(ISOLATION_PROBE_ADDRESS="10.96.0.1:443", ISOLATION_TIMEOUT_SECONDS="15").plan_settings()
    assert values.template_values.isolation_probe_address == "10.96.0.1:443"
    assert values.template_values.isolation_timeout == 15
    error = load_error({**BASE, "ISOLATION_PROBE_ADDRESS": "10.96.0.1", "ISOLATION_TIMEOUT_SECONDS": "0"})
    assert "ISOLATION_PROBE_ADDRESS: expected host:port" in str(error)
    assert "ISOLATION_TIMEOUT_SECONDS" in str(error)


def test_the_algorithm_pod_has_its_own_account_and_pull_secret() -> None:
    default = load().plan_settings().template_values
    assert (default.algorithm_service_account, default.algorithm_pull_secret) == ("default", None)
    values = (
        load(
            SERVICE_ACCOUNT="c2d-stage",
            PULL_SECRET="stage-regcred",
            ALGORITHM_SERVICE_ACCOUNT="c2d-algorithm",
            ALGORITHM_PULL_SECRET="algorithm-regcred",
        )
        .plan_settings()
        .template_values
    )
    assert (values.service_account, values.pull_secret) == ("c2d-stage", "stage-regcred")
    assert (values.algorithm_service_account, values.algorithm_pull_secret) == (
        "c2d-algorithm",
        "algorithm-regcred",
    )
    # Unset, the algorithm falls back to the namespace's `default` account, not to SERVICE_ACCOUNT.
    assert load(SERVICE_ACCOUNT="c2d-stage").algorithm_service_account == "default"


def test_the_algorithm_may_not_share_the_stage_account() -> None:
    error = load_error({**BASE, "SERVICE_ACCOUNT": "c2d-stage", "ALGORITHM_SERVICE_ACCOUNT": "c2d-stage"})
    assert "ALGORITHM_SERVICE_ACCOUNT: must differ from SERVICE_ACCOUNT" in str(error)


@pytest.mark.parametrize(
    ("value", "expected"), [("", False), ("false", False), ("true", True), ("TRUE", True)]
)
def test_user_namespaces_is_a_boolean(value: str, expected: bool) -> None:
    settings = load(USER_NAMESPACES=value)
    assert settings.user_namespaces is expected
    assert settings.plan_settings().template_values.user_namespaces is expected


def test_user_namespaces_rejects_other_values() -> None:
    assert "USER_NAMESPACES: expected one of true, false" in str(load_error({**BASE, "USER_NAMESPACES": "1"}))


def test_the_signer_listens_where_configured_and_its_url_reaches_the_configure_jobs() -> None:
    default = load()
    assert (default.signer_host, default.signer_port, default.signer_url) == ("0.0.0.0", 8090, None)
    assert default.plan_settings().template_values.signer_url == ""
    url = "http://ocean-c2d-signer.c2d.svc:9000"
    settings = load(SIGNER_HOST="10.0.0.5", SIGNER_PORT="9000", SIGNER_URL=url)
    assert (settings.signer_host, settings.signer_port, settings.signer_url) == ("10.0.0.5", 9000, url)
    assert settings.plan_settings().template_values.signer_url == url


def test_egress_defaults_allow_nothing_private_and_no_service() -> None:
    """Issue 11 (C11, C12): by default no private address is allowed, no service is listed, and the
    public-internet except lists hold the metadata service's link-local range."""
    egress = load().egress
    assert (egress.allow_cidrs, egress.cluster_cidrs, egress.stage_endpoints) == ((), (), ())
    assert (egress.allowed_metadata_caches, egress.allowed_providers) == ((), ())
    assert "169.254.0.0/16" in egress.public_except_v4
    assert "fe80::/10" in egress.public_except_v6


def test_egress_settings_are_parsed_and_reach_the_templates() -> None:
    settings = load(
        EGRESS_ALLOW_CIDRS="10.250.0.1, 127.0.0.2/32",
        CLUSTER_CIDRS="10.244.0.0/16,34.118.224.0/20",
        STAGE_EGRESS_ENDPOINTS="10.96.0.20/32:9000",
        SIGNER_URL="http://10.250.0.1:8090",
        ALLOWED_METADATA_CACHES="https://aquarius.example",
        ALLOWED_PROVIDERS="https://provider.example/api,http://127.0.0.2:8030",
    )
    egress = settings.egress
    assert egress.allow_cidrs == ("10.250.0.1/32", "127.0.0.2/32")
    assert [(e.cidr, e.port) for e in egress.stage_endpoints] == [
        ("10.96.0.20/32", 9000),
        ("10.250.0.1/32", 8090),
    ]
    assert "34.118.224.0/20" in egress.public_except_v4  # a public cluster range is excepted too
    assert egress.allowed_providers == ("https://provider.example/api", "http://127.0.0.2:8030")
    assert settings.plan_settings().template_values.egress == egress


def test_the_signer_pod_selector_names_namespace_and_labels() -> None:
    egress = load(
        SIGNER_POD_SELECTOR="c2d:app.kubernetes.io/name=ocean-c2d,app.kubernetes.io/instance=r"
    ).egress
    assert egress.signer_namespace == "c2d"
    assert egress.signer_labels == (
        ("app.kubernetes.io/name", "ocean-c2d"),
        ("app.kubernetes.io/instance", "r"),
    )
    assert egress.signer_port == 8090
    assert "SIGNER_POD_SELECTOR" in str(load_error({**BASE, "SIGNER_POD_SELECTOR": "no-labels"}))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EGRESS_ALLOW_CIDRS", "10.0.0.1/8"),
        ("CLUSTER_CIDRS", "not-a-cidr"),
        ("STAGE_EGRESS_ENDPOINTS", "10.96.0.20/32"),
        ("ALLOWED_PROVIDERS", "ftp://provider.example"),
        ("ALLOWED_METADATA_CACHES", "https://user@aquarius.example"),
    ],
)
def test_bad_egress_values_name_their_variable(name: str, value: str) -> None:
    assert name in str(load_error({**BASE, name: value}))
