"""Watches without kopf, for the kinds that grow with the cluster's history (Workflows, results records).

kopf holds every object of a watched kind in its own per-object machinery, and on start it makes each one
wait until every object of every kind is listed: a wake-up of every waiting object per object listed,
O(N^2) in all (10,000 finished Workflows took 610 s before their first reconcile, and 548 MB). An
Informer is one LIST (in pages, each object trimmed by its sink as the page arrives) and then one WATCH
from the list's resourceVersion, with bookmarks to keep that version fresh; 410 Gone (the version is too
old) means one LIST again, and only the objects that differ from what the sink holds are reported.

`synced` is set once the first LIST is in the sink: the operator reconciles nothing before every kind is
listed (see handlers.py), so the first reconcile after a restart sees everything that exists. It stays
set through a later LIST (410) and a failed watch's retries: the sink holds its last state meanwhile.

A failed request (no answer, or a 5xx) is told to `health` (k8s.ApiHealth in the operator: the "Lost the
Kubernetes API" line and its metrics), and so is every answer after it, so the informer's own retries
count as the operator's requests do. The API's cache (api/cluster_store.py) is an Informer too, with a
sink that keeps whole objects and a client that counts its requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import httpx
import kr8s

log = logging.getLogger("ocean_c2d")

Key = tuple[str, str]  # (namespace, name)
# A LIST's pages: the first asks for FIRST_PAGE objects, each next one for as many as fit PAGE_BYTES at
# the size the objects had so far (within FIRST_PAGE..LIST_PAGE). A page is parsed whole before the sink
# trims it, and a Workflow of the API server's largest size (1.5 MB of JSON) costs ~25 times that as
# Python objects: small Workflows come 500 at a time, the largest 8 at a time (e2e/test_operator_memory.py).
FIRST_PAGE = 8
LIST_PAGE = 500
PAGE_BYTES = 4_000_000
WATCH_SECONDS = 300  # the API server ends a watch after its own timeout; asking keeps it predictable
RETRY_SECONDS = 2.0
HEALTH_SOURCE = "informer"  # the `source` label of its failures in ApiHealth's metrics


class Api(Protocol):
    """The client an Informer is given: kr8s' `call_api` (a kr8s.asyncio.Api, which the runner makes; the
    API's Kr8sKube, which counts each request before passing it on)."""

    def call_api(
        self, method: str, *, version: str, namespace: str | None, url: str, **kwargs: Any
    ) -> AbstractAsyncContextManager[httpx.Response]:
        """A request as an Informer sends it (kwargs: params, stream, timeout); raises as kr8s does."""


class Health(Protocol):
    """Told of each failed request and of each answer (k8s.ApiHealth)."""

    def failed(self, source: str, error: str) -> None: ...

    def answered(self) -> None: ...


class Sink(Protocol):
    """What an Informer feeds: it keeps a trimmed entry of each object, by (namespace, name)."""

    def entry(self, obj: dict[str, Any]) -> Any:
        """What is kept of `obj` (a LIST's item or a watch event's object)."""

    def replace(self, entries: dict[Key, Any]) -> list[Key]:
        """A LIST's whole content: the keys whose entry changed, appeared or went."""

    def put(self, key: Key, entry: Any) -> None: ...

    def remove(self, key: Key) -> None: ...


class Expired(Exception):  # noqa: N818 (a condition, not a crash)
    """The watch's resourceVersion is too old (410 Gone): LIST again."""


class WatchFailed(Exception):  # noqa: N818 (a condition the loop retries)
    """The API server refused or ended a request (`status`, any but 410), or could not be reached (0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    @property
    def unanswered(self) -> bool:
        """No answer, or the API server's own failure (5xx): what ApiHealth counts as the API lost."""
        return self.status == 0 or self.status >= 500


def next_page(listed_bytes: int, listed: int) -> int:
    """How many objects the next page asks for, after `listed` objects came in `listed_bytes`."""
    average = max(1, listed_bytes // max(1, listed))
    return max(FIRST_PAGE, min(LIST_PAGE, PAGE_BYTES // average))


def key_of(obj: dict[str, Any]) -> Key:
    metadata = obj["metadata"]
    return (str(metadata.get("namespace") or ""), str(metadata["name"]))


class Informer:
    """One kind (`version`, `plural`) in `namespace` (None: all), optionally by `label_selector`, kept in
    `sink`; `changed(key)` is told of every key whose entry changed (each one of the first LIST too);
    `health`, if given, of every failed request and every answer."""

    def __init__(
        self,
        api: Api,
        version: str,
        plural: str,
        namespace: str | None,
        sink: Sink,
        changed: Callable[[Key], None],
        label_selector: str = "",
        health: Health | None = None,
    ) -> None:
        self.api = api
        self.version = version
        self.plural = plural
        self.namespace = namespace
        self.sink = sink
        self.changed = changed
        self.label_selector = label_selector
        self.health = health
        self.synced = asyncio.Event()
        self.resource_version = ""

    def _params(self, **extra: str) -> dict[str, str]:
        params = dict(extra)
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        return params

    async def list(self) -> None:
        """One LIST, page by page, into the sink; the changed keys are told after the last page."""
        entries: dict[Key, Any] = {}
        limit, listed_bytes, listed = FIRST_PAGE, 0, 0
        params = self._params(limit=str(limit))
        while True:
            page, size = await self._get(params)
            items = page.get("items") or []
            kind = str(page.get("kind") or "List").removesuffix("List")
            for item in items:
                # A LIST's items carry no apiVersion or kind; a watch's objects do.
                item.setdefault("apiVersion", self.version)
                item.setdefault("kind", kind)
                entries[key_of(item)] = self.sink.entry(item)
            count = len(items)
            del items
            metadata = page.get("metadata") or {}
            page = {}
            if not metadata.get("continue"):
                break
            listed_bytes, listed = listed_bytes + size, listed + count
            limit = next_page(listed_bytes, listed)
            params = self._params(limit=str(limit), **{"continue": metadata["continue"]})
        self.resource_version = str(metadata.get("resourceVersion") or "")
        for key in self.sink.replace(entries):
            self.changed(key)

    def apply(self, event: dict[str, Any]) -> None:
        """One watch event into the sink. Expired on a 410 ERROR; WatchFailed on any other ERROR."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            code = int(obj.get("code") or 0)
            if code == 410:
                raise self._told(Expired(str(obj.get("message", ""))))
            raise self._told(WatchFailed(f"{code}: {obj.get('message', '')}", code))
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            key = key_of(obj)
            self.sink.put(key, self.sink.entry(obj))
            self.changed(key)
        elif kind == "DELETED":
            key = key_of(obj)
            self.sink.remove(key)
            self.changed(key)
        # BOOKMARK: only its resourceVersion matters.
        if version:
            self.resource_version = str(version)

    async def watch_once(self) -> None:
        """One WATCH from the current resourceVersion, until the API server ends it."""
        params = self._params(
            watch="1",
            resourceVersion=self.resource_version,
            allowWatchBookmarks="true",
            timeoutSeconds=str(WATCH_SECONDS),
        )
        async for event in self._stream(params):
            self.apply(event)

    async def run(self, retry_seconds: float | None = None) -> None:
        """LIST, then WATCH for ever; LIST again only when the version expired (or a LIST failed)."""
        retry_seconds = RETRY_SECONDS if retry_seconds is None else retry_seconds
        listed = False
        while True:
            try:
                if not listed:
                    await self.list()
                    listed = True
                    if not self.synced.is_set():
                        log.info("Listed %s: %d", self.plural, self._count())
                    self.synced.set()
                await self.watch_once()
            except Expired:
                log.info("Watch of %s expired; listing again", self.plural)
                listed = False
            except (WatchFailed, ValueError, KeyError) as error:
                log.warning("Watch of %s failed (%s); retrying in %ss", self.plural, error, retry_seconds)
                await asyncio.sleep(retry_seconds)

    def _count(self) -> int:
        held = getattr(self.sink, "__len__", None)
        return int(held()) if held is not None else -1

    def _answered(self) -> None:
        if self.health is not None:
            self.health.answered()

    def _told(self, failure: Expired | WatchFailed) -> Expired | WatchFailed:
        """A failed request (or a watch's ERROR event), told to `health`: the API lost (no answer, 5xx),
        or an answer all the same (410 Gone, a 4xx)."""
        if self.health is not None:
            if isinstance(failure, WatchFailed) and failure.unanswered:
                self.health.failed(HEALTH_SOURCE, f"{self.plural}: {failure}")
            else:
                self.health.answered()
        return failure

    # ---- the requests (kr8s' client: its authentication, TLS and token refresh) ------------------------

    async def _get(self, params: dict[str, str]) -> tuple[dict[str, Any], int]:
        """The JSON answer of a GET, and its size in bytes."""
        try:
            async with self.api.call_api(
                "GET", version=self.version, namespace=self.namespace, url=self.plural, params=params
            ) as response:
                self._answered()
                answer: dict[str, Any] = response.json()
                return answer, len(response.content)
        except (kr8s.ServerError, httpx.HTTPError, kr8s.APITimeoutError) as error:
            raise self._told(_failure(error)) from error

    async def _stream(self, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        try:
            async with self.api.call_api(
                "GET",
                version=self.version,
                namespace=self.namespace,
                url=self.plural,
                params=params,
                stream=True,
                timeout=httpx.Timeout(10, read=WATCH_SECONDS + 30),
            ) as response:
                self._answered()
                async for line in response.aiter_lines():
                    if line.strip():
                        yield json.loads(line)
        except (kr8s.ServerError, httpx.HTTPError, kr8s.APITimeoutError) as error:
            raise self._told(_failure(error)) from error


def _failure(error: Exception) -> Expired | WatchFailed:
    """A failed request as the loop reads it: 410 Gone is Expired (LIST again), anything else WatchFailed."""
    if isinstance(error, kr8s.ServerError):
        code = error.response.status_code if error.response is not None else 0
        if code == 410:
            return Expired(str(error)[:300])
        return WatchFailed(f"{code}: {str(error)[:300]}", code)
    return WatchFailed(f"{type(error).__name__}: {str(error)[:300]}")
