"""Contract replay: every recorded request of the four fixture files is sent to the API (aiohttp on
loopback) backed by an InMemoryStore, and each answer must equal the recorded one under the README's
normalisation (shared/ocean-compat/README.md), except the deviations listed in DEVIATIONS, each with its
reason. Between requests the stored Workflows' status is moved the way the recording's timeline went:
each poll's recorded answer says which state the job was in, and the store is given the status our
operator writes in that state (`operator_status`).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ocean_c2d.api.app import ApiConfig, Download, build_app
from ocean_c2d.api.params import AuthQuery, Refusal
from ocean_c2d.api.status_object import is_finished
from ocean_c2d.api.store import InMemoryStore
from ocean_c2d.identity import package_version
from unit_tests.api.fixtures import COMPAT, UNCOMPARED_HEADERS

FIXTURES = COMPAT
FILES = [
    "provider-v4.json",
    "oceanpy_provider-v4.json",
    "ocean-node-OPF_K8_9f2870dd.json",
    "probe.json",
]
OPERATOR_ADDRESS = "0xA78deb2Fa79463945C247991075E2a0e98Ba7A09"  # the recordings' environment executor
# What the recordings' algorithm published (their getResult bodies), by file name.
CONTENT = {"out.txt": b"hello world\n", "algorithm.log": b"algo log\n"}

ENVIRONMENT = {
    "apiVersion": "oceanprotocol.com/v1alpha1",
    "kind": "ComputeEnvironment",
    "metadata": {"name": "ocean-compute", "namespace": "default"},
    # The recorded engine's announce: nCPU 1, ramGB 1, diskGB 1, maxJobs 10, maxJobDuration 60 (its env).
    "spec": {"nCPU": 1, "ramGB": 1, "diskGB": 1, "maxJobs": 10, "maxJobDuration": 60, "storageExpiry": 0},
}

TIMESTAMP = re.compile(r"^\d+\.\d+$")
JOB_ID = re.compile(r"\b[0-9a-f]{32}\b")

# Every deviation from the recorded answers, and why. Each one is applied to the *recorded* answer by
# `expected_answer` (so what is left must match exactly) and must be used at least once.
DEVIATIONS = {
    "connection": (
        "Connection: the original closed every connection (gunicorn sync workers); aiohttp keeps it alive, "
        "which provider's per-request GET /environments benefits from. A hop-by-hop header, not compared."
    ),
    "no-30": (
        "status 30 'Provisioning success': our operator reports the configure step's success as an Event "
        "and goes straight on to 40, so a poll in that instant sees 20 'Configuring volumes'."
    ),
    "results-at-60": (
        "results at 60: the original's pod-publishing wrote outputsURL while the engine still said 60; "
        "our publish step reports the result list when it ends, which is when the Workflow finishes (70)."
    ),
    "list-order": (
        "the order of a list of several jobs: the original's SELECT had no ORDER BY (Postgres heap order, "
        "which an UPDATE reshuffles); ours is creation order, always the same."
    ),
    "bare-environments": (
        "a bare GET /environments (no query, no JSON body): the original answered 400 with Flask's 415 "
        "text, which broke OPF_K8 after ocean-node #705; the issue asks for the list."
    ),
    "version": "GET /'s version is ocean-c2d's own, not operator-service's 1.0.1.",
    "current-jobs": (
        "currentJobs counts the environment's Workflows not finished; the original's engine announced an "
        "in-memory counter every 5 s, so a request right after a start still read 0."
    ),
    "range": (
        "a ranged getResult answers 206 with Content-Range and just those bytes (the issue's improvement); "
        "the original echoed the Range header and answered the whole file 200 as text/html."
    ),
    "nonce-replay": (
        "nonce checks are api/auth.py's (its own tests): the replay's authentication hook reproduces only "
        "the original's 'Failed to recover address'. The original refused nonce '6' with a str/float "
        "TypeError text and nonce 4 < 5 as a replay; here both are accepted."
    ),
}


@dataclass
class Replay:
    """One fixture file's replay: the store and the recorded -> our jobId mapping."""

    store: InMemoryStore
    ours: dict[str, str]  # recorded jobId -> our jobId
    used: set[str]


async def original_signature_check(query: AuthQuery) -> Refusal | None:
    """The replay's hook: the part of the original's check that held: a providerSignature that is
    not 65 bytes of hex cannot be recovered ("Failed to recover address", 400). api/auth.py replaces
    this with the real check (its texts differ: 401)."""
    signature = query.params.get("providerSignature")
    if not isinstance(signature, str) or not re.fullmatch(r"0x[0-9a-fA-F]{130}", signature):
        return Refusal(400, "Failed to recover address")
    return None


def memory_fetch(urls: Mapping[str, bytes]) -> Callable[[Mapping[str, Any], str | None], Any]:
    """A result fetcher over bytes kept by URL; answers a single `bytes=a-b` Range as storage does."""

    async def fetch(entry: Mapping[str, Any], range_header: str | None) -> Download:
        data = urls[str(entry["url"])]
        headers = {"Content-Type": "text/plain"}  # what the recordings' storage sent for both files
        status = 200
        if range_header:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header)
            assert match is not None
            start, end = int(match[1]), int(match[2] or len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        return Download(status, headers, chunks())

    return fetch


def operator_status(
    recorded: Mapping[str, Any], workflow: Mapping[str, Any], used: set[str]
) -> dict[str, Any]:
    """What our operator's status subresource says in the state a recorded answer shows."""
    code = recorded["status"]
    stages = {1: "Queued", 20: "Configuring", 30: "Configuring", 40: "RunningAlgorithm"}
    stages |= {50: "Filtering", 60: "Publishing"}
    texts = {1: "Warming up", 20: "Configuring volumes", 40: "Running algorithm"}
    texts |= {50: "Filtering results", 60: "Publishing results"}
    if code == 30:
        used.add("no-30")
        code = 20
    if code in stages:
        return {"stage": stages[code], "statusCode": code, "statusText": texts[code]}
    assert code == 70, f"no timeline state for recorded status {code}"
    name = workflow["metadata"]["name"]
    results = []
    for entry in recorded["results"]:
        assert entry["filesize"] == len(CONTENT[entry["filename"]])
        url = f"http://127.0.0.1:19000/results/{name}/{entry['filename']}"
        results.append({**entry, "url": url, "expiresAt": 1796198061})
    stopped = bool(workflow["spec"].get("stop")) and recorded["stopreq"] == 1
    return {
        "stage": "Finished",
        "statusCode": 72 if stopped else 70,
        "statusText": "Job stopped" if stopped else "Job finished",
        "reason": "Stopped" if stopped else "Succeeded",
        "finishedAt": "2026-12-01T07:54:23Z",
        "results": results,
    }


def normalise(value: Any, jobs: dict[str, str]) -> Any:
    """The README's normalisation of an answer body: <JOB n>, <TS>, <SIG>, <NONCE>."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in ("dateCreated", "dateFinished", "lastSeen") and isinstance(item, str):
                out[key] = "<TS>" if TIMESTAMP.match(item) else item
            elif key in ("providerSignature", "consumerSignature"):
                out[key] = "<SIG>"
            elif key == "nonce":
                out[key] = "<NONCE>"
            else:
                out[key] = normalise(item, jobs)
        return out
    if isinstance(value, list):
        return [normalise(item, jobs) for item in value]
    if isinstance(value, str):
        # A jobId, whether it is the value of "jobId" or part of an error text ("... for job <id>").
        return JOB_ID.sub(lambda match: jobs.setdefault(match[0], f"<JOB {len(jobs) + 1}>"), value)
    return value


def headers_of(pairs: list[list[str]] | list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Header names are case-insensitive (RFC 9110): compared lowercased, values exactly, as a set."""
    return sorted((name.lower(), value) for name, value in pairs if name.lower() not in UNCOMPARED_HEADERS)


@dataclass
class Context:
    """What an exchange's expected answer may depend on besides its recording."""

    file: str
    running: int  # the store's Workflows not finished, when the request was sent
    environments: Any  # the last recorded GET /environments answer
    statuses: Any  # the last recorded status list
    used: set[str]


def expected_answer(exchange: dict[str, Any], context: Context) -> tuple[int, list[tuple[str, str]], Any]:
    """The recorded answer with the deviations that apply to this exchange."""
    request, response = exchange["request"], exchange["response"]
    status, body = response["status"], response["body"]
    headers = headers_of(response["headers"])
    used = context.used
    if any(name.lower() == "connection" for name, _ in response["headers"]):
        used.add("connection")
    path = request["path"]
    json_headers = headers_of([("Content-type", "application/json"), ("Access-Control-Allow-Origin", "*")])
    if isinstance(body, list) and body and isinstance(body[0], dict) and "statusText" in body[0]:
        for job in body:
            if job["status"] == 30:
                job.update(status=20, statusText="Configuring volumes")
            if job["status"] == 60 and job["results"]:
                used.add("results-at-60")
                job["results"] = ""
        if context.file.startswith("ocean-node") and exchange["seq"] == 9:
            used.add("list-order")
            body.sort(key=lambda job: job["dateCreated"])
    if path.endswith("/environments"):
        if request["transport"] == "none":
            used.add("bare-environments")
            status, headers, body = 200, json_headers, json.loads(json.dumps(context.environments))
        for environment in body:
            if environment["currentJobs"] != context.running:
                used.add("current-jobs")
                environment["currentJobs"] = context.running
    if path == "/":
        used.add("version")
        body["version"] = package_version()
    if path.endswith("/getResult") and any(n.lower() == "range" for n, _ in request["headers"]):
        used.add("range")
        status, body = 206, "hello"
        headers = headers_of(
            [
                ("Content-Disposition", "attachment;filename=out.txt"),
                ("Access-Control-Expose-Headers", "Content-Disposition"),
                ("Content-Type", "text/plain"),
                ("Content-Range", "bytes 0-4/12"),
                ("Access-Control-Allow-Origin", "*"),
            ]
        )
    if context.file == "probe.json" and exchange["seq"] in (47, 48):
        used.add("nonce-replay")
        status, headers, body = 200, json_headers, json.loads(json.dumps(context.statuses))
    return status, headers, body


def request_args(request: Mapping[str, Any]) -> tuple[str, str, dict[str, str], bytes | None]:
    """The recorded request as the client sent it: the query string rebuilt from its params (in their
    recorded order), the body byte for byte (so 19-digit nonces arrive as the client wrote them)."""
    url = request["path"]
    if request["transport"] == "query":
        url += "?" + urlencode(request["params"])
    headers = {
        name: value
        for name, value in request["headers"]
        if name.lower() not in ("host", "content-length", "connection", "user-agent", "accept-encoding")
    }
    body = request["body_raw"].encode() if request["body_raw"] else None
    return request["method"], url, headers, body


def with_our_ids(request: dict[str, Any], ours: Mapping[str, str]) -> dict[str, Any]:
    """The recorded request naming our jobIds where it named the recorded ones (the client learnt the
    jobId from the POST's answer)."""
    text = json.dumps(request)
    for recorded, our in ours.items():
        text = text.replace(recorded, our)
    replaced: dict[str, Any] = json.loads(text)
    return replaced


async def answer_of(
    client: TestClient[Any, Any], method: str, url: str, headers: dict[str, str], body: bytes | None
) -> tuple[int, list[tuple[str, str]], Any]:
    async with client.request(
        method, url, headers=headers, data=body, skip_auto_headers=("Content-Type", "User-Agent")
    ) as response:
        text = await response.text()
        content_type = response.headers.get("Content-Type", "")
        parsed: Any = json.loads(text) if content_type.startswith("application/json") else text
        return response.status, headers_of(list(response.headers.items())), parsed


def advance(replay: Replay, recorded_body: Any) -> None:
    """Before a status call: give each job of the recorded answer the state that answer shows."""
    if not (isinstance(recorded_body, list) and recorded_body and isinstance(recorded_body[0], dict)):
        return
    for job in recorded_body:
        name = replay.ours.get(job.get("jobId", ""))
        if name is not None:
            workflow = replay.store.workflows[name]
            replay.store.set_status(name, operator_status(job, workflow, replay.used))


async def replay_file(file: str) -> tuple[list[str], set[str]]:
    """Replay one fixture file into a fresh API; the mismatches, and the deviations it needed."""
    exchanges = json.loads((FIXTURES / file).read_text())
    store = InMemoryStore(environments=[ENVIRONMENT])
    job_ids = [f"{n:032x}" for n in range(1, 20)]
    urls = {
        f"http://127.0.0.1:19000/results/{name}/{filename}": data
        for name in job_ids
        for filename, data in CONTENT.items()
    }
    config = ApiConfig(
        store=store,
        authenticate=original_signature_check,
        fetch_result=memory_fetch(urls),
        operator_address=OPERATOR_ADDRESS,
        algo_time_limit="3600",
        new_job_id=iter(job_ids).__next__,
    )
    replay = Replay(store=store, ours={}, used=set())
    # A bare GET /environments is expected to answer what the file's first answered GET did.
    environments = next(
        e["response"]["body"]
        for e in exchanges
        if e["request"]["path"].endswith("/environments") and e["response"]["status"] == 200
    )
    context = Context(file=file, running=0, environments=environments, statuses=None, used=replay.used)
    recorded_jobs: dict[str, str] = {}
    our_jobs: dict[str, str] = {}
    mismatches = []
    async with TestClient(TestServer(build_app(config))) as client:
        for exchange in exchanges:
            request, response = exchange["request"], exchange["response"]
            if request["method"] in ("GET", "PUT") and request["path"].endswith("/compute"):
                advance(replay, response["body"])
            context.running = sum(1 for w in store.workflows.values() if not is_finished(w))
            before = len(store.workflows)
            status, headers, body = await answer_of(client, *request_args(with_our_ids(request, replay.ours)))
            created = len(store.workflows) - before
            if created != (1 if request["method"] == "POST" and status == 200 else 0):
                mismatches.append(f"seq {exchange['seq']}: {created} Workflows created by a {status} answer")
            if request["method"] == "POST" and request["path"].endswith("/compute") and status == 200:
                replay.ours[response["body"][0]["jobId"]] = body[0]["jobId"]
            want = expected_answer(json.loads(json.dumps(exchange)), context)
            want = (want[0], want[1], normalise(want[2], recorded_jobs))
            got = (status, headers, normalise(body, our_jobs))
            if got != want:
                where = f"seq {exchange['seq']} {request['method']} {request['path']}"
                mismatches.append(f"{where}:\n  want {want}\n  got  {got}")
            recorded = response["body"]
            if isinstance(recorded, list) and recorded and "statusText" in recorded[0]:
                context.statuses = recorded
    return mismatches, replay.used


@pytest.mark.parametrize("file", FILES)
async def test_replay_matches_the_recorded_answers(file: str) -> None:
    mismatches, _ = await replay_file(file)
    assert not mismatches, "\n".join(mismatches)


async def test_every_deviation_is_needed() -> None:
    """A deviation no exchange needs any more is a stale excuse: remove it."""
    used: set[str] = set()
    for file in FILES:
        used |= (await replay_file(file))[1]
    assert used == set(DEVIATIONS)


async def test_a_refused_signature_creates_nothing() -> None:
    """The authentication hook sits where the original checked its signature: after the payload,
    agreementId and environment checks, before the stages; its refusal is answered and nothing is made."""
    store = InMemoryStore(environments=[ENVIRONMENT])
    seen: list[AuthQuery] = []

    async def refuse(query: AuthQuery) -> Refusal | None:
        seen.append(query)
        return Refusal(401, "not an allowed provider")

    exchange = json.loads((FIXTURES / "provider-v4.json").read_text())[6]  # the first POST /compute
    async with TestClient(TestServer(build_app(ApiConfig(store=store, authenticate=refuse)))) as client:
        status, _, body = await answer_of(client, *request_args(exchange["request"]))
    assert (status, body) == (401, {"error": "not an allowed provider"})
    assert store.workflows == {}
    assert [q.route for q in seen] == ["POST /compute"]
    assert seen[0].params["nonce"] == 1796111661885572351
