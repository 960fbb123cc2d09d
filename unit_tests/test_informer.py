"""The informers (the watches kopf does not keep) and the start-up barrier: a LIST in pages sized by what
the objects weigh, a WATCH from its version, 410 Gone -> one LIST that reports only what differs, and no
reconcile before every kind is listed once; a LIST or WATCH that gets no answer (or a 5xx) is the API lost
in k8s.ApiHealth, and the next answer its return."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import kr8s
import pytest

from ocean_c2d import informer
from ocean_c2d.informer import Expired, Informer, WatchFailed, next_page
from ocean_c2d.k8s import ApiHealth
from ocean_c2d.metrics import API_ERRORS, API_RECONNECTS, API_UP
from ocean_c2d.view import FinishedWorkflow, RecordStore, WorkflowStore
from ocean_c2d.workqueue import WorkQueue
from unit_tests.factories import workflow_object


def workflow(name: str, version: str, stage: str | None = None) -> dict[str, Any]:
    body = workflow_object(metadata={"name": name, "uid": f"uid-{name}"})
    body["metadata"]["resourceVersion"] = version
    if stage:
        body["status"] = {"stage": stage}
    return body


class Answer:
    def __init__(self, body: dict[str, Any] | None = None, lines: list[dict[str, Any]] | None = None) -> None:
        self.body = body or {}
        self.content = json.dumps(self.body).encode()
        self.lines = lines or []

    def json(self) -> dict[str, Any]:
        return json.loads(self.content)  # type: ignore[no-any-return]

    async def aiter_lines(self) -> AsyncIterator[str]:
        for line in self.lines:
            yield json.dumps(line)


class FakeApi:
    """kr8s' call_api: LIST pages from `items`, in the order asked; a watch answers `events`."""

    def __init__(self, items: list[dict[str, Any]], version: str = "10") -> None:
        self.items = items
        self.version = version
        self.events: list[dict[str, Any]] = []
        self.requests: list[dict[str, str]] = []
        self.refusals: list[Exception] = []  # what the next requests raise, as kr8s or httpx would

    @contextlib.asynccontextmanager
    async def call_api(self, method: str, **kwargs: Any) -> AsyncIterator[Answer]:
        params = dict(kwargs.get("params") or {})
        self.requests.append(params)
        if self.refusals:
            raise self.refusals.pop(0)
        if params.get("watch"):
            yield Answer(lines=self.events)
            return
        start = int(params.get("continue", "0"))
        end = start + int(params["limit"])
        metadata: dict[str, Any] = {"resourceVersion": self.version}
        if end < len(self.items):
            metadata["continue"] = str(end)
        yield Answer({"items": self.items[start:end], "metadata": metadata})


def make(
    api: FakeApi, changed: list[tuple[str, str]], health: ApiHealth | None = None
) -> tuple[Informer, WorkflowStore]:
    store = WorkflowStore()
    client: Any = api  # kr8s' call_api, as far as the informer calls it
    watch = Informer(
        client, "oceanprotocol.com/v1alpha1", "workflows", "c2d", store, changed.append, health=health
    )
    return watch, store


def refused(code: int) -> kr8s.ServerError:
    return kr8s.ServerError(f"{code}", response=httpx.Response(code))


def value(metric: Any, *labels: str) -> float:
    sample = metric.labels(*labels) if labels else metric
    return float(sample._value.get())


async def test_a_list_comes_in_pages_sized_by_the_objects_and_reports_every_key() -> None:
    api = FakeApi([workflow(f"w{n:03d}", str(n + 1)) for n in range(40)])
    changed: list[tuple[str, str]] = []
    watch, store = make(api, changed)
    await watch.list()
    assert len(store) == 40
    assert sorted(changed) == sorted(("c2d", f"w{n:03d}") for n in range(40))
    assert api.requests[0]["limit"] == str(informer.FIRST_PAGE)
    assert int(api.requests[1]["limit"]) > informer.FIRST_PAGE  # small objects: bigger pages
    assert watch.resource_version == "10"


def test_pages_stay_small_for_the_largest_objects() -> None:
    assert next_page(8 * 1_450_000, 8) == informer.FIRST_PAGE
    assert next_page(8 * 3_000, 8) == informer.LIST_PAGE


async def test_a_relist_reports_only_what_differs_and_what_went() -> None:
    api = FakeApi([workflow("a", "1"), workflow("b", "2"), workflow("c", "3")])
    changed: list[tuple[str, str]] = []
    watch, store = make(api, changed)
    await watch.list()
    changed.clear()
    api.items = [workflow("a", "1"), workflow("b", "5", stage="Finished")]  # c went, b changed
    await watch.list()
    assert sorted(changed) == [("c2d", "b"), ("c2d", "c")]
    assert isinstance(store.workflows[("c2d", "b")][0], FinishedWorkflow)
    assert ("c2d", "c") not in store.workflows


async def test_watch_events_feed_the_store_bookmarks_move_the_version_and_410_expires() -> None:
    api = FakeApi([workflow("a", "1")])
    changed: list[tuple[str, str]] = []
    watch, store = make(api, changed)
    await watch.list()
    changed.clear()
    api.events = [
        {"type": "ADDED", "object": workflow("b", "11")},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}},
        {"type": "DELETED", "object": workflow("a", "13")},
    ]
    await watch.watch_once()
    assert changed == [("c2d", "b"), ("c2d", "a")]
    assert list(store.workflows) == [("c2d", "b")]
    assert watch.resource_version == "13"
    assert api.requests[-1]["resourceVersion"] == "10"
    api.events = [{"type": "ERROR", "object": {"code": 410, "message": "too old"}}]
    with pytest.raises(Expired):
        await watch.watch_once()


def test_the_record_store_keeps_name_and_data_only() -> None:
    store = RecordStore()
    body = {"metadata": {"name": "r", "namespace": "c2d", "labels": {"x": "y"}}, "data": {"k": "v"}}
    entry = store.entry(body)
    assert entry == {"metadata": {"name": "r", "namespace": "c2d"}, "data": {"k": "v"}}
    assert store.replace({("c2d", "r"): entry}) == [("c2d", "r")]
    assert store.replace({("c2d", "r"): store.entry(body)}) == []  # same data: nothing to report


async def test_no_key_is_handled_before_the_queue_is_ready() -> None:
    ready = asyncio.Event()
    handled: list[Any] = []

    async def handler(key: Any) -> None:
        handled.append(key)

    async def wait() -> None:
        await ready.wait()

    queue = WorkQueue(handler, workers=2, ready=wait)
    queue.add(("workflow", "c2d", "a"))
    running = asyncio.create_task(queue.run())
    for _ in range(5):
        await asyncio.sleep(0)
    assert handled == []
    ready.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert handled == [("workflow", "c2d", "a")]
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running


async def test_a_list_or_watch_without_answer_is_the_api_lost_and_the_next_answer_its_return(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = FakeApi([workflow("a", "1")])
    health = ApiHealth(None)  # no probe: the informer's next answer tells
    watch, store = make(api, [], health)
    errors, reconnects = value(API_ERRORS, "informer"), value(API_RECONNECTS)
    api.refusals = [httpx.ConnectError("All connection attempts failed"), refused(503)]
    with caplog.at_level(logging.INFO, "ocean_c2d"):
        with pytest.raises(WatchFailed):
            await watch.list()
        assert value(API_UP) == 0
        with pytest.raises(WatchFailed):
            await watch.watch_once()
        assert health.down_since is not None
        await watch.list()  # answered
    assert health.down_since is None
    assert len(store) == 1
    assert value(API_ERRORS, "informer") == errors + 2
    assert value(API_RECONNECTS) == reconnects + 1
    assert value(API_UP) == 1
    said = [r.getMessage() for r in caplog.records if r.name == "ocean_c2d"]
    assert said[0].startswith("Lost the Kubernetes API (informer: workflows: ConnectError: All connection")
    assert said[1].startswith("Reconnected to the Kubernetes API")
    assert "2 failed requests" in said[1]


async def test_a_refusal_410_and_a_watchs_error_event_are_told_as_what_they_are() -> None:
    api = FakeApi([workflow("a", "1")])
    health = ApiHealth(None)
    watch, _ = make(api, [], health)
    errors = value(API_ERRORS, "informer")
    api.refusals = [refused(403), refused(410)]
    with pytest.raises(WatchFailed):
        await watch.list()  # RBAC's answer: the API is there
    with pytest.raises(Expired):
        await watch.watch_once()
    assert health.down_since is None
    assert value(API_ERRORS, "informer") == errors
    # The watch opened, then the API server's own failure in the stream: the API lost.
    api.events = [{"type": "ERROR", "object": {"code": 500, "message": "etcdserver: request timed out"}}]
    with pytest.raises(WatchFailed):
        await watch.watch_once()
    assert health.down_since is not None
    assert value(API_ERRORS, "informer") == errors + 1
    api.events = []
    await watch.watch_once()  # a watch that opens is an answer
    assert health.down_since is None
