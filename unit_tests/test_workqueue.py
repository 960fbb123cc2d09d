"""workqueue.WorkQueue: deduplication, one worker per key, requeue delays, backoff, conflicts.

The handler records every call and blocks on asyncio.Events the test releases, so each test decides
exactly when a reconcile is in progress; waits are bounded by asyncio.timeout and never sleep for long.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ocean_c2d.k8s import ConflictError
from ocean_c2d.workqueue import Key, WorkQueue

A: Key = ("workflow", "ns", "a")
B: Key = ("workflow", "ns", "b")
C: Key = ("environment", "ns", "c")
TIMEOUT = 2.0

Outcome = float | None | BaseException


class Recorder:
    """The queue's handler: records calls, holds each call on a gate when one is queued for its key,
    and returns (or raises) the outcomes queued for its key, in order."""

    def __init__(self, yields: Callable[[Key], int] | None = None) -> None:
        self.yields = yields  # how many times each call yields to the loop before it returns
        self.calls: list[Key] = []
        self.finished: list[Key] = []
        self.started_at: dict[Key, list[float]] = collections.defaultdict(list)
        self.active: collections.Counter[Key] = collections.Counter()
        self.peak: collections.Counter[Key] = collections.Counter()
        self.peak_total = 0
        self.gates: dict[Key, list[asyncio.Event]] = collections.defaultdict(list)
        self.outcomes: dict[Key, list[Outcome]] = collections.defaultdict(list)
        self._changed = asyncio.Event()

    def gate(self, key: Key) -> asyncio.Event:
        """The next call of `key` waits until the returned event is set."""
        event = asyncio.Event()
        self.gates[key].append(event)
        return event

    def count(self, key: Key) -> int:
        return self.calls.count(key)

    async def __call__(self, key: Key) -> float | None:
        self.calls.append(key)
        self.started_at[key].append(asyncio.get_running_loop().time())
        self.active[key] += 1
        self.peak[key] = max(self.peak[key], self.active[key])
        self.peak_total = max(self.peak_total, sum(self.active.values()))
        self._changed.set()
        try:
            if self.gates[key]:
                await self.gates[key].pop(0).wait()
            for _ in range(self.yields(key) if self.yields else 0):
                await asyncio.sleep(0)
            outcome = self.outcomes[key].pop(0) if self.outcomes[key] else None
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        finally:
            self.active[key] -= 1
            self.finished.append(key)
            self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Wait until `predicate` holds: re-checked at each handler call or return, and every few
        milliseconds for what changes outside the handler (the queue's timers)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.005)


async def settle(rounds: int = 20) -> None:
    """Let every ready task run (no time passes): whatever the queue would do at once, it has done."""
    for _ in range(rounds):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def running(queue: WorkQueue) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(queue.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def timer(queue: WorkQueue, key: Key) -> asyncio.TimerHandle | None:
    timers: dict[Key, asyncio.TimerHandle] = queue._timers
    return timers.get(key)


def delay_of(handle: asyncio.TimerHandle) -> float:
    return handle.when() - asyncio.get_running_loop().time()


async def test_a_key_added_several_times_before_the_run_is_handled_once() -> None:
    recorder = Recorder()
    queue = WorkQueue(recorder, workers=4)
    for _ in range(5):
        queue.add(A)
    async with running(queue):
        await recorder.until(lambda: len(recorder.finished) == 1)
        await settle()
    assert recorder.calls == [A]


async def test_a_key_added_several_times_while_waiting_is_handled_once() -> None:
    recorder = Recorder()
    queue = WorkQueue(recorder, workers=1)
    release = recorder.gate(B)
    async with running(queue):
        queue.add(B)  # occupies the only worker
        await recorder.until(lambda: recorder.active[B] == 1)
        for _ in range(5):
            queue.add(A)
            await settle(2)
        assert recorder.count(A) == 0  # still waiting for the worker
        release.set()
        await recorder.until(lambda: A in recorder.finished)
        await settle()
    assert recorder.calls == [B, A]


async def test_a_key_added_while_its_handler_runs_runs_again_right_after_never_concurrently() -> None:
    recorder = Recorder()
    queue = WorkQueue(recorder, workers=4)
    first = recorder.gate(A)
    second = recorder.gate(A)
    async with running(queue):
        queue.add(A)
        await recorder.until(lambda: recorder.active[A] == 1)
        for _ in range(3):
            queue.add(A)  # three events during the reconcile: one more reconcile
            await settle()
        assert recorder.count(A) == 1  # free workers did not pick it up
        first.set()
        await recorder.until(lambda: recorder.count(A) == 2)
        assert recorder.active[A] == 1
        queue.add(A)  # and once more during the second run
        second.set()
        await recorder.until(lambda: recorder.count(A) == 3 and recorder.active[A] == 0)
        await settle()
    assert recorder.calls == [A, A, A]
    assert recorder.peak[A] == 1


async def test_many_workers_never_handle_one_key_twice_at_once() -> None:
    rng = random.Random(7)
    recorder = Recorder(yields=lambda key: rng.randrange(6))
    queue = WorkQueue(recorder, workers=8)
    keys = [("workflow", "ns", f"w{n}") for n in range(4)]
    async with running(queue):
        for _ in range(200):
            queue.add(rng.choice(keys))
            await settle(rng.randrange(3))
        await recorder.until(lambda: sum(recorder.active.values()) == 0 and len(recorder.calls) > 0)
        await settle()
        await recorder.until(lambda: sum(recorder.active.values()) == 0)
    assert set(recorder.calls) == set(keys)
    assert len(recorder.calls) < 200  # adds while waiting were merged
    assert all(recorder.peak[key] == 1 for key in keys), recorder.peak
    assert recorder.peak_total > 1  # the keys themselves did run side by side


async def test_different_keys_run_concurrently() -> None:
    recorder = Recorder()
    queue = WorkQueue(recorder, workers=3)
    gates = [recorder.gate(key) for key in (A, B, C)]
    async with running(queue):
        for key in (A, B, C):
            queue.add(key)
        await recorder.until(lambda: all(recorder.active[key] == 1 for key in (A, B, C)))
        assert recorder.peak_total == 3
        for gate in gates:
            gate.set()
        await recorder.until(lambda: len(recorder.finished) == 3)


async def test_keys_beyond_the_worker_count_wait_for_a_free_worker() -> None:
    recorder = Recorder()
    queue = WorkQueue(recorder, workers=2)
    gate_a, gate_b = recorder.gate(A), recorder.gate(B)
    async with running(queue):
        for key in (A, B, C):
            queue.add(key)
        await recorder.until(lambda: recorder.active[A] == 1 and recorder.active[B] == 1)
        await settle()
        assert recorder.count(C) == 0
        gate_a.set()
        await recorder.until(lambda: C in recorder.finished)
        gate_b.set()
        await recorder.until(lambda: len(recorder.finished) == 3)
    assert recorder.peak_total == 2


async def test_a_returned_delay_requeues_the_key_after_that_delay() -> None:
    recorder = Recorder()
    recorder.outcomes[A] = [0.05, None]
    queue = WorkQueue(recorder, workers=2)
    async with running(queue):
        queue.add(A)
        await recorder.until(lambda: recorder.count(A) == 1)
        await settle()
        assert recorder.count(A) == 1  # not at once
        await recorder.until(lambda: recorder.count(A) == 2)
        await recorder.until(lambda: len(recorder.finished) == 2)
        await settle()
        assert timer(queue, A) is None  # the second run returned None: nothing more is scheduled
    first, second = recorder.started_at[A]
    assert second - first >= 0.045
    assert recorder.calls == [A, A]


async def test_an_earlier_requeue_wins_over_a_later_one() -> None:
    recorder = Recorder()
    queue = WorkQueue(recorder)
    queue.add(A, after=30.0)
    later = timer(queue, A)
    assert later is not None
    queue.add(A, after=60.0)  # later than the pending one: ignored
    assert timer(queue, A) is later
    queue.add(A, after=10.0)  # earlier: replaces it
    earlier = timer(queue, A)
    assert earlier is not None
    assert earlier is not later
    assert later.cancelled()
    assert 9.0 < delay_of(earlier) <= 10.0
    earlier.cancel()


async def test_an_immediate_add_does_not_wait_for_a_pending_requeue() -> None:
    recorder = Recorder()
    queue = WorkQueue(recorder)
    async with running(queue):
        queue.add(A, after=30.0)
        queue.add(A)
        await recorder.until(lambda: recorder.count(A) == 1)
    pending = timer(queue, A)
    assert pending is not None
    assert pending.cancelled()  # stopping the queue cancels its timers


async def test_a_requeue_timer_firing_during_a_run_runs_the_key_again_after_it() -> None:
    recorder = Recorder()
    gate = recorder.gate(A)
    queue = WorkQueue(recorder, workers=4)
    async with running(queue):
        queue.add(A)
        queue.add(A, after=0.02)  # fires while the first run is held
        await recorder.until(lambda: recorder.active[A] == 1)
        await recorder.until(lambda: timer(queue, A) is None)  # fired
        await settle()
        assert recorder.count(A) == 1  # not concurrently
        gate.set()
        await recorder.until(lambda: recorder.count(A) == 2)
        await recorder.until(lambda: recorder.active[A] == 0)
    assert recorder.peak[A] == 1


async def test_an_exception_is_retried_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    recorder.outcomes[A] = [RuntimeError("boom"), RuntimeError("boom again"), None]
    queue = WorkQueue(recorder, workers=2)
    caplog.set_level(logging.ERROR, logger="ocean_c2d")
    async with running(queue):
        queue.add(A)
        await recorder.until(lambda: len(recorder.finished) == 1)
        await settle()
        first = timer(queue, A)
        assert first is not None, "a failed reconcile must be retried"
        assert 0.35 <= delay_of(first) <= 0.6  # 0.5 s, +-20 % jitter
        assert recorder.count(A) == 1
        await recorder.until(lambda: len(recorder.finished) == 2, timeout=3.0)  # the ~0.5 s retry
        await settle()
        second = timer(queue, A)
        assert second is not None
        assert 0.75 <= delay_of(second) <= 1.2  # doubled: 1 s, +-20 %
        assert queue._failures[A] == 2
        # An event for the key does not wait for the backoff; success forgets the failures.
        queue.add(A)
        await recorder.until(lambda: len(recorder.finished) == 3)
        await settle()
        assert A not in queue._failures
    assert recorder.calls == [A, A, A]
    assert "retrying in" in caplog.text
    assert "boom" in caplog.text


async def test_backoff_is_capped_at_a_minute() -> None:
    recorder = Recorder()
    recorder.outcomes[A] = [RuntimeError("boom")]
    queue = WorkQueue(recorder)
    queue._failures[A] = 20  # after many failures already
    async with running(queue):
        queue.add(A)
        await recorder.until(lambda: len(recorder.finished) == 1)
        await settle()
        pending = timer(queue, A)
        assert pending is not None
        assert 47.0 <= delay_of(pending) <= 72.0


async def test_a_failure_of_one_key_does_not_delay_the_others() -> None:
    recorder = Recorder()
    recorder.outcomes[A] = [RuntimeError("boom")]
    queue = WorkQueue(recorder, workers=1)
    async with running(queue):
        queue.add(A)
        queue.add(B)
        await recorder.until(lambda: len(recorder.finished) == 2)
        await settle()
        assert timer(queue, B) is None
        assert timer(queue, A) is not None
    assert recorder.calls == [A, B]


async def test_a_conflict_runs_the_key_again() -> None:
    recorder = Recorder()
    recorder.outcomes[A] = [ConflictError("stale"), None]
    queue = WorkQueue(recorder, workers=2)
    async with running(queue):
        queue.add(A)
        await recorder.until(lambda: recorder.count(A) == 2, timeout=0.3)  # at once, not after a backoff
        await recorder.until(lambda: len(recorder.finished) == 2)
        await settle()
        assert timer(queue, A) is None
        assert A not in queue._failures
    assert recorder.calls == [A, A]
    assert recorder.peak[A] == 1


async def test_a_handler_cancelled_with_the_queue_leaves_no_running_key() -> None:
    recorder = Recorder()
    recorder.gate(A)
    queue = WorkQueue(recorder)
    async with running(queue):
        queue.add(A)
        await recorder.until(lambda: recorder.active[A] == 1)
    running_keys: set[Any] = queue._running
    assert running_keys == set()
    assert recorder.active[A] == 0
