"""The issue's load: 200 concurrent status polls of `ocean-c2d api` while 50 Workflows run (kwok pods).

The Workflows are created through the API (signed POST /compute), run by the operator, and polled by
benchmarks/api_load.py's pollers (provider v4's signed GET /compute, a fresh nonce each). The numbers are
printed (`make bench-api` prints them with `-s`); the test asserts only what holds at any speed: every poll
is answered 200 with exactly its job, the API reads no Workflow from the API server (its watch cache
answers), and the nonces of concurrent polls cost at most one API-server write per poll (a write per request
would conflict, and retry, under this concurrency). Sizes: API_LOAD_WORKFLOWS, API_LOAD_POLLERS,
API_LOAD_ROUNDS.
"""

from __future__ import annotations

import asyncio
import os
import time

import kr8s.asyncio

from benchmarks.api_load import poll_load
from e2e.api_client import ENVIRONMENT, StartApi, kube_requests, source_tree_env, start_body
from e2e.operator_fixtures import Workflow, create_environment, status
from e2e.operator_handle import StartOperator

WORKFLOWS = int(os.environ.get("API_LOAD_WORKFLOWS", "50"))
POLLERS = int(os.environ.get("API_LOAD_POLLERS", "200"))
ROUNDS = int(os.environ.get("API_LOAD_ROUNDS", "5"))


async def all_running(api: kr8s.asyncio.Api, namespace: str, count: int, timeout: float = 240) -> None:
    """Until `count` Workflows of the namespace run their algorithm, on watch events."""
    running: set[str] = set()
    async with asyncio.timeout(timeout):
        while len(running) < count:  # a watch may end (its server-side timeout): open another
            async for _event, workflow in api.async_watch("workflows.oceanprotocol.com", namespace=namespace):
                if status(workflow).get("stage") == "RunningAlgorithm":
                    running.add(workflow.name)
                if len(running) >= count:
                    return


async def test_concurrent_polls_while_workflows_run_are_answered_from_the_watch_cache(
    api: kr8s.asyncio.Api, namespace: str, start_api: StartApi, start_operator: StartOperator
) -> None:
    await create_environment(api, namespace, name=ENVIRONMENT, maxJobs=WORKFLOWS)
    api_process = await start_api()
    created: list[str] = []
    post_seconds = []
    for index in range(WORKFLOWS):
        sent = time.perf_counter()
        response = await api_process.request("POST", "/compute", json=start_body(f"0x{index + 1:064x}"))
        post_seconds.append(time.perf_counter() - sent)
        assert response.status_code == 200, response.text
        created.append(response.json()[0]["jobId"])
    for job_id in created:  # the algorithms run for longer than the polls take (kwok)
        workflow = await Workflow.get(job_id, namespace=namespace, api=api)
        await workflow.patch({"metadata": {"annotations": {"sim.ocean-c2d/algorithm.run-for": "900s"}}})
    await start_operator(**source_tree_env())
    await all_running(api, namespace, WORKFLOWS)

    report = await poll_load(
        api_process.url,
        created,
        POLLERS,
        ROUNDS,
        api_pid=api_process.process.pid,
        kube_requests=lambda: kube_requests(api_process),
    )

    ordered = sorted(post_seconds)
    print(
        f"\nPOST /compute, {WORKFLOWS} in a row: median {1000 * ordered[len(ordered) // 2]:.0f} ms, "
        f"max {1000 * ordered[-1]:.0f} ms"
    )
    print("\n".join(report.lines()))
    assert report.transport_errors == 0
    assert report.codes == {200: report.polls}
    assert report.wrong_job == 0
    # Served from the watch cache: no Workflow GET or LIST per poll (a reopened watch would show as WATCH).
    assert report.kube_per_poll("GET", "workflows") == 0
    writes = report.kube_per_poll("PATCH", "configmaps") + report.kube_per_poll("POST", "configmaps")
    assert 0 < writes <= 1, report.kube_requests
