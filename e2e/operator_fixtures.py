"""The operator against the test cluster, and helpers to drive Workflows.

Two ways to run the operator, chosen by OCEAN_C2D_E2E_OPERATOR:
- `process` (the default; what CI runs here): `ocean-c2d run` as a local process with the e2e templates;
- `in-cluster` (e2e/kind/run.sh, for machines with Docker): the chart installed in the test's namespace
  with the image OCEAN_C2D_E2E_IMAGE, the e2e templates from a ConfigMap, /metrics through a
  port-forward. Tests that need the operator to reach this machine's loopback are marked `local_only`
  and deselected there.
Both give the tests the same handle (e2e/operator_handle.py): metrics, kill (a crash), stop, log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kr8s.asyncio
import pytest
from kr8s.asyncio.objects import APIObject, Secret, new_class

from e2e.in_cluster import InClusterRelease
from e2e.operator_handle import REPO, Operator, StartOperator, stop_process
from e2e.services import free_port
from e2e.waiting import wait_for

OPERATOR_KEY = "0x95c716e9df3bc4ffd7299e7861ce401de810e8d245d3127b8e7b430f4ca7fd27"
OPERATOR_ADDRESS = "0x6D39A833d1a6789AECa50dB85CB830bc08319F45"
GROUP_VERSION = "oceanprotocol.com/v1alpha1"
Workflow = new_class(kind="Workflow", version=GROUP_VERSION, namespaced=True, asyncio=True)
ComputeEnvironment = new_class(
    kind="ComputeEnvironment", version=GROUP_VERSION, namespaced=True, asyncio=True
)
DID = "did:op:" + "0123456789abcdef" * 4
ALGO_DID = "did:op:" + "fedcba9876543210" * 4


@dataclass
class OperatorProcess(Operator):
    process: asyncio.subprocess.Process
    log: Path
    metrics_port: int

    async def log_text(self) -> str:
        return await asyncio.to_thread(self.log.read_text, errors="replace")

    async def kill(self) -> None:
        """SIGKILL, as an OOM kill would end it."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        await stop_process(self.process)


IN_CLUSTER = os.environ.get("OCEAN_C2D_E2E_OPERATOR", "process") == "in-cluster"


async def _credentials(api: kr8s.asyncio.Api, namespace: str) -> None:
    secret = await Secret(
        {"metadata": {"name": "ocean-c2d-credentials"}, "stringData": {"operator-private-key": OPERATOR_KEY}},
        namespace=namespace,
        api=api,
    )
    await secret.create()


@pytest.fixture
async def start_operator(
    namespace: str, kubeconfig: str, ocean_crds: list[str], api: kr8s.asyncio.Api, tmp_path: Path
) -> AsyncIterator[StartOperator]:
    """Start the operator watching the test's namespace, with the e2e templates (kwok annotations)."""
    await _credentials(api, namespace)
    if IN_CLUSTER:
        release = InClusterRelease(namespace, kubeconfig, tmp_path)
        await release.prepare(api)

        async def start(**extra_env: str) -> Operator:
            return await release.start(extra_env)  # the release stops its operators on uninstall

        yield start
        await release.uninstall()
        return

    started: list[Operator] = []

    async def start_process(**extra_env: str) -> Operator:
        log = tmp_path / f"operator-{len(started)}.log"
        metrics_port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": kubeconfig,
            "WATCH_NAMESPACE": namespace,
            "OPERATOR_PRIVATE_KEY": OPERATOR_KEY,
            "TEMPLATES_DIR": str(REPO / "e2e" / "templates"),
            "HEALTH_PORT": str(free_port()),
            "METRICS_PORT": str(metrics_port),
            # The download signer listens too (on loopback unless a test says where pods reach it).
            "SIGNER_HOST": "127.0.0.1",
            "SIGNER_PORT": str(free_port()),
            "LOG_LEVEL": "INFO",
            **extra_env,
        }
        with log.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ocean_c2d.cli", "run", env=env, stdout=sink, stderr=sink
            )
        operator = OperatorProcess(process, log, metrics_port)
        started.append(operator)
        return operator

    yield start_process
    for operator in started:
        await operator.stop()


async def create_environment(
    api: kr8s.asyncio.Api, namespace: str, name: str = "cpu", **spec: Any
) -> APIObject:
    environment: APIObject = await ComputeEnvironment(
        {"metadata": {"name": name}, "spec": {"nCPU": 1, "ramGB": 1, "diskGB": 1, **spec}},
        namespace=namespace,
        api=api,
    )
    await environment.create()
    return environment


def workflow_manifest(name: str, sim: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A Workflow; `sim` maps "<stage>.<knob>" to a kwok simulation annotation value (e2e/README.md)."""
    return {
        "metadata": {
            "name": name,
            "annotations": {f"sim.ocean-c2d/{key}": value for key, value in (sim or {}).items()},
        },
        "spec": {
            "environment": "cpu",
            "owner": OPERATOR_ADDRESS,
            "inputs": [{"did": DID, "serviceId": "svc-1", "transferTxId": "0x01"}],
            "algorithm": {
                "did": ALGO_DID,
                "serviceId": "svc-2",
                "transferTxId": "0x02",
                "container": {"image": "python", "tag": "3.11", "entrypoint": "python $ALGO"},
            },
            **spec,
        },
    }


async def create_workflow(api: kr8s.asyncio.Api, namespace: str, name: str, **kwargs: Any) -> APIObject:
    workflow: APIObject = await Workflow(workflow_manifest(name, **kwargs), namespace=namespace, api=api)
    await workflow.create()
    return workflow


async def events_of(api: kr8s.asyncio.Api, namespace: str, name: str) -> list[str]:
    """The reasons of the Events about the object `name`."""
    return [
        e.raw.get("reason", "")  # type: ignore[union-attr]
        async for e in api.async_get(
            "events", namespace=namespace, field_selector=f"involvedObject.name={name}"
        )
    ]


async def wait_for_event(
    api: kr8s.asyncio.Api, namespace: str, name: str, reason: str, timeout: float = 30
) -> None:
    """Until an Event of `reason` about the object `name` exists (a watch). The operator writes a
    Workflow's Events after its status, so a test that has seen the final status may be early."""
    selector = f"involvedObject.name={name},reason={reason}"
    async with asyncio.timeout(timeout):
        while True:
            async for _event, _obj in api.async_watch("events", namespace=namespace, field_selector=selector):
                return


def status(obj: APIObject) -> dict[str, Any]:
    return dict(obj.raw.get("status") or {})


def finished(obj: APIObject) -> bool:
    return status(obj).get("stage") == "Finished"


async def wait_finished(workflow: APIObject, operator: Operator, timeout: float = 90) -> dict[str, Any]:
    try:
        await wait_for(workflow, finished, timeout=timeout)
    except TimeoutError as error:
        raise AssertionError(f"{error}\n--- operator log ---\n{await operator.log_tail()}") from None
    return status(workflow)
