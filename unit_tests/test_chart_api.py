"""The chart's optional operator-service-compatible API (issue 12): `api.enabled` renders a Deployment of
`ocean-c2d api`, its Service, ServiceAccount, least-privilege Role, NetworkPolicy and (with the operator's)
ServiceMonitor, which scrapes the metrics port (api.metricsPort, open to api.metricsClients) and not the
API's; nothing otherwise. Rendered with the helm binary toolchain/build.sh built."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ocean_c2d.api.settings import load_api_settings
from unit_tests.built_tools import binary

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "ocean-c2d"
SCENARIO = CHART / "ci" / "api-values.yaml"
NAMESPACE = "c2d"
PROVIDERS = ["0x6813Eb9362372EEF6200f3b1dbC3f819671cBA69", "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"]
OPERATOR_ADDRESS = "0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF"
ENABLED = (
    "--set", "api.enabled=true",
    "--set", f"api.allowedProviders={{{PROVIDERS[0]},{PROVIDERS[1]}}}",
    "--set", f"api.operatorAddress={OPERATOR_ADDRESS}",
)  # fmt: skip
API_SELECTOR = {
    "app.kubernetes.io/name": "ocean-c2d-api",
    "app.kubernetes.io/instance": "c2d",
    "app.kubernetes.io/component": "api",
}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("helm", "helm"), *args], capture_output=True, text=True, check=False, timeout=120
    )


def template(*args: str) -> subprocess.CompletedProcess[str]:
    return helm("template", "c2d", str(CHART), "--namespace", NAMESPACE, *args)


def render(*args: str) -> list[dict[str, Any]]:
    result = template(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def is_api(doc: dict[str, Any]) -> bool:
    return bool(doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "api")


def api_object(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in docs if doc["kind"] == kind and is_api(doc)]
    return found


def operator_object(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in docs if doc["kind"] == kind and not is_api(doc)]
    return found


def api_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = api_object(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return found  # type: ignore[no-any-return]


def api_env(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in api_container(docs)["env"]}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def scenario() -> list[dict[str, Any]]:
    return render("-f", str(SCENARIO))


def test_disabled_by_default_renders_nothing_of_the_api() -> None:
    assert yaml.safe_load((CHART / "values.yaml").read_text())["api"]["enabled"] is False
    for docs in (render(), render("-f", str(CHART / "ci" / "monitoring-values.yaml"))):
        assert [doc for doc in docs if is_api(doc)] == []
        assert not [doc for doc in docs if doc["metadata"]["name"].endswith("-api")]
    # Disabled, the API's required values are not required.
    assert template("--set", "api.auth=on").returncode == 0


def test_lint_strict_passes_with_the_api() -> None:
    result = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, "-f", str(SCENARIO))
    assert result.returncode == 0, result.stdout + result.stderr


def test_enabled_renders_each_api_object_once() -> None:
    docs = scenario()
    kinds = sorted(doc["kind"] for doc in docs if is_api(doc))
    assert kinds == ["Deployment", "NetworkPolicy", "Role", "RoleBinding", "Service", "ServiceAccount"]
    deployment = api_object(docs, "Deployment")
    assert deployment["metadata"]["name"] == "c2d-ocean-c2d-api"
    assert deployment["spec"]["replicas"] == 2  # stateless: nonces live in ConfigMaps
    assert api_container(docs)["args"] == ["api"]
    assert (
        api_container(docs)["image"]
        == operator_object(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert api_object(render(*ENABLED, "--set", "api.replicas=3"), "Deployment")["spec"]["replicas"] == 3


def test_the_role_is_exactly_what_the_api_calls() -> None:
    docs = scenario()
    role = api_object(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["oceanprotocol.com"], "resources": ["workflows"],
         "verbs": ["get", "list", "watch", "create", "patch"]},
        {"apiGroups": ["oceanprotocol.com"], "resources": ["computeenvironments"],
         "verbs": ["get", "list", "watch"]},
        # create cannot be limited by name in RBAC; get and patch are, to the allowed providers' nonces
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"],
         "resourceNames": [
             "ocean-c2d-api-nonce-0x6813eb9362372eef6200f3b1dbc3f819671cba69",
             "ocean-c2d-api-nonce-0x7e5f4552091a69125d5dfcb7b8c2659029395bdf",
         ]},
    ]  # fmt: skip
    binding = api_object(docs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "c2d-ocean-c2d-api",
    }
    account = api_object(docs, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
    ]
    pod = api_object(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["name"] == "c2d-ocean-c2d-api"
    operator_account = operator_object(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert operator_account != account["name"]


def test_with_auth_off_the_api_gets_no_configmap_at_all() -> None:
    off_rules = [
        {"apiGroups": ["oceanprotocol.com"], "resources": ["workflows"],
         "verbs": ["get", "list", "watch", "create", "patch"]},
        {"apiGroups": ["oceanprotocol.com"], "resources": ["computeenvironments"],
         "verbs": ["get", "list", "watch"]},
    ]  # fmt: skip
    by_set = render(
        "--set",
        "api.enabled=true",
        "--set",
        "api.auth=off",
        "--set",
        f"api.operatorAddress={OPERATOR_ADDRESS}",
    )
    assert api_object(by_set, "Role")["rules"] == off_rules
    variables = api_env(by_set)
    assert variables["API_AUTH"]["value"] == "off"
    assert "API_ALLOWED_PROVIDERS" not in variables


def test_an_unquoted_yaml_off_means_off(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(f'api:\n  enabled: true\n  auth: off\n  operatorAddress: "{OPERATOR_ADDRESS}"\n')
    assert api_env(render("-f", str(values)))["API_AUTH"]["value"] == "off"


def test_the_role_goes_to_the_watched_namespace() -> None:
    docs = render(*ENABLED, "--set", "operator.watchNamespace=c2d-jobs")
    assert api_object(docs, "Role")["metadata"]["namespace"] == "c2d-jobs"
    assert api_object(docs, "RoleBinding")["metadata"]["namespace"] == "c2d-jobs"
    assert api_object(docs, "Deployment")["metadata"]["namespace"] == NAMESPACE
    assert api_env(docs)["API_NAMESPACE"]["value"] == "c2d-jobs"
    # Watching every namespace, the API serves one: the release's unless api.namespace names another.
    everywhere = render(*ENABLED, "--set", "operator.watchNamespace=*", "--set", "api.namespace=tenant-a")
    assert api_object(everywhere, "Role")["metadata"]["namespace"] == "tenant-a"
    assert api_env(everywhere)["API_NAMESPACE"]["value"] == "tenant-a"


# The metrics port's rule when api.metricsClients is empty: no `from`, any client.
METRICS_FROM_ANYWHERE = {"ports": [{"port": "metrics", "protocol": "TCP"}]}


def test_the_network_policy_admits_only_the_listed_clients() -> None:
    docs = scenario()
    policy = api_object(docs, "NetworkPolicy")
    listed = yaml.safe_load(SCENARIO.read_text())["api"]["allowedClients"]
    assert policy["spec"] == {
        "podSelector": {"matchLabels": API_SELECTOR},
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": listed, "ports": [{"port": "http", "protocol": "TCP"}]},
            METRICS_FROM_ANYWHERE,
        ],
    }
    assert listed == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ocean-provider"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "provider"}},
        }
    ]
    pod_labels = api_object(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    # None listed: only the release namespace's pods.
    default = api_object(render(*ENABLED), "NetworkPolicy")["spec"]["ingress"]
    assert default == [
        {
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}}],
            "ports": [{"port": "http", "protocol": "TCP"}],
        },
        METRICS_FROM_ANYWHERE,
    ]
    # The ports the rules name are the container's.
    names = {port["name"] for port in api_container(docs)["ports"]}
    assert {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]} == names


def test_the_metrics_port_admits_the_listed_metrics_clients_and_leaves_the_api_rule_alone(
    tmp_path: Path,
) -> None:
    prometheus = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}},
    ]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"api": {"metricsClients": prometheus}}))
    ingress = api_object(render("-f", str(SCENARIO), "-f", str(values)), "NetworkPolicy")["spec"]["ingress"]
    assert ingress == [
        {
            "from": yaml.safe_load(SCENARIO.read_text())["api"]["allowedClients"],
            "ports": [{"port": "http", "protocol": "TCP"}],
        },
        {"from": prometheus, "ports": [{"port": "metrics", "protocol": "TCP"}]},
    ]
    # Listed as metrics clients, they are not API clients.
    assert all(peer not in ingress[0]["from"] for peer in prometheus)


def test_probes_port_and_service() -> None:
    docs = scenario()
    main = api_container(docs)
    assert main["ports"] == [
        {"name": "http", "containerPort": 8050, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9050, "protocol": "TCP"},
    ]
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    variables = api_env(docs)
    assert (variables["API_PORT"]["value"], variables["API_METRICS_PORT"]["value"]) == ("8050", "9050")
    service = api_object(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8050, "targetPort": "http", "protocol": "TCP"},
        {"name": "metrics", "port": 9050, "targetPort": "metrics", "protocol": "TCP"},
    ]
    moved = render("-f", str(SCENARIO), "--set", "api.metricsPort=9100")
    assert api_container(moved)["ports"][1] == {"name": "metrics", "containerPort": 9100, "protocol": "TCP"}
    assert api_env(moved)["API_METRICS_PORT"]["value"] == "9100"
    assert api_object(moved, "Service")["spec"]["ports"][1]["port"] == 9100
    deployment = api_object(docs, "Deployment")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"] == API_SELECTOR
    # Locked down like the operator.
    operator = operator_object(docs, "Deployment")["spec"]["template"]["spec"]
    assert deployment["spec"]["template"]["spec"]["securityContext"] == operator["securityContext"]
    assert main["securityContext"] == operator["containers"][0]["securityContext"]
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["resources"] == {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}


def test_the_operators_selectors_never_pick_an_api_pod() -> None:
    docs = scenario()
    api_pod = api_object(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    operator = operator_object(docs, "Deployment")
    assert not selects(operator["spec"]["selector"]["matchLabels"], api_pod)
    for service in [doc for doc in docs if doc["kind"] == "Service" and not is_api(doc)]:
        if "selector" not in service["spec"]:  # the signer's, whose EndpointSlice the leader writes
            continue
        assert not selects(service["spec"]["selector"], api_pod), service["metadata"]["name"]
    (signer_selector,) = [e["value"] for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
                          if e["name"] == "SIGNER_POD_SELECTOR"]  # fmt: skip
    labels = dict(pair.split("=") for pair in signer_selector.split(":", 1)[1].split(","))
    assert not selects(labels, api_pod)


def test_no_secret_in_plain_env(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    secrets = {
        "operatorPrivateKey": "0x" + "1" * 64,
        "awsAccessKeyId": "AKIAEXAMPLEKEY",
        "awsSecretAccessKey": "plain-secret-access-key",
        "ipfsApiKey": "plain-ipfs-key",
    }
    values.write_text(yaml.safe_dump({"credentials": {"create": True, **secrets}}))
    docs = render("-f", str(SCENARIO), "-f", str(values))
    deployment_text = yaml.safe_dump(api_object(docs, "Deployment"))
    for key, secret in secrets.items():
        assert secret not in deployment_text, key
    variables = api_env(docs)
    assert "OPERATOR_PRIVATE_KEY" not in variables  # the address is enough; the key stays out of the pod
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "IPFS_API_KEY"):
        assert "value" not in variables[name], name
        assert variables[name]["valueFrom"]["secretKeyRef"] == {
            "name": "c2d-ocean-c2d-credentials",
            "key": name,
            "optional": True,
        }
    # The publish settings the operator uses, so GET /getResult reads where publish wrote.
    assert {
        name: variables[name]["value"] for name in ("AWS_BUCKET_OUTPUT", "AWS_REGION", "AWS_ENDPOINT_URL")
    } == {
        "AWS_BUCKET_OUTPUT": "c2d-results",
        "AWS_REGION": "eu-central-1",
        "AWS_ENDPOINT_URL": "http://minio.storage.svc:9000",
    }


def test_the_rendered_env_is_what_the_api_accepts() -> None:
    variables = api_env(scenario())
    plain = {name: item["value"] for name, item in variables.items() if "value" in item}
    settings = load_api_settings(plain)
    assert settings.auth is True
    assert settings.allowed_providers == frozenset(PROVIDERS)
    assert settings.operator_address == OPERATOR_ADDRESS
    assert settings.namespace == NAMESPACE
    assert (settings.port, settings.metrics_port) == (8050, 9050)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (("--set", "api.enabled=true", "--set", f"api.operatorAddress={OPERATOR_ADDRESS}"),
         "api.allowedProviders is required when api.enabled"),
        (("--set", "api.enabled=true", "--set", f"api.allowedProviders={{{PROVIDERS[0]}}}"),
         "api.operatorAddress is required when api.enabled"),
        ((*ENABLED, "--set", "api.auth=off"), "api.auth is off but api.allowedProviders names providers"),
        ((*ENABLED, "--set", "api.namespace=elsewhere"),
         "api.namespace must be the namespace the operator watches"),
        (("--set", "api.allowedProviders={0x1234}"), "/api/allowedProviders/0"),
        (("--set", "api.operatorAddress=operator"), "/api/operatorAddress"),
        (("--set", "api.auth=maybe"), "/api/auth"),
        (("--set", "api.allowedClients[0].ipBlock.cidr=0.0.0.0/0"), "ipBlock"),
        (("--set", "api.metricsClients[0].ipBlock.cidr=0.0.0.0/0"), "ipBlock"),
        (("--set", "api.metricsPort=0"), "/api/metricsPort"),
        (("--set", "api.metricsPort=65536"), "/api/metricsPort"),
        (("--set", "api.metricsPort=nine"), "/api/metricsPort"),
        ((*ENABLED, "--set", "api.metricsPort=8050"), "api.metricsPort must differ from api.port"),
        ((*ENABLED, "--set", "api.port=9050"), "api.metricsPort must differ from api.port"),
    ],
)  # fmt: skip
def test_invalid_api_values_fail_the_render(settings: tuple[str, ...], message: str) -> None:
    result = template(*settings)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_a_service_monitor_for_the_api_with_the_operators() -> None:
    monitored = (
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.labels.release=prom",
    )
    docs = render("-f", str(SCENARIO), *monitored)
    monitor = api_object(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"] == {
        "selector": {"matchLabels": API_SELECTOR},
        "namespaceSelector": {"matchNames": [NAMESPACE]},
        "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
    }
    # The Service's metrics port, which the NetworkPolicy's second rule opens (to anyone by default).
    service_ports = {port["name"]: port for port in api_object(docs, "Service")["spec"]["ports"]}
    assert service_ports["metrics"]["targetPort"] == "metrics"
    assert METRICS_FROM_ANYWHERE in api_object(docs, "NetworkPolicy")["spec"]["ingress"]
    service_labels = api_object(docs, "Service")["metadata"]["labels"]
    assert selects(monitor["spec"]["selector"]["matchLabels"], service_labels)
    operator_monitor = operator_object(docs, "ServiceMonitor")
    assert not selects(operator_monitor["spec"]["selector"]["matchLabels"], service_labels)
    assert [doc for doc in scenario() if doc["kind"] == "ServiceMonitor"] == []


def test_the_admission_policy_leaves_the_apis_configmaps_alone() -> None:
    """The policy allows the operator only labelled objects; the API's nonce ConfigMaps carry another label,
    so the policy must match the operator's ServiceAccount alone, never the API's."""
    docs = scenario()
    (policy,) = [doc for doc in docs if doc["kind"] == "ValidatingAdmissionPolicy"]
    (condition,) = policy["spec"]["matchConditions"]
    operator_account = operator_object(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert condition["expression"] == (
        f'request.userInfo.username == "system:serviceaccount:{NAMESPACE}:{operator_account}"'
    )
    assert api_object(docs, "ServiceAccount")["metadata"]["name"] not in condition["expression"]


def test_notes_tell_the_provider_where_to_point() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "OPERATOR_SERVICE_URL" in notes
    assert "api.enabled" in notes
