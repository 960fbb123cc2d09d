"""The benchmark harness of issue 13 (`make bench`): scenarios S0-S6 on the local cluster, with plots.

The scenarios run side by side with the no-logic baseline and are written to .artifacts/bench/<run id>/
(results.json, results.md, PNG plots; `.artifacts/bench/latest` points at the newest run); `make
bench-small` is CI's size. Prints numbers, asserts nothing.

    .venv/bin/python -m benchmarks.bench --scenarios S0,S2,S3 --workflows 100 --max-jobs 10

Scenarios (README.md, "Benchmarks", says how to read them):
- S0  the no-logic baseline (benchmarks/baseline.py, a subprocess): the same children and stage pods, the same
      kwok delays, the same concurrency, no Workflow object;
- S2  a queued burst: `--workflows` Workflows created within 60 s, at each `--max-jobs`, 3 stages each;
- S3  writes per Workflow by verb and resource and by client, from the API server's audit log (S0 and S2);
- S4  `--idle-seconds` idle after each S2 run: the operator's requests (audit log);
- S5  the operator's start-up time and RSS with `--finished` finished Workflows (0 / 1,000 / 10,000);
- S6  SIGKILL with `--in-flight` Workflows in flight, restart: time until each progresses, stages run twice,
      algorithm re-runs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kr8s.asyncio

from benchmarks import report
from benchmarks.harness import (
    BASELINE_AGENT,
    OPERATOR,
    REPO,
    LoadSampler,
    OperatorRun,
    client_of,
    create_all,
    create_workflows,
    delete_namespace,
    duplicate_stage_runs,
    kwok_stage_delays,
    make_namespace,
    named_api,
    post,
    reads_and_writes,
    spread,
    transitions,
    watch,
    writes_by,
)
from e2e.audit import AuditLog, Mark, Request, in_namespace
from e2e.operator_fixtures import GROUP_VERSION, workflow_manifest
from ocean_c2d.status import conditions

SCENARIOS = ("S0", "S2", "S3", "S4", "S5", "S6")
MB = 1024 * 1024
STAGE_COMPONENT = {"Configuring": "configure", "RunningAlgorithm": "algorithm", "Publishing": "publish"}


@dataclasses.dataclass
class Options:
    scenarios: list[str]
    workflows: int
    max_jobs: list[int]
    run_for: str
    idle_seconds: float
    finished: list[int]
    in_flight: int
    in_flight_run_for: str
    timeout: float
    out: Path


# --- what the benchmark sees of its Workflows and pods (raw watches) ---


class Workflows:
    """Each expected Workflow's status as the watch saw it: stages reached, when it finished and how, and
    (S6) whether its status changed after a restart."""

    def __init__(self, names: list[str]) -> None:
        self.expected = set(names)
        self.status: dict[str, dict[str, Any]] = {}
        self.stages: dict[str, list[str]] = defaultdict(list)
        self.finished: dict[str, float] = {}
        self.reason: dict[str, str] = {}
        self.all_finished = asyncio.Event()
        self.all_admitted = asyncio.Event()
        self.admitted: set[str] = set()  # past Queued (a slot granted), or ended
        self.restart_at: float | None = None
        self.snapshot: dict[str, str] = {}
        self.progressed: dict[str, float] = {}
        self.all_progressed = asyncio.Event()

    def __call__(self, _kind: str, item: dict[str, Any]) -> None:
        name = item["metadata"]["name"]
        if name not in self.expected:
            return
        now = time.monotonic()
        status = item.get("status") or {}
        self.status[name] = status
        stage = status.get("stage")
        if stage and (not self.stages[name] or self.stages[name][-1] != stage):
            self.stages[name].append(stage)
        if (
            self.restart_at is not None
            and name in self.snapshot
            and name not in self.progressed
            and json.dumps(status, sort_keys=True) != self.snapshot[name]
        ):
            self.progressed[name] = now
            if len(self.progressed) == len(self.snapshot):
                self.all_progressed.set()
        if stage == "Finished" and name not in self.finished:
            self.finished[name] = now
            self.reason[name] = str(status.get("reason", ""))
            if len(self.finished) == len(self.expected):
                self.all_finished.set()
        if stage not in (None, "Queued"):
            self.admitted.add(name)
            if len(self.admitted) == len(self.expected):
                self.all_admitted.set()

    def restarting(self) -> list[str]:
        """Mark a restart now: the Workflows not finished are watched for a status change from here."""
        in_flight = sorted(n for n in self.expected if n not in self.finished)
        self.snapshot = {n: json.dumps(self.status.get(n, {}), sort_keys=True) for n in in_flight}
        self.restart_at = time.monotonic()
        if not in_flight:
            self.all_progressed.set()
        return in_flight

    def outcomes(self) -> dict[str, int]:
        found: dict[str, int] = defaultdict(int)
        for name in self.expected:
            found[self.reason.get(name, "not finished")] += 1
        return dict(found)

    def stage_transitions(self) -> float:
        """Status stages each Workflow went through (Queued, Configuring, ...): one write each at least."""
        return statistics.fmean(len(v) for v in self.stages.values()) if self.stages else 0.0


class AlgorithmPods:
    """The algorithm pods (distinct uids) of each Workflow: more than one is a re-run; and when each stage's
    pod was first seen Succeeded."""

    def __init__(self) -> None:
        self.uids: dict[str, set[str]] = defaultdict(set)
        self.succeeded: dict[tuple[str, str], float] = {}

    def __call__(self, _kind: str, item: dict[str, Any]) -> None:
        labels = item["metadata"].get("labels") or {}
        workflow, component = labels.get("workflow", ""), labels.get("component", "")
        if component == "algorithm":
            self.uids[workflow].add(item["metadata"]["uid"])
        if (item.get("status") or {}).get("phase") == "Succeeded":
            self.succeeded.setdefault((workflow, component), time.monotonic())

    def reruns(self) -> int:
        return sum(len(uids) - 1 for uids in self.uids.values())


async def wait_ready(operator: OperatorRun, timeout: float = 120) -> float:
    """Until the operator's /metrics answers (its aiohttp server is up); the seconds since its exec."""
    async with asyncio.timeout(timeout):
        while await operator.metric("ocean_c2d_reconciles_total") is None:
            if operator.process.returncode is not None:
                raise RuntimeError(f"the operator exited {operator.process.returncode}: see {operator.log}")
            await asyncio.sleep(0.25)
    return time.monotonic() - operator.started


async def audit_since(audit: AuditLog, mark: Mark, namespace: str) -> list[Request]:
    await asyncio.sleep(2)  # the API server's last lines
    return await asyncio.to_thread(lambda: list(audit.since(mark, where=in_namespace(namespace))))


def per_thousand(value: float, workflows: int) -> float:
    return round(1000 * value / max(workflows, 1), 1)


# --- S0 ---


async def s0(options: Options, api: kr8s.asyncio.Api, audit: AuditLog, max_jobs: int) -> dict[str, Any]:
    namespace = await make_namespace(api, "bench-s0", None)
    out = options.out / f"s0-{max_jobs}.json"
    mark = audit.mark()
    try:
        with (options.out / f"s0-{max_jobs}.log").open("wb") as log, LoadSampler() as load:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.baseline",
                *("--workflows", str(options.workflows), "--max-jobs", str(max_jobs)),
                *("--run-for", options.run_for, "--namespace", namespace, "--json", str(out)),
                stdout=log,
                stderr=log,
                cwd=REPO,
            )
            await process.wait()
        if process.returncode != 0:
            raise RuntimeError(f"the baseline exited {process.returncode}: see {log.name}")
        script = json.loads(out.read_text())
        requests = await audit_since(audit, mark, namespace)
    finally:
        await delete_namespace(api, namespace)
    workflows = options.workflows
    writes = writes_by(requests, workflows)
    writes.pop("operator_status_writes")
    child_writes = writes["by_client"].get(BASELINE_AGENT, 0.0)
    return {
        "workflows": workflows,
        "max_jobs": max_jobs,
        "finished": script["finished"],
        "drain_seconds": round(script["drain_seconds"], 1),
        "throughput_per_minute": round(60 * workflows / script["drain_seconds"], 1),
        "transition_ms": spread(transitions(requests, BASELINE_AGENT), 1000),
        "transition_ms_script": spread(script["transitions_seconds"], 1000),
        "writes": writes,
        "child_writes_per_workflow": child_writes,
        "script_writes_per_workflow": round(sum(script["writes"].values()) / max(workflows, 1), 2),
        "cpu_seconds": round(script["cpu_seconds"], 1),
        "cpu_seconds_per_1000": per_thousand(script["cpu_seconds"], workflows),
        "peak_rss_mb": round(script["peak_rss_bytes"] / MB, 1),
        "duplicate_stage_runs": len(duplicate_stage_runs(requests)),
        "load_average": load.summary(),
    }


# --- S2 (+ S3's counts, + S4) ---


async def s2(options: Options, api: kr8s.asyncio.Api, audit: AuditLog, max_jobs: int) -> dict[str, Any]:
    namespace = await make_namespace(api, "bench-s2", max_jobs)
    names = [f"wf-{index:05d}" for index in range(options.workflows)]
    tracker, pods = Workflows(names), AlgorithmPods()
    watchers = [
        asyncio.create_task(watch(api, GROUP_VERSION, namespace, "workflows", tracker)),
        asyncio.create_task(watch(api, "v1", namespace, "pods", pods)),
    ]
    operator = await OperatorRun.start(namespace, options.out / f"operator-s2-{max_jobs}.log")
    idle: dict[str, Any] | None = None
    try:
        await wait_ready(operator)
        mark = audit.mark()
        cpu_before = operator.cpu()
        created: dict[str, float] = {}
        with LoadSampler() as load:
            start, created_at = await create_workflows(api, namespace, names, options.run_for, created)
            async with asyncio.timeout(options.timeout):
                await tracker.all_finished.wait()
        drain = max(tracker.finished.values()) - start
        cpu = operator.cpu() - cpu_before
        rss, peak = operator.memory()
        requests = await audit_since(audit, mark, namespace)
        if "S4" in options.scenarios:
            idle_mark, idle_cpu = audit.mark(), operator.cpu()
            await asyncio.sleep(options.idle_seconds)
            idle_requests = await audit_since(audit, idle_mark, namespace)
            operator_requests = reads_and_writes(idle_requests, OPERATOR)
            idle = {
                "seconds": options.idle_seconds,
                "operator_requests": operator_requests,
                "operator_writes": sum(
                    n
                    for k, n in operator_requests.items()
                    if k.split()[0] in ("create", "update", "patch", "delete")
                ),
                "operator_reads": sum(
                    n for k, n in operator_requests.items() if k.split()[0] in ("get", "list")
                ),
                "operator_cpu_seconds": round(operator.cpu() - idle_cpu, 2),
                "all_writes": dict(Counter(client_of(r) for r in idle_requests if r.is_write).most_common()),
            }
    finally:
        await operator.stop()
        for watcher in watchers:
            watcher.cancel()
        await delete_namespace(api, namespace)
    workflows = options.workflows
    writes = writes_by(requests, workflows)
    by_name = writes.pop("operator_status_writes")
    status_writes = [float(by_name.get(name, 0)) for name in names]
    events = writes["by_client_and_kind"].get(OPERATOR, {}).get("create events", 0.0)
    own = writes["by_client"].get(OPERATOR, 0.0)
    durations = [tracker.finished[n] - created[n] for n in tracker.finished if n in created]
    return {
        "workflows": workflows,
        "max_jobs": max_jobs,
        "finished": len(tracker.finished),
        "outcomes": tracker.outcomes(),
        "create_seconds": round(created_at - start, 1),
        "drain_seconds": round(drain, 1),
        "throughput_per_minute": round(60 * workflows / drain, 1),
        "workflow_seconds": spread(durations),
        "transition_ms": spread(transitions(requests, OPERATOR), 1000),
        "status_writes_per_workflow": spread(status_writes),
        "stage_transitions_per_workflow": round(tracker.stage_transitions(), 2),
        "writes": writes,
        "operator_writes_per_workflow": own,
        "operator_writes_without_events": round(own - events, 2),
        "operator_events_per_workflow": events,
        "cpu_seconds": round(cpu, 1),
        "cpu_seconds_per_1000": per_thousand(cpu, workflows),
        "rss_mb": round(rss / MB, 1),
        "peak_rss_mb": round(peak / MB, 1),
        "duplicate_stage_runs": len(duplicate_stage_runs(requests)),
        "algorithm_reruns": pods.reruns(),
        "load_average": load.summary(),
        "idle": idle,
    }


# --- S5 ---


def finished_status(name: str, now: datetime) -> dict[str, Any]:
    """What the operator writes at a Workflow's successful end (the fields the controller reads)."""
    at = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    before = (now - timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status: dict[str, Any] = {
        "observedGeneration": 1,
        "stage": "Finished",
        "statusCode": 70,
        "statusText": "Job finished",
        "reason": "Succeeded",
        "message": "",
        "queuePosition": None,
        "admittedAt": before,
        "startedAt": before,
        "finishedAt": at,
        "duration": "3s",
        "stages": {
            stage: {"podName": f"{name}-{stage}", "startedAt": before, "finishedAt": at, "exitCode": 0}
            for stage in ("configure", "algorithm", "publish")
        },
        "results": [],
    }
    status["conditions"] = conditions(status, admitted=True, generation=1, now=now)  # type: ignore[arg-type]
    return status


async def create_finished(api: kr8s.asyncio.Api, namespace: str, count: int) -> float:
    """`count` finished Workflows (a create and a status write each, 8 at once); the seconds it took."""
    now = datetime.now(UTC)

    async def one(index: int) -> None:
        name = f"done-{index:05d}"
        await post(
            api,
            GROUP_VERSION,
            namespace,
            "workflows",
            {"apiVersion": GROUP_VERSION, "kind": "Workflow", **workflow_manifest(name)},
        )
        async with api.call_api(
            "PATCH",
            version=GROUP_VERSION,
            namespace=namespace,
            url=f"workflows/{name}/status",
            json={"status": finished_status(name, now)},
            headers={"Content-Type": "application/merge-patch+json"},
        ):
            pass

    start, end = await create_all([functools.partial(one, index) for index in range(count)])
    return end - start


async def s5(options: Options, api: kr8s.asyncio.Api, audit: AuditLog, count: int) -> dict[str, Any]:
    """Start-up with `count` finished Workflows. "Reconciled" is read from the operator's own counter,
    ocean_c2d_reconciles_total (every result), on /metrics: it counts reconciles however the Workflows
    reach the work queue, and the time is until it reaches `count`."""
    namespace = await make_namespace(api, "bench-s5", 10)
    try:
        create_seconds = await create_finished(api, namespace, count)
        mark = audit.mark()
        with LoadSampler() as load:
            operator = await OperatorRun.start(namespace, options.out / f"operator-s5-{count}.log")
            try:
                ready = await wait_ready(operator)
                first: float | None = None
                reconciled: float | None = None
                deadline = time.monotonic() + options.timeout
                while time.monotonic() < deadline:
                    done = await operator.metric("ocean_c2d_reconciles_total") or 0.0
                    if done > 0 and first is None:
                        first = time.monotonic() - operator.started
                    if done >= count:
                        reconciled = time.monotonic() - operator.started
                        break
                    await asyncio.sleep(0.25)
                counted = await operator.metric("ocean_c2d_reconciles_total")
                await asyncio.sleep(2)  # settled
                rss, peak = operator.memory()
                cpu = operator.cpu()
            finally:
                await operator.stop()
        requests = await audit_since(audit, mark, namespace)
    finally:
        await delete_namespace(api, namespace)
    return {
        "finished_workflows": count,
        "create_seconds": round(create_seconds, 1),
        "metrics_up_seconds": round(ready, 2),
        "first_reconcile_seconds": None if first is None else round(first, 2),
        "all_reconciled_seconds": None if reconciled is None else round(reconciled, 2),
        "reconciles_counted": counted,
        "signal": "ocean_c2d_reconciles_total >= finished Workflows (polled every 0.25 s on /metrics)",
        "rss_mb": round(rss / MB, 1),
        "peak_rss_mb": round(peak / MB, 1),
        "cpu_seconds": round(cpu, 1),
        "operator_requests": reads_and_writes(requests, OPERATOR),
        "load_average": load.summary(),
    }


# --- S6 ---


async def s6(options: Options, api: kr8s.asyncio.Api, audit: AuditLog) -> dict[str, Any]:
    count = options.in_flight
    namespace = await make_namespace(api, "bench-s6", count)
    names = [f"fl-{index:05d}" for index in range(count)]
    tracker, pods = Workflows(names), AlgorithmPods()
    watchers = [
        asyncio.create_task(watch(api, GROUP_VERSION, namespace, "workflows", tracker)),
        asyncio.create_task(watch(api, "v1", namespace, "pods", pods)),
    ]
    log = options.out / "operator-s6.log"
    first = await OperatorRun.start(namespace, log)
    second: OperatorRun | None = None
    try:
        await wait_ready(first)
        mark = audit.mark()
        with LoadSampler() as load:
            await create_workflows(api, namespace, names, options.in_flight_run_for, {})
            async with asyncio.timeout(options.timeout):
                await tracker.all_admitted.wait()
            await first.kill()
            in_flight = tracker.restarting()
            at_restart = {n: str(tracker.status.get(n, {}).get("stage", "")) for n in in_flight}
            second = await OperatorRun.start(namespace, log)
            async with asyncio.timeout(options.timeout):
                await tracker.all_progressed.wait()
            restart_at = tracker.restart_at or 0.0
            progress = [tracker.progressed[n] - restart_at for n in in_flight]
            # A running stage gives the operator nothing to write until its pod ends: from the later of
            # the restart and that pod's end (as this watch saw it) to the status change.
            due = {
                n: max(restart_at, pods.succeeded.get((n, STAGE_COMPONENT.get(stage, "")), restart_at))
                for n, stage in at_restart.items()
            }
            reacted = [tracker.progressed[n] - due[n] for n in in_flight]
            async with asyncio.timeout(options.timeout):
                await tracker.all_finished.wait()
        requests = await audit_since(audit, mark, namespace)
    finally:
        await first.stop()
        if second is not None:
            await second.stop()
        for watcher in watchers:
            watcher.cancel()
        await delete_namespace(api, namespace)
    duplicates = duplicate_stage_runs(requests)
    return {
        "workflows": count,
        "in_flight_at_kill": len(in_flight),
        "stage_run_for": options.in_flight_run_for,
        "progress_after_restart_seconds": spread(progress),
        "progress_after_due_seconds": spread(reacted),
        "finished": len(tracker.finished),
        "outcomes": tracker.outcomes(),
        "duplicate_stage_runs": len(duplicates),
        "duplicate_stage_names": sorted(duplicates)[:20],
        "algorithm_reruns": pods.reruns(),
        "load_average": load.summary(),
    }


# --- the run ---


def ratios(results: dict[str, Any]) -> None:
    """S2's figures over S0's at the same maxJobs, and S3's operator writes over the minimum."""
    for key, run in (results.get("S2") or {}).items():
        base = (results.get("S0") or {}).get(key)
        if not base:
            continue

        def over(a: float | None, b: float | None) -> float | None:
            return round(a / b, 2) if a is not None and b else None

        run["vs_S0"] = {
            "throughput": over(run["throughput_per_minute"], base["throughput_per_minute"]),
            "transition_p50": over(run["transition_ms"].get("p50"), base["transition_ms"].get("p50")),
            "transition_p99": over(run["transition_ms"].get("p99"), base["transition_ms"].get("p99")),
            "writes_per_workflow": over(
                run["writes"]["total_per_workflow"], base["writes"]["total_per_workflow"]
            ),
            "cpu_seconds": over(run["cpu_seconds"], base["cpu_seconds"]),
            "peak_rss": over(run["peak_rss_mb"], base["peak_rss_mb"]),
        }
        minimum = base["child_writes_per_workflow"] + run["stage_transitions_per_workflow"]
        run["minimum_writes_per_workflow"] = round(minimum, 2)
        run["operator_writes_over_minimum"] = over(run["operator_writes_per_workflow"], minimum)
        run["operator_writes_over_minimum_without_events"] = over(
            run["operator_writes_without_events"], minimum
        )


async def run(options: Options) -> dict[str, Any]:
    api = await named_api()
    audit = AuditLog()
    if not audit.available():
        raise SystemExit(f"no audit log at {audit.path}: start the local cluster (e2e/cluster/cluster.sh up)")
    results: dict[str, Any] = {
        "run_id": options.out.name,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(options).items()},
        "machine": {"cores": os.cpu_count(), "load_average_before": os.getloadavg()},
        "kwok_stages": kwok_stage_delays(),
    }
    chosen = set(options.scenarios)

    def save() -> None:
        ratios(results)
        (options.out / "results.json").write_text(json.dumps(results, indent=2, default=str))

    for max_jobs in options.max_jobs:
        if "S0" in chosen:
            print(f"S0: {options.workflows} at maxJobs {max_jobs}", flush=True)
            results.setdefault("S0", {})[str(max_jobs)] = await s0(options, api, audit, max_jobs)
            save()
        if chosen & {"S2", "S3", "S4"}:
            print(f"S2: {options.workflows} at maxJobs {max_jobs}", flush=True)
            results.setdefault("S2", {})[str(max_jobs)] = await s2(options, api, audit, max_jobs)
            save()
    if "S5" in chosen:
        for count in options.finished:
            print(f"S5: start-up with {count} finished Workflows", flush=True)
            results.setdefault("S5", {})[str(count)] = await s5(options, api, audit, count)
            save()
    if "S6" in chosen:
        print(f"S6: SIGKILL with {options.in_flight} in flight", flush=True)
        results["S6"] = await s6(options, api, audit)
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["machine"]["load_average_after"] = os.getloadavg()
    save()
    return results


def numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated, of " + ",".join(SCENARIOS)
    )
    parser.add_argument("--workflows", type=int, default=1000, help="S0/S2: Workflows per run")
    parser.add_argument("--max-jobs", default="10,50", help="S0/S2: comma-separated maxJobs values")
    parser.add_argument("--run-for", default="1s", help="how long each stage's pod runs (kwok)")
    parser.add_argument("--idle-seconds", type=float, default=60, help="S4: idle time after each S2 run")
    parser.add_argument("--finished", default="0,1000,10000", help="S5: comma-separated counts")
    parser.add_argument("--in-flight", type=int, default=1000, help="S6: Workflows in flight at the kill")
    parser.add_argument("--in-flight-run-for", default="20s", help="S6: each stage's run time")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds any one wait may take")
    artifacts = Path(os.environ.get("OCEAN_C2D_ARTIFACTS", REPO / ".artifacts"))
    parser.add_argument("--out", type=Path, default=artifacts / "bench", help="results under here")
    given = parser.parse_args(argv)
    scenarios = [s.strip().upper() for s in given.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Options(
        scenarios=scenarios,
        workflows=given.workflows,
        max_jobs=numbers(given.max_jobs),
        run_for=given.run_for,
        idle_seconds=given.idle_seconds,
        finished=numbers(given.finished),
        in_flight=given.in_flight,
        in_flight_run_for=given.in_flight_run_for,
        timeout=given.timeout,
        out=given.out / run_id,
    )


async def run_and_write(options: Options) -> dict[str, Any]:
    """Run the scenarios, write results.json, results.md and the plots, and point `latest` at them."""
    options.out.mkdir(parents=True, exist_ok=True)
    results = await run(options)
    await asyncio.to_thread(report.write, results, options.out)
    latest = options.out.parent / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(options.out.name)
    return results


def main(argv: list[str] | None = None) -> Path:
    options = parse(argv)
    asyncio.run(run_and_write(options))
    print((options.out / "results.md").read_text())
    print(f"results: {options.out}")
    return options.out


if __name__ == "__main__":
    main()
