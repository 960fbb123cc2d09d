"""What the benchmark scenarios (benchmarks/bench.py) share: API clients that say who they are, fresh
namespaces, the operator as a local process, fast raw creates, raw watches, process figures (/proc), the
machine's load average, and the audit-log arithmetic (writes by client, transition latency, duplicates).

Who made a request is read from the API server's audit log (e2e/audit.py) by user agent: the benchmark's
own clients send `ocean-c2d-bench` (setup, creates, watches) and `ocean-c2d-baseline` (S0's script), the
cluster's components their own names, and every other client on loopback is the operator (kopf, kr8s).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import kr8s
import kr8s.asyncio
import yaml

from e2e.audit import Request
from e2e.operator_fixtures import GROUP_VERSION, OPERATOR_KEY, workflow_manifest
from e2e.services import free_port

REPO = Path(__file__).resolve().parent.parent
STAGES = ("configure", "algorithm", "publish")  # the operator's, with no filter (the e2e environment's)
NEXT_STAGE = {"configure": "algorithm", "algorithm": "publish"}
BENCH_AGENT = "ocean-c2d-bench"
BASELINE_AGENT = "ocean-c2d-baseline"
CLUSTER_CLIENTS = frozenset(
    {"kube-controller-manager", "kube-scheduler", "kwok-controller", "kube-apiserver", "kubelet", "kubectl"}
)
OPERATOR = "operator"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


class NamedApi(kr8s.asyncio.Api):
    """A kr8s client whose User-Agent is `agent`, so the audit log tells its requests from the operator's
    (which uses kr8s too)."""

    agent = BENCH_AGENT

    @property
    def __version__(self) -> str:
        return self.agent


async def named_api(agent: str = BENCH_AGENT) -> kr8s.asyncio.Api:
    api = NamedApi(bypass_factory=True, kubeconfig=os.environ.get("KUBECONFIG"))
    api.agent = agent
    await api
    return api


def client_of(request: Request) -> str:
    """Who sent a request: the benchmark, the baseline script, a cluster component, or the operator."""
    client = request.client
    if client in CLUSTER_CLIENTS or client in (BENCH_AGENT, BASELINE_AGENT):
        return client
    return OPERATOR


# --- numbers ---


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def spread(values: list[float], scale: float = 1.0) -> dict[str, float]:
    """p50/p95/p99/max (times `scale`) and the count."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": scale * statistics.median(values),
        "p95": scale * percentile(values, 0.95),
        "p99": scale * percentile(values, 0.99),
        "max": scale * max(values),
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM: the peak) of a process, in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


class LoadSampler:
    """The machine's 1-minute load average, sampled every `period` seconds while it runs."""

    def __init__(self, period: float = 5.0) -> None:
        self.period = period
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            await asyncio.sleep(self.period)

    def __enter__(self) -> LoadSampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        return {
            "mean": round(statistics.fmean(self.samples), 2) if self.samples else float("nan"),
            "max": round(max(self.samples), 2) if self.samples else float("nan"),
            "cores": os.cpu_count() or 0,
        }


def kwok_stage_delays() -> dict[str, dict[str, Any]]:
    """Each kwok pod Stage of e2e/cluster/pod-stages.yaml: its delay and jitter (what the runs ran with)."""
    found = {}
    for stage in yaml.safe_load_all((REPO / "e2e" / "cluster" / "pod-stages.yaml").read_text()):
        delay = stage["spec"].get("delay") or {}
        found[stage["metadata"]["name"]] = {
            "delay_ms": delay.get("durationMilliseconds", 0),
            "delay_from": (delay.get("durationFrom") or {}).get("expressionFrom"),
            "jitter_ms": delay.get("jitterDurationMilliseconds"),
            "jitter_from": (delay.get("jitterDurationFrom") or {}).get("expressionFrom"),
        }
    return found


# --- the cluster ---


async def make_namespace(api: kr8s.asyncio.Api, prefix: str, max_jobs: int | None) -> str:
    """A fresh namespace with the operator's credentials Secret and (with `max_jobs`) the environment
    `cpu`; returns once the namespace's default ServiceAccount exists (pods are refused before)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    labels = {"app.kubernetes.io/part-of": "ocean-c2d-bench"}
    await post(api, "v1", None, "namespaces", {"metadata": {"name": name, "labels": labels}})
    secret = {
        "metadata": {"name": "ocean-c2d-credentials"},
        "stringData": {"operator-private-key": OPERATOR_KEY},
    }
    await post(api, "v1", name, "secrets", secret)
    if max_jobs is not None:
        environment = {
            "apiVersion": GROUP_VERSION,
            "kind": "ComputeEnvironment",
            "metadata": {"name": "cpu"},
            "spec": {"nCPU": 1, "ramGB": 1, "diskGB": 1, "maxJobs": max_jobs},
        }
        await post(api, GROUP_VERSION, name, "computeenvironments", environment)
    await watch_until(
        api, "v1", name, "serviceaccounts", lambda _t, obj: obj["metadata"]["name"] == "default", timeout=60
    )
    return name


async def delete_namespace(api: kr8s.asyncio.Api, name: str, timeout: float = 600) -> None:
    """Delete a namespace and wait (on a watch) until it is gone, so the next run starts on a quiet
    cluster."""
    async with api.call_api("DELETE", version="v1", url=f"namespaces/{name}", raise_for_status=False):
        pass
    with contextlib.suppress(TimeoutError):
        await watch_until(
            api,
            "v1",
            None,
            "namespaces",
            lambda kind, obj: kind == "DELETED" and obj["metadata"]["name"] == name,
            timeout=timeout,
            field_selector=f"metadata.name={name}",
        )


async def post(
    api: kr8s.asyncio.Api, version: str, namespace: str | None, plural: str, body: dict[str, Any]
) -> Any:
    async with api.call_api("POST", version=version, namespace=namespace, url=plural, json=body) as response:
        return response.json()


def bench_workflow(name: str, run_for: str) -> dict[str, Any]:
    sim = {f"{stage}.run-for": run_for for stage in STAGES}
    return {"apiVersion": GROUP_VERSION, "kind": "Workflow", **workflow_manifest(name, sim=sim)}


async def create_all(
    bodies: Iterable[Callable[[], Awaitable[None]]], concurrency: int = 8
) -> tuple[float, float]:
    """Run the creates, `concurrency` at once; (start, end) in time.monotonic()."""
    queue = list(bodies)
    queue.reverse()
    start = time.monotonic()

    async def worker() -> None:
        while queue:
            await queue.pop()()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return start, time.monotonic()


async def create_workflows(
    api: kr8s.asyncio.Api, namespace: str, names: list[str], run_for: str, created: dict[str, float]
) -> tuple[float, float]:
    async def one(name: str) -> None:
        await post(api, GROUP_VERSION, namespace, "workflows", bench_workflow(name, run_for))
        created[name] = time.monotonic()

    return await create_all([functools.partial(one, name) for name in names])


WatchCallback = Callable[[str, dict[str, Any]], bool | None]


async def watch(
    api: kr8s.asyncio.Api,
    version: str,
    namespace: str | None,
    plural: str,
    callback: WatchCallback,
    field_selector: str | None = None,
) -> None:
    """A list, then a watch from its resourceVersion (reopened when it ends, relisted when expired), of raw
    JSON: `callback(type, object)` for every item and event; returns once the callback returns True."""
    while True:
        params: dict[str, str] = {}
        if field_selector:
            params["fieldSelector"] = field_selector
        async with api.call_api(
            "GET", version=version, namespace=namespace, url=plural, params=params
        ) as listed:
            found = listed.json()
        for item in found["items"]:
            if callback("LISTED", item):
                return
        params.update(watch="1", resourceVersion=found["metadata"]["resourceVersion"], timeoutSeconds="240")
        params["allowWatchBookmarks"] = "true"
        expired = False
        while not expired:
            async with api.call_api(
                "GET",
                version=version,
                namespace=namespace,
                url=plural,
                params=params,
                stream=True,
                timeout=None,
            ) as stream:
                async for line in stream.aiter_lines():
                    if not line:
                        continue
                    event = json.loads(line)
                    kind, item = event["type"], event["object"]
                    if kind == "ERROR":
                        expired = True  # 410 Gone: list again
                        break
                    params["resourceVersion"] = item["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK" and callback(kind, item):
                        return


async def watch_until(
    api: kr8s.asyncio.Api,
    version: str,
    namespace: str | None,
    plural: str,
    callback: WatchCallback,
    timeout: float,
    field_selector: str | None = None,
) -> None:
    async with asyncio.timeout(timeout):
        await watch(api, version, namespace, plural, callback, field_selector)


# --- the operator ---


def operator_env(namespace: str, metrics_port: int) -> dict[str, str]:
    """The environment of an operator process on the local cluster, watching `namespace`, serving its
    metrics on `metrics_port` (its other ports free ones), with the e2e templates (kwok's annotations)."""
    return {
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


@dataclasses.dataclass
class OperatorRun:
    """`ocean-c2d run` as a local process watching one namespace (the e2e templates: kwok annotations)."""

    process: asyncio.subprocess.Process
    metrics_port: int
    log: Path
    started: float  # time.monotonic() at its exec

    @classmethod
    async def start(cls, namespace: str, log: Path, **extra_env: str) -> OperatorRun:
        metrics_port = free_port()
        env = {**operator_env(namespace, metrics_port), **extra_env}
        log.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with log.open("ab") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ocean_c2d.cli", "run", env=env, stdout=sink, stderr=sink
            )
        return cls(process, metrics_port, log, started)

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def memory(self) -> tuple[int, int]:
        return memory_bytes(self.process.pid)

    async def metric(self, name: str) -> float | None:
        """The sum of a metric's samples on /metrics; None while it does not answer."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            async with httpx.AsyncClient() as client:
                text = (await client.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5)).text
        except httpx.HTTPError:
            return None
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        )

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self, grace: float = 15) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(grace):
                    await self.process.wait()
            except TimeoutError:
                await self.kill()


# --- the audit log ---


def received(request: Request) -> float:
    """The API server's receipt time, in seconds since the epoch."""
    return datetime.fromisoformat(request.received).timestamp()


def stage_of(name: str) -> tuple[str, str] | None:
    """("<workflow>", "<stage>") of a stage pod ("<workflow>-<stage>", or "<workflow>-<stage>-<n>" for a
    replacement), of a stage Job ("<workflow>-<stage>-job", the baseline's `--stage-kind job`) or of a
    Job's pod ("<workflow>-<stage>-job-<suffix>")."""
    parts = name.split("-")
    if len(parts) >= 3 and parts[-2] == "job":
        parts = parts[:-1]  # a Job's pod: its random suffix
    if parts[-1] == "job" or parts[-1].isdigit():
        parts = parts[:-1]  # a Job, or a replacement pod's attempt
    if len(parts) >= 2 and parts[-1] in STAGES:
        return "-".join(parts[:-1]), parts[-1]
    return None


# The stage objects a creator makes: the operator's (and the baseline's) stage pods, or stage Jobs, whose
# pods the Job controller makes.
STAGE_RESOURCES = ("pods", "jobs")
JOB_CONTROLLER = "kube-controller-manager"


def stage_creates(requests: Iterable[Request]) -> list[tuple[Request, tuple[str, str]]]:
    """Every stage pod or Job created (answered 201) by the operator or a script: a pod the Job controller
    made for a Job is that Job's, not a stage object of its own."""
    found = []
    for request in requests:
        if request.resource not in STAGE_RESOURCES or request.verb != "create" or request.code != 201:
            continue
        if request.resource == "pods" and client_of(request) == JOB_CONTROLLER:
            continue
        stage = stage_of(request.name)
        if stage is not None:
            found.append((request, stage))
    return found


def transitions(requests: list[Request], creator: str) -> list[float]:
    """Seconds from a stage's pod turning Succeeded (kwok's last pod status write before the next stage's
    pod or Job exists) to the next stage's pod or Job being created (answered 201) by `creator`, both on
    the API server's clock, for every transition the log holds."""
    pod_status: dict[tuple[str, str], list[float]] = defaultdict(list)  # stage -> kwok's status writes
    created: dict[tuple[str, str], float] = {}
    for request in requests:
        if request.resource == "pods/status" and request.client == "kwok-controller" and request.is_write:
            of_pod = stage_of(request.name)
            if of_pod is not None:
                pod_status[of_pod].append(received(request))
    for request, of_create in stage_creates(requests):
        if client_of(request) == creator:
            created.setdefault(of_create, received(request))
    found = []
    for (workflow, stage), at in created.items():
        if stage == STAGES[0]:
            continue
        previous = (workflow, STAGES[STAGES.index(stage) - 1])
        before = [t for t in pod_status.get(previous, []) if t <= at]
        if before:
            found.append(at - max(before))
    return found


def duplicate_stage_runs(requests: Iterable[Request]) -> dict[str, int]:
    """Stages ("<workflow>-<stage>") whose pod or Job was created more than once, with how often: a stage
    run twice (a replacement of a disrupted pod counts too, and the benchmarks disrupt none)."""
    counts = Counter(f"{workflow}-{stage}" for _, (workflow, stage) in stage_creates(requests))
    return {name: count for name, count in counts.items() if count > 1}


def writes_by(requests: Iterable[Request], workflows: int) -> dict[str, Any]:
    """Writes per Workflow by client, and by client and "verb resource"; status writes per Workflow."""
    by_client: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    status_writes: Counter[str] = Counter()
    for request in requests:
        if not request.is_write:
            continue
        client = client_of(request)
        by_client[client] += 1
        by_kind[client][f"{request.verb} {request.resource}"] += 1
        if request.resource == "workflows/status" and client == OPERATOR:
            status_writes[request.name] += 1
    per = max(workflows, 1)
    return {
        "total_per_workflow": round(sum(by_client.values()) / per, 2),
        "by_client": {client: round(count / per, 2) for client, count in by_client.most_common()},
        "by_client_and_kind": {
            client: {kind: round(count / per, 2) for kind, count in kinds.most_common()}
            for client, kinds in sorted(by_kind.items())
        },
        "operator_status_writes": status_writes,
    }


def reads_and_writes(requests: Iterable[Request], client: str) -> dict[str, int]:
    """`client`'s requests by "verb resource" (watches are not logged: audit-policy.yaml)."""
    return dict(Counter(f"{r.verb} {r.resource}" for r in requests if client_of(r) == client).most_common())
