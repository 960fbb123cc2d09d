"""The only module that talks to the Kubernetes API (through kr8s): it sends Changes.

Policy at each call, explicitly: a create that meets 409 means the object exists already (a restart, or
our own earlier attempt) and counts as done; a delete that meets 404 is done; a status write is
conditional on the resourceVersion the plan was computed from, so a stale view gets 409 and a retry
instead of overwriting someone else's change; a child the API server refuses as invalid (400, 422) can
never be created as rendered, so that is InvalidObject, a permanent failure of the Workflow. Every request
is counted by verb and response code. It knows nothing of the planner: only the model's words.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import kr8s
import kr8s.asyncio

from ocean_c2d.identity import PACKAGE
from ocean_c2d.metrics import API_ERRORS, API_RECONNECTS, API_UP, KUBERNETES_REQUESTS
from ocean_c2d.model import GROUP, VERSION, Changes, Event, InvalidWorkflow, controller_uid
from ocean_c2d.status import printable
from ocean_c2d.times import format_time

log = logging.getLogger("ocean_c2d")

# Where each child kind lives in the API.
ROUTES: dict[str, tuple[str, str]] = {
    "ConfigMap": ("v1", "configmaps"),
    "Secret": ("v1", "secrets"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies"),
    "Pod": ("v1", "pods"),
    "Event": ("v1", "events"),
    "Workflow": (f"{GROUP}/{VERSION}", "workflows"),
    "ComputeEnvironment": (f"{GROUP}/{VERSION}", "computeenvironments"),
}
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
# No request of the operator's waits longer than this for the API server (kr8s's default: for ever).
REQUEST_TIMEOUT_SECONDS = 30.0
# While the API server does not answer, it is asked for /version this often (backing off to the cap)
# until it does, so the operator says it is back even when it has nothing to write.
PROBE_FIRST_SECONDS = 1.0
PROBE_MAX_SECONDS = 10.0


class ApiHealth:
    """Whether the API server answers, as the operator's requests, its informers' LISTs and WATCHes
    (informer.Health, source "informer") and kopf's find it: the first failure is logged (a warning) and
    counted; from then on /version is probed, with backoff, until the API answers again, which is logged
    ("Reconnected ...") and counted, whether or not anything was due.

    kopf retries its own watches and listings (NetworkingSettings.error_backoffs, then a new watch from
    the last resourceVersion, a new listing after 410 Gone) and logs each failed attempt at ERROR; a
    logging handler on kopf's loggers (`observe_kopf`) turns those lines into failures here. kr8s does
    not retry: a failed request of the operator's fails its reconcile, which the work queue retries."""

    def __init__(self, api: kr8s.asyncio.Api | None) -> None:
        self.api = api
        self.down_since: float | None = None
        self.failures = 0
        self._probe: asyncio.Task[None] | None = None

    def failed(self, source: str, error: str) -> None:
        API_ERRORS.labels(source).inc()
        self.failures += 1
        if self.down_since is not None:
            return
        self.down_since = time.monotonic()
        API_UP.set(0)
        log.warning("Lost the Kubernetes API (%s: %s); retrying until it answers", source, error[:300])
        with contextlib.suppress(RuntimeError):  # no running loop: the next request tells
            self._probe = asyncio.get_running_loop().create_task(self._until_answered())

    def answered(self) -> None:
        if self.down_since is None:
            return
        down_for = time.monotonic() - self.down_since
        self.down_since = None
        API_UP.set(1)
        API_RECONNECTS.inc()
        log.info(
            "Reconnected to the Kubernetes API after %.1f s (%d failed requests meanwhile)",
            down_for,
            self.failures,
        )
        self.failures = 0
        probe, self._probe = self._probe, None
        if probe is not None and probe is not asyncio.current_task():
            probe.cancel()

    async def _until_answered(self) -> None:
        delay = PROBE_FIRST_SECONDS
        while self.down_since is not None and self.api is not None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, PROBE_MAX_SECONDS)
            try:
                await self.api.version()
            except (kr8s.ServerError, httpx.HTTPError, OSError):
                continue
            self.answered()


class _KopfRetries(logging.Handler):
    """kopf's "Request attempt N failed" lines (its API client's retries) as failures of ApiHealth."""

    def __init__(self, health: ApiHealth) -> None:
        super().__init__(logging.ERROR)
        self.health = health

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Request attempt") and " failed" in message:
            self.health.failed("kopf", message.partition("-> ")[2] or message)


def observe_kopf(health: ApiHealth) -> None:
    """Count kopf's failed API requests in `health` (replacing an earlier Cluster's handler)."""
    kopf_log = logging.getLogger("kopf")
    for handler in list(kopf_log.handlers):
        if isinstance(handler, _KopfRetries):
            kopf_log.removeHandler(handler)
    kopf_log.addHandler(_KopfRetries(health))


class ConflictError(Exception):
    """The object changed since the plan was computed; reconcile again from the newer state."""


class ForeignObject(InvalidWorkflow):
    """A child's name is taken by an object this Workflow does not control: it is left untouched (never
    adopted, patched, mounted or deleted), and the Workflow cannot run under that name."""


class InvalidObject(InvalidWorkflow):
    """The API server refused a child as invalid (400 Bad Request: it cannot even decode it, say a
    malformed quantity; 413: larger than a request may be; 422 Unprocessable Entity: a field out of its
    range, a ConfigMap over 1 MiB). Retrying the same object cannot succeed."""


INVALID_CODES = (400, 413, 422)


def _api_message(error: kr8s.ServerError) -> str:
    """The API server's own words (its Status `message` names the field), else the error's text."""
    response = error.response
    try:
        body = response.json() if response is not None else {}
    except ValueError:
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or error)[:800]


@dataclass
class RequestCounter:
    """API requests this operator sent, by (verb, response code). Writes are what benchmarks watch; the
    metric also says which resource (e.g. workflows/status, pods, events), so a benchmark can tell the
    status writes from the children's."""

    counts: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)

    def record(self, verb: str, code: int, resource: str = "") -> None:
        self.counts[(verb, code)] += 1
        KUBERNETES_REQUESTS.labels(verb, resource, str(code)).inc()

    @property
    def writes(self) -> int:
        return sum(n for (verb, _), n in self.counts.items() if verb != "GET")


@dataclass(frozen=True)
class Applied:
    """What applying a plan changed, so the caller can update its view before the watches catch up."""

    created: tuple[dict[str, Any], ...]
    deleted: tuple[tuple[str, str], ...]
    workflow: dict[str, Any] | None  # the Workflow as the status write returned it


class Cluster:
    def __init__(self, api: kr8s.asyncio.Api, counter: RequestCounter | None = None) -> None:
        self.api = api
        with contextlib.suppress(AttributeError):  # a test's stand-in may have no timeout
            api.timeout = REQUEST_TIMEOUT_SECONDS
        self.counter = counter or RequestCounter()
        self.instance = socket.gethostname()
        self.health = ApiHealth(api)
        observe_kopf(self.health)
        # Leader election (lease.py): called before every write, raises once this replica may not act.
        self.write_guard: Callable[[str], None] | None = None

    async def _request(
        self,
        verb: str,
        kind: str,
        namespace: str | None,
        url: str,
        *,
        ok: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> dict[str, Any] | None:
        """One API request; statuses in `ok` are tolerated and give None."""
        if verb != "GET" and self.write_guard is not None:
            self.write_guard(verb)
        version, plural = ROUTES[kind]
        path = f"{plural}/{url}" if url else plural
        resource = f"{plural}/status" if url.endswith("/status") else plural
        try:
            async with self.api.call_api(
                verb, version=version, namespace=namespace, url=path, **kwargs
            ) as response:
                self.counter.record(verb, response.status_code, resource)
                self.health.answered()
                body: dict[str, Any] = response.json()
                return body
        except kr8s.APITimeoutError as error:
            self.counter.record(verb, 0, resource)
            self.health.failed("operator", str(error))
            raise
        except kr8s.ServerError as error:
            code = error.response.status_code if error.response is not None else 0
            self.counter.record(verb, code, resource)
            if code >= 500 or code == 0:
                self.health.failed("operator", f"{verb} {resource}: {code}")
            else:
                self.health.answered()
            if code in ok:
                return None
            if code == 409:
                raise ConflictError(str(error)) from error
            raise
        except httpx.HTTPError as error:
            self.counter.record(verb, 0, resource)
            self.health.failed("operator", f"{verb} {resource}: {type(error).__name__}: {error}")
            raise

    async def apply(self, workflow: dict[str, Any], changes: Changes, now: datetime) -> Applied:
        """Send `changes`: children first, then status (so a crash in between leaves children the next
        reconcile adopts, never a status that names pods that do not exist), deletions, Events, and the
        Workflow's own deletion last."""
        namespace = workflow["metadata"]["namespace"]
        created = []
        for manifest in changes.create:
            if await self._create_child(namespace, manifest):
                created.append(manifest)
            elif manifest["kind"] != "Pod":  # a pod's spec is immutable
                await self._patch_child(namespace, manifest)
        for manifest in changes.patch:
            await self._patch_child(namespace, manifest)
        updated = None
        if changes.status is not None:
            updated = await self._write_status(workflow, dict(changes.status))
        deleted = []
        for kind, name in changes.delete:
            await self._request(
                "DELETE", kind, namespace, name, ok=(404,), json={"propagationPolicy": "Background"}
            )
            deleted.append((kind, name))
            log.info("Deleted %s %s/%s", kind, namespace, name)
        for event in changes.events:
            await self.post_event(updated or workflow, event, now)
        if changes.delete_workflow:
            await self._request("DELETE", "Workflow", namespace, workflow["metadata"]["name"], ok=(404,))
            log.info(
                "Deleted Workflow %s/%s: its time to live after finishing has passed",
                namespace,
                workflow["metadata"]["name"],
            )
        return Applied(tuple(created), tuple(deleted), updated)

    async def _create_child(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """True when created, False when it existed already as this Workflow's (409). InvalidObject when
        refused as invalid; ForeignObject when the name is taken by an object it does not control."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        try:
            created = await self._create(kind, namespace, manifest)
        except kr8s.ServerError as error:
            _raise_if_invalid(error, f"the API server refused {kind} {name}")
            raise
        if created:
            log.info("Created %s %s/%s", kind, namespace, name)
            return True
        existing = await self.get(kind, namespace, name)  # ours from an earlier attempt, or someone else's?
        owner = controller_uid(existing["metadata"]) if existing is not None else None
        if existing is not None and owner != controller_uid(manifest["metadata"]):
            raise ForeignObject(
                f"{kind} {name} exists and is not this Workflow's (its controller: {owner or 'none'});"
                " it was left untouched"
            )
        return False

    async def _patch_child(self, namespace: str, manifest: dict[str, Any]) -> None:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        try:
            await self._request(
                "PATCH", kind, namespace, name, json=_drift_patch(manifest), headers=MERGE_PATCH
            )
        except kr8s.ServerError as error:
            _raise_if_invalid(error, f"the API server refused the update of {kind} {name}")
            raise
        log.info("Updated %s %s/%s", kind, namespace, name)

    async def _create(self, kind: str, namespace: str, manifest: dict[str, Any]) -> bool:
        """True when created; False when it already existed (409)."""
        try:
            await self._request("POST", kind, namespace, "", json=manifest)
        except ConflictError:
            return False
        return True

    async def _write_status(self, workflow: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        old = workflow.get("status") or {}
        body = {**{key: None for key in old if key not in status}, **status}
        patch = {"metadata": {"resourceVersion": workflow["metadata"]["resourceVersion"]}, "status": body}
        try:
            result = await self._request(
                "PATCH",
                "Workflow",
                workflow["metadata"]["namespace"],
                f"{workflow['metadata']['name']}/status",
                json=patch,
                headers=MERGE_PATCH,
            )
        except kr8s.ServerError as error:
            _raise_if_invalid(error, "the API server refused the Workflow's new status")
            raise
        assert result is not None
        return result

    async def write_status_fields(
        self,
        kind: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any] | None:
        """A merge patch of some status fields (notification outcomes, environment counts); None when the
        object is gone. With `resource_version`, only if the object is still at that version (else 409)."""
        patch: dict[str, Any] = {"status": status}
        if resource_version is not None:
            patch["metadata"] = {"resourceVersion": resource_version}
        return await self._request(
            "PATCH", kind, namespace, f"{name}/status", ok=(404,), json=patch, headers=MERGE_PATCH
        )

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as the API server has it now (None when it does not exist)."""
        return await self._request("GET", kind, namespace, name, ok=(404,))

    async def merge_patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """A merge patch of an object the operator keeps outside any Workflow (a results record)."""
        await self._request("PATCH", kind, namespace, name, json=patch, headers=MERGE_PATCH)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete one object; already gone (404) counts as done."""
        await self._request("DELETE", kind, namespace, name, ok=(404,))

    async def post_event(self, involved: dict[str, Any], event: Event, now: datetime) -> None:
        metadata = involved["metadata"]
        timestamp = format_time(now)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": involved.get("kind", "Workflow"),
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata.get("uid", ""),
            },
            "type": event.type,
            "reason": event.reason,
            "message": printable(event.message),  # whatever made it, an Event is one readable line
            "firstTimestamp": timestamp,
            "lastTimestamp": timestamp,
            "count": 1,
            "source": {"component": PACKAGE},
            "reportingComponent": PACKAGE,
            "reportingInstance": self.instance,
        }
        try:
            await self._request("POST", "Event", metadata["namespace"], "", json=body)
        except (kr8s.ServerError, httpx.HTTPError) as error:  # an Event is worth a retry of nothing
            log.warning("Could not post event %s on %s: %s", event.reason, metadata["name"], error)

    async def ensure(self, manifest: dict[str, Any]) -> bool:
        """Create `manifest` unless it exists; True when it was created."""
        namespace = manifest["metadata"].get("namespace")
        return await self._create(manifest["kind"], namespace, manifest)


def _raise_if_invalid(error: kr8s.ServerError, what: str) -> None:
    code = error.response.status_code if error.response is not None else 0
    if code in INVALID_CODES:
        raise InvalidObject(f"{what} ({code}): {_api_message(error)}") from error


def _drift_patch(manifest: dict[str, Any]) -> dict[str, Any]:
    """What may change on an existing child: its metadata, and the mutable parts of its kind.
    A Secret's data is never rewritten (it holds the job secret the pods already read)."""
    metadata = {
        key: manifest["metadata"][key] for key in ("labels", "annotations") if key in manifest["metadata"]
    }
    patch: dict[str, Any] = {"metadata": metadata}
    if manifest["kind"] == "ConfigMap":
        patch["data"] = manifest.get("data", {})
    elif manifest["kind"] == "NetworkPolicy":
        patch["spec"] = manifest["spec"]
    return patch
