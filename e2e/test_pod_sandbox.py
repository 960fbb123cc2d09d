"""Issue 11 E21 on the real node: the algorithm's pod, admitted in a namespace that enforces Pod Security
"restricted", runs under its environment's RuntimeClass, and a fork bomb in it stops at the kubelet's
per-pod PID limit (e2e/cluster/node-kubelet.yaml, podPidsLimit) instead of exhausting the node's."""

from __future__ import annotations

import uuid
from typing import Any

import kr8s.asyncio
import pytest
from kr8s.asyncio.objects import Namespace, Pod, new_class

from e2e.operator_fixtures import OPERATOR_ADDRESS, Workflow, wait_finished
from e2e.operator_handle import StartOperator
from e2e.real_node import RealNode, create_real_environment, python_algorithm, start_real_stack
from e2e.services import S3Server

RuntimeClass = new_class(
    kind="RuntimeClass", version="node.k8s.io/v1", plural="runtimeclasses", namespaced=False, asyncio=True
)
REAL_TIMEOUT = 240
POD_PIDS_LIMIT = 1024  # e2e/cluster/node-kubelet.yaml

# Forks sleeping children until the kernel refuses one, then writes how many it got and the errno, kills
# and reaps them, and succeeds; never refused (no PID limit) it exits 3.
FORK_BOMB = """
import os, pathlib, signal, time
children = []
try:
    while len(children) < 5000:
        pid = os.fork()
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        children.append(pid)
except OSError as error:
    refused = error.errno
else:
    refused = None
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
pathlib.Path(os.environ["OUTPUTS"], "forks.txt").write_text(f"{len(children)} {refused}\\n")
raise SystemExit(0 if refused else 3)
"""


@pytest.mark.real
async def test_the_algorithm_runs_restricted_under_its_runtime_class_and_pid_limited(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    real_node: RealNode,
    node_s3: S3Server,
) -> None:
    ns = await Namespace.get(namespace, api=api)
    await ns.label({"pod-security.kubernetes.io/enforce": "restricted"})
    # A RuntimeClass of the node's own runc: what a gVisor or Kata class would be on a real cluster.
    runtime_class = await RuntimeClass(
        {"metadata": {"name": f"c2d-e2e-{uuid.uuid4().hex[:8]}"}, "handler": "runc"}, api=api
    )
    await runtime_class.create()
    try:
        stack = await start_real_stack(
            api, namespace, start_operator, real_node, node_s3, DEBUG_NO_CLEANUP="1"
        )
        await create_real_environment(api, namespace, real_node, runtimeClassName=runtime_class.name)
        manifest: dict[str, Any] = {
            "metadata": {"name": "forks"},
            "spec": {
                "environment": "real",
                "owner": OPERATOR_ADDRESS,
                "inputs": [],
                "algorithm": python_algorithm(real_node, FORK_BOMB),
            },
        }
        workflow = await Workflow(manifest, namespace=namespace, api=api)
        await workflow.create()
        final = await wait_finished(workflow, stack.operator, timeout=REAL_TIMEOUT)
        assert final["statusCode"] == 70, final

        [algorithm] = [
            p async for p in Pod.list(namespace=namespace, label_selector="component=algorithm", api=api)
        ]
        assert isinstance(algorithm, Pod)
        assert algorithm.raw["spec"]["runtimeClassName"] == runtime_class.name
        assert algorithm.raw["spec"]["serviceAccountName"] == "default"  # ALGORITHM_SERVICE_ACCOUNT
        [result] = [r for r in final.get("results") or [] if r["filename"] == "forks.txt"]
        children, errno = stack.object(result["url"]).decode().split()
        assert errno == "11", errno  # EAGAIN: the pids cgroup refused the fork
        assert 0 < int(children) < POD_PIDS_LIMIT
    finally:
        await runtime_class.delete()
