"""The work queue of the operator's reconciles: keys of Workflows and ComputeEnvironments to reconcile.

A key waiting twice is reconciled once; a key is never reconciled by two workers at once (added while in
progress, it runs again right after); a failure backs off, a conflict (a stale view) retries soon. What to
do with a key is the handler's business: the queue knows only keys, delays and failures.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ocean_c2d.k8s import ConflictError
from ocean_c2d.resilience import backoff_delay

log = logging.getLogger("ocean_c2d")

Key = tuple[str, str, str]  # ("workflow" | "environment", namespace, name)
FAILURE_MAX_DELAY = 60.0  # a failing reconcile is retried at least once a minute
CONFLICT_MAX_DELAY = 5.0  # a stale view is retried soon: its watch event is on the way


class WorkQueue:
    """Keys to reconcile. A key waiting twice is reconciled once; a key is never reconciled by two
    workers at once (added while in progress, it runs again right after); failures back off."""

    def __init__(
        self,
        handler: Callable[[Key], Awaitable[float | None]],
        workers: int = 8,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._handler = handler
        self._workers = workers
        self._ready = ready  # awaited before the first key is handled (keys added meanwhile wait)
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._waiting: set[Key] = set()
        self._running: set[Key] = set()
        self._again: set[Key] = set()
        self._failures: dict[Key, int] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}

    def add(self, key: Key, after: float = 0.0) -> None:
        if after > 0:
            existing = self._timers.get(key)
            if existing is not None and existing.when() <= asyncio.get_running_loop().time() + after:
                return
            if existing is not None:
                existing.cancel()
            self._timers[key] = asyncio.get_running_loop().call_later(after, self._fire, key)
            return
        if key in self._running:
            self._again.add(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            self._queue.put_nowait(key)

    @property
    def depth(self) -> int:
        """Keys waiting for a worker (not those in progress or on a timer)."""
        return len(self._waiting)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def run(self) -> None:
        if self._ready is not None:
            await self._ready()
        workers = [asyncio.create_task(self._work()) for _ in range(self._workers)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            for timer in self._timers.values():
                timer.cancel()

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._waiting.discard(key)
            self._running.add(key)
            try:
                requeue_after = await self._handler(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except ConflictError:
                # Our view was stale. The watch event that proves it re-adds the key; should it be late,
                # retry soon anyway, backing off so a lagging watch does not turn into a 409 storm.
                conflicts = self._failures[key] = self._failures.get(key, 0) + 1
                requeue_after = backoff_delay(conflicts, 0.1, cap=CONFLICT_MAX_DELAY, jitter=0.0)
            except Exception:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                requeue_after = backoff_delay(failures, 0.5, cap=FAILURE_MAX_DELAY)
                log.exception(
                    "Reconcile of %s/%s failed (attempt %d); retrying in %.1fs",
                    key[1],
                    key[2],
                    failures,
                    requeue_after,
                )
            finally:
                self._running.discard(key)
            if key in self._again:
                self._again.discard(key)
                self.add(key)
            elif requeue_after is not None:
                self.add(key, after=requeue_after)
