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
import copy
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import kr8s.asyncio
import pytest
from eth_keys.datatypes import PrivateKey
from eth_utils.crypto import keccak
from kr8s.asyncio.objects import APIObject

from e2e.operator_fixtures import (
    OPERATOR_ADDRESS,
    Workflow,
    create_environment,
    finished,
    status,
    wait_finished,
)
from e2e.operator_handle import REPO, StartOperator
from e2e.services import free_port
from e2e.waiting import wait_for
from ocean_c2d.signing import personal_message_hash

# provider's well-known public test key (its test configuration; fixtures/ocean-compat/README.md).
PROVIDER_KEY = PrivateKey(bytes.fromhex("fd5c1ccea015b6d663618850824154a3b3fb2882c46cefb05b9a93fea8c3d215"))
PROVIDER = "0xe08A1dAe983BC701D05E492DB80e0144f8f4b909"
STRANGER_KEY = PrivateKey(bytes.fromhex("00" * 31 + "07"))  # a key the allowlist does not name
PREFIX = "/api/v1/operator"
SOURCE = REPO / "operator"
RECORDED = json.loads(
    (REPO / "unit_tests" / "api" / "fixtures" / "ocean-compat" / "provider-v4.json").read_text()
)
# The recorded POST /compute body, and the recorded status object of its job once finished.
RECORDED_POST: dict[str, Any] = next(e for e in RECORDED if e["request"]["method"] == "POST")["request"][
    "params"
]
RECORDED_FINISHED: dict[str, Any] = next(
    job
    for e in RECORDED
    if e["request"]["method"] == "GET" and e["request"]["path"] == f"{PREFIX}/compute"
    for job in e["response"]["body"]
    if job["status"] == 70 and job["agreementId"] == RECORDED_POST["agreementId"]
)
OWNER = RECORDED_POST["owner"]
ENVIRONMENT = RECORDED_POST["environment"]  # "ocean-compute"
EPOCH_TEXT = re.compile(r"\d+\.\d{6}")
# What the publish step reports (kwok: its termination message), as in the recording.
PUBLISHED = [
    {"filename": "out.txt", "filesize": 12, "type": "output", "url": "s3://bucket/job/out.txt"},
    {"filename": "algorithm.log", "filesize": 9, "type": "algorithmLog", "url": "s3://bucket/job/a.log"},
]

_last_nonce = time.time_ns()


def fresh_nonce() -> int:
    """Above every nonce used before (in this session, by any replica): provider's time_ns(), made
    strictly increasing."""
    global _last_nonce
    _last_nonce = max(_last_nonce + 1, time.time_ns())
    return _last_nonce


def sign(message: str, key: PrivateKey = PROVIDER_KEY) -> str:
    """provider v4's signature: EIP-191 over keccak256 of the message, v as 00/01."""
    return "0x" + key.sign_msg_hash(personal_message_hash(keccak(message.encode()))).to_bytes().hex()


def start_body(agreement_id: str | None = None, key: PrivateKey = PROVIDER_KEY) -> dict[str, Any]:
    body = copy.deepcopy(RECORDED_POST)
    nonce = fresh_nonce()
    body["nonce"] = nonce  # a JSON integer above 2^53, as provider sends it
    body["providerSignature"] = sign(OWNER + str(nonce), key)
    if agreement_id is not None:
        body["agreementId"] = agreement_id
    return body


def job_query(job_id: str, nonce: int | None = None, key: PrivateKey = PROVIDER_KEY) -> dict[str, str]:
    """GET and PUT /compute's query, as provider sends it."""
    nonce = fresh_nonce() if nonce is None else nonce
    return {
        "providerAddress": PROVIDER,
        "owner": OWNER,
        "jobId": job_id,
        "providerSignature": sign(OWNER + job_id + str(nonce), key),
        "nonce": str(nonce),
    }


@dataclass
class ApiProcess:
    process: asyncio.subprocess.Process
    log: Path
    url: str

    async def log_text(self) -> str:
        return await asyncio.to_thread(self.log.read_text, errors="replace")

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            return await client.request(method, f"{PREFIX}{path}", **kwargs)

    async def status_of(self, job_id: str) -> dict[str, Any]:
        """The job's status object from a signed GET /compute, as provider polls it."""
        response = await self.request("GET", "/compute", params=job_query(job_id))
        assert response.status_code == 200, response.text
        [job] = response.json()
        return dict(job)

    async def metric(self, name: str) -> dict[str, float]:
        """The API's /metrics samples called `name`, by their labels."""
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            text = (await client.get("/metrics")).text
        found = {}
        for line in text.splitlines():
            if line.startswith(name + "{"):
                labels, _, value = line[len(name) :].rpartition(" ")
                found[labels] = float(value)
        return found

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(15):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


StartApi = Callable[[], Awaitable[ApiProcess]]


def source_tree_env() -> dict[str, str]:
    """PYTHONPATH with this tree's package first: the venv may hold another checkout's (editable)."""
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(SOURCE), os.environ.get("PYTHONPATH")) if p)}


@pytest.fixture
async def start_api(
    namespace: str, kubeconfig: str, ocean_crds: list[str], tmp_path: Path
) -> AsyncIterator[StartApi]:
    """`ocean-c2d api` for the test's namespace, allowing provider's test key; each call one more replica."""
    started: list[ApiProcess] = []

    async def start() -> ApiProcess:
        port = free_port()
        log = tmp_path / f"api-{len(started)}.log"
        env = {
            **os.environ,
            **source_tree_env(),
            "KUBECONFIG": kubeconfig,
            "API_NAMESPACE": namespace,
            "API_ALLOWED_PROVIDERS": PROVIDER,
            "OPERATOR_ADDRESS": OPERATOR_ADDRESS,
            "API_HOST": "127.0.0.1",
            "API_PORT": str(port),
            "LOG_LEVEL": "INFO",
        }
        with log.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ocean_c2d.cli", "api", env=env, stdout=sink, stderr=sink
            )
        api_process = ApiProcess(process, log, f"http://127.0.0.1:{port}")
        started.append(api_process)
        await wait_ready(api_process)
        return api_process

    yield start
    for api_process in started:
        await api_process.stop()


async def wait_ready(api_process: ApiProcess, timeout: float = 30) -> None:
    """Until /readyz answers 200 (its watch caches listed). An HTTP probe, as a kubelet's readiness probe
    polls it: nothing in the cluster changes here."""
    try:
        async with asyncio.timeout(timeout), httpx.AsyncClient(base_url=api_process.url, timeout=2) as client:
            while api_process.process.returncode is None:
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                await asyncio.sleep(0.1)
    except TimeoutError:
        pass
    raise AssertionError(f"ocean-c2d api never became ready:\n{await api_process.log_text()}")


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


async def until_the_api_shows(
    api_process: ApiProcess, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 10
) -> dict[str, Any]:
    """The API's status object once `done` holds: the Workflow is already there, the API's watch cache
    follows it within its watch's delivery (a provider polls the same way)."""
    async with asyncio.timeout(timeout):
        while True:
            job = await api_process.status_of(job_id)
            if done(job):
                return job
            await asyncio.sleep(0.2)


def assert_recorded_shape(job: dict[str, Any]) -> None:
    """The recorded finished status object's key set, in its order, and each value's type."""
    assert list(job) == list(RECORDED_FINISHED)
    assert {k: type(v).__name__ for k, v in job.items()} == {
        k: type(v).__name__ for k, v in RECORDED_FINISHED.items()
    }
    assert [sorted(r) for r in job["results"]] == [sorted(r) for r in RECORDED_FINISHED["results"]]


async def assert_source_tree() -> None:
    """The environment the API and operator processes get imports this tree's package (the venv's own
    install may be another checkout's)."""
    env = {**os.environ, **source_tree_env()}
    probe = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import ocean_c2d; print(ocean_c2d.__file__)",
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await probe.communicate()
    assert output.decode().strip().startswith(f"{SOURCE}{os.sep}"), output


async def kube_requests(api_process: ApiProcess) -> dict[str, float]:
    """The API-server requests the API has made (server.KUBE_REQUESTS), by verb and resource."""
    return await api_process.metric("ocean_c2d_api_kube_requests_total")


async def costs(api_process: ApiProcess, before: dict[str, float]) -> str:
    """The API-server requests made since `before`, as "<labels> <count>" (a watch reopened by its
    server's timeout in between would show too: WATCH)."""
    after = await kube_requests(api_process)
    spent = {labels: after[labels] - before.get(labels, 0) for labels in after}
    return ", ".join(f"{labels} {int(n)}" for labels, n in sorted(spent.items()) if n) or "none"


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
