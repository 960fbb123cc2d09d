"""The operator as a real pod: the chart installed in a test's namespace (OCEAN_C2D_E2E_OPERATOR=in-cluster).

Used by e2e/kind/run.sh on machines with Docker, where the image is built and loaded into a kind cluster;
this machine cannot run it (no container runtime), so this module is exercised only there.

- start(extra_env): `helm upgrade --install` the release `op` with the image OCEAN_C2D_E2E_IMAGE (never
  pulled: kind has it loaded), one replica, the test's variables as operator.extraEnv, the e2e templates
  from a ConfigMap, a toleration for the operator-only taint of the real nodes; then a port-forward to
  its metrics port, so `metrics()` reads the pod's /metrics like a local process's.
- kill(): scale to 0 and force-delete the pod at once (no graceful shutdown): a crash. The next start()
  scales the same release back to 1, as a restarted operator pod would come back.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import kr8s.asyncio
from kr8s.asyncio.objects import ConfigMap

from e2e.operator_handle import OPERATOR_NODE_TAINT, REPO, Operator, run_command
from e2e.services import free_port

CHART = REPO / "helm" / "ocean-c2d"
RELEASE = "op"
DEPLOYMENT = f"deploy/{RELEASE}-ocean-c2d"
TEMPLATES_CONFIGMAP = "e2e-templates"
METRICS_PORT = 8000


class InClusterOperator(Operator):
    def __init__(self, release: InClusterRelease, forward: asyncio.subprocess.Process, port: int) -> None:
        self.release = release
        self.forward = forward
        self.metrics_port = port

    async def log_text(self) -> str:
        release = self.release
        return await run_command(
            "kubectl", "-n", release.namespace, "logs", DEPLOYMENT, kubeconfig=release.kubeconfig
        )

    async def kill(self) -> None:
        await self._stop_forward()
        namespace, kubeconfig = self.release.namespace, self.release.kubeconfig
        await run_command(
            "kubectl", "-n", namespace, "scale", DEPLOYMENT, "--replicas=0", kubeconfig=kubeconfig
        )
        await run_command(
            "kubectl", "-n", namespace, "delete", "pod", "--grace-period=0", "--force",
            "-l", f"app.kubernetes.io/instance={RELEASE}", "--ignore-not-found", kubeconfig=kubeconfig,
        )  # fmt: skip

    async def stop(self) -> None:
        await self._stop_forward()

    async def _stop_forward(self) -> None:
        if self.forward.returncode is None:
            self.forward.terminate()
            await self.forward.wait()


class InClusterRelease:
    def __init__(self, namespace: str, kubeconfig: str, workdir: Path) -> None:
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.image = os.environ.get("OCEAN_C2D_E2E_IMAGE", "ocean-c2d:e2e")
        self.operators: list[InClusterOperator] = []

    async def prepare(self, api: kr8s.asyncio.Api) -> None:
        """The e2e templates (they copy the kwok simulation annotations onto the stage pods)."""
        templates = await asyncio.to_thread(
            lambda: {p.name: p.read_text() for p in sorted((REPO / "e2e" / "templates").iterdir())}
        )
        configmap = await ConfigMap(
            {"metadata": {"name": TEMPLATES_CONFIGMAP}, "data": templates}, namespace=self.namespace, api=api
        )
        await configmap.create()

    async def start(self, extra_env: dict[str, str]) -> Operator:
        repository, _, tag = self.image.rpartition(":")
        values = {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "operator": {
                "replicas": 1,
                "watchNamespace": self.namespace,
                "templatesConfigMap": TEMPLATES_CONFIGMAP,
                "extraEnv": extra_env,
            },
            "computeEnvironments": [],
            "metrics": {"port": METRICS_PORT},
            "tolerations": [{"key": OPERATOR_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
        }
        values_file = self.workdir / f"values-{len(self.operators)}.json"
        await asyncio.to_thread(values_file.write_text, json.dumps(values))
        await run_command(
            "helm", "upgrade", "--install", RELEASE, str(CHART), "-n", self.namespace,
            "--skip-crds", "--wait", "--timeout", "180s", "-f", str(values_file), kubeconfig=self.kubeconfig,
        )  # fmt: skip
        port = free_port()
        forward = await asyncio.create_subprocess_exec(
            "kubectl", "-n", self.namespace, "port-forward", DEPLOYMENT, f"{port}:{METRICS_PORT}",
            env={**os.environ, "KUBECONFIG": self.kubeconfig},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await _until_answering(f"http://127.0.0.1:{port}/metrics", forward)
        operator = InClusterOperator(self, forward, port)
        self.operators.append(operator)
        return operator

    async def uninstall(self) -> None:
        for operator in self.operators:
            await operator.stop()
        await run_command(
            "helm", "uninstall", RELEASE, "-n", self.namespace, "--wait", kubeconfig=self.kubeconfig
        )


async def _until_answering(url: str, forward: asyncio.subprocess.Process, timeout: float = 60) -> None:
    """The port-forward takes a moment to listen; retry until /metrics answers (bounded)."""
    async with asyncio.timeout(timeout), httpx.AsyncClient(timeout=2) as client:
        while True:
            if forward.returncode is not None:
                raise AssertionError(f"kubectl port-forward exited {forward.returncode}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
