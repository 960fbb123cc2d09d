"""A restarted operator with a history (issue 13, S5): 2,000 finished Workflows and three running ones.
The operator is SIGKILLed while the three run their algorithm; the next one lists everything before its
first reconcile, so it resumes the three without a second pod of any stage, reconciles every finished
one without writing to it, and the three finish as they would have. Prints the time the second start
took and its memory; asserts no timing (CI runtime: about a minute and a half, most of it creating the
2,000 Workflows)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import kr8s.asyncio
import pytest

from e2e.audit import AuditLog, Request, in_namespace
from e2e.finished_workflows import create_finished_workflows
from e2e.operator_fixtures import GROUP_VERSION, OperatorProcess, create_environment, workflow_manifest
from e2e.operator_handle import Operator, StartOperator

pytestmark = [pytest.mark.simulated, pytest.mark.local_only]  # reads the operator process's /proc

FINISHED = 2000
RUNNING = 3
LIVE = "e2e.ocean-c2d/role=live"  # the running ones' label: their watch leaves the 2,000 out


def rss_mb(operator: Operator) -> tuple[int, int]:
    """(VmRSS, VmHWM) of the operator process, in MB."""
    assert isinstance(operator, OperatorProcess)
    lines = Path(f"/proc/{operator.process.pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024


def pod_creates(requests: list[Request]) -> Counter[str]:
    return Counter(r.name for r in requests if r.resource == "pods" and r.verb == "create" and r.code == 201)


class Live:
    """The running Workflows' statuses, as a LIST and then a WATCH of their label show them (raw
    requests: in a namespace of thousands, nothing of the rest is read)."""

    def __init__(self, api: kr8s.asyncio.Api, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.status: dict[str, dict[str, Any]] = {}
        self._seen = asyncio.Event()

    def _see(self, obj: dict[str, Any]) -> None:
        self.status[obj["metadata"]["name"]] = obj.get("status") or {}
        self._seen.set()
        self._seen = asyncio.Event()

    async def create(self, name: str, sim: dict[str, str]) -> None:
        manifest = workflow_manifest(name, sim=sim)
        manifest["metadata"]["labels"] = dict([LIVE.split("=")])
        body = {"apiVersion": GROUP_VERSION, "kind": "Workflow", **manifest}
        async with self.api.call_api(
            "POST", version=GROUP_VERSION, namespace=self.namespace, url="workflows", json=body
        ) as response:
            response.read()

    async def follow(self) -> None:
        params = {"labelSelector": LIVE}
        async with self.api.call_api(
            "GET", version=GROUP_VERSION, namespace=self.namespace, url="workflows", params=params
        ) as listed:
            found = listed.json()
        for item in found["items"]:
            self._see(item)
        version = found["metadata"]["resourceVersion"]
        while True:
            watch = {**params, "watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true"}
            async with self.api.call_api(
                "GET",
                version=GROUP_VERSION,
                namespace=self.namespace,
                url="workflows",
                params=watch,
                stream=True,
                timeout=httpx.Timeout(10, read=None),
            ) as stream:
                async for line in stream.aiter_lines():
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        raise AssertionError(f"the watch ended: {event['object']}")
                    version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._see(event["object"])

    async def until(self, holds: Callable[[dict[str, Any]], bool], names: list[str], timeout: float) -> None:
        """Until `holds(status)` for every one of `names`."""
        async with asyncio.timeout(timeout):
            while not all(holds(self.status.get(name, {})) for name in names):
                await self._seen.wait()


async def test_a_restart_with_thousands_finished_resumes_the_running_without_duplicates(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    audit = AuditLog()
    assert audit.available(), f"no audit log at {audit.path}"
    await create_environment(api, namespace, maxJobs=RUNNING)
    began = time.monotonic()
    done = await create_finished_workflows(api, namespace, FINISHED)
    print(f"created {FINISHED} finished Workflows in {time.monotonic() - began:.1f} s")
    mark = audit.mark()
    live = Live(api, namespace)
    following = asyncio.create_task(live.follow())
    names = [f"live-{n}" for n in range(RUNNING)]
    try:
        first = await start_operator()
        for name in names:
            await live.create(name, {"algorithm.run-for": "15s"})
        await live.until(lambda s: s.get("stage") == "RunningAlgorithm", names, timeout=90)
        await first.kill()

        started = time.monotonic()
        second = await start_operator()
        try:
            await live.until(lambda s: s.get("stage") == "Finished", names, timeout=120)
        except TimeoutError:
            raise AssertionError(f"{live.status}\n--- operator log ---\n{await second.log_tail()}") from None
        print(
            f"second start: the {RUNNING} running ones finished {time.monotonic() - started:.1f} s after "
            f"it; RSS, peak: {rss_mb(second)} MB"
        )
        # Every Workflow was on the work queue once the listing was over, before any later event of the
        # running ones: by the time they finished, every finished one had been reconciled as well.
        reconciled = await second.total("ocean_c2d_reconciles_total")
    finally:
        following.cancel()

    finals = [live.status[name] for name in names]
    assert [final["statusCode"] for final in finals] == [70] * RUNNING
    assert reconciled >= FINISHED + RUNNING
    requests = list(audit.since(mark, where=in_namespace(namespace)))
    creates = pod_creates(requests)
    assert {name: count for name, count in creates.items() if count > 1} == {}, "a pod created twice"
    pods = {record["podName"] for final in finals for record in (final.get("stages") or {}).values()}
    # configure, algorithm and publish of each, one pod each (a second would be a stage run again), and
    # nothing else
    assert set(creates) == pods
    assert len(pods) == 3 * RUNNING
    # A finished Workflow's reconcile changes nothing: no write to any of them, by either operator.
    finished = set(done)
    touched = sorted({r.name for r in requests if r.is_write and r.name in finished})
    assert touched == []
