"""`helm install`, `helm upgrade` and `helm uninstall` of the chart against the test cluster: every rendered
object passes the API server's own validation (admission, schemas, RBAC object rules); and the operator,
running as the chart's ServiceAccount, completes a Workflow with exactly the permissions the chart grants."""

from __future__ import annotations

from pathlib import Path

import kr8s.asyncio
import pytest
import yaml
from kr8s.asyncio.objects import Deployment, Secret

from e2e.operator_fixtures import (
    OPERATOR_KEY,
    ComputeEnvironment,
    create_workflow,
    wait_finished,
)
from e2e.operator_handle import StartOperator, run_command
from e2e.waiting import wait_for, wait_for_deletion
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
    # here as a process, authenticated as the release's ServiceAccount and nothing else.
    release = ("c2d", str(CHART), "-n", namespace, "--skip-crds", "--wait", "--timeout", "120s")
    notes = await helm(helm_path, kubeconfig, "install", *release, "--set", "operator.replicas=0")
    assert "operator.replicas is 0" in notes  # NOTES.txt says how to run it instead
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

    operator = await start_operator(KUBECONFIG=str(as_operator))
    workflow = await create_workflow(api, namespace, "rbac-proof", environment="cpu-small")
    final = await wait_finished(workflow, operator, timeout=120)
    assert final["reason"] == "Succeeded", final
    assert final["statusCode"] == 70
    assert await operator.total("ocean_c2d_kubernetes_requests_total", code="403") == 0
    log = await operator.log_text()
    assert "Forbidden" not in log, log[-4000:]
