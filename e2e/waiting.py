"""Waiting on cluster state by watching it, never by sleeping and re-reading."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import kr8s.asyncio
from kr8s.asyncio.objects import APIObject

T = TypeVar("T", bound=APIObject)


async def wait_for(obj: T, predicate: Callable[[T], bool], timeout: float = 60) -> T:
    """Return `obj` once `predicate(obj)` holds, re-evaluated on every watch event of the object.

    Raises TimeoutError naming the object and its last observed status when it never does.
    """
    try:
        async with asyncio.timeout(timeout):
            await obj.refresh()
            while not predicate(obj):
                # A watch stream may end (server-side timeout); start another from the last version.
                async for _event, _ in obj.async_watch():
                    if predicate(obj):
                        break
            return obj
    except TimeoutError:
        raise TimeoutError(
            f"{obj.kind} {obj.namespace}/{obj.name} did not reach the awaited state in {timeout}s; "
            f"last status: {obj.raw.get('status')}"
        ) from None


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
