"""Compute environments: their queue, and the default environment of the original's env vars (pure).

At most `maxJobs` Workflows of an environment run at once; the rest wait first come, first served.
Both numbers are counted from the Workflows' own status (what the cluster says), never from a counter
kept in memory, so a restart or a burst cannot overshoot.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ocean_c2d.identity import MANAGED_BY
from ocean_c2d.model import API_VERSION, Admission, Environment, Workflow
from ocean_c2d.settings import DefaultEnvironment
from ocean_c2d.status import Stage, WorkflowStatus


@dataclass(frozen=True)
class Occupancy:
    running: int
    queued: int


def occupancy(workflows: Iterable[Workflow]) -> Occupancy:
    """How many Workflows of one environment run (admitted, not finished) and wait."""
    running = queued = 0
    for workflow in workflows:
        if workflow.finished:
            continue
        if workflow.admitted:
            running += 1
        else:
            queued += 1
    return Occupancy(running, queued)


def admission(workflow: Workflow, peers: Iterable[Workflow], environment: Environment) -> Admission:
    """May `workflow` start now? `peers` are all Workflows of its environment (itself included).

    Strict FIFO: a Workflow starts only when every Workflow queued before it has started too, so a
    small job never overtakes a large one.
    """
    if workflow.admitted:
        return Admission(may_start=True)
    peers = list(peers)
    free = environment.max_jobs - occupancy(peers).running
    waiting = sorted((w for w in peers if not w.admitted and not w.finished), key=lambda w: w.queue_key)
    names = [w.name for w in waiting]
    index = names.index(workflow.name) if workflow.name in names else len(names)
    if index < free:
        return Admission(may_start=True)
    return Admission(may_start=False, position=index - max(free, 0) + 1)


def occupancy_changed(before: WorkflowStatus, after: WorkflowStatus) -> bool:
    """Did a Workflow's status write change how many Workflows of its environment run or wait (or where
    it waits)? Then the environment's counts change, and the Workflows still waiting may move up."""

    def bucket(status: WorkflowStatus) -> str:
        stage = status.get("stage")
        return "none" if stage is None else stage if stage in (Stage.QUEUED, Stage.FINISHED) else "running"

    return bucket(before) != bucket(after) or before.get("queuePosition") != after.get("queuePosition")


def environment_status(
    environment: Environment, peers: Iterable[Workflow], consumer_address: str, generation: int
) -> dict[str, Any]:
    """The ComputeEnvironment's status: what `kubectl get computeenvironments` shows."""
    counts = occupancy(peers)
    return {
        "observedGeneration": generation,
        "currentJobs": counts.running,
        "queuedJobs": counts.queued,
        "jobs": f"{counts.running}/{environment.max_jobs}",
        "consumerAddress": consumer_address,
        "capacity": {
            "allocatable": _share(environment, environment.max_jobs),
            "inUse": _share(environment, counts.running),
        },
    }


def _share(environment: Environment, jobs: int) -> dict[str, Any]:
    return {
        "jobs": jobs,
        "cpu": environment.n_cpu * jobs,
        "memoryGB": environment.ram_gb * jobs,
        "gpu": environment.n_gpu * jobs,
        "diskGB": environment.disk_gb * jobs,
    }


def default_environment_object(name: str, namespace: str, seed: DefaultEnvironment) -> dict[str, Any]:
    """The ComputeEnvironment that the original's env vars (nCPU, ramGB, ...) describe."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ComputeEnvironment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(MANAGED_BY),
            "annotations": {"ocean-c2d/source": "operator environment variables (nCPU, ramGB, ...)"},
        },
        "spec": {
            "nCPU": seed.cpu_count,
            "cpuType": seed.cpu_type,
            "nGPU": seed.gpu_count,
            **({"gpuRam": seed.gpu_ram_gb} if seed.gpu_count > 0 else {}),
            "gpuType": seed.gpu_type,
            "ramGB": seed.ram_gb,
            "diskGB": seed.disk_gb,
            "priceMinute": seed.price_per_minute,
            "description": seed.description,
            "maxJobs": seed.max_jobs,
            "maxJobDuration": seed.max_job_duration_seconds,
            "storageExpiry": seed.storage_expiry_hours,
        },
    }
