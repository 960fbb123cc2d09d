"""api/cluster_store.py against FakeKube, an in-process fake of the few API-server calls
they make (LIST with pages, WATCH, GET, POST, merge PATCH with a resourceVersion precondition); the LISTs
and WATCHes are informer.Informer's, through the fake's kr8s-shaped call_api.

The fake is a model of the API server's behaviour, not the real thing: the same logic against the local
cluster's API server is the next slice's e2e test.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import kr8s
import kr8s.asyncio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ocean_c2d import informer
from ocean_c2d.api import cluster_store
from ocean_c2d.api.cluster_store import ApiError, ClusterStore, Kr8sKube, WatchCache
from ocean_c2d.api.translate import COMPAT_ANNOTATION

NS = "c2d"
ALICE = "0x" + "a1" * 20
BOB = "0x" + "b2" * 20
PROVIDER = "0x00000000000000000000000000000000000000Aa"


class FakeKube:
    """Objects by (plural, namespace, name); every write bumps one resourceVersion counter and sends
    the event to the open watches of that plural. `requests` records (method, plural, name) of each call."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.version = 100
        self.requests: list[tuple[str, str, str]] = []
        self.watches: dict[str, list[asyncio.Queue[dict[str, Any] | None]]] = {}
        self.watch_params: list[dict[str, str]] = []
        self.before_write: list[Any] = []  # callables run before a write: a concurrent writer
        self.muted: set[str] = set()  # plurals whose watches hear nothing (a slow watch)
        self.refuse_reads: list[int] = []  # the next LISTs/WATCHes fail: with this status (0: no answer)
        self._asked = asyncio.Condition()  # notified on each LIST or WATCH asked for (`until`)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Until `condition()` holds, checked each time a LIST or a WATCH is asked for."""
        async with self._asked:
            await self._asked.wait_for(condition)

    async def _notify(self) -> None:
        async with self._asked:
            self._asked.notify_all()

    def _bump(self, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)

    def emit(self, plural: str, kind: str, obj: dict[str, Any]) -> None:
        if plural in self.muted:
            return
        for queue in self.watches.get(plural, []):
            queue.put_nowait({"type": kind, "object": copy.deepcopy(obj)})

    def end_watches(self, plural: str, last: dict[str, Any] | None = None) -> None:
        for queue in self.watches.get(plural, []):
            if last is not None:
                queue.put_nowait(last)
            queue.put_nowait(None)

    def put(
        self, plural: str, obj: dict[str, Any], *, created: str = "2026-12-01T10:00:00Z"
    ) -> dict[str, Any]:
        """An object written by someone else (the operator, kubectl)."""
        stored = copy.deepcopy(obj)
        metadata = stored["metadata"]
        metadata.setdefault("namespace", NS)
        metadata.setdefault("creationTimestamp", created)
        key = (plural, metadata["namespace"], metadata["name"])
        existed = key in self.objects
        self._bump(stored)
        self.objects[key] = stored
        self.emit(plural, "MODIFIED" if existed else "ADDED", stored)
        return copy.deepcopy(stored)

    def delete(self, plural: str, name: str) -> None:
        gone = self.objects.pop((plural, NS, name))
        self._bump(gone)
        self.emit(plural, "DELETED", gone)

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
        self.requests.append((method, plural, name))
        assert namespace == NS
        await asyncio.sleep(0)
        if method == "GET" and not name:
            names = sorted(n for (p, ns, n) in self.objects if p == plural and ns == namespace)
            limit = int((params or {}).get("limit", "0")) or len(names)
            start = int((params or {}).get("continue", "0"))
            page = names[start : start + limit]
            metadata: dict[str, Any] = {"resourceVersion": str(self.version)}
            if start + limit < len(names):
                metadata["continue"] = str(start + limit)
            items = []
            for n in page:
                item = copy.deepcopy(self.objects[(plural, namespace, n)])
                item.pop("apiVersion", None)
                item.pop("kind", None)
                items.append(item)
            return {"kind": "WorkflowList", "metadata": metadata, "items": items}
        key = (plural, namespace, name)
        if method == "GET":
            if key not in self.objects:
                raise ApiError(404, "not found")
            return copy.deepcopy(self.objects[key])
        for hook in list(self.before_write):
            hook()
        if method == "POST":
            assert body is not None
            key = (plural, namespace, body["metadata"]["name"])
            if key in self.objects:
                raise ApiError(409, "already exists")
            stored = copy.deepcopy(body)
            stored["metadata"].update(
                namespace=namespace, uid="uid-1", creationTimestamp="2026-12-01T12:00:00Z"
            )
            stored["metadata"]["generation"] = 1
            self._bump(stored)
            self.objects[key] = stored
            self.emit(plural, "ADDED", stored)
            return copy.deepcopy(stored)
        if method == "PATCH":
            assert body is not None
            assert headers == cluster_store.MERGE_PATCH
            if key not in self.objects:
                raise ApiError(404, "not found")
            current = self.objects[key]
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
                raise ApiError(409, "the object has been modified")
            for section, values in body.items():
                if section != "metadata":
                    target = current.setdefault(section, {})
                    for field, value in values.items():  # a merge patch: null deletes
                        if value is None:
                            target.pop(field, None)
                        else:
                            target[field] = value
            self._bump(current)
            self.emit(plural, "MODIFIED", current)
            return copy.deepcopy(current)
        raise AssertionError(method)

    @contextlib.asynccontextmanager
    async def call_api(
        self, method: str, *, version: str, namespace: str | None, url: str, **kwargs: Any
    ) -> AsyncIterator[httpx.Response]:
        """kr8s' call_api, as the informers use it: a LIST through `request`, a watch from `watch`; a
        refusal as kr8s raises it (ServerError with the status), a dropped connection as httpx's error."""
        params = dict(kwargs.get("params") or {})
        assert method == "GET", method
        assert "/" not in url, url  # a LIST or a WATCH of a kind, never one object
        if self.refuse_reads:
            code = self.refuse_reads.pop(0)
            if not params.get("watch"):
                self.requests.append(("GET", url, ""))
            await self._notify()
            if code == 0:
                raise httpx.ConnectError("All connection attempts failed")
            raise kr8s.ServerError(f"{code}", response=httpx.Response(code))
        if params.get("watch"):
            yield httpx.Response(200, stream=Lines(self.watch(url, namespace, params)))
            return
        try:
            answer = await self.request("GET", version, url, namespace, params=params)
        except ApiError as error:
            raise kr8s.ServerError(error.message, response=httpx.Response(error.status)) from error
        finally:
            await self._notify()
        yield httpx.Response(200, json=answer)

    async def watch(
        self, plural: str, namespace: str | None, params: dict[str, str]
    ) -> AsyncIterator[dict[str, Any]]:
        assert namespace == NS
        self.watch_params.append(dict(params))
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.watches.setdefault(plural, []).append(queue)
        await self._notify()
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self.watches[plural].remove(queue)


class Lines(httpx.AsyncByteStream):
    """A watch's body: one JSON line per event."""

    def __init__(self, events: AsyncIterator[dict[str, Any]]) -> None:
        self.events = events

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for event in self.events:
            yield json.dumps(event).encode() + b"\n"


def workflow(name: str, owner: str = ALICE, agreement: str = "0xagree", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": cluster_store.API_VERSION,
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {"owner": owner, "agreementId": agreement, "environment": "small", **spec},
    }


def environment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": cluster_store.API_VERSION,
        "kind": "ComputeEnvironment",
        "metadata": {"name": name},
        "spec": {},
    }


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def started(kube: FakeKube) -> tuple[ClusterStore, asyncio.Task[None]]:
    store = ClusterStore(kube, NS)
    task = asyncio.create_task(store.run())
    await asyncio.wait_for(store.workflows.synced.wait(), 2)
    await asyncio.wait_for(store.environments.synced.wait(), 2)
    await settle()
    return store, task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_lists_in_pages_then_watches_from_the_lists_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(informer, "FIRST_PAGE", 2)
    monkeypatch.setattr(informer, "LIST_PAGE", 2)
    kube = FakeKube()
    for n in range(5):
        kube.put("workflows", workflow(f"job{n}"))
    kube.put("computeenvironments", environment("small"))
    store = ClusterStore(kube, NS)
    assert not store.synced
    store, task = await started(kube)
    assert store.synced
    lists = [r for r in kube.requests if r == ("GET", "workflows", "")]
    assert len(lists) == 3  # 2 + 2 + 1
    assert sorted(store.workflows.objects) == ["job0", "job1", "job2", "job3", "job4"]
    # The items of a LIST lack apiVersion and kind; the cache fills them in.
    assert store.workflows.objects["job0"]["kind"] == "Workflow"
    assert {p["resourceVersion"] for p in kube.watch_params} == {"106"}
    assert kube.watch_params[0]["allowWatchBookmarks"] == "true"
    await stop(task)


async def test_watch_events_update_the_indexes_without_any_request() -> None:
    kube = FakeKube()
    kube.put("workflows", workflow("a", owner=ALICE, agreement="x"))
    store, task = await started(kube)
    requests = len(kube.requests)
    kube.put("workflows", workflow("b", owner=BOB, agreement="x"), created="2026-12-01T09:00:00Z")
    kube.put("workflows", workflow("a", owner=BOB, agreement="y"))  # owner changed
    await settle()
    assert [w["metadata"]["name"] for w in await store.list_workflows(owner=BOB)] == [
        "b",
        "a",
    ]  # oldest first
    assert await store.list_workflows(owner=ALICE) == []
    assert [w["metadata"]["name"] for w in await store.list_workflows(agreement_id="x")] == ["b"]
    assert [w["metadata"]["name"] for w in await store.list_workflows(owner=BOB, agreement_id="y")] == ["a"]
    assert await store.list_workflows(owner=ALICE, job_id="a") == []
    kube.delete("workflows", "b")
    await settle()
    assert await store.get_workflow("b") is None
    assert await store.list_workflows(agreement_id="x") == []
    assert store.workflows.resource_version == str(kube.version)
    assert len(kube.requests) == requests  # answers come from the cache
    await stop(task)


async def test_a_created_workflow_is_seen_at_once_before_its_watch_event() -> None:
    kube = FakeKube()
    store, task = await started(kube)
    kube.muted.add("workflows")  # the watch delivers nothing: only the POST's answer can fill the cache
    created = await store.create_workflow(workflow("new", agreement="z"))
    assert created["metadata"]["resourceVersion"] == "101"
    found = await store.get_workflow("new")
    assert found is not None
    assert found["metadata"]["uid"] == "uid-1"
    assert [w["metadata"]["name"] for w in await store.list_workflows(agreement_id="z")] == ["new"]
    await stop(task)


def test_a_writes_answer_never_replaces_a_newer_watch_event() -> None:
    cache = WatchCache(FakeKube(), cluster_store.WORKFLOWS, NS, indexes=("owner",))
    newer = workflow("w", owner=BOB)
    newer["metadata"]["resourceVersion"] = "120"
    cache.informer.apply({"type": "MODIFIED", "object": newer})
    older = workflow("w", owner=ALICE)
    older["metadata"]["resourceVersion"] = "119"
    cache.written(older)
    assert cache.objects["w"]["spec"]["owner"] == BOB
    assert cache.names_by("owner", ALICE) == set()
    older["metadata"]["resourceVersion"] = "121"
    cache.written(older)
    assert cache.names_by("owner", ALICE) == {"w"}


def test_a_list_replaces_the_whole_cache_and_its_indexes_and_names_what_differs() -> None:
    cache = WatchCache(FakeKube(), cluster_store.WORKFLOWS, NS, indexes=("owner",))
    for name, owner, version in (("a", ALICE, "1"), ("b", ALICE, "2"), ("c", BOB, "3")):
        obj = workflow(name, owner=owner)
        obj["metadata"].update(namespace=NS, resourceVersion=version)
        cache.put((NS, name), obj)
    kept, moved = copy.deepcopy(cache.objects["a"]), copy.deepcopy(cache.objects["b"])
    moved["spec"]["owner"], moved["metadata"]["resourceVersion"] = BOB, "9"
    assert cache.replace({(NS, "a"): kept, (NS, "b"): moved}) == [(NS, "b"), (NS, "c")]
    assert sorted(cache.objects) == ["a", "b"]
    assert cache.names_by("owner", ALICE) == {"a"}
    assert cache.names_by("owner", BOB) == {"b"}
    assert len(cache) == 2


async def test_an_expired_version_lists_again_and_a_closed_watch_resumes_without_listing() -> None:
    kube = FakeKube()
    kube.put("workflows", workflow("a"))
    store, task = await started(kube)
    lists = lambda: sum(1 for r in kube.requests if r == ("GET", "workflows", ""))  # noqa: E731
    assert lists() == 1
    kube.end_watches("workflows")  # the server's timeout: resume from the last version
    await settle()
    assert lists() == 1
    assert kube.watch_params[-1]["resourceVersion"] == store.workflows.resource_version
    # Meanwhile, a deletion the watch missed; then 410 Gone: the new LIST sees it.
    kube.objects.pop(("workflows", NS, "a"))
    kube.end_watches("workflows", {"type": "ERROR", "object": {"code": 410, "message": "too old"}})
    await settle()
    assert lists() == 2
    assert await store.get_workflow("a") is None
    await stop(task)


async def test_a_bookmark_moves_the_version_only() -> None:
    cache = WatchCache(FakeKube(), cluster_store.WORKFLOWS, NS)
    cache.replace({(NS, "a"): workflow("a")})
    cache.informer.apply({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}})
    assert cache.resource_version == "9"
    assert list(cache.objects) == ["a"]


async def test_the_cache_stays_ready_through_failed_watches_and_a_relist_and_catches_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(informer, "RETRY_SECONDS", 0.01)
    kube = FakeKube()
    kube.put("workflows", workflow("a"))
    store, task = await started(kube)
    lists = lambda: sum(1 for r in kube.requests if r == ("GET", "workflows", ""))  # noqa: E731
    watches = len(kube.watch_params)
    # The watch ends; the next attempt gets no answer, the one after a 500: both retried, no LIST.
    kube.refuse_reads[:] = [0, 500]
    kube.end_watches("workflows")
    await asyncio.wait_for(kube.until(lambda: len(kube.refuse_reads) == 1), 2)
    assert store.synced
    assert await store.get_workflow("a") is not None  # its last state meanwhile
    await asyncio.wait_for(kube.until(lambda: len(kube.watch_params) > watches), 2)
    assert lists() == 1
    # 410 Gone, and the LIST after it refused once: still ready, then the new LIST's content.
    kube.objects.pop(("workflows", NS, "a"))
    kube.put("workflows", workflow("b"))
    kube.refuse_reads[:] = [503]
    watches = len(kube.watch_params)
    kube.end_watches("workflows", {"type": "ERROR", "object": {"code": 410, "message": "too old"}})
    await asyncio.wait_for(kube.until(lambda: lists() == 2), 2)  # the refused one
    assert store.synced
    assert await store.get_workflow("a") is not None
    await asyncio.wait_for(kube.until(lambda: len(kube.watch_params) > watches), 2)
    assert lists() == 3
    assert sorted(store.workflows.objects) == ["b"]
    assert store.synced
    await stop(task)


async def test_stop_patches_spec_stop_once_and_answers_none_for_a_gone_workflow() -> None:
    kube = FakeKube()
    kube.put("workflows", workflow("a"))
    store, task = await started(kube)
    patched = await store.set_stop("a")
    assert patched is not None
    assert patched["spec"]["stop"] is True
    assert kube.objects[("workflows", NS, "a")]["spec"]["stop"] is True
    assert (await store.get_workflow("a") or {})["spec"]["stop"] is True
    patches = sum(1 for r in kube.requests if r[0] == "PATCH")
    await store.set_stop("a")
    assert sum(1 for r in kube.requests if r[0] == "PATCH") == patches  # already stopped: no write
    assert await store.set_stop("missing") is None
    await stop(task)


async def test_environments_come_from_their_watch() -> None:
    kube = FakeKube()
    kube.put("computeenvironments", environment("small"))
    store, task = await started(kube)
    kube.put("computeenvironments", environment("big"))
    await settle()
    assert [e["metadata"]["name"] for e in await store.list_environments()] == ["big", "small"]
    await stop(task)


# Kr8sKube: the real kr8s client against a loopback aiohttp server that answers as the API server would
# (paths, query, status codes, a watch's JSON lines). Not a real API server either.


@pytest.fixture
async def loopback_api() -> AsyncIterator[tuple[Kr8sKube, list[tuple[str, str, dict[str, str], Any]]]]:
    seen: list[tuple[str, str, dict[str, str], Any]] = []
    base = f"/apis/{cluster_store.API_VERSION}/namespaces/{NS}/workflows"

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path.rstrip("/") == "/version":  # kr8s checks the server's version when it connects
            return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0"})
        body = await request.json() if request.can_read_body else None
        seen.append((request.method, request.path, dict(request.query), body))
        if request.method == "GET" and request.query.get("watch") == "1":
            if request.query.get("resourceVersion") == "1":
                return web.json_response({"kind": "Status", "code": 410, "message": "too old"}, status=410)
            response = web.StreamResponse()
            await response.prepare(request)
            for event in (
                {"type": "ADDED", "object": workflow("a")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "7"}}},
            ):
                await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
            return response
        if request.path == base + "/missing":
            return web.json_response({"kind": "Status", "code": 404, "message": "not found"}, status=404)
        if request.method == "POST":
            return web.json_response({"kind": "Status", "code": 409, "message": "exists"}, status=409)
        return web.json_response({"kind": "WorkflowList", "metadata": {"resourceVersion": "5"}, "items": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with TestServer(app, host="127.0.0.1") as server:
        api = await kr8s.asyncio.api(url=str(server.make_url("")).rstrip("/"), namespace=NS)
        yield Kr8sKube(api), seen


async def test_kr8s_adapter_paths_errors_and_watch_lines(
    loopback_api: tuple[Kr8sKube, list[tuple[str, str, dict[str, str], Any]]],
) -> None:
    kube, seen = loopback_api
    base = f"/apis/{cluster_store.API_VERSION}/namespaces/{NS}/workflows"
    listed = await kube.request("GET", cluster_store.API_VERSION, "workflows", NS, params={"limit": "250"})
    assert listed["metadata"] == {"resourceVersion": "5"}
    assert seen[-1] == ("GET", base, {"limit": "250"}, None)
    with pytest.raises(ApiError) as missing:
        await kube.request("GET", cluster_store.API_VERSION, "workflows", NS, "missing")
    assert missing.value.status == 404
    with pytest.raises(ApiError) as exists:
        await kube.request("POST", cluster_store.API_VERSION, "workflows", NS, body=workflow("a"))
    assert exists.value.status == 409
    assert seen[-1][3] == workflow("a")
    # The informer's LIST and WATCH through the same client (its own requests, its own error mapping).
    cache = WatchCache(kube, cluster_store.WORKFLOWS, NS)
    await cache.informer.list()
    assert seen[-1][2] == {"limit": str(informer.FIRST_PAGE)}
    assert cache.resource_version == "5"
    await cache.informer.watch_once()
    assert seen[-1][2] == {
        "watch": "1",
        "resourceVersion": "5",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": str(informer.WATCH_SECONDS),
    }
    assert list(cache.objects) == ["a"]
    assert cache.resource_version == "7"
    cache.informer.resource_version = "1"
    with pytest.raises(informer.Expired):
        await cache.informer.watch_once()


async def test_kr8s_adapter_counts_every_request_answered_or_not_and_each_watch_asked_for(
    loopback_api: tuple[Kr8sKube, list[tuple[str, str, dict[str, str], Any]]],
) -> None:
    uncounted, seen = loopback_api
    counted: list[tuple[str, str]] = []
    kube = Kr8sKube(uncounted.api, count=lambda verb, resource: counted.append((verb, resource)))
    await kube.request("GET", cluster_store.API_VERSION, "workflows", NS)
    with pytest.raises(ApiError):
        await kube.request("GET", cluster_store.API_VERSION, "workflows", NS, "missing")
    with pytest.raises(ApiError):
        await kube.request("POST", cluster_store.API_VERSION, "workflows", NS, body=workflow("a"))
    assert counted == [("GET", "workflows"), ("GET", "workflows"), ("POST", "workflows")]
    sent = len(seen)
    watch = kube.call_api(
        "GET",
        version=cluster_store.API_VERSION,
        namespace=NS,
        url="workflows",
        params={"watch": "1"},
        stream=True,
    )
    assert counted[-1] == ("WATCH", "workflows")  # when asked for, before it is sent
    async with watch as response:
        assert [json.loads(line)["type"] async for line in response.aiter_lines() if line] == [
            "ADDED",
            "BOOKMARK",
        ]
    assert len(counted) == 4
    assert len(seen) == sent + 1  # one request on the wire for one counted
    cache = WatchCache(kube, cluster_store.WORKFLOWS, NS)
    await cache.informer.list()
    await cache.informer.watch_once()
    assert counted[4:] == [("GET", "workflows"), ("WATCH", "workflows")]  # the informer's, counted too
    await uncounted.request("GET", cluster_store.API_VERSION, "workflows", NS)
    assert len(counted) == 6  # another Kr8sKube's, uncounted by default


async def test_jobs_created_within_one_second_are_listed_in_the_order_the_api_created_them() -> None:
    kube = FakeKube()

    def created_by_api(name: str, date_created: str) -> dict[str, Any]:
        obj = workflow(name)
        obj["metadata"]["annotations"] = {COMPAT_ANNOTATION: json.dumps({"dateCreated": date_created})}
        return obj

    second = "2026-12-01T10:00:00Z"
    kube.put("workflows", created_by_api("bbbb", "1796119200.100000"), created=second)
    kube.put("workflows", created_by_api("aaaa", "1796119200.900000"), created=second)
    kube.put("workflows", workflow("kubectl-made"), created=second)  # no dateCreated: first, then by name
    kube.put("workflows", created_by_api("cccc", "1796119200.500000"), created="2026-12-01T10:00:01Z")
    store, task = await started(kube)
    listed = [w["metadata"]["name"] for w in await store.list_workflows(owner=ALICE)]
    assert listed == ["kubectl-made", "bbbb", "aaaa", "cccc"]
    await stop(task)
