"""`ocean-c2d api` against the real API server, with the operator running what it creates (kwok pods).

The API and the operator run as local processes from this source tree (PYTHONPATH: the repository's
`operator/`, whatever the venv has installed). Requests are provider v4's, as recorded
(unit_tests/api/fixtures/ocean-compat/provider-v4.json), re-signed with provider's public test key over
the messages api/auth.py checks (POST: owner + nonce; GET and PUT: owner + jobId + nonce) with fresh
19-digit nonces (provider's time_ns()). ocean-node's OPF_K8 engine is replayed too
(ocean-node-OPF_K8_9f2870dd.json, in its order): JSON bodies on every method, signed as ethers signs (v
1b/1c) over the messages OPF_K8 signs, 13-digit nonces (Date.now()), its results streamed from a local
S3 server (versitygw) as the API reads them from the publish storage.

The cluster is waited on by watches. The API is polled (a provider polls GET /compute), but only on a
watch event of the Workflow, and, after the Workflow is over, until the API's own watch cache caught up.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import kr8s.asyncio
from kr8s.asyncio.objects import APIObject

from e2e.api_client import (
    ENVIRONMENT,
    EPOCH_TEXT,
    OWNER,
    PREFIX,
    PROVIDER,
    RECORDED_FINISHED,
    STRANGER_KEY,
    ApiProcess,
    StartApi,
    assert_recorded_shape,
    assert_source_tree,
    codes_on_watch_events,
    costs,
    fresh_nonce,
    job_query,
    kube_requests,
    polled_until,
    sign_like_ethers,
    source_tree_env,
    start_body,
    until_the_api_shows,
)
from e2e.operator_fixtures import (
    OPERATOR_ADDRESS,
    Workflow,
    create_environment,
    status,
    wait_finished,
)
from e2e.operator_handle import REPO, StartOperator
from e2e.services import S3Server, new_bucket
from e2e.waiting import wait_for
from ocean_c2d.api.status_object import ORIGINAL_TEXTS
from ocean_c2d.storage import s3 as s3_storage
from unit_tests.api.fixtures import UNCOMPARED_HEADERS

# What the publish step reports (kwok: its termination message), as in the recording.
PUBLISHED = [
    {"filename": "out.txt", "filesize": 12, "type": "output", "url": "s3://bucket/job/out.txt"},
    {"filename": "algorithm.log", "filesize": 9, "type": "algorithmLog", "url": "s3://bucket/job/a.log"},
]


async def workflows(api: kr8s.asyncio.Api, namespace: str) -> list[str]:
    return sorted(
        [
            w.name
            async for w in api.async_get("workflows.oceanprotocol.com", namespace=namespace)
            if isinstance(w, APIObject)
        ]
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
    try:
        seen = await codes_on_watch_events(workflow, lambda: first.status_of(job_id), started["status"], 90)
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


# --- ocean-node's OPF_K8 engine, as recorded ---------------------------------------------------------

NODE_RECORDING: dict[int, dict[str, Any]] = {
    e["seq"]: e
    for e in json.loads(
        (
            REPO / "unit_tests" / "api" / "fixtures" / "ocean-compat" / "ocean-node-OPF_K8_9f2870dd.json"
        ).read_text()
    )
}
# The recording's two jobs: seq 2 starts A (an algorithm by DID), seq 3 B (raw code, a URL input).
RECORDED_A = NODE_RECORDING[2]["response"]["body"][0]["jobId"]
RECORDED_B = NODE_RECORDING[3]["response"]["body"][0]["jobId"]
NODE_OWNER = NODE_RECORDING[2]["request"]["params"]["owner"]
_last_node_nonce = 0


def node_nonce() -> int:
    """OPF_K8's nonce: Date.now(), 13 digits, made strictly increasing."""
    global _last_node_nonce
    _last_node_nonce = max(_last_node_nonce + 1, time.time_ns() // 1_000_000)
    return _last_node_nonce


def node_request(seq: int, jobs: Mapping[str, str], nonce: int | None = None) -> dict[str, Any]:
    """The recorded request `seq`'s JSON body, in its key order, with our jobIds (`jobs`: recorded ->
    ours), a fresh nonce (or `nonce`) and signed over what OPF_K8 signs for that call (api/auth.py)."""
    request = NODE_RECORDING[seq]["request"]
    body: dict[str, Any] = copy.deepcopy(request["params"])
    if "jobId" in body:
        body["jobId"] = jobs[body["jobId"]]
    body["nonce"] = node_nonce() if nonce is None else nonce
    call = f"{request['method']} {request['path'].removeprefix(PREFIX)}"
    if call in ("POST /compute", "PUT /compute"):
        message = str(body["nonce"])
    elif call == "GET /compute":
        message = f"{body['nonce']}{body.get('owner', 'undefined')}{body.get('jobId', 'undefined')}"
    else:
        assert call == "GET /getResult", call
        message = body["owner"] + body["jobId"]  # no nonce
    body["providerSignature"] = sign_like_ethers(message)
    return body


async def send_like_node(api_process: ApiProcess, seq: int, body: dict[str, Any]) -> httpx.Response:
    """As OPF_K8's axios sends it: every method with a JSON body, no query string."""
    request = NODE_RECORDING[seq]["request"]
    assert request["transport"] == "json-body", request
    return await api_process.request(request["method"], request["path"].removeprefix(PREFIX), json=body)


def shape(value: Any) -> Any:
    """A JSON value's keys (in order) and types, recursively: what two answers share when only their
    identifiers, times and codes differ."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def normalised(jobs: Any, names: Mapping[str, str]) -> Any:
    """Status objects as the fixtures' README normalises them: jobIds by `names`, times as <TS> (a
    null kept)."""
    return [
        {
            **job,
            "jobId": names.get(job["jobId"], job["jobId"]),
            **{key: "<TS>" for key in ("dateCreated", "dateFinished") if job[key] is not None},
        }
        for job in jobs
    ]


def assert_recorded_answer(response: httpx.Response, seq: int) -> None:
    """The status code and headers of the recorded answer `seq` (those the README compares)."""
    recorded = NODE_RECORDING[seq]["response"]
    assert response.status_code == recorded["status"], (seq, response.text)
    for name, value in recorded["headers"]:
        if name.lower() not in UNCOMPARED_HEADERS:
            assert response.headers.get(name) == value, (seq, name, dict(response.headers))


async def node_polls_until(
    api_process: ApiProcess, seq: int, jobs: Mapping[str, str], done: Callable[[Any], bool]
) -> Any:
    """Request `seq` (a GET /compute) again, freshly signed, until its answer satisfies `done`."""

    async def poll() -> Any:
        response = await send_like_node(api_process, seq, node_request(seq, jobs))
        assert_recorded_answer(response, seq)
        return response.json()

    return await polled_until(poll, done)


async def test_ocean_nodes_opf_k8_starts_polls_stops_and_fetches_its_jobs_as_recorded(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_api: StartApi,
    start_operator: StartOperator,
    s3_server: S3Server,
) -> None:
    """The OPF_K8 recording's exchanges, in its order, re-signed as OPF_K8 signs (v 1b/1c over api/auth.py's
    messages, 13-digit nonces, JSON bodies on GET): the answers have the recorded status codes, headers,
    keys and types, and the same values but for jobIds, times and the contract replay's deviations."""
    # sign_like_ethers is OPF_K8's signing (RFC 6979 signatures are deterministic): it reproduces the
    # recorded signatures byte for byte.
    for seq in (2, 12):
        recorded = NODE_RECORDING[seq]["request"]["params"]
        kept = node_request(seq, {RECORDED_A: RECORDED_A}, nonce=recorded["nonce"])
        assert kept["providerSignature"] == recorded["providerSignature"], seq

    await assert_source_tree()
    recorded_environment = NODE_RECORDING[1]["response"]["body"][0]
    await create_environment(
        api,
        namespace,
        name=recorded_environment["id"],
        maxJobs=recorded_environment["maxJobs"],
        maxJobDuration=int(recorded_environment["maxJobDuration"]),
    )
    s3 = s3_server.client()
    bucket = await asyncio.to_thread(new_bucket, s3, "opf-k8")
    api_process = await start_api(
        AWS_BUCKET_OUTPUT=bucket,
        AWS_ENDPOINT_URL=s3_server.endpoint_url,
        AWS_ACCESS_KEY_ID=s3_server.access_key,
        AWS_SECRET_ACCESS_KEY=s3_server.secret_key,
        AWS_REGION=s3_server.region,
    )

    # seq 1: GET /environments?chain_id=8996 (OPF_K8's one query-string call).
    response = await api_process.request(
        "GET", "/environments", params=NODE_RECORDING[1]["request"]["params"]
    )
    assert_recorded_answer(response, 1)
    [environment] = response.json()
    assert shape(environment) == shape(recorded_environment)
    expected = {
        **recorded_environment,
        "consumerAddress": OPERATOR_ADDRESS,
        "lastSeen": environment["lastSeen"],
    }
    assert environment == expected

    # seq 2, 3: POST /compute, the recorded bodies, each signed over its nonce alone.
    started, posted = [], {}
    for seq in (2, 3):
        posted[seq] = node_request(seq, {})
        response = await send_like_node(api_process, seq, posted[seq])
        assert_recorded_answer(response, seq)
        started.append(response.json())
        assert shape(response.json()) == shape(NODE_RECORDING[seq]["response"]["body"]), response.text
    job_a, job_b = (answer[0]["jobId"] for answer in started)
    jobs = {RECORDED_A: job_a, RECORDED_B: job_b}
    names = {job_a: "A", job_b: "B"}
    recorded_names = {RECORDED_A: "A", RECORDED_B: "B"}
    for seq, answer in zip((2, 3), started, strict=True):
        assert normalised(answer, names) == normalised(
            NODE_RECORDING[seq]["response"]["body"], recorded_names
        )
    assert await workflows(api, namespace) == sorted(jobs.values())
    # The raw algorithm won over its remote (no txId), the URL input given as a list became a URL input.
    workflow_b = await the_workflow(api, namespace, job_b)
    assert workflow_b.raw["spec"]["algorithm"]["rawCode"] == "console.log(42)", workflow_b.raw["spec"]
    assert workflow_b.raw["spec"]["inputs"][1]["url"] == "http://127.0.0.1:15000/files/data.csv"

    # What each publish step reports (kwok: its termination message), in the bucket the API reads: the
    # recorded files and sizes, under keys as storage.s3 names them.
    contents = {
        0: NODE_RECORDING[12]["response"]["body"].encode(),
        1: NODE_RECORDING[13]["response"]["body"].encode(),
    }
    for job_id in (job_a, job_b):
        published = []
        for index, recorded_result in enumerate(NODE_RECORDING[8]["response"]["body"][0]["results"]):
            folder = "outputs" if recorded_result["type"] == "output" else "logs"
            key = f"{job_id}/{folder}/{recorded_result['filename']}"
            if job_id == job_a:
                args = s3_storage.upload_args(recorded_result["filename"], 0, None)
                await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=key, Body=contents[index], **args)
            url = s3_storage.object_url(bucket, key, s3_server.endpoint_url, s3_server.region)
            published.append({**recorded_result, "url": url})
        workflow = await the_workflow(api, namespace, job_id)
        await simulate(workflow, **{"publish.message": json.dumps({"results": published})})

    # seq 4: the first poll of A, before anything ran.
    response = await send_like_node(api_process, 4, node_request(4, jobs))
    assert_recorded_answer(response, 4)
    assert normalised(response.json(), names) == normalised(
        NODE_RECORDING[4]["response"]["body"], recorded_names
    )

    # seq 5..8: A polled on each watch event of its Workflow until it is over.
    recorded_texts = {
        job["status"]: job["statusText"]
        for seq in range(4, 9)
        for job in NODE_RECORDING[seq]["response"]["body"]
    }
    operator = await start_operator(**source_tree_env())
    workflow_a = await the_workflow(api, namespace, job_a)

    async def poll_a() -> dict[str, Any]:
        response = await send_like_node(api_process, 5, node_request(5, jobs))
        assert_recorded_answer(response, 5)
        [job] = response.json()
        like = NODE_RECORDING[8 if job["dateFinished"] is not None else 4]["response"]["body"]
        assert shape(response.json()) == shape(like), job
        assert job["statusText"] == recorded_texts.get(job["status"], ORIGINAL_TEXTS.get(job["status"])), job
        return dict(job)

    try:
        seen = await codes_on_watch_events(workflow_a, poll_a, 1, 90)
    except TimeoutError:
        raise AssertionError(
            f"{status(workflow_a)}\n--- operator log ---\n{await operator.log_tail()}"
        ) from None
    assert status(workflow_a)["statusCode"] == 70, status(workflow_a)
    final = await node_polls_until(api_process, 8, jobs, lambda body: body[0]["dateFinished"] is not None)
    assert normalised(final, names) == normalised(NODE_RECORDING[8]["response"]["body"], recorded_names)
    if final[0]["status"] not in seen:
        seen.append(final[0]["status"])
    assert seen == sorted(seen), seen  # the original's codes only grow on the way to 70
    assert set(seen) <= set(ORIGINAL_TEXTS), seen
    print(f"\nOPF_K8's polls saw status codes {seen} (recorded: {sorted(recorded_texts)})")

    # seq 9: every job of the owner (jobId absent: signed over "undefined"), once B is over too.
    await wait_finished(workflow_b, operator)
    every = await node_polls_until(
        api_process, 9, jobs, lambda body: all(job["dateFinished"] is not None for job in body)
    )
    # The jobs as recorded, but in creation order (the contract replay's deviation "list-order": the
    # original's order was Postgres heap order), to the microsecond of the API's dateCreated.
    recorded_every = normalised(NODE_RECORDING[9]["response"]["body"], recorded_names)
    assert sorted(normalised(every, names), key=str) == sorted(recorded_every, key=str)
    assert [job["jobId"] for job in every] == list(jobs.values())

    # seq 10: by agreementId.
    response = await send_like_node(api_process, 10, node_request(10, jobs))
    assert_recorded_answer(response, 10)
    assert normalised(response.json(), names) == normalised(
        NODE_RECORDING[10]["response"]["body"], recorded_names
    )

    # seq 11: PUT /compute stops B (already over: the original answered it with stopreq 1 all the same).
    response = await send_like_node(api_process, 11, node_request(11, jobs))
    assert_recorded_answer(response, 11)
    assert normalised(response.json(), names) == normalised(
        NODE_RECORDING[11]["response"]["body"], recorded_names
    )
    await wait_for(workflow_b, lambda w: w.raw["spec"].get("stop") is True, timeout=10)

    # seq 12..14: A's results, streamed from the bucket, all with one signature (owner + jobId, no nonce).
    fetches = {seq: node_request(seq, jobs) for seq in (12, 13, 14)}
    assert len({body["providerSignature"] for body in fetches.values()}) == 1
    for seq, body in fetches.items():
        response = await send_like_node(api_process, seq, body)
        assert_recorded_answer(response, seq)
        recorded_body = NODE_RECORDING[seq]["response"]["body"]
        if isinstance(recorded_body, str):
            assert response.content == recorded_body.encode(), seq
        else:
            assert response.json() == recorded_body, seq  # {"error": "No such index 7 in this compute job"}
    # The same request again, nonce and all: OPF_K8's getResult nonce is not spent, it still works.
    again = await send_like_node(api_process, 12, fetches[12])
    assert again.status_code == 200, again.text
    assert again.content == contents[0]

    # A POST with a spent nonce is a replay: refused, the very request as well as another agreement under
    # its signature (OPF_K8 signs the nonce alone), and nothing is created.
    replays = [posted[2], {**posted[3], "agreementId": "0x" + "44" * 32}]
    for body in replays:
        refused = await send_like_node(api_process, 2, body)
        assert refused.status_code == 401, refused.text
        assert "a replay" in refused.json()["error"], refused.text
    assert await workflows(api, namespace) == sorted(jobs.values())
    refusals = await api_process.metric("ocean_c2d_api_authentications_total")
    assert refusals['{call="POST /compute",outcome="replay"}'] == len(replays)
    assert refusals['{call="GET /getResult",outcome="accepted"}'] == len(fetches) + 1
