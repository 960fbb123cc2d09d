"""Waiting on cluster state by watching it, never by sleeping and re-reading."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, TypeVar

import httpx
import kr8s
import kr8s.asyncio
from kr8s.asyncio.objects import APIObject

T = TypeVar("T", bound=APIObject)
E = TypeVar("E")

# What the API server's first seconds back after a restart answer: 429 "storage is (re)initializing",
# 5xx, or a refused or cut connection. A watch that tolerates restarts waits RETRY_AFTER and tries again.
RESTART_ERRORS = (kr8s.ServerError, httpx.HTTPError)
RETRY_AFTER = 1.0


async def wait_for(
    obj: T, predicate: Callable[[T], bool], timeout: float = 60, rewatch_after: float | None = None
) -> T:
    """Return `obj` once `predicate(obj)` holds, re-evaluated on every watch event of the object.

    `rewatch_after` makes the wait survive an API server restart: a watch that has shown no event for that
    many seconds is dropped, and the object read afresh and watched again. After a restart a watch may stay
    open and silent for ever, and one resumed from a resourceVersion the new server does not serve gets 410,
    on which kr8s restarts the same watch for ever; a fresh read gives a version it serves. API errors
    (RESTART_ERRORS) are then retried too. Without it, a wait is one read and watches from there on.

    Raises TimeoutError naming the object and its last observed status when it never does.
    """
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await obj.refresh()
                    while not predicate(obj):
                        # A watch stream may end (server-side timeout); start another from the last version.
                        async with contextlib.aclosing(
                            quiet_bounded(obj.async_watch(), rewatch_after)
                        ) as events:
                            async for _ in events:
                                if predicate(obj):
                                    break
                    return obj
                except TimeoutError:  # the watch was quiet for rewatch_after: read afresh, watch again
                    continue
                except RESTART_ERRORS:
                    if rewatch_after is None:
                        raise
                    await asyncio.sleep(RETRY_AFTER)  # the API server is not back yet: nothing to watch
    except TimeoutError:
        raise TimeoutError(
            f"{obj.kind} {obj.namespace}/{obj.name} did not reach the awaited state in {timeout}s; "
            f"last status: {obj.raw.get('status')}"
        ) from None


async def quiet_bounded(events: AsyncGenerator[E, None], quiet: float | None) -> AsyncGenerator[E, None]:
    """`events`, raising TimeoutError once none has come for `quiet` seconds (never when it is None).

    The timeout covers only the wait for the next event, never the consumer's work between two.
    """
    try:
        while True:
            try:
                async with asyncio.timeout(quiet):
                    event = await anext(events)
            except StopAsyncIteration:
                return
            yield event
    finally:
        await events.aclose()


async def watch_through_restarts(
    api: kr8s.asyncio.Api, kind: str, namespace: str | None = None, rewatch_after: float | None = 15
) -> AsyncIterator[tuple[str, APIObject]]:
    """Every event of `kind`'s objects in `namespace`, for ever, across API server restarts: a watch that
    ends, or has been quiet for `rewatch_after` seconds (None: only one that ends), starts again, listing
    every object first (as ADDED events); API errors (RESTART_ERRORS) are retried after RETRY_AFTER."""
    while True:
        try:
            async for event in quiet_bounded(api.async_watch(kind, namespace=namespace), rewatch_after):
                yield event
        except TimeoutError:
            continue
        except RESTART_ERRORS:
            await asyncio.sleep(RETRY_AFTER)


async def wait_for_object(
    api: kr8s.asyncio.Api, kind: str, name: str, namespace: str | None = None, timeout: float = 60
) -> Any:
    """Return the object `kind`/`name` as soon as a watch shows it exists."""
    async with asyncio.timeout(timeout):
        while True:
            async for _event, obj in api.async_watch(
                kind, namespace=namespace, field_selector=f"metadata.name={name}"
            ):
                if _event in ("ADDED", "MODIFIED"):
                    return obj


async def wait_for_deletion(obj: APIObject, timeout: float = 60) -> None:
    """Return once `obj` is gone from the API server (watch until DELETED, or already absent)."""
    async with asyncio.timeout(timeout):
        await obj.wait("delete")
