"""Fixtures for tests against a real Kubernetes cluster.

The cluster is the one KUBECONFIG names when it is reachable (kind, on a machine with Docker), and
otherwise the local one this repository builds (e2e/cluster/cluster.sh), started once per session
and stopped after it when this session started it.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import kr8s
import kr8s.asyncio
import pytest
import yaml
from kr8s.asyncio.objects import Namespace

from e2e.crds import CRDS, apply_crd, established
from e2e.waiting import wait_for, wait_for_object

# e2e.services first: the other two import it, and pytest rewrites asserts only in plugins it imports itself.
pytest_plugins = ["e2e.services", "e2e.operator_fixtures", "e2e.real_node", "e2e.api_client"]

E2E = Path(__file__).resolve().parent
REPO = E2E.parent
CLUSTER_SCRIPT = REPO / "e2e" / "cluster" / "cluster.sh"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under e2e/ needs a cluster: mark it so `-m "not e2e"` deselects it; the tests that
    use the real node (fixture `real_node`) are marked `real` too. The hook sees every collected item
    (unit_tests/ too, in `make test`'s one run): only those of e2e/ are marked."""
    for item in items:
        if not item.path.is_relative_to(E2E):
            continue
        item.add_marker(pytest.mark.e2e)
        if "real_node" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real)


async def _reachable(kubeconfig: str) -> bool:
    try:
        api = await kr8s.asyncio.api(kubeconfig=kubeconfig)
        async with asyncio.timeout(10):
            await api.version()
    except Exception:
        return False
    return True


async def _cluster_script(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(str(CLUSTER_SCRIPT), *args, stdout=asyncio.subprocess.PIPE)
    stdout, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{CLUSTER_SCRIPT.name} {' '.join(args)} exited {process.returncode}")
    return stdout.decode().strip()


@pytest.fixture(scope="session")
async def kubeconfig() -> AsyncIterator[str]:
    """A kubeconfig of a running cluster: KUBECONFIG's if it answers, else the local cluster's."""
    named = os.environ.get("KUBECONFIG")
    if named and await _reachable(named):
        yield named
        return
    local = await _cluster_script("kubeconfig")
    already_running = await _reachable(local)
    await _cluster_script("up")
    os.environ["KUBECONFIG"] = local
    yield local
    if not already_running and os.environ.get("OCEAN_C2D_KEEP_CLUSTER") != "1":
        await _cluster_script("down")


@pytest.fixture(scope="session")
async def api(kubeconfig: str) -> kr8s.asyncio.Api:
    """An async kr8s client of the test cluster."""
    return await kr8s.asyncio.api(kubeconfig=kubeconfig)


@pytest.fixture
async def namespace(api: kr8s.asyncio.Api, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh namespace for one test, deleted (with everything in it) after the test."""
    # Parametrized test names hold [ ] and other characters a namespace name cannot.
    test_name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower().replace("_", "-"))[:40].strip("-")
    name = f"e2e-{test_name}-{uuid.uuid4().hex[:6]}"
    ns = await Namespace(
        {"metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "ocean-c2d-e2e"}}}, api=api
    )
    await ns.create()
    # The ServiceAccount admission plugin refuses pods until the namespace's default account exists.
    await wait_for_object(api, "serviceaccounts", "default", namespace=name, timeout=30)
    yield name
    await ns.delete(propagation_policy="Background")


@pytest.fixture(scope="session")
async def ocean_crds(api: kr8s.asyncio.Api) -> list[str]:
    """Both CRDs of crds/ installed and Established.

    They are deliberately left installed after the session: other tests (the operator's) use them, and
    deleting a CRD deletes every object of its kind in the cluster.
    """
    names = []
    for path in sorted(CRDS.glob("*.yaml")):
        crd = await apply_crd(api, yaml.safe_load(path.read_text()))
        await wait_for(crd, established, timeout=60)
        names.append(crd.name)
    return names
