"""The operator's download signer (signer.py) on loopback, and the configure step against it: no pod of a
Workflow holds the operator key (issue 11, C13).

The signer reads Workflows from a real `View` (kopf's index shape), as the running operator does; the
configure step's `RemoteSigner` talks to it over HTTP, and providers.py's provider checks every signature.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from eth_utils.crypto import keccak

from ocean_c2d import signer
from ocean_c2d.signing import NonceSource, job_secret, recover_personal, same_secret, signer_token
from ocean_c2d.steps.configure import run_configure
from ocean_c2d.steps.contract import EXIT_DATA_PROVISIONING_FAILED, EXIT_OK
from ocean_c2d.steps.signer_client import RemoteSigner, signer_from_env
from ocean_c2d.view import WORKFLOW_INDEX, View
from unit_tests.factories import OPERATOR_ADDRESS, OPERATOR_KEY, workflow_object
from unit_tests.steps.providers import Asset, OceanStack

NAMESPACE, NAME, UID = "c2d", "job1", "uid-1"
DATA_DID = "did:op:" + "a1" * 32
ALGO_DID = "did:op:" + "b2" * 32
OTHER_DID = "did:op:" + "c3" * 32
TOKEN = signer_token(OPERATOR_KEY, UID)


def body(stage: str = "Configuring", *, name: str = NAME, uid: str = UID, **spec: Any) -> dict[str, Any]:
    """A Workflow naming DATA_DID as input and ALGO_DID as algorithm, in `stage`."""
    return workflow_object(
        metadata={"name": name, "uid": uid},
        status={"stage": stage},
        inputs=[{"did": DATA_DID, "serviceId": "compute", "transferTxId": "0x" + "ab" * 32}],
        algorithm={
            "did": ALGO_DID,
            "serviceId": "compute",
            "transferTxId": "0x" + "ab" * 32,
            "container": {"image": "python", "tag": "3.11", "entrypoint": "python $ALGO"},
        },
        **spec,
    )


@dataclass
class Running:
    url: str
    view: View
    workflows: dict[tuple[str, str], list[dict[str, Any]]]

    def put(self, workflow: dict[str, Any]) -> None:
        metadata = workflow["metadata"]
        self.workflows[(metadata["namespace"], metadata["name"])] = [workflow]


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    """The signer on 127.0.0.1 (a free port), over a View holding the Workflow `job1`, configuring."""
    view = View()
    workflows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    view.indexes = {WORKFLOW_INDEX: workflows}
    runner = await signer.serve(
        signer.DownloadSigner(OPERATOR_KEY, view.workflow, NonceSource()), "127.0.0.1", 0
    )
    host, port = runner.addresses[0][:2]
    state = Running(f"http://{host}:{port}", view, workflows)
    state.put(body())
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


async def ask(
    client: httpx.AsyncClient,
    running: Running,
    did: str = DATA_DID,
    token: str | None = TOKEN,
    name: str = NAME,
) -> httpx.Response:
    """A configure pod's request; token None sends no Authorization header."""
    headers = {b"Authorization": f"Bearer {token}".encode()} if token is not None else {}
    return await client.post(
        running.url + signer.SIGN_PATH,
        json={"namespace": NAMESPACE, "workflow": name, "did": did},
        headers=headers,  # bytes: any token, ASCII or not
    )


# ---- the signer ------------------------------------------------------------------------------------------


async def test_signs_a_did_of_the_configuring_workflow(client: httpx.AsyncClient, running: Running) -> None:
    for did in (DATA_DID, ALGO_DID):
        response = await ask(client, running, did)

        assert response.status_code == 200, response.text
        answer = response.json()
        assert set(answer) == {"address", "nonce", "signature"}
        assert answer["address"] == OPERATOR_ADDRESS
        signed = keccak((did + answer["nonce"]).encode())
        assert recover_personal(signed, answer["signature"]) == OPERATOR_ADDRESS


@pytest.mark.parametrize(
    "token",
    [
        signer_token(OPERATOR_KEY, "uid-2"),  # another Workflow's token
        job_secret(OPERATOR_KEY, UID),  # the job secret, which the algorithm sees
        TOKEN[:-1],
        None,
        "tökén",
    ],
)
async def test_a_token_that_is_not_the_workflows_is_refused(
    client: httpx.AsyncClient, running: Running, token: str | None
) -> None:
    response = await ask(client, running, token=token)

    assert response.status_code == 403
    assert "signature" not in response.json()


async def test_a_workflow_recreated_under_the_same_name_does_not_take_the_old_token(
    client: httpx.AsyncClient, running: Running
) -> None:
    running.put(body(uid="uid-new"))

    assert (await ask(client, running)).status_code == 403
    assert (await ask(client, running, token=signer_token(OPERATOR_KEY, "uid-new"))).status_code == 200


async def test_a_did_the_workflow_does_not_name_is_refused(
    client: httpx.AsyncClient, running: Running
) -> None:
    response = await ask(client, running, OTHER_DID)

    assert response.status_code == 403
    assert response.json() == {"error": "the Workflow names no such DID"}


@pytest.mark.parametrize("stage", ["Queued", "RunningAlgorithm", "Filtering", "Publishing", "Finished"])
async def test_a_workflow_that_is_not_configuring_is_refused(
    client: httpx.AsyncClient, running: Running, stage: str
) -> None:
    running.put(body(stage))

    response = await ask(client, running)

    assert response.status_code == 403
    assert response.json()["error"] == f"the Workflow is not configuring (stage {stage})"


async def test_a_workflow_being_stopped_is_refused(client: httpx.AsyncClient, running: Running) -> None:
    running.put(body(stop=True))

    assert (await ask(client, running)).status_code == 403


async def test_a_workflow_the_operator_does_not_know_is_retried_later(
    client: httpx.AsyncClient, running: Running
) -> None:
    response = await ask(client, running, name="not-there")

    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(signer.RETRY_AFTER_SECONDS)


@pytest.mark.parametrize(
    ("payload", "authorization"),
    [
        (b'{"namespace": "c2d", "workflow": "job1"}', f"Bearer {TOKEN}"),
        (b"[]", f"Bearer {TOKEN}"),
        (b"not json", f"Bearer {TOKEN}"),
        (
            json.dumps({"namespace": "c2d", "workflow": "job1\nFAKE", "did": DATA_DID}).encode(),
            f"Bearer {TOKEN}",
        ),
        (
            json.dumps({"namespace": "c2d", "workflow": "job1", "did": DATA_DID + "\n"}).encode(),
            f"Bearer {TOKEN}",
        ),
        (json.dumps({"namespace": "c2d", "workflow": "job1", "did": DATA_DID}).encode(), TOKEN),
    ],
)
async def test_a_malformed_request_is_refused_without_a_signature(
    client: httpx.AsyncClient, running: Running, payload: bytes, authorization: str
) -> None:
    response = await client.post(
        running.url + signer.SIGN_PATH,
        content=payload,
        headers={"Authorization": authorization, "Content-Type": "application/json"},
    )

    assert response.status_code in (400, 403)
    assert "signature" not in response.json()


async def test_a_large_request_is_refused(client: httpx.AsyncClient, running: Running) -> None:
    response = await client.post(
        running.url + signer.SIGN_PATH,
        json={"namespace": NAMESPACE, "workflow": NAME, "did": DATA_DID, "pad": "x" * 10_000},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )

    assert response.status_code == 413


async def test_nonces_strictly_increase_for_every_workflow_under_concurrency(
    client: httpx.AsyncClient, running: Running
) -> None:
    running.put(body(name="job2", uid="uid-2"))
    other = signer_token(OPERATOR_KEY, "uid-2")

    responses = await asyncio.gather(
        *(ask(client, running, token=TOKEN) for _ in range(40)),
        *(ask(client, running, name="job2", token=other) for _ in range(40)),
    )

    assert all(r.status_code == 200 for r in responses)
    nonces = [int(r.json()["nonce"]) for r in responses]
    assert len(set(nonces)) == 80  # one source for the address: no nonce twice, whichever Workflow asks
    again = int((await ask(client, running)).json()["nonce"])
    assert again > max(nonces)


def test_nonces_increase_even_when_the_clock_does_not() -> None:
    times = iter([5, 5, 3, 10])
    nonces = NonceSource(clock=lambda: next(times))

    assert [nonces.next() for _ in range(4)] == ["5", "6", "7", "10"]


async def test_the_log_names_workflow_and_did_never_the_token_or_signature(
    client: httpx.AsyncClient, running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    granted = await ask(client, running)
    refused = await ask(client, running, OTHER_DID)
    malformed = await ask(client, running, "did:op:\nforged line")

    assert (granted.status_code, refused.status_code, malformed.status_code) == (200, 403, 400)
    text = caplog.text
    assert f"Signed a download of {DATA_DID} for Workflow c2d/job1" in text
    assert f"Refused to sign a download of {OTHER_DID} for Workflow c2d/job1" in text
    assert "forged line" not in text
    signature = granted.json()["signature"]
    for secret in (TOKEN, signature, signature.removeprefix("0x")[:40], granted.json()["nonce"]):
        assert secret not in text


def test_signer_tokens_are_per_workflow_and_not_the_job_secret() -> None:
    assert signer_token(OPERATOR_KEY, UID) == TOKEN  # stable: the same after a restart
    assert signer_token(OPERATOR_KEY, "uid-2") != TOKEN
    assert job_secret(OPERATOR_KEY, UID) not in TOKEN
    assert same_secret(TOKEN, TOKEN)
    assert not same_secret(TOKEN, "tökén")


# ---- configure against the signer ------------------------------------------------------------------------


@pytest.fixture
def stack() -> Iterator[OceanStack]:
    with OceanStack(expected_consumer=OPERATOR_ADDRESS) as servers:
        yield servers


def configure_env(root: Path, stack: OceanStack, signer_url: str, **extra: str) -> dict[str, str]:
    """What the configure pod is given (templates/configure-pod.yaml.j2): no key, a signer URL and
    the Workflow's token."""
    document = {
        "jobId": NAME,
        "stages": [
            {
                "index": 0,
                "input": [
                    {"did": DATA_DID, "serviceId": "compute", "transferTxId": "0x" + "ab" * 32, "index": 0}
                ],
                "algorithm": {"did": ALGO_DID, "serviceId": "compute", "transferTxId": "0x" + "ab" * 32},
                "output": {"metadataUri": stack.metadata.url},
            }
        ],
    }
    (root / "workflow.json").write_text(json.dumps(document))
    (root / "data").mkdir()
    return {
        "WORKFLOW": str(root / "workflow.json"),
        "WORKFLOWID": NAME,
        "WORKFLOW_NAMESPACE": NAMESPACE,
        "VOLUME": str(root / "data"),
        "SIGNER_URL": signer_url,
        "SIGNER_TOKEN": TOKEN,
        "ALLOWED_METADATA_CACHES": stack.metadata.url,
        "ALLOWED_PROVIDERS": stack.provider.url,
        **extra,
    }


async def run(env: dict[str, str], http: httpx.AsyncClient, root: Path) -> tuple[int, dict[str, Any]]:
    async def no_sleep(_: float) -> None:
        return None

    termination = root / "termination-log"
    async with httpx.AsyncClient(timeout=10) as signer_http:
        code = await run_configure(
            env, http, termination_log=termination, sleep=no_sleep, signer=signer_from_env(env, signer_http)
        )
    return code, json.loads(termination.read_text())


async def test_configure_downloads_by_did_through_the_signer(
    tmp_path: Path, client: httpx.AsyncClient, running: Running, stack: OceanStack
) -> None:
    stack.add_asset(Asset(DATA_DID, [b"a,b\n", b"1,2\n"]))
    stack.add_asset(Asset(ALGO_DID, [b"print(1)\n"]))
    env = configure_env(tmp_path, stack, running.url)

    code, message = await run(env, client, tmp_path)

    assert code == EXIT_OK, message
    inputs = tmp_path / "data" / "inputs" / DATA_DID.removeprefix("did:op:")
    assert [(inputs / str(i)).read_bytes() for i in (0, 1)] == [b"a,b\n", b"1,2\n"]
    assert (tmp_path / "data" / "transformations" / "algorithm").read_bytes() == b"print(1)\n"
    # The provider accepted the operator's signatures (it checks them like the real one), nonces rising.
    downloads = stack.provider.downloads
    assert stack.provider.refusals == []
    assert {r.query["consumerAddress"] for r in downloads} == {OPERATOR_ADDRESS}
    nonces = [int(r.query["nonce"]) for r in downloads]
    assert nonces == sorted(set(nonces))
    assert len(nonces) == 3
    log = (tmp_path / "data" / "adminlogs" / "configure.log").read_text()
    assert TOKEN not in log
    assert not any(r.query["signature"] in log for r in downloads)


async def test_configure_fails_when_the_signer_refuses_and_the_provider_gets_nothing(
    tmp_path: Path, client: httpx.AsyncClient, running: Running, stack: OceanStack
) -> None:
    stack.add_asset(Asset(DATA_DID, [b"data"]))
    running.put(body("RunningAlgorithm"))  # e.g. a configure pod still running after its stage
    env = configure_env(tmp_path, stack, running.url)

    code, message = await run(env, client, tmp_path)

    assert code == EXIT_DATA_PROVISIONING_FAILED
    assert "the operator's signer refused to sign (HTTP 403" in message["message"]
    assert "not configuring" in message["message"]
    assert stack.provider.downloads == []


async def test_configure_with_another_workflows_token_gets_no_signature(
    tmp_path: Path, client: httpx.AsyncClient, running: Running, stack: OceanStack
) -> None:
    stack.add_asset(Asset(DATA_DID, [b"data"]))
    env = configure_env(tmp_path, stack, running.url, SIGNER_TOKEN=signer_token(OPERATOR_KEY, "uid-2"))

    code, message = await run(env, client, tmp_path)

    assert code == EXIT_DATA_PROVISIONING_FAILED
    assert "the token is not this Workflow's" in message["message"]
    assert stack.provider.downloads == []


async def test_configure_retries_while_the_operator_does_not_know_the_workflow_yet(
    tmp_path: Path, client: httpx.AsyncClient, running: Running, stack: OceanStack
) -> None:
    stack.add_asset(Asset(DATA_DID, [b"data"]))
    stack.add_asset(Asset(ALGO_DID, [b"print(1)\n"]))
    running.workflows.clear()  # a restarted operator that has not listed the Workflows yet
    env = configure_env(tmp_path, stack, running.url)
    attempts: list[float] = []

    async def restore_on_retry(delay: float) -> None:
        attempts.append(delay)
        running.put(body())

    termination = tmp_path / "termination-log"
    async with httpx.AsyncClient(timeout=10) as signer_http:
        code = await run_configure(
            env,
            client,
            termination_log=termination,
            sleep=restore_on_retry,
            signer=signer_from_env(env, signer_http),
        )

    assert code == EXIT_OK, termination.read_text()
    assert attempts  # the 503 was retried, not a failure


async def test_an_unreachable_signer_is_retried_then_fails(
    tmp_path: Path, client: httpx.AsyncClient, stack: OceanStack
) -> None:
    stack.add_asset(Asset(DATA_DID, [b"data"]))
    closed = await _closed_port_url()
    env = configure_env(tmp_path, stack, closed)

    code, message = await run(env, client, tmp_path)

    assert code == EXIT_DATA_PROVISIONING_FAILED
    assert "the operator's signer did not answer" in message["message"]
    assert "gave up after" in message["message"]
    assert stack.provider.downloads == []


def test_the_remote_signer_never_shows_its_token() -> None:
    remote = RemoteSigner("http://signer:8090", NAMESPACE, NAME, TOKEN, httpx.AsyncClient())

    assert TOKEN not in repr(remote)


def test_configure_without_signer_settings_says_what_is_missing() -> None:
    assert signer_from_env({"WORKFLOWID": NAME}, httpx.AsyncClient()).message.endswith(  # type: ignore[union-attr]
        "SIGNER_URL, SIGNER_TOKEN, WORKFLOW_NAMESPACE are not set"
    )


async def _closed_port_url() -> str:
    """A loopback URL nothing listens on (a port bound, then released)."""
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    await runner.cleanup()
    return f"http://{host}:{port}"
