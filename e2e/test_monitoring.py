"""The operator's metrics as Prometheus and Grafana users meet them, against a running operator.

A real Prometheus server (built by toolchain/build.sh from its Go module) scrapes the operator every
second while Workflows run to their ends (successes, an algorithm failure, failed notifications) and
evaluates the chart's alert rules. Then:
- `promtool check metrics` finds nothing to complain about in the operator's /metrics;
- every metric that a dashboard query or an alert rule names is one the running operator exposes;
- every dashboard panel returns data from that Prometheus, and every alert rule evaluates cleanly;
- the panels are plotted with matplotlib into a PNG (Grafana cannot run here): the file is kept under
  OCEAN_C2D_ARTIFACTS (default: .artifacts/ in the repository) as an artifact of the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import kr8s.asyncio
import pytest
import yaml

from e2e.operator_fixtures import (
    create_environment,
    create_workflow,
    status,
    wait_finished,
)
from e2e.operator_handle import Operator, StartOperator
from e2e.services import background_server, free_port
from e2e.waiting import wait_for
from ocean_c2d.times import format_time
from unit_tests.built_tools import built

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "ocean-c2d"
DASHBOARD = CHART / "files" / "dashboard.json"
ALERTS = CHART / "files" / "alerts.yaml"
METRIC_NAME = re.compile(r"\bocean_c2d_[a-z_]+\b")
SCRAPE_SECONDS = 1
# Grafana's $__rate_interval is at least 4 scrape intervals; Prometheus needs a literal window.
RATE_INTERVAL = "10s"


@dataclass(frozen=True)
class Prometheus:
    url: str
    tools: str


@pytest.fixture(scope="module")
def prometheus_tools() -> str:
    return built("prometheus")


@asynccontextmanager
async def prometheus_scraping(tools: str, target: str, home: Path) -> AsyncIterator[Prometheus]:
    """A Prometheus server scraping `target` (host:port) every second, with the chart's alert rules."""
    config_file = write_prometheus_config(home, target)
    url = f"http://127.0.0.1:{free_port()}"
    argv = [
        str(Path(tools) / "prometheus"),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        "--log.level=warn",
    ]
    async with background_server(argv, os.environ, home / "server.log", "GET", f"{url}/-/ready"):
        yield Prometheus(url, tools)


def write_prometheus_config(home: Path, target: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    rules = home / "alerts.yaml"
    shutil.copy(ALERTS, rules)
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "ocean-c2d", "static_configs": [{"targets": [target]}]}],
    }
    config_file = home / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    return config_file


async def promtool_check_metrics(tools: str, exposition: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(Path(tools) / "promtool"),
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate(exposition.encode())
    assert process.returncode is not None
    return process.returncode, output.decode()


async def prometheus_api(client: httpx.AsyncClient, prometheus: Prometheus, path: str, **params: str) -> Any:
    """The `data` of a Prometheus HTTP API answer, which must say success."""
    body = (await client.get(f"{prometheus.url}/api/v1/{path}", params=params)).json()
    assert body.get("status") == "success", (path, params, body)
    return body["data"]


async def query(client: httpx.AsyncClient, prometheus: Prometheus, expr: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = (await prometheus_api(client, prometheus, "query", query=expr))["result"]
    return result


async def query_range(
    client: httpx.AsyncClient, prometheus: Prometheus, expr: str, start: float, end: float
) -> list[dict[str, Any]]:
    data = await prometheus_api(
        client, prometheus, "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step="1"
    )
    result: list[dict[str, Any]] = data["result"]
    return result


async def until_scraped(client: httpx.AsyncClient, prometheus: Prometheus, expr: str, want: float) -> None:
    """Wait (bounded) until Prometheus has scraped a sample where `expr` reaches `want`."""
    async with asyncio.timeout(60):
        while True:
            found = await query(client, prometheus, expr)
            if found and float(found[0]["value"][1]) >= want:
                return
            await asyncio.sleep(SCRAPE_SECONDS)


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, expression as Prometheus runs it, legend) of every dashboard query."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"].replace("$__rate_interval", RATE_INTERVAL), target["legendFormat"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def exposed_names(text: str) -> set[str]:
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


async def create_environments(api: kr8s.asyncio.Api, namespace: str) -> None:
    await create_environment(api, namespace, maxJobs=2)
    await create_environment(api, namespace, name="filtered", filter={"enabled": True})


async def run_workflows(api: kr8s.asyncio.Api, namespace: str, operator: Operator) -> None:
    """Six Workflows through a 2-slot environment: four succeed, one algorithm fails, one runs longer;
    one more through an environment that filters results."""
    plans: dict[str, dict[str, str]] = {
        "ok-1": {},
        "ok-2": {"algorithm.run-for": "3s"},
        "ok-3": {"configure.run-for": "2s"},
        "ok-4": {},
        "fails": {"algorithm.exit-code": "1"},
        "slow": {"algorithm.run-for": "6s"},
    }
    workflows = [await create_workflow(api, namespace, name, sim=sim) for name, sim in plans.items()]
    workflows.append(await create_workflow(api, namespace, "filtered", environment="filtered"))
    outcomes = [await wait_finished(w, operator, timeout=180) for w in workflows]
    assert [o["reason"] for o in outcomes].count("Succeeded") == 6
    assert [o["reason"] for o in outcomes].count("AlgorithmFailed") == 1


def plot_panels(
    panels: dict[str, list[tuple[str, list[tuple[float, float]]]]], png: Path, start: float
) -> None:
    """The dashboard's panels as small line charts, one per panel, in the dashboard's order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 3
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.axis("off")
    for axis, (title, series) in zip(axes.flat, panels.items(), strict=False):
        for legend, points in series:
            axis.plot([t - start for t, _ in points], [v for _, v in points], label=legend, linewidth=1.2)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("seconds into the run", fontsize=7)
        axis.tick_params(labelsize=7)
        if series:
            axis.legend(fontsize=6, loc="upper left")
    figure.suptitle("ocean-c2d dashboard, queried from a real Prometheus during an e2e run", fontsize=11)
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=80)
    plt.close(figure)


def legend_of(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template) or "value"


async def test_dashboard_and_alerts_against_a_real_prometheus(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    prometheus_tools: str,
    tmp_path: Path,
) -> None:
    # Stop notifications to a port nobody listens on: each fails fast, and is counted as Failed.
    dead_receiver = f"http://127.0.0.1:{free_port()}/stop"
    operator = await start_operator(
        NOTIFY_STOP_URL=dead_receiver, NOTIFY_MAX_ATTEMPTS="1", NOTIFY_TIMEOUT_SECONDS="1"
    )
    target = f"127.0.0.1:{operator.metrics_port}"
    async with (
        prometheus_scraping(prometheus_tools, target, tmp_path / "prometheus") as prometheus,
        httpx.AsyncClient(timeout=10) as client,
    ):
        start = time.time()
        await create_environments(api, namespace)
        # increase() sees an increment only between two scraped samples. The operator starts each
        # environment's counters at 0, but on a busy machine its environment reconcile or the next
        # scrape can come after a fast failure (it failed 4 times in 4 at load 4-8: the series began at
        # 1). A real deployment scrapes long before its first failure; here, wait for the 0 sample.
        selector = f'namespace="{namespace}", outcome="AlgorithmFailed"'
        for environment in ("cpu", "filtered"):
            counter = f'ocean_c2d_workflows_finished_total{{{selector}, environment="{environment}"}}'
            await until_scraped(client, prometheus, counter, 0)
        await run_workflows(api, namespace, operator)
        finished = f'sum(ocean_c2d_workflows_finished_total{{namespace="{namespace}"}})'
        await until_scraped(client, prometheus, finished, 7)
        await until_scraped(client, prometheus, 'sum(ocean_c2d_notifications_total{outcome="Failed"})', 7)
        end = time.time()
        # The single failure shows in increase(): its counter existed at 0 before it happened.
        failed = f"sum(increase(ocean_c2d_workflows_finished_total{{{selector}}}[1h]))"
        [failures] = await query(client, prometheus, failed)
        assert float(failures["value"][1]) > 0.5

        # promtool's lint of the exposition format and naming conventions.
        exposition = (await client.get(f"http://{target}/metrics")).text
        returncode, findings = await promtool_check_metrics(prometheus.tools, exposition)
        assert returncode == 0, findings
        assert findings.strip() == "", findings  # no lint findings at all

        # Every name a query or rule uses was exposed during the run (histograms by their _bucket/_sum/
        # _count): what Prometheus scraped, since a level like "oldest Workflow in a stage" exists only
        # while some Workflow is in one.
        exposed = set(await prometheus_api(client, prometheus, "label/__name__/values"))
        assert exposed_names(exposition) <= exposed
        used = {
            name
            for expr in [*(e for _, e, _ in dashboard_targets()), *alert_expressions().values()]
            for name in METRIC_NAME.findall(expr)
        }
        assert used
        assert used <= exposed, f"named but not exposed: {sorted(used - exposed)}"

        # Every panel shows data; the plot keeps what it showed.
        panels: dict[str, list[tuple[str, list[tuple[float, float]]]]] = {}
        for title, expr, legend in dashboard_targets():
            for series in await query_range(client, prometheus, expr, start, end):
                points = [
                    (float(t), float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")
                ]
                if points:
                    panels.setdefault(title, []).append((legend_of(legend, series["metric"]), points))
            panels.setdefault(title, [])
        empty = [title for title, series in panels.items() if not series]
        assert not empty, f"dashboard panels without data: {empty}"

        # The alert rules evaluate without errors against the real series.
        rules = (await prometheus_api(client, prometheus, "rules"))["groups"]
        health = {
            rule["name"]: (rule["health"], rule.get("lastError", "")) for g in rules for rule in g["rules"]
        }
        assert set(health) == set(alert_expressions())
        assert all(state == "ok" for state, _ in health.values()), health
        # Notifications failed within the last 15 minutes: that alert is pending or firing by now.
        states = {rule["name"]: rule["state"] for g in rules for rule in g["rules"]}
        assert states["OceanC2DNotificationsFailing"] in ("pending", "firing")
        assert states["OceanC2DReconcileErrors"] == "inactive"
        # One operator without leader election acts, and says so (ocean_c2d_leader 1): not even pending.
        assert states["OceanC2DNoLeader"] == "inactive"

    artifacts = Path(os.environ.get("OCEAN_C2D_ARTIFACTS", REPO / ".artifacts"))
    png = artifacts / "dashboard.png"
    await asyncio.to_thread(plot_panels, panels, png, start)
    assert png.stat().st_size > 20_000  # a real picture, not an empty canvas
    print(f"dashboard rendered to {png} ({png.stat().st_size} bytes, {len(panels)} panels)")


async def test_levels_come_from_the_cluster_right_after_a_restart(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    await create_environment(api, namespace, maxJobs=1, nCPU=2, ramGB=4)
    first = await start_operator()
    running = await create_workflow(api, namespace, "long", sim={"algorithm.run-for": "120s"})
    await wait_for(running, lambda w: status(w).get("stage") == "RunningAlgorithm", timeout=60)
    waiting = await create_workflow(api, namespace, "waiting")
    await wait_for(waiting, lambda w: status(w).get("stage") == "Queued", timeout=60)

    await first.kill()
    second = await start_operator()
    # The new process has written nothing yet; what it reports is what the cluster holds.
    levels = {
        ("ocean_c2d_workflows", "stage", "RunningAlgorithm"): 1.0,
        ("ocean_c2d_workflows", "stage", "Queued"): 1.0,
        ("ocean_c2d_workflows", "stage", "Finished"): 0.0,
        ("ocean_c2d_environment_in_use", "resource", "cpu"): 2.0,
        ("ocean_c2d_environment_allocatable", "resource", "cpu"): 2.0,
        ("ocean_c2d_environment_in_use", "resource", "memory"): 4.0 * 1024**3,
        ("ocean_c2d_environment_in_use", "resource", "jobs"): 1.0,
    }

    async def reported() -> dict[tuple[str, str, str], float]:
        try:
            samples = await second.metrics()
        except httpx.TransportError:
            return {}  # the new process is not listening yet
        return {
            key: sum(
                v for (name, labels), v in samples.items() if name == key[0] and (key[1], key[2]) in labels
            )
            for key in levels
        }

    # Bounded: the levels appear once kopf has listed the cluster, a moment after the start.
    async with asyncio.timeout(30):
        while (found := await reported()) != levels:  # noqa: ASYNC110  (/metrics cannot be watched)
            await asyncio.sleep(0.2)
    assert found == levels
    assert (
        await second.total("ocean_c2d_workflows_finished_total") == 0
    )  # counters start again; levels do not
    oldest = await second.total("ocean_c2d_stage_oldest_start_timestamp_seconds", stage="RunningAlgorithm")
    started = status(running)["stages"]["algorithm"]["startedAt"]
    assert format_time(datetime.fromtimestamp(oldest, UTC)) == started
