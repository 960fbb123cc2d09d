"""`ocean-c2d api` against the real API server, with the operator running what it creates (kwok pods).

The API and the operator run as local processes from this source tree (PYTHONPATH: the repository's
`operator/`, whatever the venv has installed). Requests are provider v4's, as recorded
(unit_tests/api/fixtures/ocean-compat/provider-v4.json), re-signed with provider's public test key over
the messages api/auth.py checks (POST: owner + nonce; GET and PUT: owner + jobId + nonce) with fresh
19-digit nonces (provider's time_ns()).

The cluster is waited on by watches. The API is polled (a provider polls GET /compute), but only on a
watch event of the Workflow, and, after the Workflow is over, until the API's own watch cache caught up.
"""

from __future__ import annotations

import asyncio
import json
import re

import kr8s.asyncio
from kr8s.asyncio.objects import APIObject

from e2e.api_client import (
    ENVIRONMENT,
    EPOCH_TEXT,
    OWNER,
    PROVIDER,
    RECORDED_FINISHED,
    STRANGER_KEY,
    StartApi,
    assert_recorded_shape,
    assert_source_tree,
    costs,
    fresh_nonce,
    job_query,
    kube_requests,
    source_tree_env,
    start_body,
    until_the_api_shows,
)
from e2e.operator_fixtures import (
    Workflow,
    create_environment,
    finished,
    status,
    wait_finished,
)
from e2e.operator_handle import StartOperator
from e2e.waiting import wait_for

# What the publish step reports (kwok: its termination message), as in the recording.
PUBLISHED = [
    {"filename": "out.txt", "filesize": 12, "type": "output", "url": "s3://bucket/job/out.txt"},
    {"filename": "algorithm.log", "filesize": 9, "type": "algorithmLog", "url": "s3://bucket/job/a.log"},
]


async def workflows(api: kr8s.asyncio.Api, namespace: str) -> list[str]:
    return sorted(
        [w.name async for w in api.async_get("workflows", namespace=namespace) if isinstance(w, APIObject)]
    )


async def the_workflow(api: kr8s.asyncio.Api, namespace: str, name: str) -> APIObject:
    workflow: APIObject = await Workflow.get(name, namespace=namespace, api=api)
    return workflow


async def simulate(workflow: APIObject, **sim: str) -> None:
    """The kwok outcome of each stage (e2e/README.md), set before the operator starts: it copies them onto
    the stage pods it creates."""
    await workflow.patch({"metadata": {"annotations": {f"sim.ocean-c2d/{k}": v for k, v in sim.items()}}})


async def test_a_provider_start_runs_and_polls_to_finished_on_any_replica(
    api: kr8s.asyncio.Api, namespace: str, start_api: StartApi, start_operator: StartOperator
) -> None:
    await assert_source_tree()
    await create_environment(api, namespace, name=ENVIRONMENT)
    first = await start_api()
    before = await kube_requests(first)

    response = await first.request("POST", "/compute", json=start_body())
    print(f"\nAPI-server requests of a signed POST /compute: {await costs(first, before)}")

    assert response.status_code == 200, response.text
    assert response.headers["Content-type"] == "application/json"
    [started] = response.json()
    job_id = started["jobId"]
    assert re.fullmatch(r"[0-9a-f]{32}", job_id)
    assert (started["status"], started["statusText"], started["dateFinished"]) == (1, "Warming up", None)
    assert await workflows(api, namespace) == [job_id]  # exactly one Workflow, named by the jobId
    workflow = await the_workflow(api, namespace, job_id)
    assert workflow.raw["spec"]["owner"] == OWNER
    assert workflow.raw["spec"]["environment"] == ENVIRONMENT
    await simulate(workflow, **{"publish.message": json.dumps({"results": PUBLISHED})})

    operator = await start_operator(**source_tree_env())
    seen = [started["status"]]
    try:
        async with asyncio.timeout(90):
            await workflow.refresh()
            while not finished(workflow):
                async for _event, _ in workflow.async_watch():
                    code = (await first.status_of(job_id))["status"]
                    if code != seen[-1]:
                        seen.append(code)
                    if finished(workflow):
                        break
    except TimeoutError:
        raise AssertionError(
            f"{status(workflow)}\n--- operator log ---\n{await operator.log_tail()}"
        ) from None
    assert status(workflow)["statusCode"] == 70, status(workflow)

    final = await until_the_api_shows(first, job_id, lambda job: job["dateFinished"] is not None)
    before = await kube_requests(first)
    await first.status_of(job_id)
    print(f"API-server requests of a signed GET /compute: {await costs(first, before)}")

    assert_recorded_shape(final)
    assert (final["status"], final["statusText"], final["stopreq"], final["removed"]) == (
        70,
        "Job finished",
        0,
        0,
    )
    assert EPOCH_TEXT.fullmatch(final["dateFinished"])
    assert float(final["dateFinished"]) >= float(final["dateCreated"])
    assert final["results"] == [{k: r[k] for k in ("filename", "filesize", "type")} for r in PUBLISHED]
    for key in ("agreementId", "owner", "algoDID", "inputDID"):
        assert final[key] == RECORDED_FINISHED[key], key
    assert seen[0] == 1
    assert seen[-1] == 70
    assert seen == sorted(seen), seen  # the original's codes only grow on the way to 70
    print(f"status codes seen while polling: {seen}")

    # A second replica answers the same, and knows the nonces the first one spent (kept in the cluster).
    second = await start_api()
    assert await second.status_of(job_id) == final
    spent_nonce = fresh_nonce()
    accepted = await first.request("GET", "/compute", params=job_query(job_id, spent_nonce))
    assert accepted.status_code == 200
    replayed = await second.request("GET", "/compute", params=job_query(job_id, spent_nonce))
    assert replayed.status_code == 401, replayed.text


async def test_a_replayed_nonce_or_another_key_is_401_and_creates_nothing(
    api: kr8s.asyncio.Api, namespace: str, start_api: StartApi
) -> None:
    await assert_source_tree()
    await create_environment(api, namespace, name=ENVIRONMENT)
    api_process = await start_api()
    first = start_body()
    assert (await api_process.request("POST", "/compute", json=first)).status_code == 200
    [job_id] = await workflows(api, namespace)

    # The same signature (it covers owner and nonce) on another agreement: a replay.
    replay = {**first, "agreementId": "0x" + "55" * 32}
    replayed = await api_process.request("POST", "/compute", json=replay)
    stranger = await api_process.request(
        "POST", "/compute", json=start_body("0x" + "66" * 32, key=STRANGER_KEY)
    )
    stale_poll = await api_process.request("GET", "/compute", params=job_query(job_id, int(first["nonce"])))

    assert replayed.status_code == 401
    assert "a replay" in replayed.json()["error"]
    assert stranger.status_code == 401
    # It names the providerAddress the request claimed, which its signature does not match.
    assert stranger.json() == {"error": f"providerSignature is not {PROVIDER}'s for this request"}
    assert stale_poll.status_code == 401
    assert await workflows(api, namespace) == [job_id]  # nothing more was created
    refusals = await api_process.metric("ocean_c2d_api_authentications_total")
    assert refusals['{call="POST /compute",outcome="replay"}'] == 1
    assert refusals['{call="POST /compute",outcome="not-allowed"}'] == 1


async def test_a_stop_sets_spec_stop_and_the_job_ends_stopped(
    api: kr8s.asyncio.Api, namespace: str, start_api: StartApi, start_operator: StartOperator
) -> None:
    await assert_source_tree()
    await create_environment(api, namespace, name=ENVIRONMENT)
    api_process = await start_api()
    response = await api_process.request("POST", "/compute", json=start_body())
    assert response.status_code == 200, response.text
    job_id = response.json()[0]["jobId"]
    workflow = await the_workflow(api, namespace, job_id)
    await simulate(workflow, **{"algorithm.run-for": "300s"})
    operator = await start_operator(**source_tree_env())
    await wait_for(workflow, lambda w: status(w).get("stage") == "RunningAlgorithm", timeout=60)

    before = await kube_requests(api_process)
    stopped = await api_process.request("PUT", "/compute", params=job_query(job_id))
    print(f"\nAPI-server requests of a signed PUT /compute: {await costs(api_process, before)}")

    assert stopped.status_code == 200, stopped.text
    [answer] = stopped.json()
    assert (answer["jobId"], answer["stopreq"]) == (job_id, 1)
    await wait_for(workflow, lambda w: w.raw["spec"].get("stop") is True, timeout=10)
    final = await wait_finished(workflow, operator)
    assert final["reason"] == "Stopped", final
    job = await until_the_api_shows(api_process, job_id, lambda job: job["dateFinished"] is not None)
    assert (job["status"], job["statusText"], job["stopreq"]) == (70, "Job finished", 1)
