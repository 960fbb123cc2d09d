"""The client side of `ocean-c2d api` in e2e tests: provider v4's requests (as recorded, re-signed with
provider's public test key over the messages api/auth.py checks, with fresh 19-digit nonces: provider's
time_ns()), and `ocean-c2d api` started as a local process from this source tree (PYTHONPATH: the
repository's `operator/`, whatever the venv has installed). A pytest plugin (e2e/conftest.py): the
`start_api` fixture.
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
from typing import Any, TypeVar

import httpx
import pytest
from eth_keys.datatypes import PrivateKey
from eth_utils.crypto import keccak
from kr8s.asyncio.objects import APIObject

from e2e.operator_fixtures import OPERATOR_ADDRESS, finished
from e2e.operator_handle import REPO, stop_process
from e2e.services import free_port
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
T = TypeVar("T")

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


def sign_like_ethers(message: str, key: PrivateKey = PROVIDER_KEY) -> str:
    """ocean-node OPF_K8's signature: ethers' signMessage over the 32 bytes of keccak256(message), i.e.
    the same EIP-191 hash as `sign`, but with v as 1b/1c (27/28), as ethers writes it."""
    signature = key.sign_msg_hash(personal_message_hash(keccak(message.encode()))).to_bytes()
    return "0x" + (signature[:64] + bytes([signature[64] + 27])).hex()


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


def result_query(
    job_id: str, index: int, nonce: int | None = None, key: PrivateKey = PROVIDER_KEY
) -> dict[str, str]:
    """GET /getResult's query, as provider sends it: providerSignature over owner + jobId + nonce, and
    the consumer's own signature passed along (here a stand-in by another key: the API does not check it,
    provider already did)."""
    nonce = fresh_nonce() if nonce is None else nonce
    return {
        "index": str(index),
        "owner": OWNER,
        "jobId": job_id,
        "consumerSignature": sign(OWNER + job_id + str(index) + str(nonce), STRANGER_KEY),
        "providerSignature": sign(OWNER + job_id + str(nonce), key),
        "nonce": str(nonce),
    }


@dataclass
class ApiProcess:
    process: asyncio.subprocess.Process
    log: Path
    url: str
    metrics_url: str  # its API_METRICS_PORT: /metrics is served there only

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
        """The API's /metrics samples called `name`, by their labels (from its metrics port)."""
        async with httpx.AsyncClient(base_url=self.metrics_url, timeout=5) as client:
            response = await client.get("/metrics")
        assert response.status_code == 200, response.text
        text = response.text
        found = {}
        for line in text.splitlines():
            if line.startswith(name + "{"):
                labels, _, value = line[len(name) :].rpartition(" ")
                found[labels] = float(value)
        return found

    async def stop(self) -> None:
        await stop_process(self.process)


StartApi = Callable[..., Awaitable[ApiProcess]]


def source_tree_env() -> dict[str, str]:
    """PYTHONPATH with this tree's package first: the venv may hold another checkout's (editable)."""
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(SOURCE), os.environ.get("PYTHONPATH")) if p)}


@pytest.fixture
async def start_api(
    namespace: str, kubeconfig: str, ocean_crds: list[str], tmp_path: Path
) -> AsyncIterator[StartApi]:
    """`ocean-c2d api` for the test's namespace, allowing provider's test key; each call one more replica,
    its keyword arguments more environment variables (e.g. the publish storage it reads results from)."""
    started: list[ApiProcess] = []

    async def start(**more_env: str) -> ApiProcess:
        port = metrics_port = free_port()
        while metrics_port == port:  # two free ports, never one twice (the API refuses that)
            metrics_port = free_port()
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
            "API_METRICS_PORT": str(metrics_port),
            "LOG_LEVEL": "INFO",
            **more_env,
        }
        with log.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ocean_c2d.cli", "api", env=env, stdout=sink, stderr=sink
            )
        api_process = ApiProcess(process, log, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}")
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


async def polled_until(poll: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = 10) -> T:
    """`poll()` again until its answer satisfies `done`: for after the Workflow is over, while the API's
    watch cache follows within its watch's delivery (a provider polls the same way)."""
    async with asyncio.timeout(timeout):
        while True:
            answer = await poll()
            if done(answer):
                return answer
            await asyncio.sleep(0.2)


async def until_the_api_shows(
    api_process: ApiProcess, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 10
) -> dict[str, Any]:
    """The API's status object once `done` holds."""
    return await polled_until(lambda: api_process.status_of(job_id), done, timeout)


async def codes_on_watch_events(
    workflow: APIObject, poll: Callable[[], Awaitable[dict[str, Any]]], first: int, timeout: float
) -> list[int]:
    """A provider's status polls, one on each watch event of the Workflow until it is finished: the status
    codes the API answered, each change once, after `first` (the code of the answer to the start)."""
    seen = [first]
    async with asyncio.timeout(timeout):
        await workflow.refresh()
        while not finished(workflow):
            async for _event, _ in workflow.async_watch():
                code = (await poll())["status"]
                if code != seen[-1]:
                    seen.append(code)
                if finished(workflow):
                    break
    return seen


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
