"""Benchmark: how fast the operator moves Workflows through their stages, and what it costs in API writes.

Runs against the cluster KUBECONFIG names (default: the local one, `make cluster-up`), in a fresh
namespace, with the operator as a local process. Prints numbers; asserts nothing.

    .venv/bin/python -m benchmarks.stage_latency --workflows 20 --max-jobs 10

Measured, on the benchmark's side of the watch:
- stage transition latency: from a stage's pod turning Succeeded to the next stage's Job appearing;
- end-to-end time of each Workflow (creation to Finished) and of the whole batch;
- API writes per Workflow (the operator's own request counter, /metrics), and writes while idle.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx
import kr8s.asyncio
from kr8s.asyncio.objects import Namespace, Secret
from prometheus_client.parser import text_string_to_metric_families

from e2e.operator_fixtures import OPERATOR_KEY, ComputeEnvironment, Workflow, workflow_manifest
from e2e.services import free_port

REPO = Path(__file__).resolve().parent.parent
NEXT_STAGE = {"configure": "algorithm", "algorithm": "publish"}


async def writes_by_resource(port: int) -> dict[str, float]:
    """The operator's writes (every verb but GET) so far, by "VERB resource"."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ocean_c2d_kubernetes_requests_total" and sample.labels["verb"] != "GET":
                key = f"{sample.labels['verb']} {sample.labels.get('resource', '')}"
                found[key] = found.get(key, 0.0) + sample.value
    return found


async def writes(port: int) -> float:
    return sum((await writes_by_resource(port)).values())


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def main(workflows: int, max_jobs: int, run_for: str) -> None:
    api = await kr8s.asyncio.api()
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    await (await Namespace({"metadata": {"name": namespace}}, api=api)).create()
    credentials = {"operator-private-key": OPERATOR_KEY}
    secret = {"metadata": {"name": "ocean-c2d-credentials"}, "stringData": credentials}
    await (await Secret(secret, namespace=namespace, api=api)).create()
    environment = {"metadata": {"name": "cpu"}, "spec": {"maxJobs": max_jobs}}
    await (await ComputeEnvironment(environment, namespace=namespace, api=api)).create()

    pod_done: dict[tuple[str, str], float] = {}
    job_seen: dict[tuple[str, str], float] = {}
    finished: dict[str, float] = {}
    all_finished = asyncio.Event()

    async def watch_pods() -> None:
        async for _, pod in api.async_watch("pods", namespace=namespace):
            key = (pod.labels.get("workflow", ""), pod.labels.get("component", ""))
            if pod.raw.get("status", {}).get("phase") == "Succeeded":
                pod_done.setdefault(key, time.monotonic())

    async def watch_jobs() -> None:
        async for event, job in api.async_watch("jobs", namespace=namespace):
            key = (job.labels.get("workflow", ""), job.labels.get("component", ""))
            if event == "ADDED":
                job_seen.setdefault(key, time.monotonic())

    async def watch_workflows() -> None:
        async for _, workflow in api.async_watch("workflows", namespace=namespace):
            if (workflow.raw.get("status") or {}).get("stage") == "Finished":
                finished.setdefault(workflow.name, time.monotonic())
                if len(finished) == workflows:
                    all_finished.set()

    watchers = [asyncio.create_task(w()) for w in (watch_pods, watch_jobs, watch_workflows)]
    metrics_port = free_port()
    env = {
        **os.environ,
        "WATCH_NAMESPACE": namespace,
        "OPERATOR_PRIVATE_KEY": OPERATOR_KEY,
        "TEMPLATES_DIR": str(REPO / "e2e" / "templates"),
        "METRICS_PORT": str(metrics_port),
        "HEALTH_PORT": str(free_port()),
        "SIGNER_HOST": "127.0.0.1",
        "SIGNER_PORT": str(free_port()),
        "LOG_LEVEL": "WARNING",
    }
    operator = await asyncio.create_subprocess_exec(sys.executable, "-m", "ocean_c2d.cli", "run", env=env)
    try:
        created: dict[str, float] = {}
        start = time.monotonic()
        for index in range(workflows):
            name = f"bench-{index:04d}"
            sim = {f"{stage}.run-for": run_for for stage in ("configure", "algorithm", "publish")}
            manifest = workflow_manifest(name, sim=sim)
            await (await Workflow(manifest, namespace=namespace, api=api)).create()
            created[name] = time.monotonic()
        async with asyncio.timeout(600):
            await all_finished.wait()
        batch = time.monotonic() - start
        operator_cpu = cpu_seconds(operator.pid)
        await asyncio.sleep(2)
        by_resource = await writes_by_resource(metrics_port)
        total_writes = sum(by_resource.values())
        await asyncio.sleep(10)
        idle_writes = await writes(metrics_port) - total_writes
    finally:
        operator.terminate()
        await operator.wait()
        for watcher in watchers:
            watcher.cancel()
        await (await Namespace.get(namespace, api=api)).delete()

    latencies = [
        job_seen[(wf, nxt)] - pod_done[(wf, stage)]
        for (wf, stage), nxt in ((k, NEXT_STAGE.get(k[1])) for k in pod_done)
        if nxt and (wf, nxt) in job_seen
    ]
    durations = [finished[n] - created[n] for n in finished]
    print(f"workflows: {workflows} (maxJobs {max_jobs}, each stage runs {run_for})")
    print(f"batch wall time: {batch:.1f} s")
    print(f"workflow duration: median {statistics.median(durations):.2f} s, max {max(durations):.2f} s")
    median, p95 = statistics.median(latencies) * 1000, percentile(latencies, 0.95) * 1000
    print(
        f"stage transition (pod Succeeded -> next Job exists), n={len(latencies)}: "
        f"median {median:.0f} ms, p95 {p95:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )
    print(
        f"API writes: {total_writes:.0f} in all, {total_writes / workflows:.1f} per Workflow; "
        f"{idle_writes:.0f} in 10 s idle afterwards"
    )
    print_writes(by_resource, workflows)
    print(
        f"throughput: {60 * workflows / batch:.1f} Workflows/min; operator CPU {operator_cpu:.0f} s "
        f"({1000 * operator_cpu / workflows:.0f} CPU-ms per Workflow); load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )


def arguments(description: str) -> argparse.Namespace:
    """The benchmarks' common sizes (this one and benchmarks.baseline run the same shape)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workflows", type=int, default=20)
    parser.add_argument("--max-jobs", type=int, default=10)
    parser.add_argument("--run-for", default="1s", help="how long each stage's pod runs (kwok)")
    return parser.parse_args()


def print_writes(writes: dict[str, float], workflows: int) -> None:
    for key, count in sorted(writes.items(), key=lambda item: -item[1]):
        print(f"  {key}: {count / workflows:.2f} per Workflow")


if __name__ == "__main__":
    given = arguments(__doc__.splitlines()[0])
    asyncio.run(main(given.workflows, given.max_jobs, given.run_for))
