"""What both ways of running the operator in the e2e tests share (e2e/operator_fixtures.py runs it as a
local process, e2e/in_cluster.py as the chart's pod): the handle a test holds of a running operator, the
repository root, the operator-only node taint, and `run_command` for helm and kubectl.

A leaf: it imports no other e2e module, so both runners (and the tests) import it without a circle.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
# e2e/kind/run.sh taints the real (kind) nodes with this, so only the operator runs there and every
# Workflow pod lands on kwok's fake nodes, whose pods finish as their annotations say.
OPERATOR_NODE_TAINT = "ocean-c2d/operator-only"


async def run_command(*argv: str, kubeconfig: str, tools: str | None = None, check: bool = True) -> str:
    """Run a CLI (helm, kubectl) against the test cluster and return its stdout; `tools` (a PATH
    fragment, e.g. the built helm and kubectl) comes first on the PATH. With `check`, a non-zero exit
    fails the test with both outputs."""
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    if tools:
        env["PATH"] = f"{tools}:{os.environ['PATH']}"
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    output, errors = await process.communicate()
    text = output.decode(errors="replace")
    if check and process.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {process.returncode}:\n{text}{errors.decode()}")
    return text


async def stop_process(process: asyncio.subprocess.Process, grace: float = 15) -> None:
    """SIGTERM, and SIGKILL if it has not ended within `grace` seconds."""
    if process.returncode is None:
        process.terminate()
        try:
            async with asyncio.timeout(grace):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


class Operator:
    """What a test can do with a running operator, however it runs."""

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

    async def log_text(self) -> str:
        raise NotImplementedError

    async def log_tail(self, lines: int = 40) -> str:
        return "\n".join((await self.log_text()).splitlines()[-lines:])

    async def kill(self) -> None:
        """End it the way a crash would: no cleanup, no goodbye."""
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


StartOperator = Callable[..., Awaitable[Operator]]
