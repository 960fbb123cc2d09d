"""`helm install`, `helm upgrade` and `helm uninstall` of the chart against the test cluster: every rendered
object passes the API server's own validation (admission, schemas, RBAC object rules)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import kr8s.asyncio
import pytest
from kr8s.asyncio.objects import Deployment, Secret

from e2e.operator_fixtures import OPERATOR_KEY, ComputeEnvironment
from e2e.waiting import wait_for, wait_for_deletion

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "ocean-c2d"


@pytest.fixture(scope="module")
def helm_path() -> str:
    """The PATH fragment holding the built helm."""
    build = [str(REPO / "toolchain" / "build.sh"), "--path", "helm"]
    return subprocess.run(build, capture_output=True, text=True, check=True).stdout.strip()


async def helm(tools: str, kubeconfig: str, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": kubeconfig, "PATH": f"{tools}:{os.environ['PATH']}"}
    process = await asyncio.create_subprocess_exec(
        "helm", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    text = output.decode()
    assert process.returncode == 0, f"helm {' '.join(args)} failed:\n{text}"
    return text


def deployment_available(deployment: Deployment) -> bool:
    return any(
        c.get("type") == "Available" and c.get("status") == "True"
        for c in (deployment.raw.get("status") or {}).get("conditions") or []
    )


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
