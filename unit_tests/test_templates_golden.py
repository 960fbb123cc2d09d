"""Golden-file tests of every child template, plus explicit checks of what matters most in them.

Each template is rendered for two fixed scenarios (a plain CPU environment, and a GPU one with a pull
secret, a node selector scope, a custom filter image and network allowed) and compared with
unit_tests/golden/<scenario>-<template>.yaml. After an intended template change, regenerate the files with

    UPDATE_GOLDEN=1 .venv/bin/pytest unit_tests/test_templates_golden.py

and read the diff before committing it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ocean_c2d.model import Environment, PlanSettings, TemplateInputs, TemplateValues, Workflow
from ocean_c2d.render import (
    BASE_TEMPLATES,
    POD_TEMPLATES,
    SPEC_HASH_ANNOTATION,
    TemplateError,
    Templates,
    pod_affinity,
)
from ocean_c2d.settings import load_settings

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
TEMPLATES = Templates()
JOB_SECRET = "job-secret-value"
SIGNER_TOKEN = "signer-token-value"
DEADLINE = 600
NAME = "0123456789abcdef0123456789abcdef"
NAMESPACE = "ocean-c2d"
UID = "6f1c2b7e-0d4a-4c1e-9a51-3b0f6c2d9e10"
CREDENTIALS = "ocean-c2d-credentials"
OWNER = "0x" + "a" * 40
DATA_DID = "did:op:" + "b" * 64
ALGORITHM_DID = "did:op:" + "c" * 64
CHECKSUM = "sha256:" + "d" * 64
FILTER_IMAGE = "registry.example.com/c2d/filter:1.2.3"
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "IPFS_API_KEY")

BASE_VALUES: dict[str, Any] = {
    "service_account": "ocean-c2d-jobs",
    "algorithm_service_account": "ocean-c2d-algorithm",
    "pull_secret": None,
    "algorithm_pull_secret": None,
    "user_namespaces": False,
    "node_selector_scope": None,
    "pull_policy": "IfNotPresent",
    "configure_image": "ghcr.io/example/ocean-c2d:0.1.0",
    "publish_image": "ghcr.io/example/ocean-c2d:0.1.0",
    "credentials_secret": CREDENTIALS,
    "storage_class": "",
    "publish_env": {},
    "isolation_probe_address": None,
    "signer_url": "http://ocean-c2d-signer.ocean-c2d.svc:8090",
    "isolation_timeout": 60,
}


def workflow_object(algorithm: dict[str, Any], inputs: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "oceanprotocol.com/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "uid": UID,
            "generation": 1,
            "resourceVersion": "4242",
            "creationTimestamp": "2026-01-01T11:59:00Z",
            "labels": {"team": "research"},
        },
        "spec": {
            "environment": "unused-by-the-templates",
            "owner": OWNER,
            "agreementId": "0x" + "e" * 64,
            "chainId": 8996,
            "inputs": inputs,
            "algorithm": algorithm,
            **spec,
        },
    }


@dataclass(frozen=True)
class Scenario:
    name: str
    workflow: dict[str, Any]
    environment: dict[str, Any]
    settings: PlanSettings


CPU = Scenario(
    name="cpu",
    workflow=workflow_object(
        algorithm={
            "rawCode": 'print("hello")\n',
            "container": {"image": "python", "tag": "3.11-slim", "entrypoint": "python $ALGO"},
        },
        inputs=[{"did": DATA_DID, "serviceId": "compute", "transferTxId": "0x01"}],
        maxDuration=300,
    ),
    environment={
        "metadata": {"name": "cpu"},
        "spec": {
            "nCPU": 2,
            "ramGB": 4,
            "diskGB": 10,
            "maxJobs": 2,
            "maxJobDuration": 600,
            "storageExpiry": 24,
        },
    },
    settings=PlanSettings(template_values=TemplateValues(**BASE_VALUES)),
)

GPU = Scenario(
    name="gpu",
    workflow=workflow_object(
        algorithm={
            "did": ALGORITHM_DID,
            "serviceId": "compute",
            "transferTxId": "0x02",
            "container": {
                "image": "registry.example.com/ml/train",
                "tag": "2.0",
                "checksum": CHECKSUM,
                # A quote, a newline and a `$` must survive the trip through YAML unchanged.
                "entrypoint": 'python "$ALGO" --epochs 3\necho done',
            },
        },
        inputs=[
            {"did": DATA_DID, "serviceId": "compute", "transferTxId": "0x03"},
            {"url": "https://data.example.com/set.csv"},
        ],
        output={"metadataUri": "https://meta.example.com/out"},
    ),
    environment={
        "metadata": {"name": "gpu-a100"},
        "spec": {
            "nCPU": 8,
            "nGPU": 2,
            "gpuRam": 80,
            "gpuType": "A100",
            "ramGB": 64,
            "diskGB": 200.5,
            "maxJobs": 1,
            "maxJobDuration": 7200,
            "storageExpiry": 0,
            "nodeSelector": {"nvidia.com/gpu.product": "A100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "allowNetwork": True,
            "storageClassName": "fast-ssd",
            "runtimeClassName": "gvisor",
            "filter": {"enabled": True, "maxOutputBytes": 1048576, "forbiddenExtensions": [".csv"]},
        },
    },
    settings=PlanSettings(
        filtering_container=FILTER_IMAGE,
        template_values=TemplateValues(
            **{
                **BASE_VALUES,
                "pull_secret": "regcred",
                "algorithm_pull_secret": "algorithm-regcred",
                "user_namespaces": True,
                "node_selector_scope": "c2d",
                "pull_policy": "Always",
                "storage_class": "standard",
                "publish_env": {
                    "AWS_REGION": "eu-west-1",
                    "AWS_BUCKET_OUTPUT": "c2d-results",
                    "IPFS_OUTPUT": "http://ipfs:5001",
                    "IPFS_EXPIRY_TIME": 3600,
                },
                # The operator's egress settings (issue 11, C11/C12), as settings.py builds them.
                "egress": load_settings(
                    {
                        "OCEAN_C2D_DEV_MODE": "1",
                        "EGRESS_ALLOW_CIDRS": "203.0.113.7/32",
                        "CLUSTER_CIDRS": "10.96.0.0/12,fd00:10:96::/112",
                        "STAGE_EGRESS_ENDPOINTS": "10.96.0.20/32:9000",
                        "SIGNER_URL": "http://10.96.0.30:8090",
                        "ALLOWED_METADATA_CACHES": "https://meta.example.com",
                        "ALLOWED_PROVIDERS": "https://provider.example.com,https://p2.example.com/api",
                    }
                ).egress,
            }
        ),
    ),
)

SCENARIOS = {scenario.name: scenario for scenario in (CPU, GPU)}
ALL_TEMPLATES = (*BASE_TEMPLATES, *POD_TEMPLATES.values())


def inputs(scenario: Scenario) -> TemplateInputs:
    return TemplateInputs(
        Workflow.from_object(scenario.workflow),
        Environment.from_object(scenario.environment),
        scenario.settings.template_values,
        scenario.settings.filtering_container,
        JOB_SECRET,
        SIGNER_TOKEN,
    )


def context(scenario: Scenario, templates: Templates = TEMPLATES) -> dict[str, Any]:
    return templates.context(inputs(scenario))


def render_job(
    stage: str,
    values: dict[str, Any],
    publish_outputs: bool = True,
    templates: Templates = TEMPLATES,
    manifest_sha256: str | None = None,
) -> dict[str, Any]:
    """A stage's pod from a context of `context()` (which a test may have changed); `manifest_sha256`:
    after the built-in filter's Pass."""
    job_values = {
        **values,
        "stage": stage,
        "pod_name": f"{values['name']}-{stage}",
        "deadline": DEADLINE,
        "publish_outputs": publish_outputs,
        "manifest_required": manifest_sha256 is not None,
        "manifest_sha256": manifest_sha256 or "",
    }
    manifest = templates.render(POD_TEMPLATES[stage], job_values)
    assert manifest is not None
    return manifest


def render_all(scenario: Scenario, templates: Templates = TEMPLATES) -> dict[str, dict[str, Any] | None]:
    """Every template of `scenario` by template name (None when the template renders nothing)."""
    values = context(scenario, templates)
    rendered: dict[str, dict[str, Any] | None] = {
        name: templates.render(name, values) for name in BASE_TEMPLATES
    }
    for stage, template in POD_TEMPLATES.items():
        rendered[template] = render_job(stage, values, templates=templates)
    return rendered


@functools.cache
def rendered(scenario: str) -> dict[str, dict[str, Any] | None]:
    return render_all(SCENARIOS[scenario])


def manifests(scenario: str) -> list[dict[str, Any]]:
    return [manifest for manifest in rendered(scenario).values() if manifest is not None]


def jobs(scenario: str) -> list[dict[str, Any]]:
    return [manifest for manifest in manifests(scenario) if manifest["kind"] == "Pod"]


def job(scenario: str, stage: str) -> dict[str, Any]:
    manifest = rendered(scenario)[POD_TEMPLATES[stage]]
    assert manifest is not None
    return manifest


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"]
    return spec


def containers(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(manifest)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def only_container(manifest: dict[str, Any]) -> dict[str, Any]:
    [container] = pod_spec(manifest)["containers"]
    assert isinstance(container, dict)
    return container


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries: list[dict[str, Any]] = container.get("env", [])
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), f"duplicate env names in {container['name']}: {names}"
    return {entry["name"]: entry for entry in entries}


def dump(manifest: Any) -> str:
    return str(yaml.safe_dump(manifest, sort_keys=True))


# ---- golden files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ALL_TEMPLATES)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_golden(scenario: str, template: str) -> None:
    text = dump(rendered(scenario)[template])
    path = GOLDEN / f"{scenario}-{template}.yaml"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if not path.exists():
        pytest.fail(
            f"golden file {path} is missing; create it with "
            "`UPDATE_GOLDEN=1 .venv/bin/pytest unit_tests/test_templates_golden.py` and review it"
        )
    assert path.read_text() == text, (
        f"{template} of scenario {scenario} differs from {path}; if the change is intended, regenerate "
        "with UPDATE_GOLDEN=1 and review the diff"
    )


def test_rendering_is_deterministic() -> None:
    """Golden files only make sense if two renders of the same input are identical."""
    for scenario in SCENARIOS.values():
        assert render_all(scenario) == render_all(scenario)


# ---- secrets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_job_secret_is_only_in_the_secret(scenario: str) -> None:
    for manifest in manifests(scenario):
        if manifest["kind"] == "Secret":
            assert manifest["stringData"] == {"secret": JOB_SECRET, "signer-token": SIGNER_TOKEN}
            assert "data" not in manifest
            rest = {k: v for k, v in manifest.items() if k != "stringData"}
            assert JOB_SECRET not in dump(rest)
        else:
            assert JOB_SECRET not in dump(manifest), f"{manifest['kind']} {manifest['metadata']['name']}"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_only_the_configure_pod_reads_the_signer_token_and_no_pod_holds_the_key(scenario: str) -> None:
    """Issue 11 C13: the configure pod asks the operator's signer with its Workflow's token; it mounts no
    key, and no other pod (the algorithm's above all) can read the token."""
    for manifest in manifests(scenario):
        if manifest["kind"] != "Secret":
            assert SIGNER_TOKEN not in dump(manifest), f"{manifest['kind']} {manifest['metadata']['name']}"
    configure = only_container(job(scenario, "configure"))
    variables = env(configure)
    assert variables["SIGNER_TOKEN"] == {
        "name": "SIGNER_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": f"{NAME}-secret", "key": "signer-token", "optional": True}},
    }
    assert variables["SIGNER_URL"]["value"] == BASE_VALUES["signer_url"]
    assert variables["WORKFLOW_NAMESPACE"]["value"] == NAMESPACE
    assert "PRIVATE_KEY_FILE" not in variables
    assert [v["name"] for v in pod_spec(job(scenario, "configure"))["volumes"]] == ["data", "workflow", "tmp"]
    for manifest in jobs(scenario):
        assert "operator-private-key" not in dump(manifest), manifest["metadata"]["name"]
        if manifest["metadata"]["labels"]["component"] != "configure":
            assert "signer-token" not in dump(manifest), manifest["metadata"]["name"]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_stage_pods_read_the_job_secret_by_secret_key_ref(scenario: str) -> None:
    [secret] = [m for m in manifests(scenario) if m["kind"] == "Secret"]
    for stage in ("algorithm", "filter"):
        variable = env(only_container(job(scenario, stage)))["secret"]
        assert variable == {
            "name": "secret",
            "valueFrom": {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "secret"}},
        }
    assert secret["metadata"]["name"] == f"{NAME}-secret"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_configure_job_reads_secrets_only_by_reference_and_no_key(scenario: str) -> None:
    manifest = job(scenario, "configure")
    container = only_container(manifest)
    variables = env(container)
    assert "envFrom" not in container
    # The only Secret values by reference: the s3:// input credentials, under keys of their own (never the
    # publish step's writer keys), mapped to the names boto3 reads, and the signer token; no key file.
    by_reference = {name: v["valueFrom"] for name, v in variables.items() if "valueFrom" in v}
    assert by_reference == {
        **{
            name: {"secretKeyRef": {"name": CREDENTIALS, "key": f"INPUTS_{name}", "optional": True}}
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        },
        "SIGNER_TOKEN": {"secretKeyRef": {"name": f"{NAME}-secret", "key": "signer-token", "optional": True}},
    }
    assert not [v for v in pod_spec(manifest)["volumes"] if "secret" in v]
    assert not [m for m in container["volumeMounts"] if m["name"] == "credentials"]
    # No other stage sees the credentials Secret at all, neither mounted nor by reference.
    for stage in ("algorithm", "filter"):
        assert CREDENTIALS not in dump(job(scenario, stage))


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_publish_credentials_come_only_by_secret_key_ref(scenario: str) -> None:
    container = only_container(job(scenario, "publish"))
    variables = env(container)
    assert "envFrom" not in container
    for key in CREDENTIAL_KEYS:
        assert variables[key] == {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": CREDENTIALS, "key": key, "optional": True}},
        }
    plain = {name: v["value"] for name, v in variables.items() if "value" in v}
    assert not set(plain) & set(CREDENTIAL_KEYS)
    publish_env = SCENARIOS[scenario].settings.template_values.publish_env
    for name, value in publish_env.items():
        assert plain[name] == str(value)  # the non-secret settings are plain strings
    assert not [v for v in pod_spec(job(scenario, "publish"))["volumes"] if "secret" in v]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_no_stage_pod_has_a_credential_as_a_plain_value(scenario: str) -> None:
    for manifest in jobs(scenario):
        for container in containers(manifest):
            for name, variable in env(container).items():
                if name in (*CREDENTIAL_KEYS, "secret", "PRIVATE_KEY", "OPERATOR_PRIVATE_KEY"):
                    assert "value" not in variable, f"{manifest['metadata']['name']}: {name}"


# ---- hardening ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_container_is_locked_down(scenario: str) -> None:
    for manifest in jobs(scenario):
        for container in containers(manifest):
            context = f"{manifest['metadata']['name']}/{container['name']}"
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, context
            assert security["allowPrivilegeEscalation"] is False, context
            assert security["capabilities"] == {"drop": ["ALL"]}, context
            assert security.get("privileged", False) is False, context
            assert security["runAsNonRoot"] is True, context
            # A read-only root needs a writable /tmp.
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], context


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_pod_has_no_service_account_token(scenario: str) -> None:
    for manifest in jobs(scenario):
        spec = pod_spec(manifest)
        assert spec["automountServiceAccountToken"] is False, manifest["metadata"]["name"]
        third_party = manifest["metadata"]["labels"]["component"] in ("algorithm", "filter")
        assert spec["serviceAccountName"] == ("ocean-c2d-algorithm" if third_party else "ocean-c2d-jobs")
        assert spec["restartPolicy"] == "Never"
        assert spec["enableServiceLinks"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0


# ---- metadata, resources, deadlines ------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_child_is_owned_by_the_workflow_and_labelled(scenario: str) -> None:
    for manifest in manifests(scenario):
        metadata = manifest["metadata"]
        assert metadata["namespace"] == NAMESPACE
        assert metadata["ownerReferences"] == [
            {
                "apiVersion": "oceanprotocol.com/v1alpha1",
                "kind": "Workflow",
                "name": NAME,
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "ocean-c2d"
        assert metadata["labels"]["workflow"] == NAME
        assert len(metadata["annotations"][SPEC_HASH_ANNOTATION]) == 16
    for stage in POD_TEMPLATES:
        manifest = job(scenario, stage)
        assert manifest["metadata"]["name"] == f"{NAME}-{stage}"
        assert manifest["metadata"]["labels"]["component"] == stage
        assert (manifest["apiVersion"], manifest["kind"]) == ("v1", "Pod")
        pod_labels = manifest["metadata"]["labels"]
        assert pod_labels == {
            "workflow": NAME,
            "component": stage,
            "app.kubernetes.io/managed-by": "ocean-c2d",
            "app.kubernetes.io/name": "ocean-c2d",
        }


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_stage_pod_deadlines(scenario: str) -> None:
    for stage in ("configure", "algorithm", "filter", "publish"):
        spec = job(scenario, stage)["spec"]
        assert spec["activeDeadlineSeconds"] == DEADLINE
        assert spec["restartPolicy"] == "Never"  # a terminal phase is the stage's outcome


def test_the_cpu_algorithm_job() -> None:
    manifest = job("cpu", "algorithm")
    container = only_container(manifest)
    resources = {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "10Gi"}
    assert container["resources"] == {"requests": resources, "limits": resources}
    assert container["image"] == "python:3.11-slim"
    variables = env(container)
    assert variables["DIDS"]["value"] == f'["{DATA_DID.removeprefix("did:op:")}"]'
    assert variables["TRANSFORMATION_DID"]["value"] == ""
    assert variables["C2D_ENTRYPOINT"]["value"] == "python $ALGO"
    spec = pod_spec(manifest)
    for absent in ("imagePullSecrets", "nodeSelector", "tolerations", "affinity"):
        assert absent not in spec
    assert set(manifest["metadata"]["annotations"]) == {SPEC_HASH_ANNOTATION}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector's matchLabels and In-expressions, evaluated as the API server does."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    return all(
        expression["operator"] == "In" and labels.get(expression["key"]) in expression["values"]
        for expression in selector.get("matchExpressions", [])
    )


def test_the_cpu_network_policy_isolates_the_algorithm_and_filter_pods() -> None:
    policy = rendered("cpu")["network-policy"]
    assert policy is not None
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == []
    assert policy["spec"]["egress"] == []
    selector = policy["spec"]["podSelector"]
    for stage in ("algorithm", "filter"):  # user code, and a FILTERING_CONTAINER's third-party code
        assert _selects(selector, job("cpu", stage)["metadata"]["labels"])
    for stage in ("configure", "publish"):  # not the steps that need the network
        assert not _selects(selector, job("cpu", stage)["metadata"]["labels"])


def test_the_cpu_pvc_uses_the_cluster_default_storage_class() -> None:
    pvc = rendered("cpu")["data-pvc"]
    assert pvc is not None
    assert pvc["spec"]["resources"] == {"requests": {"storage": "10Gi"}}
    assert "storageClassName" not in pvc["spec"]


def test_the_gpu_environment_allows_network_but_only_to_public_addresses() -> None:
    """allowNetwork (issue 11, C14): the algorithm and filter pods still get a policy, whose only egress
    is the public internet (no link-local, private, CGNAT, cluster range) and DNS; ingress stays closed."""
    policy = rendered("gpu")["network-policy"]
    assert policy is not None
    assert policy["spec"]["ingress"] == []
    public, dns = policy["spec"]["egress"]  # no EGRESS_ALLOW_CIDRS: that is for the stage pods
    stage_policy = rendered("gpu")["egress-policy"]
    assert stage_policy is not None
    stage_rules = stage_policy["spec"]["egress"]
    assert {"to": [{"ipBlock": {"cidr": "203.0.113.7/32"}}]} in stage_rules
    v4, v6 = (peer["ipBlock"] for peer in public["to"])
    assert (v4["cidr"], v6["cidr"]) == ("0.0.0.0/0", "::/0")
    for denied in ("169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"):
        assert denied in v4["except"]
    assert {"fe80::/10", "fc00::/7", "::/96"} <= set(v6["except"])
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    assert [m["kind"] for m in TEMPLATES.render_base(inputs(GPU))] == [
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "NetworkPolicy",
        "NetworkPolicy",
    ]


def test_the_gpu_algorithm_job() -> None:
    manifest = job("gpu", "algorithm")
    container = only_container(manifest)
    resources = {"cpu": "8", "memory": "64Gi", "ephemeral-storage": "200.5Gi", "nvidia.com/gpu": "2"}
    assert container["resources"] == {"requests": resources, "limits": resources}
    assert container["image"] == f"registry.example.com/ml/train@{CHECKSUM}"
    assert container["imagePullPolicy"] == "Always"
    variables = env(container)
    assert variables["C2D_ENTRYPOINT"]["value"] == 'python "$ALGO" --epochs 3\necho done'
    assert variables["TRANSFORMATION_DID"]["value"] == "c" * 64
    spec = pod_spec(manifest)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "A100"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_every_gpu_pod_gets_the_pull_secret_and_the_scope_affinity() -> None:
    for manifest in jobs("gpu"):
        spec = pod_spec(manifest)
        algorithm = manifest["metadata"]["labels"]["component"] == "algorithm"
        assert spec["imagePullSecrets"] == [{"name": "algorithm-regcred" if algorithm else "regcred"}]
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms == {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "scope", "operator": "In", "values": ["c2d"]}]}
            ]
        }
        # Every stage runs where the environment says (its volume is there too); only the algorithm
        # gets the GPUs.
        assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "A100"}
        assert spec["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        if manifest["metadata"]["labels"]["component"] != "algorithm":
            assert "nvidia.com/gpu" not in only_container(manifest)["resources"]["limits"]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_algorithm_pod_has_no_token_no_stage_account_and_no_stage_pull_secret(scenario: str) -> None:
    """Issue 11 C16: the Workflow author's code gets no identity meant for the stage pods (a workload
    identity on SERVICE_ACCOUNT is for publish) and its image is pulled without PULL_SECRET."""
    values = SCENARIOS[scenario].settings.template_values
    spec = pod_spec(job(scenario, "algorithm"))
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == values.algorithm_service_account != values.service_account
    pull_secrets = [entry["name"] for entry in spec.get("imagePullSecrets", [])]
    assert values.pull_secret not in pull_secrets
    assert pull_secrets == ([values.algorithm_pull_secret] if values.algorithm_pull_secret else [])
    assert values.service_account not in dump(job(scenario, "algorithm"))


def test_the_stage_pods_never_get_the_algorithm_pull_secret() -> None:
    for stage in ("configure", "filter", "publish"):
        assert "algorithm-regcred" not in dump(job("gpu", stage)), stage


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_only_third_party_pods_get_the_runtime_class_and_a_user_namespace(scenario: str) -> None:
    """Issue 11 E21: the environment's RuntimeClass and USER_NAMESPACES (hostUsers: false) sandbox the
    pods that run or read third-party code; the operator's own stages keep the node's default runtime."""
    environment = Environment.from_object(SCENARIOS[scenario].environment)
    user_namespaces = SCENARIOS[scenario].settings.template_values.user_namespaces
    for stage in POD_TEMPLATES:
        spec = pod_spec(job(scenario, stage))
        sandboxed = stage in ("algorithm", "filter")
        expected_class = environment.runtime_class_name if sandboxed else None
        assert spec.get("runtimeClassName") == expected_class, stage
        assert spec.get("hostUsers", True) is not (sandboxed and user_namespaces), stage
    assert scenario != "gpu" or environment.runtime_class_name == "gvisor"  # the GPU scenario sets both


def test_the_gpu_filter_job_runs_the_filtering_container() -> None:
    container = only_container(job("gpu", "filter"))
    assert container["image"] == FILTER_IMAGE
    assert "args" not in container  # a custom filter image runs its own entrypoint
    policy = env(container)["FILTER_POLICY"]["value"]
    assert yaml.safe_load(policy) == {
        "maxOutputBytes": 1048576,
        "forbiddenExtensions": [".csv"],
        "blockCopiedInputs": True,
    }
    builtin = only_container(job("cpu", "filter"))
    assert builtin["image"] == BASE_VALUES["configure_image"]
    assert builtin["args"] == ["filter"]


def test_the_gpu_pvc_uses_the_environment_storage_class() -> None:
    pvc = rendered("gpu")["data-pvc"]
    assert pvc is not None
    assert pvc["spec"]["storageClassName"] == "fast-ssd"  # the environment's wins over STORAGE_CLASS
    assert pvc["spec"]["resources"] == {"requests": {"storage": "200.5Gi"}}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_workflow_configmap_holds_the_workflow_document(scenario: str) -> None:
    configmap = rendered(scenario)["workflow-configmap"]
    assert configmap is not None
    assert configmap["metadata"]["name"] == NAME
    document = yaml.safe_load(configmap["data"]["workflow.json"])
    assert yaml.safe_load(configmap["data"]["workflow.yaml"]) == document
    assert document["jobId"] == NAME
    assert document["owner"] == OWNER
    [stage] = document["stages"]
    spec = SCENARIOS[scenario].workflow["spec"]
    assert stage["algorithm"] == spec["algorithm"]
    assert [i["index"] for i in stage["input"]] == list(range(len(spec["inputs"])))
    environment = SCENARIOS[scenario].environment["spec"]
    expected_maxtime = min(
        spec.get("maxDuration", environment["maxJobDuration"]), environment["maxJobDuration"]
    )
    assert stage["compute"] == {"maxtime": expected_maxtime, "storageExpiry": environment["storageExpiry"]}


def test_the_publish_job_says_whether_outputs_are_published() -> None:
    values = context(CPU)
    blocked = render_job("publish", values, publish_outputs=False)
    assert env(only_container(blocked))["PUBLISH_OUTPUTS"]["value"] == "false"
    assert env(only_container(job("cpu", "publish")))["PUBLISH_OUTPUTS"]["value"] == "true"
    assert env(only_container(job("cpu", "publish")))["STORAGE_EXPIRY"]["value"] == "24"


def test_the_publish_job_gets_the_filter_manifest_the_caps_and_no_metadata_credentials() -> None:
    values = context(CPU)
    passed = env(only_container(render_job("publish", values, manifest_sha256="ab" * 32)))
    assert passed["PUBLISH_MANIFEST"]["value"] == "required"
    assert passed["PUBLISH_MANIFEST_SHA256"]["value"] == "ab" * 32
    unfiltered = env(only_container(job("cpu", "publish")))
    assert "PUBLISH_MANIFEST" not in unfiltered
    assert "PUBLISH_MANIFEST_SHA256" not in unfiltered
    environment = values["environment"]
    assert unfiltered["PUBLISH_MAX_BYTES"]["value"] == str(environment.publish_byte_cap)
    assert unfiltered["PUBLISH_MAX_FILES"]["value"] == str(environment.publish_max_files)
    assert unfiltered["AWS_EC2_METADATA_DISABLED"]["value"] == "true"


# ---- TEMPLATES_DIR -----------------------------------------------------------------------------------


def test_a_templates_dir_file_can_extend_a_builtin_block(tmp_path: Path) -> None:
    (tmp_path / "algorithm-pod.yaml.j2").write_text(
        '{% extends "builtin/algorithm-pod.yaml.j2" %}{% block pod_annotations %}\n'
        '  annotations: {"team": "x"}{% endblock %}'
    )
    custom = render_all(CPU, Templates(tmp_path))
    builtin = render_all(CPU)

    algorithm = custom["algorithm-pod"]
    assert algorithm is not None
    assert algorithm["metadata"]["annotations"]["team"] == "x"
    expected = builtin["algorithm-pod"]
    assert expected is not None
    # Nothing else changed (but the spec hash, which covers the whole manifest).
    for manifest in (algorithm, expected):
        manifest["metadata"]["annotations"].pop("team", None)
        manifest["metadata"]["annotations"].pop(SPEC_HASH_ANNOTATION)
    assert algorithm == expected
    for template in ALL_TEMPLATES:
        if template != "algorithm-pod":
            assert custom[template] == builtin[template], template


def test_a_templates_dir_file_replaces_the_builtin_one(tmp_path: Path) -> None:
    (tmp_path / "data-pvc.yaml.j2").write_text(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {{ (name ~ '-data') | json }}\n"
        "spec: {accessModes: [ReadWriteMany]}\n"
    )
    pvc = Templates(tmp_path).render("data-pvc", context(CPU))
    assert pvc is not None
    assert pvc["spec"] == {"accessModes": ["ReadWriteMany"]}
    assert SPEC_HASH_ANNOTATION in pvc["metadata"]["annotations"]


def test_an_undefined_variable_is_an_error_naming_the_template(tmp_path: Path) -> None:
    (tmp_path / "data-pvc.yaml.j2").write_text(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {{ no_such_value }}\n"
    )
    templates = Templates(tmp_path)
    with pytest.raises(TemplateError, match=r"data-pvc\.yaml\.j2.*no_such_value"):
        templates.render("data-pvc", context(CPU, templates))


def test_an_undefined_condition_is_an_error_naming_the_template(tmp_path: Path) -> None:
    (tmp_path / "job-secret.yaml.j2").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n{% if no_such_flag %}type: Opaque{% endif %}\n"
    )
    templates = Templates(tmp_path)
    with pytest.raises(TemplateError, match=r"job-secret\.yaml\.j2.*no_such_flag"):
        templates.render("job-secret", context(CPU, templates))


def test_an_undefined_variable_through_the_json_filter_is_an_error_naming_the_template(
    tmp_path: Path,
) -> None:
    # Every value the shipped templates insert goes through `| json`, so this is the common case.
    (tmp_path / "data-pvc.yaml.j2").write_text(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {{ no_such_value | json }}\n"
    )
    templates = Templates(tmp_path)
    with pytest.raises(TemplateError, match=r"data-pvc\.yaml\.j2.*no_such_value"):
        templates.render("data-pvc", context(CPU, templates))


def test_a_missing_context_value_is_an_error_naming_the_template() -> None:
    values = context(CPU)
    del values["credentials_secret"]
    with pytest.raises(TemplateError, match=r"configure-pod\.yaml\.j2.*credentials_secret"):
        render_job("configure", values)


def test_a_template_that_renders_no_object_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "job-secret.yaml.j2").write_text("just: a mapping\n")
    with pytest.raises(TemplateError, match=r"job-secret\.yaml\.j2"):
        Templates(tmp_path).render("job-secret", context(CPU))


def test_a_template_with_a_syntax_error_fails_at_load(tmp_path: Path) -> None:
    (tmp_path / "filter-pod.yaml.j2").write_text("kind: Pod\n{% if %}\n")
    with pytest.raises(TemplateError, match="cannot load template"):
        Templates(tmp_path)


def test_a_template_with_a_syntax_error_is_named_in_the_load_error(tmp_path: Path) -> None:
    (tmp_path / "filter-pod.yaml.j2").write_text("kind: Pod\n{% if %}\n")
    with pytest.raises(TemplateError, match=r"filter-pod\.yaml\.j2"):
        Templates(tmp_path)


def test_algorithm_and_filter_pods_wait_for_their_isolation_even_when_the_network_is_allowed() -> None:
    for stage in ("algorithm", "filter"):
        [check] = pod_spec(job("cpu", stage))["initContainers"]
        assert check["name"] == "isolation-check"
        assert check["args"] == ["isolation-check"]
        assert check["image"] == BASE_VALUES["configure_image"]  # our own image, not the algorithm's
        assert env(check)["ISOLATION_TIMEOUT_SECONDS"]["value"] == "60"
    # The gpu scenario's environment allows network, but not to the cluster: its pods wait too, until
    # the API server is refused (then its filter pod records the manifest before FILTERING_CONTAINER).
    assert [c["name"] for c in pod_spec(job("gpu", "algorithm"))["initContainers"]] == ["isolation-check"]
    assert [c["name"] for c in pod_spec(job("gpu", "filter"))["initContainers"]] == [
        "isolation-check",
        "manifest",
    ]
    for stage in ("configure", "publish"):
        assert "initContainers" not in pod_spec(job("cpu", stage))


def test_a_custom_filter_runs_after_the_built_in_step_that_records_the_manifest() -> None:
    values = {**context(CPU), "filter_image": "example/filter:1"}
    spec = pod_spec(render_job("filter", values))
    check, manifest = spec["initContainers"]
    assert (check["name"], manifest["name"]) == ("isolation-check", "manifest")
    assert manifest["image"] == BASE_VALUES["configure_image"]
    assert manifest["args"] == ["filter"]
    assert env(manifest)["FILTER_MANIFEST_ONLY"]["value"] == "true"
    mounts = {m["mountPath"]: m for m in manifest["volumeMounts"]}
    assert mounts["/data/outputs"]["readOnly"]
    assert mounts["/data/logs"]["readOnly"]
    assert mounts["/data/filtering"]["subPath"] == "filtering"
    # The custom filter (third-party code) never mounts the manifest's folder.
    [custom] = spec["containers"]
    assert "/data/filtering" not in {m["mountPath"] for m in custom["volumeMounts"]}
    builtin = only_container(job("cpu", "filter"))
    assert {m["mountPath"] for m in builtin["volumeMounts"]} >= {"/data/filtering"}
    assert env(builtin)["PUBLISH_MAX_FILES"]["value"] == str(values["environment"].publish_max_files)
    # Nor does the algorithm's pod: it cannot write what publish trusts.
    algorithm = only_container(job("cpu", "algorithm"))
    assert not any(m.get("subPath") == "filtering" for m in algorithm["volumeMounts"])


def test_the_scope_affinity_is_anded_into_every_term_of_the_environments_affinity() -> None:
    zone = {"key": "zone", "operator": "In", "values": ["a"]}
    gpu = {"key": "gpu", "operator": "Exists"}
    environment = Environment(
        name="e",
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [zone]}, {"matchExpressions": [gpu]}]
                }
            },
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []},
        },
    )
    scope = {"key": "scope", "operator": "In", "values": ["c2d"]}
    merged = pod_affinity(environment, "c2d")
    terms = merged["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [zone, scope]}, {"matchExpressions": [gpu, scope]}]
    assert merged["podAntiAffinity"] == environment.affinity["podAntiAffinity"]
    assert environment.affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0] == {"matchExpressions": [zone]}  # the environment's own value is not changed
    assert pod_affinity(Environment(name="e"), None) == {}


def test_the_base_children_are_rendered_once_per_what_they_are_rendered_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    templates = Templates()
    calls: list[str] = []
    real = templates.render

    def counting(template: str, values: dict[str, Any]) -> dict[str, Any] | None:
        calls.append(template)
        return real(template, values)

    monkeypatch.setattr(templates, "render", counting)
    scenario = SCENARIOS["cpu"]
    first = templates.render_base(inputs(scenario))
    assert len(calls) == len(BASE_TEMPLATES)
    # The same Workflow at another status (a new version of the object): no render, equal manifests.
    moved = dict(scenario.workflow, status={"stage": "RunningAlgorithm", "statusCode": 40})
    again = templates.render_base(dataclasses.replace(inputs(scenario), workflow=Workflow.from_object(moved)))
    assert len(calls) == len(BASE_TEMPLATES)
    assert again == first == [m for m in (rendered("cpu")[name] for name in BASE_TEMPLATES) if m]
    # Copies: what a caller changes is not what the next one gets.
    again[0]["metadata"]["name"] = "changed"
    assert templates.render_base(inputs(scenario))[0]["metadata"]["name"] != "changed"
    # Another annotation, spec or environment renders again.
    annotated = dict(scenario.workflow, metadata={**scenario.workflow["metadata"], "annotations": {"a": "b"}})
    templates.render_base(dataclasses.replace(inputs(scenario), workflow=Workflow.from_object(annotated)))
    bigger = Environment.from_object(
        {**scenario.environment, "spec": {**scenario.environment["spec"], "nCPU": 7}}
    )
    templates.render_base(dataclasses.replace(inputs(scenario), environment=bigger))
    assert len(calls) == 3 * len(BASE_TEMPLATES)
