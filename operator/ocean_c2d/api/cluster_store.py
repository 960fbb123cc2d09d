"""The API's Store over the Kubernetes API: reads from watch caches, writes to the API server.

Each kind (Workflows, ComputeEnvironments) is an informer.Informer (the operator's: a LIST in pages sized
by what the objects weigh, then a WATCH from the list's resourceVersion, resumed from the last one seen
when a watch ends; bookmarks keep it fresh; 410 Gone, an expired version, means one new LIST) feeding a
WatchCache, its sink, which keeps whole objects (the API answers them) and indexes them. A request never
LISTs: GET /compute by owner or agreementId reads an index. The cache is ready (`synced`) after the first
LIST of each kind; readiness waits for that, so no replica answers "no such job" from an empty cache. It
stays ready through a later LIST (410) and a failed watch's retries: it answers its last state meanwhile,
as a lagging watch would.

A write's answer goes into the cache at once, so the same client's next GET sees the Workflow it created
(the watch event follows, later). An answer never replaces a newer object the watch delivered first:
resourceVersions are compared as integers when both are (etcd's are; the API documents them as opaque, so
anything else is simply overwritten, and the watch corrects it).

The Kubernetes calls go through the narrow `Kube` protocol (a JSON request; and kr8s' `call_api`, all an
Informer asks of its client); `Kr8sKube` is the only code here that touches kr8s, so tests drive
everything else with an in-process fake.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import kr8s
import kr8s.asyncio

from ocean_c2d import informer
from ocean_c2d.api.status_object import compat_facts
from ocean_c2d.api.store import matches
from ocean_c2d.informer import Informer, Key
from ocean_c2d.model import GROUP, VERSION

API_VERSION = f"{GROUP}/{VERSION}"
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


class ApiError(Exception):
    """The API server answered `status` (0: no answer) with `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Kube(informer.Api, Protocol):
    """A JSON request (the writes, the nonces' ConfigMaps) and `call_api` (the informers' LISTs and
    WATCHes, which map its failures themselves)."""

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

    def call_api(
        self, method: str, *, version: str, namespace: str | None, url: str, **kwargs: Any
    ) -> AbstractAsyncContextManager[httpx.Response]:
        watch = (kwargs.get("params") or {}).get("watch")
        self.count("WATCH" if watch else method, url.split("/")[0])  # when asked for
        return self.api.call_api(method, version=version, namespace=namespace, url=url, **kwargs)

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
        url = f"{plural}/{name}" if name else plural
        try:
            async with self.call_api(
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


def newer_or_same(candidate: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether `candidate` may replace `current`: not when both versions are integers and it is older."""
    a = candidate["metadata"].get("resourceVersion", "")
    b = current["metadata"].get("resourceVersion", "")
    if isinstance(a, str) and isinstance(b, str) and a.isdigit() and b.isdigit():
        return int(a) >= int(b)
    return True


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


def _version(obj: dict[str, Any] | None) -> str | None:
    return None if obj is None else str(obj["metadata"].get("resourceVersion", ""))


def _unheard(key: Key) -> None:
    """Nothing reacts to a change in the API: requests read the cache when they come."""


class WatchCache:
    """One kind's objects in one namespace, by name, with indexes by spec fields (`indexes`: field names):
    the sink (informer.Sink) of its Informer, kept whole; and the write answers (`written`, `drop`).

    The pure part (the Sink's methods, `written`) is what the Informer feeds; tests call it directly too.
    """

    def __init__(self, kube: Kube, kind: Kind, namespace: str, indexes: Iterable[str] = ()) -> None:
        self.kind = kind
        self.namespace = namespace
        self.objects: dict[str, dict[str, Any]] = {}
        self._keys = {field: _key_of(field) for field in indexes}
        self._index: dict[str, dict[str, set[str]]] = {field: {} for field in indexes}
        self.informer = Informer(kube, kind.version, kind.plural, namespace, self, _unheard)

    @property
    def synced(self) -> asyncio.Event:
        return self.informer.synced

    @property
    def resource_version(self) -> str:
        return self.informer.resource_version

    async def run(self) -> None:
        await self.informer.run()

    def __len__(self) -> int:
        return len(self.objects)

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

    # informer.Sink: a LIST's whole content, a watch event's object.

    def entry(self, obj: dict[str, Any]) -> dict[str, Any]:
        return obj  # whole: the API answers the objects themselves

    def replace(self, entries: dict[Key, Any]) -> list[Key]:
        listed = {name: obj for (_, name), obj in entries.items()}
        changed = [
            (self.namespace, name)
            for name in sorted(self.objects.keys() | listed.keys())
            if _version(self.objects.get(name)) != _version(listed.get(name))
        ]
        self.objects = {}
        for values in self._index.values():
            values.clear()
        for obj in listed.values():
            self._insert(obj)
        return changed

    def put(self, key: Key, entry: Any) -> None:
        self._insert(entry)

    def remove(self, key: Key) -> None:
        self._unindex(key[1])

    # The writes' answers.

    def written(self, obj: dict[str, Any]) -> None:
        """A write's answer, unless the watch already delivered a newer version of the object."""
        current = self.objects.get(obj["metadata"]["name"])
        if current is None or newer_or_same(obj, current):
            self._insert(obj)

    def drop(self, name: str) -> None:
        self._unindex(name)

    def names_by(self, field: str, value: str) -> set[str]:
        return set(self._index[field].get(value, ()))


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
        self.workflows.written(created)
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
        self.workflows.written(patched)
        return copy.deepcopy(patched)

    async def list_environments(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(e) for _, e in sorted(self.environments.objects.items())]
