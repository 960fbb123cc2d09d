"""Many finished Workflows, made fast (raw requests, concurrently): a Workflow, then its status
subresource written to stage Finished, as the operator leaves a Workflow that succeeded (so a reconcile
of it changes nothing). For the start-up test and benchmark (issue 13, S5)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import kr8s.asyncio

from e2e.operator_fixtures import GROUP_VERSION, workflow_manifest
from ocean_c2d.status import conditions

CONCURRENCY = 32


def finished_status(generation: int) -> dict[str, Any]:
    """The status a Workflow that succeeded ends with (what a reconcile of it leaves unchanged)."""
    now = datetime.now(UTC).replace(microsecond=0)
    stamp = now.isoformat().replace("+00:00", "Z")
    status: dict[str, Any] = {
        "stage": "Finished",
        "reason": "Succeeded",
        "statusText": "Job finished",
        "message": "",
        "admittedAt": stamp,
        "finishedAt": stamp,
        "observedGeneration": generation,
    }
    status["conditions"] = conditions(status, True, generation, now)  # type: ignore[arg-type]
    return status


async def create_finished(api: kr8s.asyncio.Api, namespace: str, name: str) -> None:
    body = {"apiVersion": GROUP_VERSION, "kind": "Workflow", **workflow_manifest(name)}
    async with api.call_api(
        "POST", version=GROUP_VERSION, namespace=namespace, url="workflows", json=body
    ) as response:
        created = response.json()
    patch = {"status": finished_status(created["metadata"].get("generation", 1))}
    async with api.call_api(
        "PATCH",
        version=GROUP_VERSION,
        namespace=namespace,
        url=f"workflows/{name}/status",
        json=patch,
        headers={"Content-Type": "application/merge-patch+json"},
    ) as response:
        response.read()


async def create_finished_workflows(
    api: kr8s.asyncio.Api, namespace: str, count: int, prefix: str = "done"
) -> list[str]:
    """`count` finished Workflows named <prefix>-00000...; their names."""
    names = [f"{prefix}-{index:05d}" for index in range(count)]
    pending = iter(names)

    async def worker() -> None:
        for name in pending:
            await create_finished(api, namespace, name)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return names
