"""The aiohttp shell of the operator-service-compatible API, under /api/v1/operator/ (plus GET /).

Each handler reads the parameters (params.read_params), checks them in the original's order and words
(translate, params.missing_attribute), asks the authentication hook where the original checked its
signature, and answers from the Store (status_object). The hooks are parameters so that api/auth.py
(providerSignature, allowlist, nonces), api/environments.py (GET /environments) and the result fetcher
(S3/IPFS) plug in without touching this module; the defaults accept every request, answer environments
from the store in a minimal shape, and have no result fetcher.

Responses carry the original's headers: `Content-type: application/json` (no charset) and
`Access-Control-Allow-Origin: *` (flask-cors). The connection is kept alive (the original closed it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from ocean_c2d.api import status_object, translate
from ocean_c2d.api.params import (
    Authenticate,
    AuthQuery,
    BodyError,
    Params,
    accept_all,
    identifier,
    missing_attribute,
    number,
    read_params,
)
from ocean_c2d.api.store import Store
from ocean_c2d.identity import package_version
from ocean_c2d.model import Environment
from ocean_c2d.times import utc_now

log = logging.getLogger("ocean_c2d.api")
PREFIX = "/api/v1/operator"
JSON_HEADERS = {"Content-type": "application/json"}
NO_IDENTIFIER = "You have to specify one of agreementId, jobId or owner"

# GET /environments: the parameters -> the list of environments.
Environments = Callable[[Params], Awaitable[list[dict[str, Any]]]]


@dataclass(frozen=True)
class Download:
    """A result file as its storage answered: 200 (whole) or 206 (Range), its headers (Content-Type,
    Content-Range, Content-Length, Accept-Ranges: those are passed on) and its bytes."""

    status: int
    headers: Mapping[str, str]
    chunks: AsyncIterator[bytes]


class ResultUnavailableError(Exception):
    """The fetcher's answer when it cannot stream a result: the status (404 gone from storage, 416 a
    Range past its end, 502 storage failed), a message safe to show, and headers (416: Content-Range)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class CreateRefusedError(Exception):
    """The Store's answer when the cluster refused to store the Workflow as built (the CRD schema's
    bounds, an admission policy): the request was invalid, so POST /compute answers 400 with `message`
    (the API server's words, which name the field), and nothing was created."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# GET /getResult: (the result entry with its url, the request's Range header or None) -> the download.
FetchResult = Callable[[Mapping[str, Any], str | None], Awaitable[Download]]
# Too many results for the status: (status.resultsManifest, the manifest's URL) -> its result list.
ReadManifest = Callable[[str], Awaitable[list[dict[str, Any]]]]


@dataclass(frozen=True)
class ApiConfig:
    store: Store
    authenticate: Authenticate = accept_all
    environments: Environments | None = None  # None: environments_from_store
    fetch_result: FetchResult | None = None  # None: getResult answers 503 once it found the file
    # None: a job whose list is only in its manifest lists none (GET /compute) and cannot be downloaded
    read_manifest: ReadManifest | None = None
    operator_address: str | None = None  # the operator key's checksummed address (GET /, consumerAddress)
    algo_time_limit: str | None = None  # GET /'s algoTimeLimit, as the original showed ALGO_POD_TIMEOUT
    clock: Callable[[], datetime] = utc_now
    new_job_id: Callable[[], str] = field(default=lambda: uuid.uuid4().hex)


CONFIG: web.AppKey[ApiConfig] = web.AppKey("config", ApiConfig)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status, headers=JSON_HEADERS)


def error(message: str, status: int = 400) -> web.Response:
    return json_response({"error": message}, status)


def unavailable(problem: ResultUnavailableError) -> web.Response:
    response = error(problem.message, problem.status)
    response.headers.update(problem.headers)
    return response


def flask_html_error(status: int, title: str, text: str) -> web.Response:
    """Flask's own error page, which the original answered when POST /compute's body was not JSON."""
    escaped = text.replace("'", "&#39;")
    html = (
        f"<!doctype html>\n<html lang=en>\n<title>{status} {title}</title>\n"
        f"<h1>{title}</h1>\n<p>{escaped}</p>\n"
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


async def cors(request: web.Request, response: web.StreamResponse) -> None:
    """flask-cors's header on every answer, streamed ones included (hence a prepare signal)."""
    response.headers["Access-Control-Allow-Origin"] = "*"


async def params_of(request: web.Request) -> Any:
    body = await request.read()
    return read_params(request.query.items(), request.headers.get("Content-Type"), body)


async def root(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    return json_response(
        {
            "address": config.operator_address,
            "algoTimeLimit": config.algo_time_limit,
            "software": "Operator service",
            "storageExpiry": None,
            "version": package_version(),
        }
    )


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


async def environments_from_store(
    store: Store, params: Params, address: str | None, now: datetime
) -> list[dict[str, Any]]:
    """The minimal default: each ComputeEnvironment in the original's announce shape (api/environments.py
    answers the full one)."""
    running: dict[str, int] = {}
    for workflow in await store.list_workflows():
        if not status_object.is_finished(workflow):
            name = (workflow.get("spec") or {}).get("environment", "")
            running[name] = running.get(name, 0) + 1
    answer = []
    for obj in await store.list_environments():
        env = Environment.from_object(obj)
        answer.append(
            {
                "cpuNumber": env.n_cpu,
                "cpuType": env.cpu_type,
                "gpuNumber": env.n_gpu,
                "gpuType": env.gpu_type,
                "ramGB": _number(env.ram_gb),
                "diskGB": _number(env.disk_gb),
                "priceMin": _number(env.price_minute),
                "desc": env.description,
                "currentJobs": running.get(env.name, 0),
                "maxJobs": env.max_jobs,
                "consumerAddress": address,
                "storageExpiry": env.storage_expiry,
                # A string, as the original's engine announced its env var (the recordings: "60").
                "maxJobDuration": str(env.max_job_duration),
                "lastSeen": translate.epoch_text(now),
                "id": env.name,
            }
        )
    return answer


async def get_environments(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    try:
        params = await params_of(request)
    except BodyError:
        # The original answered a bare GET (no query, no JSON body) 400 "415 ...", which broke OPF_K8
        # after ocean-node #705: it answers the list here, as for an empty query.
        params = {}
    if not isinstance(params, dict):
        params = {}
    if config.environments is not None:
        return json_response(await config.environments(params))
    return json_response(
        await environments_from_store(config.store, params, config.operator_address, config.clock())
    )


async def start_compute(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    try:
        params = await params_of(request)
    except BodyError as problem:
        title = "Unsupported Media Type" if problem.status == 415 else "Bad Request"
        return flask_html_error(problem.status, title, problem.text.split(": ", 1)[1])
    try:
        translate.check_payload(params)
        agreement_id = params["agreementId"]
        for running in await config.store.list_workflows(agreement_id=agreement_id):
            if not status_object.is_finished(running):
                raise translate.Rejected(translate.AGREEMENT_IN_USE)
        environment = params["environment"]
        environments = await config.store.list_environments()
        if not translate.check_environment_name(environment) or not any(
            e["metadata"]["name"] == environment for e in environments
        ):
            raise translate.Rejected(translate.UNKNOWN_ENVIRONMENT)
        refusal = await config.authenticate(AuthQuery("POST /compute", params))
        if refusal is not None:
            return error(refusal.message, refusal.status)
        workflow = translate.build_workflow(params, config.new_job_id(), config.clock())
    except translate.Rejected as rejected:
        return error(rejected.message)
    try:
        created = await config.store.create_workflow(workflow)
    except CreateRefusedError as refused:
        return error(refused.message)
    return json_response([status_object.build_status(created)])


def _identifiers(params: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    return identifier(params, "agreementId"), identifier(params, "jobId"), identifier(params, "owner")


async def get_compute(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    prefix = "Error getting the status: "
    try:
        params = await params_of(request)
    except BodyError as problem:
        return error(prefix + problem.text)
    if params is None:
        return error(NO_IDENTIFIER)
    if not isinstance(params, dict):
        return error(f"{prefix}'{type(params).__name__}' object has no attribute 'get'")
    agreement_id, job_id, owner = _identifiers(params)
    if agreement_id is None and job_id is None and owner is None:
        return error(NO_IDENTIFIER)
    refusal = await config.authenticate(AuthQuery("GET /compute", params))
    if refusal is not None:
        return error(refusal.message, refusal.status)
    found = await config.store.list_workflows(owner=owner, job_id=job_id, agreement_id=agreement_id)
    listed = await asyncio.gather(*(_manifest_results(config, w) for w in found))
    return json_response([status_object.build_status(w, r) for w, r in zip(found, listed, strict=True)])


async def _manifest_results(config: ApiConfig, workflow: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The result list of a job whose list is only in its manifest (too many results for its status), or
    None: use status.results. Only jobs with more results than the status holds pay a storage read, once
    per replica (the fetcher caches the manifests it read: they never change). When storage fails the
    status answers without the list (results ""), as before it was published, rather than failing the
    poll."""
    status = workflow.get("status") or {}
    manifest = status.get("resultsManifest")
    if config.read_manifest is None or status.get("results") or not manifest:
        return None
    try:
        return await config.read_manifest(str(manifest))
    except ResultUnavailableError as problem:
        log.warning("Results manifest of %s unreadable: %s", workflow["metadata"]["name"], problem.message)
        return None


async def stop_compute(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    try:
        params = await params_of(request)
    except BodyError as problem:
        return error(f"Exception when stopping compute job: {problem.text}")
    missing = missing_attribute(params, ("owner", "providerSignature", "nonce"), "PUT:/compute")
    if missing:
        return error(missing)
    agreement_id, job_id, owner = _identifiers(params)
    if agreement_id is None and job_id is None and owner is None:
        return error(NO_IDENTIFIER)
    refusal = await config.authenticate(AuthQuery("PUT /compute", params))
    if refusal is not None:
        return error(refusal.message, refusal.status)
    found = await config.store.list_workflows(owner=owner, job_id=job_id, agreement_id=agreement_id)
    stopped = []
    for workflow in found:
        patched = await config.store.set_stop(workflow["metadata"]["name"])
        if patched is not None:
            stopped.append(patched)
    return json_response([status_object.build_status(w) for w in stopped])


async def delete_compute(request: web.Request) -> web.Response:
    # The original's DELETE was a no-op "for backwards compat" that checked nothing; a Workflow is
    # deleted by its TTL. Nothing happens, so nothing is authenticated.
    return json_response("")


async def running_jobs(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    found = await config.store.list_workflows()
    return json_response([status_object.build_running(w) for w in found if not status_object.is_finished(w)])


async def pgsql_init(request: web.Request) -> web.Response:
    # No database: a no-op, but the original's answer to a missing Admin header is kept.
    if not request.headers.get("Admin"):
        return web.Response(
            text="Admin header is empty.\nstatus code: 400",
            status=400,
            content_type="text/html",
            charset="utf-8",
            headers={"Admin": ""},
        )
    return web.Response(text="", status=200, content_type="text/html", charset="utf-8", headers={"Admin": ""})


def _file_name(entry: Mapping[str, Any]) -> str:
    """The original's download name: the url's last part (else the entry's own file name)."""
    url = str(entry.get("url") or "")
    return url.rstrip("/").split("/")[-1] or str(entry.get("filename") or "result").split("/")[-1]


async def get_result(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    prefix = "Error getResult: "
    try:
        params = await params_of(request)
    except BodyError as problem:
        return error(prefix + problem.text)
    if params is None:
        return error("Both index & job_id are required")
    missing = missing_attribute(
        params, ("owner", "providerSignature", "nonce", "index", "jobId"), "GET:/getResult"
    )
    if missing:
        return error(missing)
    refusal = await config.authenticate(AuthQuery("GET /getResult", params))
    if refusal is not None:
        return error(refusal.message, refusal.status)
    try:
        index = number(params["index"])
    except (TypeError, ValueError) as bad:
        return error(f"{prefix}{bad}")
    owner, job_id = params["owner"], params["jobId"]
    workflow = await config.store.get_workflow(str(job_id))
    status = (workflow or {}).get("status") or {}
    results = status.get("results")
    owned = workflow is not None and (workflow.get("spec") or {}).get("owner") == owner
    manifest = status.get("resultsManifest")
    if owned and not results and manifest and config.read_manifest is not None:
        try:
            results = await config.read_manifest(str(manifest))
        except ResultUnavailableError as problem:
            return unavailable(problem)
    # Unknown job, nothing published yet, or another owner: the original said "mismatch" to all three.
    if not owned or not results:
        return error(f"Owner {owner} mismatch for job {job_id}", 404)
    if index < 0:
        return error(f"Negative index {index}", 404)
    if index >= len(results):
        return error(f"No such index {index} in this compute job", 404)
    if config.fetch_result is None:
        return error("result downloads are not configured", 503)
    entry = results[index]
    try:
        download = await config.fetch_result(entry, request.headers.get("Range"))
    except ResultUnavailableError as problem:
        return unavailable(problem)
    return await _stream(request, entry, download)


async def _stream(request: web.Request, entry: Mapping[str, Any], download: Download) -> web.StreamResponse:
    name = _file_name(entry)
    content_type = (
        download.headers.get("Content-Type") or mimetypes.guess_type(name)[0] or "application/octet-stream"
    )
    response = web.StreamResponse(status=download.status)
    response.headers["Content-Disposition"] = f"attachment;filename={name}"
    response.headers["Access-Control-Expose-Headers"] = "Content-Disposition"
    response.headers["Content-Type"] = content_type
    for header in ("Content-Range", "Content-Length", "Accept-Ranges"):
        if header in download.headers:
            response.headers[header] = download.headers[header]
    await response.prepare(request)
    async for chunk in download.chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


def build_app(config: ApiConfig) -> web.Application:
    """The API as an aiohttp Application (routes and hooks; no I/O until it serves)."""
    app = web.Application()
    app.on_response_prepare.append(cors)
    app[CONFIG] = config
    app.router.add_get("/", root)
    app.router.add_get(f"{PREFIX}/environments", get_environments)
    app.router.add_post(f"{PREFIX}/compute", start_compute)
    app.router.add_get(f"{PREFIX}/compute", get_compute)
    app.router.add_put(f"{PREFIX}/compute", stop_compute)
    app.router.add_delete(f"{PREFIX}/compute", delete_compute)
    app.router.add_get(f"{PREFIX}/getResult", get_result)
    app.router.add_get(f"{PREFIX}/runningjobs", running_jobs)
    app.router.add_post(f"{PREFIX}/pgsqlinit", pgsql_init)
    return app
