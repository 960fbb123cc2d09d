"""`helm install`, `helm upgrade` and `helm uninstall` of the chart against the test cluster: every rendered
object passes the API server's own validation (admission, schemas, RBAC object rules); and the operator,
running as the chart's ServiceAccount, completes a Workflow with exactly the permissions the chart grants."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import kr8s.asyncio
import pytest
import yaml
from kr8s.asyncio.objects import ConfigMap, Deployment, Namespace, Secret, ServiceAccount

from e2e.operator_fixtures import (
    OPERATOR_KEY,
    ComputeEnvironment,
    create_workflow,
    wait_finished,
)
from e2e.operator_handle import StartOperator, run_command
from e2e.waiting import wait_for, wait_for_deletion, wait_for_object
from ocean_c2d.lease import SignerEndpoint
from unit_tests.built_tools import built

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "ocean-c2d"
# What `kubectl auth can-i --list` shows for the chart's ServiceAccount in the watched namespace.
EXPECTED_PERMISSIONS = Path(__file__).resolve().parent / "expected" / "operator-can-i.txt"


@pytest.fixture(scope="module")
def helm_path() -> str:
    """The PATH fragment holding the built helm and kubectl."""
    return built("helm", "kubernetes")


async def helm(tools: str, kubeconfig: str, *args: str) -> str:
    return await run_command("helm", *args, kubeconfig=kubeconfig, tools=tools)


async def service_account_kubeconfig(
    tools: str, kubeconfig: str, namespace: str, account: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount (a TokenRequest token, as a pod gets)."""
    token = (
        await run_command(
            "kubectl",
            "create",
            "token",
            account,
            "-n",
            namespace,
            "--duration=1h",
            kubeconfig=kubeconfig,
            tools=tools,
        )
    ).strip()
    write_token_kubeconfig(Path(kubeconfig), token, account, namespace, path)
    return path


def write_token_kubeconfig(admin_config: Path, token: str, user: str, namespace: str, path: Path) -> None:
    """The admin kubeconfig's cluster (server, CA) with a bearer-token user instead of the admin's."""
    admin = yaml.safe_load(admin_config.read_text())
    cluster = admin["clusters"][0]["name"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": cluster, "user": user, "namespace": namespace}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


def permission_lines(can_i_list: str) -> list[str]:
    """`kubectl auth can-i --list` as sorted lines with single spaces (its column widths vary)."""
    lines = (line for line in can_i_list.splitlines() if line.strip() and not line.startswith("#"))
    return sorted(" ".join(line.split()) for line in lines)


def deployment_available(deployment: Deployment) -> bool:
    return any(
        c.get("type") == "Available" and c.get("status") == "True"
        for c in (deployment.raw.get("status") or {}).get("conditions") or []
    )


@pytest.mark.local_only  # the default image; e2e/kind/run.sh installs the chart with the built one
@pytest.mark.usefixtures("ocean_crds")
async def test_helm_install_upgrade_and_uninstall(
    kubeconfig: str, api: kr8s.asyncio.Api, namespace: str, helm_path: str
) -> None:
    secret = await Secret(
        {"metadata": {"name": "ocean-c2d-credentials"}, "stringData": {"operator-private-key": OPERATOR_KEY}},
        namespace=namespace,
        api=api,
    )
    await secret.create()

    # --skip-crds: the session already installed crds/ (the chart's copies are identical, a unit test says).
    release = ("c2d", str(CHART), "-n", namespace, "--skip-crds", "--wait", "--timeout", "120s")
    notes = await helm(helm_path, kubeconfig, "install", *release)
    assert "get c2denv" in notes  # NOTES.txt rendered for this release
    assert "rollout status deployment/c2d-ocean-c2d" in notes
    assert "kubectl apply --server-side -f <chart>/crds/" in notes

    deployment = await Deployment.get("c2d-ocean-c2d", namespace=namespace, api=api)
    await wait_for(deployment, deployment_available, timeout=60)
    [container] = deployment.raw["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["OPERATOR_PRIVATE_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "ocean-c2d-credentials"
    assert "value" not in env["OPERATOR_PRIVATE_KEY"]
    environments = [e async for e in ComputeEnvironment.list(namespace=namespace, api=api)]
    assert environments  # the chart's default environment was accepted by the CRD's schema

    await helm(helm_path, kubeconfig, "upgrade", *release, "--set", "operator.logLevel=DEBUG")
    await deployment.refresh()
    [container] = deployment.raw["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}.get("LOG_LEVEL") == "DEBUG"

    await helm(helm_path, kubeconfig, "uninstall", "c2d", "-n", namespace, "--wait", "--timeout", "120s")
    await wait_for_deletion(deployment, timeout=60)
    assert not await deployment.exists()


@pytest.mark.local_only  # here the operator process proves it; in kind, the operator pod itself does
async def test_the_operator_runs_a_workflow_with_only_the_charts_permissions(
    kubeconfig: str,
    api: kr8s.asyncio.Api,
    namespace: str,
    helm_path: str,
    start_operator: StartOperator,
    tmp_path: Path,
) -> None:
    # The chart without its operator pod (on this cluster no container would run it): the operator runs
    # here as a process, authenticated as the release's ServiceAccount and nothing else, under the chart's
    # admission policy, in a namespace that enforces Pod Security "restricted" (issue 11 E20, E21).
    await label_restricted(api, namespace)
    release = ("c2d", str(CHART), "-n", namespace, "--skip-crds", "--wait", "--timeout", "120s")
    notes = await helm(
        helm_path, kubeconfig, "install", *release, "--set", "operator.replicas=0",
        "--set-json", f"computeEnvironments={json.dumps([FILTERED_ENVIRONMENT])}",
    )  # fmt: skip
    assert "operator.replicas is 0" in notes  # NOTES.txt says how to run it instead
    assert f"kubectl label namespace {namespace} pod-security.kubernetes.io/enforce=restricted" in notes
    account = "c2d-ocean-c2d"
    as_operator = await service_account_kubeconfig(
        helm_path, kubeconfig, namespace, account, tmp_path / "operator.kubeconfig"
    )

    listed = await run_command(
        "kubectl", "auth", "can-i", "--list", "-n", namespace, kubeconfig=str(as_operator), tools=helm_path
    )
    expected = permission_lines(EXPECTED_PERMISSIONS.read_text())
    assert permission_lines(listed) == expected, (
        "the ServiceAccount's permissions changed; if intended, update "
        f"{EXPECTED_PERMISSIONS.relative_to(REPO)} with:\n{listed}"
    )
    # Nothing cluster-wide beyond what every authenticated identity may do.
    for verb, resource in (("list", "namespaces"), ("get", "nodes"), ("list", "secrets")):
        answer = await run_command(
            "kubectl", "auth", "can-i", verb, resource, "--all-namespaces",
            kubeconfig=str(as_operator), tools=helm_path, check=False,  # "no" exits 1
        )  # fmt: skip
        assert answer.strip() == "no", (verb, resource)

    # The accounts the chart set up for the Workflows' pods: the only ones its admission policy allows.
    # Leader election as the chart's pods run it: the Lease and the signer's EndpointSlice (pointed at a
    # documentation address: no pod here serves the signer) under the chart's RBAC.
    operator = await start_operator(
        KUBECONFIG=str(as_operator),
        SERVICE_ACCOUNT=f"{account}-stage",
        ALGORITHM_SERVICE_ACCOUNT=f"{account}-algorithm",
        USER_NAMESPACES="true",
        LEADER_ELECTION="true",
        LEASE_NAME=account,
        LEASE_NAMESPACE=namespace,
        SIGNER_ENDPOINT_SLICE=f"{account}-signer",
        POD_IP="192.0.2.10",
    )
    pods: dict[str, dict[str, Any]] = {}  # the stage pods, as they appear (cleanup deletes them)
    watching = asyncio.create_task(collect_stage_pods(api, namespace, pods))
    workflow = await create_workflow(api, namespace, "rbac-proof", environment="cpu-small")
    final = await wait_finished(workflow, operator, timeout=120)
    assert final["reason"] == "Succeeded", final
    assert final["statusCode"] == 70
    # The operator's cleanup (deletes of its own children) passes the admission policy too. The Workflow
    # still exists, so a Secret that is gone was deleted by the operator (it may be gone already).
    secret = Secret({"metadata": {"name": "rbac-proof-secret", "namespace": namespace}}, api=api)
    await wait_for_deletion(secret, timeout=60)
    watching.cancel()
    # Every stage ran a pod, each admitted by Pod Security "restricted"; the sandboxed ones as such.
    assert set(pods) == {"configure", "algorithm", "filter", "publish"}, set(pods)
    for component, spec in pods.items():
        sandboxed = component in ("algorithm", "filter")
        assert spec["serviceAccountName"] == f"{account}-{'algorithm' if sandboxed else 'stage'}", component
        assert spec["automountServiceAccountToken"] is False
        assert spec.get("hostUsers", True) is not sandboxed, component
    assert await operator.total("ocean_c2d_kubernetes_requests_total", code="403") == 0
    assert await operator.total("ocean_c2d_leader") == 1
    endpoints = await wait_for_object(
        api, "endpointslices", f"{account}-signer", namespace=namespace, timeout=30
    )
    assert endpoints.raw["endpoints"][0]["addresses"] == ["192.0.2.10"]
    log = await operator.log_text()
    assert "Forbidden" not in log, log[-4000:]
    assert "acquired Lease" in log


FILTERED_ENVIRONMENT = {
    "name": "cpu-small",
    "spec": {"nCPU": 1, "ramGB": 2, "diskGB": 2, "maxJobs": 2, "filter": {"enabled": True}},
}


async def label_restricted(api: kr8s.asyncio.Api, namespace: str) -> None:
    """What NOTES.txt tells the cluster operator to run: enforce Pod Security "restricted"."""
    ns = await Namespace.get(namespace, api=api)
    await ns.label({"pod-security.kubernetes.io/enforce": "restricted"})


async def collect_stage_pods(api: kr8s.asyncio.Api, namespace: str, pods: dict[str, dict[str, Any]]) -> None:
    """Each stage pod's spec by its component, from a watch (until cancelled)."""
    selector = "app.kubernetes.io/managed-by=ocean-c2d"
    async for _event, pod in api.async_watch("pods", namespace=namespace, label_selector=selector):
        pods[pod.labels["component"]] = pod.raw["spec"]


async def kubectl_as(
    tools: str, kubeconfig: Path, *args: str, manifest: dict[str, Any] | None = None
) -> tuple[int, str]:
    """kubectl as the operator's ServiceAccount; (exit code, stdout and stderr). A manifest goes in on
    stdin (`-f -`); every write is a server-side dry run, which runs the whole admission chain."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": f"{tools}:{os.environ['PATH']}"}
    process = await asyncio.create_subprocess_exec(
        "kubectl", *args, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate(json.dumps(manifest).encode() if manifest else None)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def policy_in_effect(
    tools: str, kubeconfig: Path, manifest: dict[str, Any], timeout: float = 15
) -> None:
    """Wait until the admission policy denies `manifest`. A new policy takes effect asynchronously (the API
    server reloads its compiled policies in the background) and no object reports when: re-ask at a
    short pace, bounded, rather than fail a first request that raced the reload."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        code, output = await kubectl_as(
            tools, kubeconfig, "create", "-f", "-", "--dry-run=server", manifest=manifest
        )
        if code != 0 and "ValidatingAdmissionPolicy" in output:
            return
        assert asyncio.get_running_loop().time() < deadline, f"the policy never took effect: {output}"
        await asyncio.sleep(0.2)


def labelled(manifest: dict[str, Any]) -> dict[str, Any]:
    metadata = {**manifest["metadata"], "labels": {"app.kubernetes.io/managed-by": "ocean-c2d"}}
    return {**manifest, "metadata": metadata}


def stage_pod(name: str, namespace: str, account: str | None, **pod: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "containers": [{"name": "c", "image": "ocean-c2d:latest"}],
        **pod,
    }
    if account is not None:
        spec["serviceAccountName"] = account
    return labelled(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    )


async def leader_election_writes_are_named(tools: str, as_operator: Path, namespace: str) -> None:
    """RBAC lets the operator create any Lease and EndpointSlice of the release namespace (create takes no
    resourceNames): the policy allows the one Lease and the signer's one slice, as lease.py writes them."""
    dry_create = ("create", "-f", "-", "--dry-run=server", "-o", "name")
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "c2d-ocean-c2d", "namespace": namespace},
        "spec": {"holderIdentity": "c2d-ocean-c2d-0", "leaseDurationSeconds": 15},
    }
    signer = "c2d-ocean-c2d-signer"
    # Documentation addresses (no pod here serves the signer); kr8s is not needed to build a manifest.
    endpoint, endpoint6 = (
        SignerEndpoint(None, namespace, signer, ip, 8090).manifest(None)  # type: ignore[arg-type]
        for ip in ("192.0.2.10", "2001:db8::a")
    )
    for manifest in (lease, endpoint, endpoint6):
        code, output = await kubectl_as(tools, as_operator, *dry_create, manifest=manifest)
        assert code == 0, output

    def with_metadata(manifest: dict[str, Any], **metadata: Any) -> dict[str, Any]:
        return {**manifest, "metadata": {**manifest["metadata"], **metadata}}

    labels = endpoint["metadata"]["labels"]
    two = [*endpoint["endpoints"], {"addresses": ["192.0.2.11"], "conditions": {"ready": True}}]
    refused = {
        "another Lease": with_metadata(lease, name="kube-scheduler"),
        "another EndpointSlice": with_metadata(endpoint, name="c2d-ocean-c2d-metrics-x"),
        "a slice of another Service": with_metadata(
            endpoint, labels={**labels, "kubernetes.io/service-name": "c2d-ocean-c2d-metrics"}
        ),
        "a slice of the endpoint controller's": with_metadata(
            endpoint,
            labels={**labels, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
        ),
        "a slice without its Service": with_metadata(
            endpoint, labels={"endpointslice.kubernetes.io/managed-by": "ocean-c2d"}
        ),
        "a slice of two endpoints": {**endpoint, "endpoints": two},
        "an endpoint of two addresses": {
            **endpoint, "endpoints": [{"addresses": ["192.0.2.10", "192.0.2.11"]}]
        },
        "a slice of names": {
            **endpoint, "addressType": "FQDN", "endpoints": [{"addresses": ["example.invalid"]}]
        },
    }  # fmt: skip
    for what, manifest in refused.items():
        code, output = await kubectl_as(tools, as_operator, *dry_create, manifest=manifest)
        assert code != 0, (what, output)
        assert "ValidatingAdmissionPolicy" in output, (what, output)
    for verb, resource in (("create", "leases"), ("create", "endpointslices")):
        answer = await run_command(
            "kubectl", "auth", "can-i", verb, resource, "-n", namespace,
            kubeconfig=str(as_operator), tools=tools, check=False,
        )  # fmt: skip
        assert answer.strip() == "yes", (verb, resource)


@pytest.mark.local_only  # it needs the release's ServiceAccount token; the operator pod is not involved
@pytest.mark.usefixtures("ocean_crds")
@pytest.mark.parametrize("all_namespaces", [False, True], ids=["one-namespace", "all-namespaces"])
async def test_the_admission_policy_limits_the_operator_to_its_own_objects_and_accounts(
    kubeconfig: str,
    api: kr8s.asyncio.Api,
    namespace: str,
    helm_path: str,
    tmp_path: Path,
    all_namespaces: bool,
) -> None:
    """Issue 11 E20: RBAC lets the operator's ServiceAccount write every ConfigMap, Secret, PVC,
    NetworkPolicy and pod of the watched namespaces (all of them, with "*"), and pods may name any
    account there. The chart's ValidatingAdmissionPolicy narrows writes to the operator's own objects
    (managed-by label before and after) and pods to the chart's job accounts, without token or host
    access."""
    values = ["--set", "operator.replicas=0"]
    target = namespace
    if all_namespaces:
        values += ["--set", "operator.watchNamespace=*"]
        other = await Namespace({"metadata": {"name": f"{namespace}-other"[:63]}}, api=api)
        await other.create()
        target = other.name
    release = ("c2d", str(CHART), "-n", namespace, "--skip-crds", "--wait", "--timeout", "120s")
    await helm(helm_path, kubeconfig, "install", *release, *values)
    try:
        as_operator = await service_account_kubeconfig(
            helm_path, kubeconfig, namespace, "c2d-ocean-c2d", tmp_path / "operator.kubeconfig"
        )
        foreign_map = await ConfigMap(
            {"metadata": {"name": "postgres"}, "data": {"k": "v"}}, namespace=target, api=api
        )
        await foreign_map.create()
        foreign_secret = await Secret(
            {"metadata": {"name": "postgres-secret"}, "stringData": {"password": "p"}},
            namespace=target,
            api=api,
        )
        await foreign_secret.create()
        allowed = "c2d-ocean-c2d-algorithm" if not all_namespaces else "default"
        denied_account = "default" if not all_namespaces else "c2d-ocean-c2d-stage"
        dry_create = ("create", "-f", "-", "--dry-run=server", "-o", "name")
        config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": target}}
        await policy_in_effect(helm_path, as_operator, config_map)
        # A pod naming an account that does not exist is refused before the policy sees it (the
        # ServiceAccount admission plugin): the denied account must exist for the refusal to be the policy's.
        if all_namespaces:
            denied = await ServiceAccount({"metadata": {"name": denied_account}}, namespace=target, api=api)
            await denied.create()

        # What the operator does is allowed...
        for manifest in (labelled(config_map), stage_pod("ok", target, allowed)):
            code, output = await kubectl_as(helm_path, as_operator, *dry_create, manifest=manifest)
            assert code == 0, output
        # ...and nothing else, though RBAC alone would allow all of it.
        refused = {
            "an unlabelled object": config_map,
            "a pod of another account": stage_pod("other-account", target, denied_account),
            "a pod of the namespace's default account": stage_pod("no-account", target, None),
            "a pod with a token": stage_pod("token", target, allowed, automountServiceAccountToken=True),
            "a pod with a host path": stage_pod(
                "host", target, allowed, volumes=[{"name": "h", "hostPath": {"path": "/"}}]
            ),
        }
        if all_namespaces:
            del refused["a pod of the namespace's default account"]  # "default" is the job account there
        for what, manifest in refused.items():
            code, output = await kubectl_as(helm_path, as_operator, *dry_create, manifest=manifest)
            assert code != 0, (what, output)
            assert "ValidatingAdmissionPolicy" in output, (what, output)
        # A foreign object may not be adopted (labelled by a patch), patched or deleted.
        adopt = json.dumps({"metadata": {"labels": {"app.kubernetes.io/managed-by": "ocean-c2d"}}})
        for args in (
            ("patch", "configmap", "postgres", "-n", target, "--type=merge", "-p", adopt, "--dry-run=server"),
            ("delete", "secret", "postgres-secret", "-n", target, "--dry-run=server"),
            ("delete", "configmap", "postgres", "-n", target, "--dry-run=server"),
        ):
            code, output = await kubectl_as(helm_path, as_operator, *args)
            assert code != 0, (args, output)
            assert "ValidatingAdmissionPolicy" in output, (args, output)
        # RBAC did allow each of these: the denials above are the policy's.
        for verb, resource in (("delete", "secrets"), ("patch", "configmaps"), ("create", "pods")):
            answer = await run_command(
                "kubectl", "auth", "can-i", verb, resource, "-n", target,
                kubeconfig=str(as_operator), tools=helm_path, check=False,
            )  # fmt: skip
            assert answer.strip() == "yes", (verb, resource)
        await leader_election_writes_are_named(helm_path, as_operator, namespace)
    finally:
        await helm(helm_path, kubeconfig, "uninstall", "c2d", "-n", namespace, "--wait", "--timeout", "120s")
        if all_namespaces:
            await other.delete(propagation_policy="Background")
