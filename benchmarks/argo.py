"""The Argo Workflows anchor (issue 13, `make bench-argo`): Argo's workflow-controller, built from its Go
module at the version toolchain/versions.env pins, run as a local process against the local cluster, moving
Workflows of the same shape as ocean-c2d's (3 sequential steps, each a pod kwok runs for `--run-for`), with
the same parallelism (the controller's `parallelism`: Workflows running at once).

    .venv/bin/python -m benchmarks.argo --workflows 1000 --parallelism 50 [--qps 20 --burst 30|--unthrottled]

Prints numbers (and writes them as JSON with --json); asserts nothing. What is not the same, printed beside
the numbers: no executor runs under kwok (Argo's init and wait containers would write task results and
annotations), so Argo's real writes are understated; both create their pods themselves (ocean-c2d's stages
were Jobs before issue 13); its Events are on by default.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import kr8s.asyncio
from kr8s.asyncio.objects import APIObject, ConfigMap, Namespace, new_class

from e2e.audit import AuditLog, in_namespace

REPO = Path(__file__).resolve().parent.parent
TOOLCHAIN = REPO / "toolchain" / "build.sh"
STEPS = ("configure", "algorithm", "publish")
NEXT_STEP = dict(itertools.pairwise(STEPS))
ArgoWorkflow = new_class("Workflow", "argoproj.io/v1alpha1", namespaced=True, plural="workflows")
CAVEATS = (
    "no executor runs under kwok (no task results, no pod annotations by the wait container): Argo's writes "
    "are understated",
    "both create their stage pods themselves (no Job controller between either and its pods)",
    "Argo posts Events by default (counted among its writes)",
)


def controller_binary() -> Path:
    """Build (once, cached by version) and locate Argo's workflow-controller."""
    subprocess.run([str(TOOLCHAIN), "argo-workflows"], check=True, stdout=subprocess.DEVNULL)
    path = subprocess.run(
        [str(TOOLCHAIN), "--path", "argo-workflows"], check=True, capture_output=True, text=True
    ).stdout.strip()
    binary = Path(path) / "workflow-controller"
    if not binary.exists():
        raise SystemExit(f"argo: no workflow-controller in {path}")
    return binary


def argo_crds() -> list[Path]:
    """The CRDs of the pinned module (its manifests/base/crds/minimal), read from the Go module cache."""
    module = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "github.com/argoproj/argo-workflows/v4"],
        cwd=REPO / "toolchain" / "argo-workflows",
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    ).stdout.strip()
    return sorted((Path(module) / "manifests" / "base" / "crds" / "minimal").glob("argoproj.io_*.yaml"))


def workflow(name: str, run_for: str) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "entrypoint": "main",
            # Pods are deleted as each completes, as ocean-c2d deletes its children at the end.
            "podGC": {"strategy": "OnPodCompletion"},
            "templates": [
                {"name": "main", "steps": [[{"name": step, "template": "stage"}] for step in STEPS]},
                {
                    "name": "stage",
                    "metadata": {"annotations": {"sim.ocean-c2d/run-for": run_for}},
                    "container": {"image": "ocean.local/pause:3.10", "command": ["/pause"]},
                },
            ],
        },
    }


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


async def kubectl(kubeconfig: str, *args: str) -> int:
    kubectl_binary = shutil.which("kubectl") or "kubectl"
    argv = [kubectl_binary, "--kubeconfig", kubeconfig, *args]
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL)
    return await process.wait()


def file_args(files: list[Path]) -> list[str]:
    return [arg for file in files for arg in ("-f", str(file))]


async def kubectl_apply(kubeconfig: str, files: list[Path]) -> None:
    if await kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", *file_args(files)):
        raise SystemExit("argo: installing the CRDs failed")
    # The controller and the watches below discover the resources: only once the CRDs are served.
    names = [
        f"crd/{file.name.removeprefix('argoproj.io_').removesuffix('.yaml')}.argoproj.io" for file in files
    ]
    if await kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", *names):
        raise SystemExit("argo: the CRDs were not established")


async def kubectl_delete(kubeconfig: str, files: list[Path]) -> None:
    await kubectl(kubeconfig, "delete", "--ignore-not-found", "--wait=false", *file_args(files))


async def run(
    workflows: int, parallelism: int, run_for: str, qps: float, burst: int, create_seconds: float
) -> dict[str, Any]:
    binary = controller_binary()
    api = await kr8s.asyncio.api()
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    await kubectl_apply(kubeconfig, argo_crds())
    namespace = f"bench-argo-{uuid.uuid4().hex[:6]}"
    await (await Namespace({"metadata": {"name": namespace}}, api=api)).create()
    config = {
        "metadata": {"name": "workflow-controller-configmap"},
        "data": {"parallelism": str(parallelism)},
    }
    await (await ConfigMap(config, namespace=namespace, api=api)).create()
    audit = AuditLog()
    mark = audit.mark()

    pod_added: dict[tuple[str, str], float] = {}
    pod_done: dict[tuple[str, str], float] = {}
    finished: dict[str, tuple[float, str]] = {}
    all_finished = asyncio.Event()

    def step_of(pod: APIObject) -> tuple[str, str]:
        annotations = pod.raw["metadata"].get("annotations") or {}
        return pod.labels.get("workflows.argoproj.io/workflow", ""), annotations.get(
            "workflows.argoproj.io/node-name", ""
        ).rpartition(".")[2]  # "argo-0001[1].algorithm" -> "algorithm"

    async def watch_pods() -> None:
        async for event, pod in api.async_watch("pods", namespace=namespace):
            key = step_of(pod)
            if event == "ADDED":
                pod_added.setdefault(key, time.monotonic())
            if (pod.raw.get("status") or {}).get("phase") == "Succeeded":
                pod_done.setdefault(key, time.monotonic())

    async def watch_workflows() -> None:
        async for _, found in api.async_watch("workflows.argoproj.io", namespace=namespace):
            phase = (found.raw.get("status") or {}).get("phase", "")
            if phase in ("Succeeded", "Failed", "Error"):
                finished.setdefault(found.name, (time.monotonic(), phase))
                if len(finished) == workflows:
                    all_finished.set()

    watchers = [asyncio.create_task(w()) for w in (watch_pods, watch_workflows)]
    env = {**os.environ, "LEADER_ELECTION_DISABLE": "true", "KUBECONFIG": kubeconfig}
    argv = [
        str(binary),
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        namespace,
        "--namespaced",
        "--managed-namespace",
        namespace,
        "--executor-image",
        "ocean.local/argoexec:unused",
        "--qps",
        str(qps),
        "--burst",
        str(burst),
        "--loglevel",
        "warn",
    ]
    log_path = REPO / ".artifacts" / "bench" / f"argo-{namespace}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        controller = await asyncio.create_subprocess_exec(*argv, env=env, stdout=log, stderr=log)
    try:
        start = time.monotonic()
        gap = create_seconds / workflows
        for index in range(workflows):
            await (
                await ArgoWorkflow(workflow(f"argo-{index:04d}", run_for), namespace=namespace, api=api)
            ).create()
            delay = start + (index + 1) * gap - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the creation burst over create_seconds, not polling
        created_in = time.monotonic() - start
        async with asyncio.timeout(7200):
            done = asyncio.create_task(all_finished.wait())
            await asyncio.wait([done, *watchers], return_when=asyncio.FIRST_COMPLETED)
            for watcher in watchers:
                if watcher.done():
                    raise RuntimeError("argo: a watch ended before every Workflow finished") from (
                        watcher.exception()
                    )
        drained = time.monotonic() - start
        cpu, rss = cpu_seconds(controller.pid), peak_rss_mb(controller.pid)
        load = os.getloadavg()
    finally:
        controller.terminate()
        try:
            async with asyncio.timeout(15):  # it may linger in its graceful shutdown
                await controller.wait()
        except TimeoutError:
            controller.kill()
            await controller.wait()
        for watcher in watchers:
            watcher.cancel()
        await (await Namespace.get(namespace, api=api)).delete()
        # Argo's CRDs go too: its `workflows` would make the short name ambiguous with ocean-c2d's
        # (`kubectl get workflows`, kr8s' lookups by plural) for whatever runs on this cluster next.
        await kubectl_delete(kubeconfig, argo_crds())

    requests = list(audit.since(mark, where=in_namespace(namespace)))
    writes = [r for r in requests if r.is_write]
    by_client = Counter(r.client for r in writes)
    argo_writes = [r for r in writes if r.client == "workflow-controller"]
    argo_by = Counter(f"{r.verb} {r.resource}" for r in argo_writes)
    transitions = [
        pod_added[(wf, nxt)] - pod_done[(wf, step)]
        for (wf, step) in pod_done
        for nxt in [NEXT_STEP.get(step)]
        if nxt and (wf, nxt) in pod_added
    ]
    phases = Counter(phase for _, phase in finished.values())
    return {
        "scenario": "argo",
        "workflows": workflows,
        "parallelism": parallelism,
        "qps": qps,
        "burst": burst,
        "created_in_s": round(created_in, 1),
        "drained_s": round(drained, 1),
        "throughput_per_min": round(60 * workflows / drained, 1),
        "phases": dict(phases),
        "pod_to_next_pod_ms": {
            "n": len(transitions),
            "p50": round(1000 * percentile(transitions, 0.5)),
            "p99": round(1000 * percentile(transitions, 0.99)),
            "max": round(1000 * max(transitions, default=float("nan"))),
        },
        "controller_writes_per_workflow": round(len(argo_writes) / workflows, 2),
        "controller_writes_by": {k: round(v / workflows, 2) for k, v in argo_by.most_common()},
        "cluster_writes_per_workflow": round(len(writes) / workflows, 2),
        "cluster_writes_by_client": {k: round(v / workflows, 2) for k, v in by_client.most_common()},
        "controller_cpu_s": round(cpu, 1),
        "controller_cpu_ms_per_workflow": round(1000 * cpu / workflows),
        "controller_peak_rss_mb": round(rss),
        "load_average": [round(x, 2) for x in load],
        "caveats": list(CAVEATS),
        "log": str(log_path),
    }


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--parallelism", type=int, default=50)
    parser.add_argument("--run-for", default="1s", help="how long each step's pod runs (kwok)")
    parser.add_argument("--qps", type=float, default=20.0, help="the controller's client QPS (its default)")
    parser.add_argument("--burst", type=int, default=30, help="the controller's client burst (its default)")
    parser.add_argument("--unthrottled", action="store_true", help="QPS 10000, burst 20000")
    parser.add_argument("--create-seconds", type=float, default=60.0, help="spread the creations over this")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    return parser.parse_args()


def main() -> None:
    given = arguments()
    qps, burst = (10000.0, 20000) if given.unthrottled else (given.qps, given.burst)
    result = asyncio.run(
        run(given.workflows, given.parallelism, given.run_for, qps, burst, given.create_seconds)
    )
    print(json.dumps(result, indent=2))
    if given.json:
        given.json.parent.mkdir(parents=True, exist_ok=True)
        given.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
