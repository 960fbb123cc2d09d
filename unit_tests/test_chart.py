"""The Helm chart in helm/ocean-c2d: rendered with `helm template` and linted with `helm lint --strict`
for every scenario in its ci/ folder (the helm binary is the one toolchain/build.sh built)."""

from __future__ import annotations

import filecmp
import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from unit_tests.built_tools import binary

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "ocean-c2d"
SCENARIOS = sorted(path.name for path in (CHART / "ci").glob("*-values.yaml"))
NAMESPACE = "c2d"
CREDENTIAL_VARIABLES = {"OPERATOR_PRIVATE_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "IPFS_API_KEY"}
METRIC_NAME = re.compile(r"ocean_c2d_[a-z_]+")


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("helm", "helm"), *args], capture_output=True, text=True, check=False, timeout=120
    )


@cache
def render(scenario: str) -> tuple[dict[str, Any], ...]:
    result = helm("template", "c2d", str(CHART), "--namespace", NAMESPACE, "-f", str(CHART / "ci" / scenario))
    assert result.returncode == 0, result.stderr
    # The operator's objects only: the optional API's (component "api") are test_chart_api.py's.
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc and not is_api(doc))


def is_api(doc: dict[str, Any]) -> bool:
    return bool(doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "api")


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def deployment(scenario: str) -> dict[str, Any]:
    (found,) = of_kind(render(scenario), "Deployment")
    return found


def container(scenario: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment(scenario)["spec"]["template"]["spec"]["containers"]
    (found,) = containers
    return found


def env(scenario: str) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container(scenario)["env"]}


def scenario_values(scenario: str) -> dict[str, Any]:
    values: dict[str, Any] | None = yaml.safe_load((CHART / "ci" / scenario).read_text())
    return values or {}


def declared_metrics() -> set[str]:
    """The exported names of the operator's metrics, read from its registry (the cluster-state gauges
    with an empty cluster): counters get _total, histograms _bucket/_sum/_count."""
    from ocean_c2d import metrics, telemetry

    metrics.collect_cluster_state(lambda: telemetry.ClusterLevels({}, []))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    return {
        family.name + suffix
        for family in metrics.REGISTRY.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def test_scenarios_exist() -> None:
    assert set(SCENARIOS) >= {
        "default-values.yaml",
        "existing-secret-values.yaml",
        "all-namespaces-values.yaml",
        "monitoring-values.yaml",
    }


def test_chart_metadata_matches_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert package is not None
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == package.group(1)
    assert chart["version"] == "0.1.0"
    assert chart["kubeVersion"] == ">=1.30.0-0"  # the admission policy's API is v1 from 1.30


def test_crds_are_copies_of_the_top_level_crds() -> None:
    top = sorted(path.name for path in (ROOT / "crds").glob("*.yaml"))
    assert top
    assert sorted(path.name for path in (CHART / "crds").glob("*.yaml")) == top
    for name in top:
        assert filecmp.cmp(ROOT / "crds" / name, CHART / "crds" / name, shallow=False), name


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_strict_passes(scenario: str) -> None:
    result = helm(
        "lint", "--strict", str(CHART), "--namespace", NAMESPACE, "-f", str(CHART / "ci" / scenario)
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_deployment_is_one_locked_down_operator(scenario: str) -> None:
    spec = deployment(scenario)["spec"]
    # Two replicas, one acting (leader election): a rolling update starts the new standby first.
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(scenario)["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in security or security["privileged"] is False


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes_and_ports(scenario: str) -> None:
    main = container(scenario)
    ports = {port["name"]: port["containerPort"] for port in main["ports"]}
    assert ports == {"metrics": 8000, "health": 8080, "signer": 8090}
    for probe in ("livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    variables = env(scenario)
    assert variables["METRICS_PORT"]["value"] == "8000"
    assert variables["HEALTH_PORT"]["value"] == "8080"
    assert variables["SIGNER_PORT"]["value"] == "8090"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_configure_pods_reach_the_signer_through_its_service(scenario: str) -> None:
    docs = render(scenario)
    [service] = [s for s in of_kind(docs, "Service") if s["metadata"]["name"].endswith("-signer")]
    assert service["spec"]["ports"] == [
        {"name": "signer", "port": 8090, "targetPort": "signer", "protocol": "TCP"}
    ]
    # No selector: the leader points the Service's EndpointSlice (same name) at its own POD_IP.
    assert "selector" not in service["spec"]
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    variables = env(scenario)
    assert variables["SIGNER_URL"]["value"] == f"http://{name}.{namespace}.svc:8090"
    assert variables["SIGNER_ENDPOINT_SLICE"]["value"] == name
    assert variables["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_leader_election_lease_pdb_and_anti_affinity(scenario: str) -> None:
    docs = render(scenario)
    variables = env(scenario)
    assert variables["LEADER_ELECTION"]["value"] == "true"
    assert variables["LEASE_NAME"]["value"] == "c2d-ocean-c2d"
    assert variables["LEASE_NAMESPACE"]["value"] == NAMESPACE
    assert [variables[name]["value"] for name in ("LEASE_DURATION_SECONDS", "RENEW_DEADLINE_SECONDS")] == [
        "15",
        "10",
    ]
    assert variables["RETRY_PERIOD_SECONDS"]["value"] == "2"
    [pdb] = of_kind(docs, "PodDisruptionBudget")
    [found] = of_kind(docs, "Deployment")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == found["spec"]["selector"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    [term] = found["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"] == found["spec"]["selector"]
    # Its own Role in the release namespace: the Lease and the signer's EndpointSlice, by name.
    [role] = [r for r in of_kind(docs, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    assert role["metadata"]["namespace"] == NAMESPACE
    by_name = {
        (rule["apiGroups"][0], rule["resources"][0]): rule.get("resourceNames")
        for rule in role["rules"]
        if rule["verbs"] == ["get", "update"]
    }
    assert by_name == {
        ("coordination.k8s.io", "leases"): ["c2d-ocean-c2d"],
        ("discovery.k8s.io", "endpointslices"): ["c2d-ocean-c2d-signer"],
    }
    assert all(rule["verbs"] in (["get", "update"], ["create"]) for rule in role["rules"])


def test_without_leader_election_one_operator_recreated_and_a_selected_signer() -> None:
    docs = render_with("--set", "operator.leaderElection.enabled=false", "--set", "operator.replicas=1")
    [found] = of_kind(docs, "Deployment")
    assert found["spec"]["strategy"] == {"type": "Recreate"}
    assert "affinity" not in found["spec"]["template"]["spec"]
    assert not of_kind(docs, "PodDisruptionBudget")
    assert not [r for r in of_kind(docs, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    variables = {e["name"] for e in found["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not variables & {"LEADER_ELECTION", "SIGNER_ENDPOINT_SLICE", "POD_IP"}
    [service] = [s for s in of_kind(docs, "Service") if s["metadata"]["name"].endswith("-signer")]
    assert service["spec"]["selector"] == found["spec"]["selector"]["matchLabels"]
    result = helm("template", "c2d", str(CHART), "--set", "operator.leaderElection.enabled=false")
    assert result.returncode != 0  # two replicas without leader election would both act
    assert "needs operator.leaderElection.enabled" in result.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_credentials_only_by_secret_reference(scenario: str) -> None:
    variables = env(scenario)
    secret_name = variables["CREDENTIALS_SECRET"]["value"]
    for name in CREDENTIAL_VARIABLES:
        assert name in variables, name
        assert "value" not in variables[name], f"{name} has a literal value"
        reference = variables[name]["valueFrom"]["secretKeyRef"]
        assert reference["name"] == secret_name
    assert variables["OPERATOR_PRIVATE_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "operator-private-key"
    assert not variables["OPERATOR_PRIVATE_KEY"]["valueFrom"]["secretKeyRef"].get("optional", False)
    # No other variable may carry a credential either.
    values = scenario_values(scenario).get("credentials", {})
    literals = {item.get("value") for item in variables.values()}
    for key in ("operatorPrivateKey", "awsAccessKeyId", "awsSecretAccessKey", "ipfsApiKey"):
        if values.get(key):
            assert values[key] not in literals, key


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_credentials_secret(scenario: str) -> None:
    docs = render(scenario)
    secrets = of_kind(docs, "Secret")
    secret_name = env(scenario)["CREDENTIALS_SECRET"]["value"]
    credentials = scenario_values(scenario).get("credentials", {})
    if credentials.get("create"):
        (secret,) = secrets
        assert secret["metadata"]["name"] == secret_name
        assert set(secret["data"]) == {
            "operator-private-key",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "IPFS_API_KEY",
        }
    else:
        assert secrets == []
        assert secret_name == credentials.get("existingSecret", "ocean-c2d-credentials")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rbac_is_least_privilege(scenario: str) -> None:
    docs = render(scenario)
    cluster_wide = scenario_values(scenario).get("operator", {}).get("watchNamespace") == "*"
    # The leader-election Role (its own test) aside.
    roles = [
        r
        for r in of_kind(docs, "Role") + of_kind(docs, "ClusterRole")
        if not r["metadata"]["name"].endswith("-leader-election")
    ]
    bindings = [
        b
        for b in of_kind(docs, "RoleBinding") + of_kind(docs, "ClusterRoleBinding")
        if not b["metadata"]["name"].endswith("-leader-election")
    ]
    assert len(roles) == 1
    assert len(bindings) == 1
    (role,), (binding,) = roles, bindings
    assert role["kind"] == ("ClusterRole" if cluster_wide else "Role")
    assert binding["kind"] == ("ClusterRoleBinding" if cluster_wide else "RoleBinding")
    assert binding["roleRef"]["name"] != "cluster-admin"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["namespace"] == NAMESPACE
    if not cluster_wide:
        watched = env(scenario)["WATCH_NAMESPACE"]["value"]
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == watched
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        for field in ("verbs", "resources", "apiGroups"):
            assert "*" not in rule[field], rule
        assert "nonResourceURLs" not in rule
        for resource in rule["resources"]:
            granted.setdefault(resource, set()).update(rule["verbs"])
    assert {"get", "list", "watch", "patch"} <= granted["workflows"]
    assert "patch" in granted["workflows/status"]
    assert {"get", "list", "watch", "patch", "create"} <= granted["computeenvironments"]
    assert "jobs" not in granted  # stages run as pods the operator makes itself
    assert granted["pods"] == {"get", "list", "watch", "create", "delete"}  # never patch
    assert granted["events"] == {"create"}
    for resource in ("configmaps", "secrets", "persistentvolumeclaims", "networkpolicies"):
        assert granted[resource] == {"get", "list", "watch", "create", "patch", "delete"}, resource


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_compute_environments_from_values(scenario: str) -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["computeEnvironments"]
    wanted = scenario_values(scenario).get("computeEnvironments", defaults)
    rendered = of_kind(render(scenario), "ComputeEnvironment")
    assert [env["metadata"]["name"] for env in rendered] == [env["name"] for env in wanted]
    for env_doc, values in zip(rendered, wanted, strict=True):
        assert env_doc["apiVersion"] == "oceanprotocol.com/v1alpha1"
        assert env_doc["spec"] == values["spec"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_monitoring_objects_only_when_enabled(scenario: str) -> None:
    docs = render(scenario)
    metrics = scenario_values(scenario).get("metrics", {})
    monitored = scenario == "monitoring-values.yaml"
    assert bool(metrics.get("serviceMonitor", {}).get("enabled")) == monitored
    assert len(of_kind(docs, "ServiceMonitor")) == int(monitored)
    assert len(of_kind(docs, "PrometheusRule")) == int(monitored)
    (service,) = [s for s in of_kind(docs, "Service") if s["metadata"]["name"].endswith("-metrics")]
    assert service["spec"]["ports"][0]["port"] == 8000


def test_metric_names_exist_in_the_operator() -> None:
    declared = declared_metrics()
    assert "ocean_c2d_reconciles_total" in declared
    assert "ocean_c2d_reconcile_duration_seconds_bucket" in declared
    docs = render("monitoring-values.yaml")
    (configmap,) = [
        doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"].endswith("-dashboard")
    ]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (dashboard_json,) = configmap["data"].values()
    dashboard = json.loads(dashboard_json)
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert expressions
    (rule,) = of_kind(docs, "PrometheusRule")
    # The PrometheusRule carries the rule file promtool tests, unchanged.
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    alerts = {alert["alert"]: alert["expr"] for group in rule["spec"]["groups"] for alert in group["rules"]}
    assert {
        "OceanC2DOperatorDown",
        "OceanC2DWorkflowStuckInStage",
        "OceanC2DWorkflowFailureRateHigh",
        "OceanC2DEnvironmentSaturated",
        "OceanC2DNotificationsFailing",
        "OceanC2DReconcileErrors",
    } <= set(alerts)
    used = {name for expr in [*expressions, *alerts.values()] for name in METRIC_NAME.findall(expr)}
    assert used
    assert used <= declared, used - declared


def test_notes_say_what_to_run_next() -> None:
    # Rendering NOTES.txt needs `helm install`, which needs a cluster even with --dry-run=client.
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    for command in ("get c2denv", "apply -f", "get wf -w"):
        assert command in notes


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("operator.logLevell=INFO", "logLevell"),
        ("metricz.port=1", "metricz"),
        ("credentials.existingSecrets=x", "existingSecrets"),
    ],
)
def test_schema_rejects_unknown_keys(setting: str, message: str) -> None:
    result = helm("template", "c2d", str(CHART), "--set", setting)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    ("setting", "path"),
    [
        ("operator.resyncSeconds=soon", "/operator/resyncSeconds"),
        ("metrics.port=eighty", "/metrics/port"),
        ("dashboard.enabled=maybe", "/dashboard/enabled"),
    ],
)
def test_schema_rejects_wrong_types(setting: str, path: str) -> None:
    result = helm("template", "c2d", str(CHART), "--set", setting)
    assert result.returncode != 0
    assert path in result.stderr


def test_created_secret_requires_the_operator_key() -> None:
    result = helm("template", "c2d", str(CHART), "--set", "credentials.create=true")
    assert result.returncode != 0
    assert "credentials.operatorPrivateKey" in result.stderr


def test_templates_config_map_and_extra_env() -> None:
    result = helm(
        "template", "c2d", str(CHART), "--namespace", NAMESPACE,
        "--set", "operator.templatesConfigMap=my-templates",
        "--set-string", "operator.extraEnv.CONFIGURE_TIMEOUT_SECONDS=900",
        "--set", "operator.replicas=0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    docs = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
    (found,) = of_kind(docs, "Deployment")
    assert found["spec"]["replicas"] == 0
    pod = found["spec"]["template"]["spec"]
    (operator,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert env["TEMPLATES_DIR"] == "/etc/ocean-c2d/templates"
    assert env["CONFIGURE_TIMEOUT_SECONDS"] == "900"
    mounts = {m["name"]: m for m in operator["volumeMounts"]}
    assert mounts["templates"] == {
        "name": "templates",
        "mountPath": "/etc/ocean-c2d/templates",
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["templates"]["configMap"]["name"] == "my-templates"
    # By default: the built-in templates, no extra variables.
    default_env = {e["name"] for e in container("default-values.yaml")["env"]}
    assert "TEMPLATES_DIR" not in default_env
    assert "CONFIGURE_TIMEOUT_SECONDS" not in default_env


@pytest.mark.parametrize(
    "setting",
    [
        "operator.extraEnv.9LIVES=x",
        "operator.leaderElection.leaseDurationSeconds=soon",
        "operator.leaderElection.lease=x",
        "podDisruptionBudget.maxUnavailable=0",
    ],
)
def test_schema_rejects_bad_variable_names_and_leader_election_values(setting: str) -> None:
    result = helm("template", "c2d", str(CHART), "--set", setting)
    assert result.returncode != 0


def render_with(*settings: str) -> tuple[dict[str, Any], ...]:
    result = helm("template", "c2d", str(CHART), "--namespace", NAMESPACE, *settings)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_workflows_pods_get_the_charts_token_less_accounts(scenario: str) -> None:
    """Issue 11 C16, E20: with one watched namespace the chart creates the stage pods' account and the
    algorithm's (no token, no annotations, so no cloud identity) there and tells the operator their
    names; with all namespaces it creates none and the pods use each namespace's "default"."""
    cluster_wide = scenario_values(scenario).get("operator", {}).get("watchNamespace") == "*"
    variables = env(scenario)
    accounts = {doc["metadata"]["name"]: doc for doc in of_kind(render(scenario), "ServiceAccount")}
    operator = deployment(scenario)["spec"]["template"]["spec"]["serviceAccountName"]
    job_accounts = {name: doc for name, doc in accounts.items() if name != operator}
    if cluster_wide:
        assert job_accounts == {}
        assert (
            variables["SERVICE_ACCOUNT"]["value"]
            == variables["ALGORITHM_SERVICE_ACCOUNT"]["value"]
            == "default"
        )
        return
    stage, algorithm = "c2d-ocean-c2d-stage", "c2d-ocean-c2d-algorithm"
    assert (variables["SERVICE_ACCOUNT"]["value"], variables["ALGORITHM_SERVICE_ACCOUNT"]["value"]) == (
        stage,
        algorithm,
    )
    assert set(job_accounts) == {stage, algorithm}
    watched = variables["WATCH_NAMESPACE"]["value"]
    for account in job_accounts.values():
        assert account["automountServiceAccountToken"] is False
        assert account["metadata"]["namespace"] == watched
    assert "annotations" not in job_accounts[algorithm]["metadata"]


def test_a_workload_identity_goes_on_the_stage_account_only() -> None:
    docs = render_with(
        "--set", "jobServiceAccounts.stage.annotations.eks\\.amazonaws\\.com/role-arn=arn:role"
    )
    accounts = {doc["metadata"]["name"]: doc["metadata"] for doc in of_kind(docs, "ServiceAccount")}
    assert accounts["c2d-ocean-c2d-stage"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:role"}
    assert "annotations" not in accounts["c2d-ocean-c2d-algorithm"]


def test_the_algorithm_pull_secret_and_user_namespaces_reach_the_operator() -> None:
    docs = render_with(
        "--set", "operator.pullSecretForJobs=stage-regcred",
        "--set", "operator.algorithmPullSecret=algorithm-regcred",
        "--set", "operator.userNamespaces=true",
    )  # fmt: skip
    (found,) = of_kind(docs, "Deployment")
    (operator,) = found["spec"]["template"]["spec"]["containers"]
    variables = {e["name"]: e.get("value") for e in operator["env"]}
    assert variables["PULL_SECRET"] == "stage-regcred"
    assert variables["ALGORITHM_PULL_SECRET"] == "algorithm-regcred"
    assert variables["USER_NAMESPACES"] == "true"
    assert "USER_NAMESPACES" not in {e["name"] for e in container("default-values.yaml")["env"]}


def test_the_algorithm_may_not_share_the_stage_account() -> None:
    same = ("--set", "jobServiceAccounts.stage.name=jobs", "--set", "jobServiceAccounts.algorithm.name=jobs")
    result = helm("template", "c2d", str(CHART), *same)
    assert result.returncode != 0
    assert "the algorithm's account must differ" in result.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_admission_policy_binds_the_operator_to_its_labels_and_accounts(scenario: str) -> None:
    """Issue 11 E20 (e2e/test_chart_install.py proves it on a cluster): the policy matches the operator's
    ServiceAccount only, every kind RBAC lets it write, and allows exactly the job accounts it is given."""
    docs = render(scenario)
    (policy,) = of_kind(docs, "ValidatingAdmissionPolicy")
    (binding,) = of_kind(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert NAMESPACE in policy["metadata"]["name"]  # cluster-scoped: one per release namespace
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    operator = deployment(scenario)["spec"]["template"]["spec"]["serviceAccountName"]
    (condition,) = spec["matchConditions"]
    assert (
        condition["expression"]
        == f'request.userInfo.username == "system:serviceaccount:{NAMESPACE}:{operator}"'
    )
    matched = {r for rule in spec["matchConstraints"]["resourceRules"] for r in rule["resources"]}
    # Every kind the operator's Roles let it create, change or delete (bar its own CRDs and Events),
    # the leader-election Role's Lease and EndpointSlice included: RBAC cannot narrow their create.
    written = {
        resource
        for role in of_kind(docs, "Role") + of_kind(docs, "ClusterRole")
        for rule in role["rules"]
        if {"create", "update", "patch", "delete"} & set(rule["verbs"])
        for resource in rule["resources"]
        if rule["apiGroups"] != ["oceanprotocol.com"] and resource != "events"
    }
    assert {"leases", "endpointslices"} <= written
    assert matched == written
    expressions = " ".join(v["expression"] for v in spec["validations"])
    variables = env(scenario)
    accounts = {variables["SERVICE_ACCOUNT"]["value"], variables["ALGORITHM_SERVICE_ACCOUNT"]["value"]}
    for account in accounts:
        assert f'"{account}"' in expressions, account
    assert "'app.kubernetes.io/managed-by'] == 'ocean-c2d'" in expressions
    assert "automountServiceAccountToken == false" in expressions


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_admission_policy_names_the_one_lease_and_endpoint_slice_the_operator_may_write(
    scenario: str,
) -> None:
    """RBAC's create cannot be narrowed by name: the policy allows the operator's writes of Leases and
    EndpointSlices only for the names its settings give (LEASE_NAME, SIGNER_ENDPOINT_SLICE), in the
    release namespace (LEASE_NAMESPACE), and the slice only as the signer Service's. Every label the
    policy requires is one lease.py's SignerEndpoint writes, with that value (the policy must not refuse
    the leader's own write; e2e/test_chart_install.py runs both against the API server)."""
    from ocean_c2d.lease import SignerEndpoint

    docs = render(scenario)
    (policy,) = of_kind(docs, "ValidatingAdmissionPolicy")
    spec = policy["spec"]
    rules = {
        (group, resource): rule["operations"]
        for rule in spec["matchConstraints"]["resourceRules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert rules[("coordination.k8s.io", "leases")] == ["CREATE", "UPDATE", "DELETE"]
    assert rules[("discovery.k8s.io", "endpointslices")] == ["CREATE", "UPDATE", "DELETE"]
    variables = env(scenario)
    lease = variables["LEASE_NAME"]["value"]
    slice_name = variables["SIGNER_ENDPOINT_SLICE"]["value"]
    assert variables["LEASE_NAMESPACE"]["value"] == NAMESPACE
    (service,) = [s for s in of_kind(docs, "Service") if s["metadata"]["name"] == slice_name]
    assert "selector" not in service["spec"]  # the leader's slice is its only source of endpoints

    by_kind = {
        kind: " ".join(
            v["expression"]
            for v in spec["validations"]
            if f"request.resource.resource != '{kind}'" in v["expression"]
        )
        for kind in ("leases", "endpointslices")
    }
    assert f'request.namespace == "{NAMESPACE}" && request.name == "{lease}"' in by_kind["leases"]
    assert (
        f'request.namespace == "{NAMESPACE}" && request.name == "{slice_name}"' in by_kind["endpointslices"]
    )
    # The managed-by label check leaves these two kinds out: lease.py labels neither so.
    (labelled,) = [v for v in spec["validations"] if "'app.kubernetes.io/managed-by'" in v["expression"]]
    assert labelled["expression"].startswith("variables.election ||")
    election = next(v["expression"] for v in spec["variables"] if v["name"] == "election")
    assert election == "request.resource.group in ['coordination.k8s.io', 'discovery.k8s.io']"

    (content,) = [
        v["expression"] for v in spec["validations"] if v["expression"].startswith("variables.slice ==")
    ]
    required = dict(re.findall(r"labels\['([^']+)'\] == ['\"]([^'\"]+)['\"]", content))
    assert required == {
        "kubernetes.io/service-name": slice_name,
        "endpointslice.kubernetes.io/managed-by": "ocean-c2d",
    }
    for ip, family in (("10.244.0.7", "IPv4"), ("fd00::7", "IPv6")):
        written = SignerEndpoint(None, NAMESPACE, slice_name, ip, 8090).manifest(None)  # type: ignore[arg-type]
        assert {k: written["metadata"]["labels"].get(k) for k in required} == required
        assert f"'{family}'" in content
        assert written["addressType"] == family
        [only] = written["endpoints"]
        assert len(only["addresses"]) == 1
    assert "variables.slice.endpoints.size() <= 1" in content
    assert "e.addresses.size() == 1" in content


def test_the_admission_policy_can_be_left_out() -> None:
    docs = render_with("--set", "admissionPolicy.enabled=false")
    assert (
        of_kind(docs, "ValidatingAdmissionPolicy") == of_kind(docs, "ValidatingAdmissionPolicyBinding") == []
    )


def test_the_watched_namespace_is_created_for_pod_security_restricted_only_when_asked() -> None:
    """Issue 11 E21: Helm cannot label a namespace it does not own; asked, it creates the watched one."""
    asked = ("--set", "podSecurity.createNamespace=true")
    (namespace,) = of_kind(render_with(*asked, "--set", "operator.watchNamespace=c2d-jobs"), "Namespace")
    assert namespace["metadata"]["name"] == "c2d-jobs"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert namespace["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert of_kind(render_with(*asked), "Namespace") == []  # the release's own: Helm does not own it
    assert of_kind(render_with(*asked, "--set", "operator.watchNamespace=*"), "Namespace") == []
    assert of_kind(render_with("--set", "operator.watchNamespace=c2d-jobs"), "Namespace") == []
