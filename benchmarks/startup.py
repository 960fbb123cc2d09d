"""Benchmark S5 (issue 13): the operator's start-up time and memory with N finished Workflows at rest.

Runs against the cluster KUBECONFIG names, in a fresh namespace (deleted after): creates N Workflows and
writes each one's status subresource to stage Finished (as the operator would have left it), then starts
the operator as a local process and measures, from the process's start:
- the time to its first reconcile and to N reconciles (its own counter, ocean_c2d_reconciles_total, on
  /metrics: each Workflow is on the work queue once at start, so N reconciles is every one);
- its resident memory then (VmRSS) and at its peak (VmHWM), from /proc; its CPU seconds.
Prints numbers; asserts nothing.

    .venv/bin/python -m benchmarks.startup --workflows 1000 [--py-spy /tmp/pyspy/bin/py-spy]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import kr8s.asyncio
import yaml
from kr8s.asyncio.objects import Namespace, Secret
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import operator_env
from benchmarks.stage_latency import cpu_seconds
from e2e.crds import CRDS, apply_crd, established
from e2e.finished_workflows import create_finished_workflows
from e2e.operator_fixtures import OPERATOR_KEY, ComputeEnvironment
from e2e.services import free_port
from e2e.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent


async def reconciles(client: httpx.AsyncClient, port: int) -> dict[str, float] | None:
    """ocean_c2d_reconciles_total by result; None while /metrics does not answer."""
    try:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    except httpx.HTTPError:
        return None
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ocean_c2d_reconciles_total":
                found[sample.labels["result"]] = sample.value
    return found


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024


async def measure_start(namespace: str, workflows: int, timeout: float, py_spy: str | None) -> None:
    """Start the operator, until `workflows` reconciles (or `timeout`); print what it took."""
    port = free_port()
    log = Path(f"/tmp/startup-{namespace}.log")
    with await asyncio.to_thread(log.open, "wb") as sink:
        operator = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ocean_c2d.cli",
            "run",
            env=operator_env(namespace, port),
            stdout=sink,
            stderr=sink,
        )
    start = time.monotonic()
    spy = None
    if py_spy:
        flame = f"/tmp/startup-{namespace}.txt"
        spy = await asyncio.create_subprocess_exec(
            *(
                py_spy,
                "record",
                "--pid",
                str(operator.pid),
                "-o",
                flame,
                "-f",
                "raw",
                "-r",
                "50",
                "--nonblocking",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    first: float | None = None
    done: float | None = None
    counts: dict[str, float] = {}
    rss_at_done = 0
    try:
        async with httpx.AsyncClient() as client:
            while time.monotonic() - start < timeout:
                await asyncio.sleep(0.25)
                if operator.returncode is not None:
                    raise SystemExit(f"the operator exited ({operator.returncode}); see {log}")
                counts = await reconciles(client, port) or {}
                total = sum(counts.values())
                now = time.monotonic() - start
                if first is None and total > 0:
                    first = now
                if total >= workflows:
                    done = now
                    rss_at_done = memory(operator.pid)[0]
                    break
            cpu = cpu_seconds(operator.pid)
            await asyncio.sleep(5)  # settled: what it keeps
            counts = await reconciles(client, port) or counts
            rss, peak = memory(operator.pid)
    finally:
        if spy is not None:
            spy.send_signal(2)
            await asyncio.wait_for(spy.wait(), 60)
        operator.terminate()
        await operator.wait()
    print(f"workflows: {workflows} finished, at rest")
    print(f"first reconcile: {first:.1f} s after start" if first is not None else "no reconcile at all")
    print(f"all reconciled: {done:.1f} s after start" if done is not None else f"not all within {timeout} s")
    print(f"reconciles: {counts}")
    print(f"RSS: {rss_at_done} MB when all were reconciled, {rss} MB 5 s later, peak {peak} MB")
    print(f"operator CPU: {cpu:.1f} s; load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if py_spy:
        print(f"py-spy stacks (collapsed): /tmp/startup-{namespace}.txt; log: {log}")


async def main(workflows: int, timeout: float, py_spy: str | None, keep: bool, reuse: str | None) -> None:
    api = await kr8s.asyncio.api()
    for path in sorted(CRDS.glob("*.yaml")):  # as the e2e session does (left installed)
        crd = await apply_crd(api, yaml.safe_load(path.read_text()))
        await wait_for(crd, established, timeout=60)
    if reuse:  # a namespace a --keep run left: measure again without creating
        try:
            await measure_start(reuse, workflows, timeout, py_spy)
        finally:
            if not keep:
                await (await Namespace.get(reuse, api=api)).delete()
        return
    namespace = f"bench-start-{uuid.uuid4().hex[:6]}"
    await (await Namespace({"metadata": {"name": namespace}}, api=api)).create()
    try:
        credentials = {"operator-private-key": OPERATOR_KEY}
        secret = {"metadata": {"name": "ocean-c2d-credentials"}, "stringData": credentials}
        await (await Secret(secret, namespace=namespace, api=api)).create()
        environment = {"metadata": {"name": "cpu"}, "spec": {"maxJobs": 10}}
        await (await ComputeEnvironment(environment, namespace=namespace, api=api)).create()
        began = time.monotonic()
        await create_finished_workflows(api, namespace, workflows)
        print(f"created {workflows} finished Workflows in {time.monotonic() - began:.1f} s ({namespace})")
        await measure_start(namespace, workflows, timeout, py_spy)
    finally:
        if not keep:
            await (await Namespace.get(namespace, api=api)).delete()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--py-spy", default=None, help="a py-spy executable: record the start")
    parser.add_argument("--keep", action="store_true", help="keep the namespace")
    parser.add_argument("--namespace", default=None, help="measure in this kept namespace (no creation)")
    given = parser.parse_args()
    asyncio.run(main(given.workflows, given.timeout, given.py_spy, given.keep, given.namespace))
