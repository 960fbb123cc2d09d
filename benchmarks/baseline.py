"""Benchmark S0 (issue 13): the cluster's own limit for the operator's shape of work, with no logic.

The same children and the same stage pods the operator creates for a Workflow (rendered by its own
templates, the e2e ones with kwok's annotations), created by a plain script: `max_jobs` workers, each taking
the next "Workflow", creating its base children, then each stage's pod once the previous stage's pod
Succeeded (seen on one watch of the namespace's pods), and deleting it all at the end. No Workflow object,
no status, no Events, no queue: what is left is what the scheduler, kwok and the API server cost.
`--stage-kind job` wraps each stage pod in a Job (backoffLimit 0, the pod's deadline), as stages ran
before: the difference is what the Job controller costs. `make bench` (benchmarks/bench.py, scenario S0)
runs it as a subprocess beside the operator's runs, so its CPU and memory are its own; alone:

    .venv/bin/python -m benchmarks.baseline --workflows 300 --max-jobs 10

Prints numbers (and with `--json PATH` writes them); asserts nothing. Its requests carry the user agent
`ocean-c2d-baseline`, so the audit log tells them from everyone else's.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import kr8s
import kr8s.asyncio
from kr8s.asyncio.objects import APIObject, Namespace, new_class

from benchmarks.harness import BASELINE_AGENT, STAGES, memory_bytes, named_api, percentile, stage_of
from e2e.operator_fixtures import workflow_manifest
from ocean_c2d.model import Environment, TemplateInputs, Workflow
from ocean_c2d.render import Templates
from ocean_c2d.settings import load_settings
from ocean_c2d.signing import job_secret

REPO = Path(__file__).resolve().parent.parent
KIND_PATHS = {
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "NetworkPolicy": "networkpolicies",
    "Job": "jobs",
    "Pod": "pods",
}


def as_job(pod: dict[str, Any]) -> dict[str, Any]:
    """A stage pod as the Job that would run it: backoffLimit 0, the pod's deadline the Job's."""
    spec = dict(pod["spec"])
    deadline = spec.pop("activeDeadlineSeconds")
    metadata = pod["metadata"]
    template = {
        "metadata": {k: v for k, v in metadata.items() if k in ("labels", "annotations")},
        "spec": spec,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**metadata, "name": f"{metadata['name']}-job"},
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": deadline, "template": template},
    }


class Baseline:
    def __init__(self, api: kr8s.asyncio.Api, namespace: str, run_for: str, stage_kind: str = "pod") -> None:
        self.api = api
        self.stage_kind = stage_kind
        self.namespace = namespace
        self.run_for = run_for
        settings = load_settings({"OPERATOR_PRIVATE_KEY": "00" * 31 + "01"})
        self.key = settings.operator_key
        self.values = settings.plan_settings().template_values
        self.templates = Templates(REPO / "e2e" / "templates")
        self.environment = Environment(name="cpu", max_jobs=1_000_000, max_job_duration=3600)
        # (workflow, stage) -> when its pod Succeeded
        self.succeeded: dict[tuple[str, str], asyncio.Future[float]] = {}
        self.writes: collections.Counter[str] = collections.Counter()
        self.transitions: list[float] = []

    def manifests(self, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        sim = {f"{stage}.run-for": self.run_for for stage in STAGES}
        body = workflow_manifest(name, sim=sim)
        body["metadata"].update(
            namespace=self.namespace, uid=str(uuid.uuid4()), creationTimestamp="2026-12-01T00:00:00Z"
        )
        workflow = Workflow.from_object(body)
        inputs = TemplateInputs(
            workflow, self.environment, self.values, None, job_secret(self.key, workflow.uid)
        )
        base = self.templates.render_base(inputs)
        jobs = [self.templates.render_pod(stage, inputs, 600) for stage in STAGES]
        if self.stage_kind == "job":
            jobs = [as_job(pod) for pod in jobs]
        for manifest in (*base, *jobs):
            # No Workflow owns them here (the garbage collector would delete what a missing owner owns).
            manifest["metadata"].pop("ownerReferences", None)
        return base, jobs

    async def create(self, manifest: dict[str, Any]) -> None:
        kind = manifest["kind"]
        cls = new_class(kind, manifest["apiVersion"], namespaced=True, plural=KIND_PATHS[kind])
        await (await cls(manifest, namespace=self.namespace, api=self.api)).create()
        self.writes[f"POST {KIND_PATHS[kind]}"] += 1

    async def delete(self, manifest: dict[str, Any]) -> None:
        kind = manifest["kind"]
        cls = new_class(kind, manifest["apiVersion"], namespaced=True, plural=KIND_PATHS[kind])
        obj = await cls(manifest, namespace=self.namespace, api=self.api)
        await obj.delete(propagation_policy="Background")
        self.writes[f"DELETE {KIND_PATHS[kind]}"] += 1

    async def one(self, name: str) -> None:
        base, jobs = self.manifests(name)
        for manifest in base:
            await self.create(manifest)
        previous: float | None = None
        for job in jobs:
            done = asyncio.get_running_loop().create_future()
            stage = stage_of(job["metadata"]["name"])
            assert stage is not None
            self.succeeded[stage] = done
            await self.create(job)
            if previous is not None:
                self.transitions.append(time.monotonic() - previous)
            previous = await done
        for manifest in (*jobs, *base):
            await self.delete(manifest)

    async def watch_pods(self) -> None:
        async for _event, pod in self.api.async_watch("pods", namespace=self.namespace):
            if not isinstance(pod, APIObject) or (pod.raw.get("status") or {}).get("phase") != "Succeeded":
                continue
            stage = stage_of(pod.name)
            future = self.succeeded.get(stage) if stage is not None else None
            if future is not None and not future.done():
                future.set_result(time.monotonic())


async def run(
    workflows: int, max_jobs: int, run_for: str, namespace: str | None = None, stage_kind: str = "pod"
) -> dict[str, Any]:
    """Run the baseline in `namespace` (a fresh one, deleted afterwards, when None); its figures."""
    api = await named_api(BASELINE_AGENT)
    own = namespace is None
    if namespace is None:
        namespace = f"bench-s0-{uuid.uuid4().hex[:6]}"
        await (await Namespace({"metadata": {"name": namespace}}, api=api)).create()
    baseline = Baseline(api, namespace, run_for, stage_kind)
    names = collections.deque(f"s0-{index:04d}" for index in range(workflows))
    durations: list[float] = []
    watcher = asyncio.create_task(baseline.watch_pods())
    cpu_before = os.times()

    async def worker() -> None:
        while names:
            name = names.popleft()
            started = time.monotonic()
            await baseline.one(name)
            durations.append(time.monotonic() - started)

    try:
        start = time.monotonic()
        async with asyncio.timeout(3600):
            await asyncio.gather(*(worker() for _ in range(max_jobs)))
        batch = time.monotonic() - start
    finally:
        watcher.cancel()
        if own:
            await (await Namespace.get(namespace, api=api)).delete()
    cpu_after = os.times()
    return {
        "namespace": namespace,
        "workflows": workflows,
        "finished": len(durations),
        "max_jobs": max_jobs,
        "run_for": run_for,
        "stage_kind": stage_kind,
        "drain_seconds": batch,
        "transitions_seconds": baseline.transitions,
        "writes": dict(baseline.writes),
        "cpu_seconds": (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system),
        "peak_rss_bytes": memory_bytes(os.getpid())[1],
        "load_average": os.getloadavg(),
    }


def print_writes(writes: dict[str, float], workflows: int) -> None:
    for key, count in sorted(writes.items(), key=lambda item: -item[1]):
        print(f"  {key}: {count / workflows:.2f} per Workflow")


def report(result: dict[str, Any]) -> None:
    workflows, batch = result["workflows"], result["drain_seconds"]
    ms = [1000 * t for t in result["transitions_seconds"]]
    total = sum(result["writes"].values())
    print(
        f"S0 baseline: {workflows} Workflows' children and stage {result.get('stage_kind', 'pod')}s, "
        f"{result['max_jobs']} at once, "
        f"stages run {result['run_for']}"
    )
    print(f"batch wall time: {batch:.1f} s; throughput {60 * workflows / batch:.1f} Workflows/min")
    print(
        f"stage transition (pod Succeeded seen -> next stage created), n={len(ms)}: median "
        f"{statistics.median(ms):.0f} ms, p95 {percentile(ms, 0.95):.0f} ms, max {max(ms):.0f} ms"
    )
    print(f"writes: {total} in all, {total / workflows:.1f} per Workflow")
    print_writes(result["writes"], workflows)
    cpu = result["cpu_seconds"]
    print(
        f"the script's CPU {cpu:.0f} s ({1000 * cpu / workflows:.0f} CPU-ms per Workflow); load average "
        + " ".join(f"{x:.2f}" for x in result["load_average"])
    )


def arguments(description: str) -> argparse.Namespace:
    """The benchmarks' common sizes (benchmarks.stage_latency and this one run the same shape)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workflows", type=int, default=20)
    parser.add_argument("--max-jobs", type=int, default=10)
    parser.add_argument("--run-for", default="1s", help="how long each stage's pod runs (kwok)")
    parser.add_argument("--namespace", help="an existing namespace to run in (kept afterwards)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--stage-kind", choices=("pod", "job"), default="pod", help="stage pods, or each in a Job (as before)"
    )
    return parser.parse_args()


async def main(given: argparse.Namespace) -> None:
    result = await run(given.workflows, given.max_jobs, given.run_for, given.namespace, given.stage_kind)
    if given.json:
        given.json.write_text(json.dumps(result))
    report(result)


if __name__ == "__main__":
    asyncio.run(main(arguments(__doc__.splitlines()[0])))
