"""The operator as a real process against the test cluster, and helpers to drive Workflows."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import kr8s.asyncio
import pytest
from kr8s.asyncio.objects import APIObject, Secret, new_class
from prometheus_client.parser import text_string_to_metric_families

from e2e.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
OPERATOR_KEY = "0x95c716e9df3bc4ffd7299e7861ce401de810e8d245d3127b8e7b430f4ca7fd27"
OPERATOR_ADDRESS = "0x6D39A833d1a6789AECa50dB85CB830bc08319F45"
GROUP_VERSION = "oceanprotocol.com/v1alpha1"
Workflow = new_class(kind="Workflow", version=GROUP_VERSION, namespaced=True, asyncio=True)
ComputeEnvironment = new_class(
    kind="ComputeEnvironment", version=GROUP_VERSION, namespaced=True, asyncio=True
)
DID = "did:op:" + "0123456789abcdef" * 4
ALGO_DID = "did:op:" + "fedcba9876543210" * 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class OperatorProcess:
    process: asyncio.subprocess.Process
    log: Path
    metrics_port: int

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The operator's /metrics, as {(sample name, sorted labels): value}."""
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5)
        response.raise_for_status()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    async def total(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include `labels`."""
        return sum(
            value
            for (sample, sample_labels), value in (await self.metrics()).items()
            if sample == name and set(labels.items()) <= set(sample_labels)
        )

    async def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, as a crash or an OOM kill would end it."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(15):
                    await self.process.wait()
            except TimeoutError:
                await self.kill()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


StartOperator = Callable[..., Awaitable[OperatorProcess]]


@pytest.fixture
async def start_operator(
    namespace: str, kubeconfig: str, ocean_crds: list[str], api: kr8s.asyncio.Api, tmp_path: Path
) -> AsyncIterator[StartOperator]:
    """Start `ocean-c2d run` watching the test's namespace, with the e2e templates (kwok annotations)."""
    secret = await Secret(
        {"metadata": {"name": "ocean-c2d-credentials"}, "stringData": {"operator-private-key": OPERATOR_KEY}},
        namespace=namespace,
        api=api,
    )
    await secret.create()
    started: list[OperatorProcess] = []

    async def start(**extra_env: str) -> OperatorProcess:
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

    yield start
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


def status(obj: APIObject) -> dict[str, Any]:
    return dict(obj.raw.get("status") or {})


def finished(obj: APIObject) -> bool:
    return status(obj).get("stage") == "Finished"


async def wait_finished(
    workflow: APIObject, operator: OperatorProcess, timeout: float = 90
) -> dict[str, Any]:
    try:
        await wait_for(workflow, finished, timeout=timeout)
    except TimeoutError as error:
        raise AssertionError(f"{error}\n--- operator log ---\n{operator.log_tail()}") from None
    return status(workflow)
