"""The operator's runtime: a work queue of Workflow keys, each reconciled by the pure `plan` against the
view the watches keep, with the deltas sent by `k8s.Cluster`.

The watches' indexes (kopf) are the view of the cluster. Right after a write, the view lags behind our
own change until its watch event arrives; the small "written" overlays below bridge exactly that gap
and are dropped as soon as the watch shows the write. Nothing here is state that a restart needs: on
start, kopf lists everything before the first reconcile, so a restarted operator resumes from the
cluster alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from ocean_c2d import metrics, observe, telemetry
from ocean_c2d.environments import admission, default_environment_object, environment_status
from ocean_c2d.expiry import expire_results
from ocean_c2d.k8s import Cluster, ConflictError
from ocean_c2d.metrics import NOTIFICATIONS, RECONCILE_SECONDS, RECONCILES, ClusterLevels
from ocean_c2d.model import Environment, Observed, Workflow
from ocean_c2d.notify import redact_url, send_notification
from ocean_c2d.reconcile import Admission, plan
from ocean_c2d.render import Templates
from ocean_c2d.settings import Settings
from ocean_c2d.signing import notification_payload

log = logging.getLogger("ocean_c2d")

Key = tuple[str, str, str]  # ("workflow" | "environment", namespace, name)
CHILD_INDEXES = ("configmap_index", "secret_index", "pvc_index", "networkpolicy_index")
CREATED_OVERLAY_SECONDS = 60.0


class WorkQueue:
    """Keys to reconcile. A key waiting twice is reconciled once; a key is never reconciled by two
    workers at once (added while in progress, it runs again right after); failures back off."""

    def __init__(self, handler: Callable[[Key], Awaitable[float | None]], workers: int = 8) -> None:
        self._handler = handler
        self._workers = workers
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
                requeue_after = min(5.0, 0.1 * 2 ** (conflicts - 1))
            except Exception:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                requeue_after = min(60.0, 0.5 * 2 ** (failures - 1)) * random.uniform(0.8, 1.2)
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


@dataclass
class Views:
    """The kopf indexes, bound from the first handler call (they are live mappings)."""

    indexes: dict[str, Mapping[Any, Iterable[Any]]] = field(default_factory=dict)

    def values(self, index: str, key: Hashable) -> list[Any]:
        mapping = self.indexes.get(index)
        if mapping is None or key not in mapping:
            return []
        return list(mapping[key])


class Controller:
    def __init__(
        self,
        settings: Settings,
        templates: Templates,
        cluster: Cluster,
        http: httpx.AsyncClient,
        workers: int = 8,
    ) -> None:
        self.settings = settings
        self.plan_settings = settings.plan_settings()
        self.templates = templates
        self.cluster = cluster
        self.http = http
        self.views = Views()
        self.queue = WorkQueue(self._reconcile_key, workers=workers)
        self._written: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        # Children created but not yet seen by the watches, with when they were created: an entry the
        # watch never confirms (created and deleted in between) expires rather than haunting the view.
        self._created: dict[
            tuple[str, str], dict[tuple[str, str], tuple[float, observe.JobRecord | None]]
        ] = {}
        self._deleted: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._admission_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._environment_generations: dict[tuple[str, str], int] = {}
        self._notifying: set[tuple[str, str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- wiring from handlers.py -------------------------------------------------------------------

    def bind(self, indexes: Mapping[str, Any]) -> None:
        for name, index in indexes.items():
            if name.endswith("_index"):
                self.views.indexes[name] = index

    def workflow_changed(self, namespace: str, name: str) -> None:
        self.queue.add(("workflow", namespace, name))

    def environment_changed(self, namespace: str, name: str, generation: int | None) -> None:
        """A ComputeEnvironment event. Its status updates (our own writes) concern no Workflow; a new
        spec (or one seen for the first time) may change what every Workflow of it gets."""
        self.queue.add(("environment", namespace, name))
        if generation is None or self._environment_generations.get((namespace, name)) != generation:
            self._environment_generations[(namespace, name)] = generation or 0
            for workflow in self.views.values("workflow_by_environment_index", (namespace, name)):
                self.queue.add(("workflow", namespace, workflow))

    def queue_moved(self, namespace: str, environment: str) -> None:
        """A Workflow of `environment` started or finished: its counts change, and the Workflows still
        waiting may start or move up. Only those are reconciled, not every Workflow of the environment."""
        self.queue.add(("environment", namespace, environment))
        for workflow in self._peers(namespace, environment):
            if not workflow.admitted and not workflow.finished:
                self.queue.add(("workflow", namespace, workflow.name))

    def resync(self) -> None:
        """The slow safety timer: everything once more, in case an event was missed."""
        mapping = self.views.indexes.get("workflow_index", {})
        for namespace, name in list(mapping):
            self.queue.add(("workflow", namespace, name))

    def spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def ensure_default_environment(self, namespace: str) -> None:
        seed = self.settings.default_environment
        if seed is None:
            return
        manifest = default_environment_object(self.settings.default_environment_name, namespace, seed)
        if await self.cluster.ensure(manifest):
            log.info(
                "Created ComputeEnvironment %s/%s from the operator's environment variables",
                namespace,
                manifest["metadata"]["name"],
            )

    # ---- the view ----------------------------------------------------------------------------------

    def current_workflow(self, namespace: str, name: str) -> dict[str, Any] | None:
        [indexed] = self.views.values("workflow_index", (namespace, name)) or [None]
        written = self._written.get((namespace, name))
        if indexed is None:
            self._written.pop((namespace, name), None)
            return None
        if written is not None:
            stale_version, body = written
            if indexed["metadata"].get("resourceVersion") == stale_version:
                return body  # the watch has not shown our own status write yet
            del self._written[(namespace, name)]
        result: dict[str, Any] = indexed
        return result

    def observed(self, namespace: str, workflow: str) -> Observed:
        key = (namespace, workflow)
        jobs = self.views.values("job_index", key)
        children = [c for index in CHILD_INDEXES for c in self.views.values(index, key)]
        present = {("Job", j.name) for j in jobs} | {(c.kind, c.name) for c in children}
        created = self._created.get(key, {})
        expired = time.monotonic() - CREATED_OVERLAY_SECONDS
        for ref in [ref for ref, (at, _) in created.items() if ref in present or at < expired]:
            del created[ref]  # the watch caught up
        for (kind, name), (_, record) in created.items():
            if record is not None:
                jobs.append(record)
            else:
                children.append(observe.ChildRecord(kind, name, None))
        deleted = self._deleted.get(key, set())
        deleted &= present  # forget deletions the watch has shown
        jobs = [j if ("Job", j.name) not in deleted else _deleting(j) for j in jobs]
        children = [c for c in children if (c.kind, c.name) not in deleted]
        return observe.observed(jobs, self.views.values("pod_index", key), children)

    def environment(self, namespace: str, name: str) -> dict[str, Any] | None:
        [body] = self.views.values("environment_index", (namespace, name)) or [None]
        return dict(body) if body is not None else None

    def job_secret(self, uid: str) -> str:
        """The per-job secret, derived from the operator key and the Workflow's uid: the same after a
        restart without being stored anywhere but the job's own Secret."""
        key = self.settings.operator_key.private_key.to_bytes()
        return hmac.new(key, f"ocean-c2d/job-secret/{uid}".encode(), hashlib.sha256).hexdigest()[:32]

    def levels(self) -> ClusterLevels:
        """The cluster-state gauges of /metrics, from the view (called at every scrape, on the loop)."""
        workflows = [
            Workflow.from_object(body)
            for namespace, name in list(self.views.indexes.get("workflow_index", {}))
            if (body := self.current_workflow(namespace, name)) is not None
        ]
        by_environment: dict[tuple[str, str], list[Workflow]] = {}
        for workflow in workflows:
            by_environment.setdefault((workflow.namespace, workflow.spec.environment), []).append(workflow)
        resources = [
            level
            for namespace, name in sorted(self.views.indexes.get("environment_index", {}))
            if (body := self.environment(namespace, name)) is not None
            for level in telemetry.environment_levels(
                namespace, Environment.from_object(body), by_environment.get((namespace, name), [])
            )
        ]
        return ClusterLevels(
            telemetry.workflow_counts(workflows), resources, telemetry.oldest_stage_starts(workflows)
        )

    # ---- reconciles ------------------------------------------------------------------------------------

    async def _reconcile_key(self, key: Key) -> float | None:
        kind, namespace, name = key
        if kind == "environment":
            await self.reconcile_environment(namespace, name)
            return None
        with RECONCILE_SECONDS.time():
            try:
                return await self.reconcile_workflow(namespace, name)
            except ConflictError:
                RECONCILES.labels("conflict").inc()
                raise
            except Exception:
                RECONCILES.labels("error").inc()
                raise

    async def reconcile_workflow(self, namespace: str, name: str) -> float | None:
        raw = self.current_workflow(namespace, name)
        if raw is None:
            RECONCILES.labels("idle").inc()
            return None  # deleted: the garbage collector removes what it owned
        workflow = Workflow.from_object(raw)
        env_body = self.environment(namespace, workflow.spec.environment)
        environment = Environment.from_object(env_body) if env_body else None
        lock = (
            contextlib.nullcontext()
            if workflow.admitted or environment is None
            else self._admission_locks.setdefault((namespace, workflow.spec.environment), asyncio.Lock())
        )
        async with lock:
            # Admission decisions of one environment are taken one at a time, on a view that includes
            # the decisions just written, so a burst can never admit more than maxJobs.
            # Only a Workflow still waiting needs its peers: reading every Workflow of the environment
            # on each reconcile of a running one would make a busy environment quadratic.
            if workflow.admitted:
                verdict = Admission(may_start=True)
            elif environment is None:
                verdict = Admission(may_start=False)
            else:
                verdict = admission(workflow, self._peers(namespace, workflow.spec.environment), environment)
            observed = self.observed(namespace, name)
            now = datetime.now(UTC)
            result = plan(
                workflow,
                environment,
                observed,
                verdict,
                self.plan_settings,
                self.templates,
                self.job_secret(workflow.uid),
                now,
            )
            if result.writes(observed) == 0:
                RECONCILES.labels("idle").inc()
                self._start_notifications(namespace, name, result.notify)
                self._start_expiry(namespace, name, result.expire_results)
                return result.requeue_after
            applied = await self.cluster.apply(raw, result, observed, now)
            RECONCILES.labels("changed").inc()
        self._remember(namespace, name, raw, applied)
        if result.status is not None:
            metrics.record(namespace, telemetry.transition_observations(workflow, result.status))
            if _occupancy_changed(workflow.status, result.status):
                self.queue_moved(namespace, workflow.spec.environment)
        self._start_notifications(namespace, name, result.notify)
        self._start_expiry(namespace, name, result.expire_results)
        return result.requeue_after

    def _peers(self, namespace: str, environment: str) -> list[Workflow]:
        names = self.views.values("workflow_by_environment_index", (namespace, environment))
        bodies = (self.current_workflow(namespace, n) for n in names)
        return [Workflow.from_object(b) for b in bodies if b is not None]

    def _remember(self, namespace: str, name: str, raw: dict[str, Any], applied: Any) -> None:
        key = (namespace, name)
        if applied.workflow is not None:
            self._written[key] = (raw["metadata"]["resourceVersion"], applied.workflow)
        created = self._created.setdefault(key, {})
        for manifest in applied.created:
            ref = (manifest["kind"], manifest["metadata"]["name"])
            created[ref] = (time.monotonic(), observe.job_record(manifest) if ref[0] == "Job" else None)
        if applied.deleted:
            self._deleted.setdefault(key, set()).update(applied.deleted)

    async def reconcile_environment(self, namespace: str, name: str) -> None:
        body = self.environment(namespace, name)
        if body is None:
            return
        environment = Environment.from_object(body)
        metrics.initialise_environment(namespace, name)
        desired = environment_status(
            environment,
            self._peers(namespace, name),
            self.settings.operator_key.address,
            body["metadata"].get("generation", 1),
        )
        current = body.get("status") or {}
        if any(current.get(k) != v for k, v in desired.items()):
            await self.cluster.write_status_fields("ComputeEnvironment", namespace, name, desired)

    # ---- expiring results ---------------------------------------------------------------------------------

    def _start_expiry(self, namespace: str, name: str, urls: tuple[str, ...]) -> None:
        key = (namespace, name, "expiry")
        if urls and key not in self._notifying:
            self._notifying.add(key)
            self.spawn(self._expire(namespace, name, urls))

    async def _expire(self, namespace: str, name: str, urls: tuple[str, ...]) -> None:
        """Delete or unpin a finished Workflow's results past their expiry, then record it (that status
        write ends the expiry; a failure is retried at the next reconcile of the Workflow)."""
        try:
            leftovers = await expire_results(urls, self.settings.publish)
            for url in leftovers:
                log.warning(
                    "Cannot expire %s of %s/%s: not in the configured S3 bucket or IPFS node",
                    redact_url(url),
                    namespace,
                    name,
                )
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            await self.cluster.write_status_fields("Workflow", namespace, name, {"resultsExpiredAt": stamp})
            log.info("Expired %d results of Workflow %s/%s", len(urls) - len(leftovers), namespace, name)
        except Exception:  # a background task: nobody awaits it
            log.exception("Could not expire the results of %s/%s; will retry", namespace, name)
        finally:
            self._notifying.discard((namespace, name, "expiry"))

    # ---- notifications -----------------------------------------------------------------------------------

    def _start_notifications(self, namespace: str, name: str, due: tuple[str, ...]) -> None:
        for kind in due:
            key = (namespace, name, kind)
            if key not in self._notifying:
                self._notifying.add(key)
                self.spawn(self._notify(namespace, name, kind))

    async def _notify(self, namespace: str, name: str, kind: str) -> None:
        """Send one notification outside the reconcile (never blocking it) and record the outcome."""
        try:
            raw = self.current_workflow(namespace, name)
            if raw is None:
                return
            workflow = Workflow.from_object(raw)
            url = self.settings.notify_start_url if kind == "start" else self.settings.notify_stop_url
            if url is None:
                return
            payload = notification_payload(
                self.settings.operator_key,
                self.job_secret(workflow.uid),
                workflow.spec.input_dids,
                workflow.name,
                workflow.spec.algorithm_did,
            )
            delivery = await send_notification(
                self.http,
                url,
                payload,
                max_attempts=self.settings.notify_max_attempts,
                timeout_seconds=self.settings.notify_timeout_seconds,
            )
            outcome = {
                "state": "Sent" if delivery.delivered else "Failed",
                "attempts": delivery.attempts,
                "lastAttemptAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "message": delivery.message,
            }
            await self.cluster.write_status_fields(
                "Workflow", namespace, name, {"notifications": {kind: outcome}}
            )
            NOTIFICATIONS.labels(kind, outcome["state"]).inc()
        except Exception:  # a background task: nobody awaits it, so say what went wrong here
            log.exception("Could not send or record the %s notification of %s/%s", kind, namespace, name)
        finally:
            self._notifying.discard((namespace, name, kind))


def _deleting(job: observe.JobRecord) -> observe.JobRecord:
    return observe.JobRecord(
        job.component, job.name, job.state, job.started, job.finished, job.failure_reason, deleting=True
    )


def _occupancy_changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Did this write change how many Workflows of the environment run or wait?"""

    def bucket(status: dict[str, Any]) -> str:
        stage = status.get("stage")
        return "none" if stage is None else stage if stage in ("Queued", "Finished") else "running"

    return bucket(before) != bucket(after) or before.get("queuePosition") != after.get("queuePosition")
