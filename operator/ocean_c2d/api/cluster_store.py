"""The API's Store over the Kubernetes API: reads from watch caches, writes to the API server.

Each kind (Workflows, ComputeEnvironments) is LISTed once, then WATCHed from the list's resourceVersion
(resumed from the last one seen when a watch ends; bookmarks keep it fresh; 410 Gone, an expired version,
means one new LIST). A request never LISTs: GET /compute by owner or agreementId reads an index. The cache
is ready (`synced`) after the first LIST of each kind; readiness waits for that, so no replica answers
"no such job" from an empty cache. It stays ready through a later LIST (410) and a failed watch's retries:
it answers its last state meanwhile, as a lagging watch would.

A write's answer goes into the cache at once, so the same client's next GET sees the Workflow it created
(the watch event follows, later). An answer never replaces a newer object the watch delivered first:
resourceVersions are compared as integers when both are (etcd's are; the API documents them as opaque, so
anything else is simply overwritten, and the watch corrects it).

The Kubernetes calls go through the narrow `Kube` protocol (a JSON request, a watch's lines); `Kr8sKube`
is the only code here that touches kr8s, so tests drive everything else with an in-process fake.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import kr8s
import kr8s.asyncio

from ocean_c2d.api.status_object import compat_facts
from ocean_c2d.api.store import matches
from ocean_c2d.model import GROUP, VERSION

log = logging.getLogger("ocean_c2d.api")

API_VERSION = f"{GROUP}/{VERSION}"
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
LIST_PAGE = 250
# The API server closes a watch after its own timeout (minutes); asking for one keeps it predictable.
WATCH_SECONDS = 300
RETRY_SECONDS = 2.0


class ApiError(Exception):
    """The API server answered `status` (0: no answer) with `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Kube(Protocol):
    async def request(
        self,
        method: str,
        version: str,
        plural: str,
        namespace: str | None,
        name: str = "",
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One request; its JSON answer. ApiError on any non-2xx status or transport failure."""

    def watch(
        self, version: str, plural: str, namespace: str | None, params: dict[str, str]
    ) -> AsyncIterator[dict[str, Any]]:
        """The watch events ({type, object}) of a `?watch=1` GET, until the server ends it."""


# Told of each request a Kr8sKube sends: (verb, resource), the verb WATCH for a watch opened.
CountRequest = Callable[[str, str], None]


def _uncounted(verb: str, resource: str) -> None:
    pass


class Kr8sKube:
    """Kube over kr8s' HTTP client (its authentication, TLS and token refresh). `count` is told of every
    request before it is sent, answered or not (the service counts them: what each API call costs the API
    server, which the design keeps small, reads coming from the watch caches)."""

    def __init__(self, api: kr8s.asyncio.Api, count: CountRequest = _uncounted) -> None:
        self.api = api
        self.count = count

    async def request(
        self,
        method: str,
        version: str,
        plural: str,
        namespace: str | None,
        name: str = "",
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        self.count(method, plural)
        url = f"{plural}/{name}" if name else plural
        try:
            async with self.api.call_api(
                method,
                version=version,
                namespace=namespace,
                url=url,
                params=params,
                json=body,
                headers=headers,
            ) as response:
                answer: dict[str, Any] = response.json()
                return answer
        except kr8s.ServerError as error:
            code = error.response.status_code if error.response is not None else 0
            raise ApiError(code, str(error)[:500]) from error
        except (httpx.HTTPError, kr8s.APITimeoutError) as error:
            raise ApiError(0, str(error)[:500]) from error

    def watch(
        self, version: str, plural: str, namespace: str | None, params: dict[str, str]
    ) -> AsyncIterator[dict[str, Any]]:
        self.count("WATCH", plural)  # when asked for, as a request is
        return self._watch(version, plural, namespace, params)

    async def _watch(
        self, version: str, plural: str, namespace: str | None, params: dict[str, str]
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            async with self.api.call_api(
                "GET",
                version=version,
                namespace=namespace,
                url=plural,
                params={**params, "watch": "1"},
                stream=True,
                timeout=httpx.Timeout(10, read=WATCH_SECONDS + 30),
            ) as response:
                async for line in response.aiter_lines():
                    if line.strip():
                        yield json.loads(line)
        except kr8s.ServerError as error:
            code = error.response.status_code if error.response is not None else 0
            raise ApiError(code, str(error)[:500]) from error
        except (httpx.HTTPError, kr8s.APITimeoutError) as error:
            raise ApiError(0, str(error)[:500]) from error


def newer_or_same(candidate: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether `candidate` may replace `current`: not when both versions are integers and it is older."""
    a = candidate["metadata"].get("resourceVersion", "")
    b = current["metadata"].get("resourceVersion", "")
    if isinstance(a, str) and isinstance(b, str) and a.isdigit() and b.isdigit():
        return int(a) >= int(b)
    return True


class Expired(Exception):  # noqa: N818 (a condition, not a crash)
    """The watch's resourceVersion is too old (410 Gone): LIST again."""


@dataclass(frozen=True)
class Kind:
    version: str
    plural: str


WORKFLOWS = Kind(API_VERSION, "workflows")
ENVIRONMENTS = Kind(API_VERSION, "computeenvironments")


def _key_of(index: str) -> Callable[[dict[str, Any]], str | None]:
    def key(obj: dict[str, Any]) -> str | None:
        value = (obj.get("spec") or {}).get(index)
        return value if isinstance(value, str) else None

    return key


class WatchCache:
    """One kind's objects in one namespace, by name, with indexes by spec fields (`indexes`: field names).

    The pure part (`replace`, `apply`, `put`) is what the loop (`run`) feeds; tests call it directly too.
    """

    def __init__(self, kube: Kube, kind: Kind, namespace: str, indexes: Iterable[str] = ()) -> None:
        self.kube = kube
        self.kind = kind
        self.namespace = namespace
        self.objects: dict[str, dict[str, Any]] = {}
        self.resource_version: str | None = None
        self.synced = asyncio.Event()
        self._keys = {field: _key_of(field) for field in indexes}
        self._index: dict[str, dict[str, set[str]]] = {field: {} for field in indexes}

    # The cache itself.

    def _unindex(self, name: str) -> None:
        old = self.objects.pop(name, None)
        if old is None:
            return
        for field, key in self._keys.items():
            value = key(old)
            if value is not None:
                names = self._index[field].get(value, set())
                names.discard(name)
                if not names:
                    self._index[field].pop(value, None)

    def _insert(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        self._unindex(name)
        self.objects[name] = obj
        for field, key in self._keys.items():
            value = key(obj)
            if value is not None:
                self._index[field].setdefault(value, set()).add(name)

    def replace(self, objects: Iterable[dict[str, Any]], resource_version: str) -> None:
        """A LIST's answer: the whole content, at `resource_version`."""
        self.objects.clear()
        for values in self._index.values():
            values.clear()
        for obj in objects:
            self._insert(obj)
        self.resource_version = resource_version

    def apply(self, event: dict[str, Any]) -> None:
        """One watch event. Expired on a 410 ERROR; other ERRORs raise ApiError."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            code = int(obj.get("code") or 0)
            if code == 410:
                raise Expired(str(obj.get("message", "")))
            raise ApiError(code, str(obj.get("message", "")))
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            self._insert(obj)
        elif kind == "DELETED":
            self._unindex(obj["metadata"]["name"])
        # BOOKMARK: only its resourceVersion matters.
        if version:
            self.resource_version = version

    def put(self, obj: dict[str, Any]) -> None:
        """A write's answer, unless the watch already delivered a newer version of the object."""
        current = self.objects.get(obj["metadata"]["name"])
        if current is None or newer_or_same(obj, current):
            self._insert(obj)

    def drop(self, name: str) -> None:
        self._unindex(name)

    def names_by(self, field: str, value: str) -> set[str]:
        return set(self._index[field].get(value, ()))

    # The loop.

    async def list(self) -> None:
        items: list[dict[str, Any]] = []
        params = {"limit": str(LIST_PAGE)}
        while True:
            page = await self.kube.request(
                "GET", self.kind.version, self.kind.plural, self.namespace, params=params
            )
            kind = page.get("kind", "List").removesuffix("List")
            for item in page.get("items") or []:
                # A LIST's items carry no apiVersion or kind; a watch's and a POST's do.
                item.setdefault("apiVersion", self.kind.version)
                item.setdefault("kind", kind)
                items.append(item)
            metadata = page.get("metadata") or {}
            if not metadata.get("continue"):
                self.replace(items, str(metadata.get("resourceVersion", "")))
                return
            params = {"limit": str(LIST_PAGE), "continue": metadata["continue"]}

    async def watch_once(self) -> None:
        """One watch from the current resourceVersion, until the server ends it."""
        params = {
            "resourceVersion": self.resource_version or "",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        async for event in self.kube.watch(self.kind.version, self.kind.plural, self.namespace, params):
            self.apply(event)

    async def run(self, retry_seconds: float = RETRY_SECONDS) -> None:
        """LIST, then WATCH for ever; LIST again only when the version expired (or a LIST failed)."""
        listed = False
        while True:
            try:
                if not listed:
                    await self.list()
                    listed = True
                    self.synced.set()
                await self.watch_once()
            except Expired:
                log.info("Watch of %s expired; listing again", self.kind.plural)
                listed = False
            except (ApiError, ValueError, KeyError) as error:
                if isinstance(error, ApiError) and error.status == 410:
                    listed = False
                log.warning(
                    "Watch of %s failed (%s); retrying in %ss", self.kind.plural, error, retry_seconds
                )
                await asyncio.sleep(retry_seconds)


def _created_order(obj: dict[str, Any]) -> tuple[str, float, str]:
    # creationTimestamp is RFC 3339 in UTC to the second (sorts as text); within a second, the API's own
    # dateCreated (to the microsecond, status_object.compat_facts) orders the jobs it created; the name
    # breaks what ties remain (Workflows made with kubectl in the same second).
    metadata = obj["metadata"]
    created = compat_facts(obj).get("dateCreated")
    try:
        moment = float(created) if isinstance(created, str) else 0.0
    except ValueError:
        moment = 0.0
    return (str(metadata.get("creationTimestamp", "")), moment, metadata["name"])


class ClusterStore:
    """The Store of the running API: Workflows and ComputeEnvironments of one namespace."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.workflows = WatchCache(kube, WORKFLOWS, namespace, indexes=("owner", "agreementId"))
        self.environments = WatchCache(kube, ENVIRONMENTS, namespace)

    @property
    def synced(self) -> bool:
        return self.workflows.synced.is_set() and self.environments.synced.is_set()

    async def run(self) -> None:
        """The two watches, until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.workflows.run())
            group.create_task(self.environments.run())

    async def create_workflow(self, obj: dict[str, Any]) -> dict[str, Any]:
        created = await self.kube.request(
            "POST", WORKFLOWS.version, WORKFLOWS.plural, self.namespace, body=obj
        )
        self.workflows.put(created)
        return copy.deepcopy(created)

    async def get_workflow(self, name: str) -> dict[str, Any] | None:
        found = self.workflows.objects.get(name)
        return copy.deepcopy(found) if found is not None else None

    async def list_workflows(
        self, *, owner: str | None = None, job_id: str | None = None, agreement_id: str | None = None
    ) -> list[dict[str, Any]]:
        cache = self.workflows
        # The narrowest index first; `matches` checks every filter on what it yields.
        if job_id is not None:
            names: Iterable[str] = [job_id] if job_id in cache.objects else []
        elif agreement_id is not None:
            names = cache.names_by("agreementId", agreement_id)
        elif owner is not None:
            names = cache.names_by("owner", owner)
        else:
            names = list(cache.objects)
        found = [cache.objects[n] for n in names if matches(cache.objects[n], owner, job_id, agreement_id)]
        return [copy.deepcopy(w) for w in sorted(found, key=_created_order)]

    async def set_stop(self, name: str) -> dict[str, Any] | None:
        current = self.workflows.objects.get(name)
        if current is not None and (current.get("spec") or {}).get("stop") is True:
            return copy.deepcopy(current)  # no write: the operator already has it
        try:
            patched = await self.kube.request(
                "PATCH",
                WORKFLOWS.version,
                WORKFLOWS.plural,
                self.namespace,
                name,
                body={"spec": {"stop": True}},
                headers=MERGE_PATCH,
            )
        except ApiError as error:
            if error.status == 404:
                self.workflows.drop(name)
                return None
            raise
        self.workflows.put(patched)
        return copy.deepcopy(patched)

    async def list_environments(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(e) for _, e in sorted(self.environments.objects.items())]
