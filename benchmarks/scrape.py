"""The cost of one /metrics scrape with many finished Workflows in the operator's view (issue 13).

In process, no cluster: a View holding `--finished` finished Workflows (as the Workflows' informer stores
them) and `--active` ones at various stages, a ComputeEnvironment, and the operator's registry rendered
as a scrape renders it (prometheus_client's generate_latest). Prints the median and p90 of `--rounds`
scrapes, and of the cluster-state gauges alone (View.levels); asserts nothing.

    .venv/bin/python -m benchmarks.scrape --finished 10000 --active 100
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import generate_latest

from e2e.finished_workflows import finished_status
from e2e.operator_fixtures import GROUP_VERSION, workflow_manifest
from ocean_c2d import metrics
from ocean_c2d.view import ENVIRONMENT_INDEX, View

NAMESPACE = "c2d"
ACTIVE_STAGES = ("Queued", "Configuring", "RunningAlgorithm", "Publishing")


def workflow_body(name: str, index: int, status: dict[str, Any] | None) -> dict[str, Any]:
    manifest = workflow_manifest(name)
    body: dict[str, Any] = {
        "apiVersion": GROUP_VERSION,
        "kind": "Workflow",
        **manifest,
        "metadata": {
            **manifest["metadata"],
            "namespace": NAMESPACE,
            "uid": f"uid-{index}",
            "resourceVersion": str(1000 + index),
            "generation": 1,
            "creationTimestamp": "2026-01-01T12:00:00Z",
        },
    }
    if status is not None:
        body["status"] = status
    return body


def filled_view(finished: int, active: int) -> View:
    view = View()
    store = view.workflow_store
    environment = {
        "apiVersion": GROUP_VERSION,
        "kind": "ComputeEnvironment",
        "metadata": {"name": "cpu", "namespace": NAMESPACE, "resourceVersion": "1"},
        "spec": {"nCPU": 1, "ramGB": 1, "diskGB": 1, "maxJobs": 100},
    }
    view.indexes[ENVIRONMENT_INDEX] = {(NAMESPACE, "cpu"): [environment]}
    done = finished_status(1)
    for index in range(finished):
        name = f"done-{index:05d}"
        store.put((NAMESPACE, name), store.entry(workflow_body(name, index, done)))
    for index in range(active):
        name = f"run-{index:05d}"
        stage = ACTIVE_STAGES[index % len(ACTIVE_STAGES)]
        status: dict[str, Any] = {"stage": stage}
        if stage != "Queued":
            status["admittedAt"] = "2026-01-01T12:00:01Z"
        status["stages"] = {"configure": {"startedAt": "2026-01-01T12:00:02Z"}}
        store.put((NAMESPACE, name), store.entry(workflow_body(name, finished + index, status)))
    return view


def timed(call: Callable[[], object], rounds: int) -> list[float]:
    call()  # the first one parses and caches what the later ones reuse
    took = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        took.append(time.perf_counter() - started)
    return took


def summary(took: list[float]) -> str:
    ordered = sorted(took)
    p90 = ordered[int(len(ordered) * 0.9) - 1] if len(ordered) >= 10 else ordered[-1]
    return f"median {statistics.median(ordered) * 1e3:.3f} ms, p90 {p90 * 1e3:.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finished", type=int, default=10_000)
    parser.add_argument("--active", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    view = filled_view(args.finished, args.active)
    metrics.collect_cluster_state(view.levels)
    scrape = timed(lambda: generate_latest(metrics.REGISTRY), args.rounds)
    levels = timed(view.levels, args.rounds)
    print(f"{args.finished} finished + {args.active} active Workflows, {args.rounds} rounds")
    print(f"  /metrics scrape (generate_latest): {summary(scrape)}")
    print(f"  cluster-state gauges (View.levels): {summary(levels)}")


if __name__ == "__main__":
    main()
