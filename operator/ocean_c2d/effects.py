"""What a reconcile starts but does not wait for (notifications: start, stop), and the results records
(retention.py) with the expiry they drive.

A notification runs as a background task, at most one per (Workflow, kind), so a slow receiver never
holds a reconcile. Its outcome is written to the Workflow's status through the same guarded path as the
reconcile's: conditional on the resourceVersion read (a conflict reads again and retries), and kept in
the view until the watch shows it, so the next reconcile never plans from a status without it.

Expiry is not a task of the Workflow: it is a key of its own on the work queue, one per results record,
woken by the record's watch events and by the queue's timer at its due time, so it happens whether or not
the Workflow still exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Coroutine
from typing import Any

import httpx

from ocean_c2d.expiry import remove_results
from ocean_c2d.k8s import Cluster, ConflictError
from ocean_c2d.metrics import NOTIFICATIONS
from ocean_c2d.model import Workflow
from ocean_c2d.notify import send_notification
from ocean_c2d.retention import (
    ResultStores,
    State,
    build_record,
    due_in,
    parse_record,
    record_data_differs,
    record_name,
    wanted_record,
)
from ocean_c2d.settings import Settings
from ocean_c2d.signing import job_secret, notification_payload
from ocean_c2d.status import WorkflowStatus
from ocean_c2d.storage.ipfs import normalize_prefix
from ocean_c2d.times import now_stamp
from ocean_c2d.view import View

log = logging.getLogger("ocean_c2d")

STATUS_WRITE_ATTEMPTS = 5  # conflicts in a row before an outcome is given up (the next reconcile retries)
# A removal of one record's results (every request to S3 and IPFS it makes) is over within this; a store
# that is down or hangs fails it, and the work queue tries again with backoff (at least once a minute).
STORE_DEADLINE_SECONDS = 60.0
# Work-queue workers that may wait on the stores at once: the others keep reconciling Workflows however
# many records are due while a store hangs. A record that finds them busy comes back after a pause.
STORE_CONCURRENCY = 2
STORE_BUSY_RETRY_SECONDS = 5.0


class StoreUnavailableError(Exception):
    """The result stores did not finish a removal within STORE_DEADLINE_SECONDS (down or hanging)."""


class Effects:
    def __init__(self, settings: Settings, cluster: Cluster, http: httpx.AsyncClient, view: View) -> None:
        self.settings = settings
        self.cluster = cluster
        self.http = http
        self.view = view
        self._running: set[tuple[str, str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, namespace: str, name: str, notify: tuple[str, ...]) -> None:
        """Start the notifications due, unless already under way."""
        for kind in notify:
            self._spawn((namespace, name, kind), self._notify(namespace, name, kind))

    def _spawn(self, key: tuple[str, str, str], coroutine: Coroutine[Any, Any, None]) -> None:
        if key in self._running:
            coroutine.close()  # never started: close it, or asyncio warns it was never awaited
            return
        self._running.add(key)

        async def run() -> None:
            try:
                await coroutine
            finally:
                self._running.discard(key)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def record(self, namespace: str, name: str, fields: dict[str, Any]) -> bool:
        """Merge `fields` into the Workflow's status, guarded by the resourceVersion read; False when the
        Workflow is gone or kept changing under us."""
        body = self.view.workflow(namespace, name)
        for _ in range(STATUS_WRITE_ATTEMPTS):
            if body is None:
                return False
            try:
                written = await self.cluster.write_status_fields(
                    "Workflow", namespace, name, fields, resource_version=body["metadata"]["resourceVersion"]
                )
            except ConflictError:
                body = await self.cluster.get("Workflow", namespace, name)  # read the newer one and retry
                continue
            if written is None:
                return False
            self.view.remember_written(namespace, name, body, written)
            return True
        return False

    async def _notify(self, namespace: str, name: str, kind: str) -> None:
        """Send one notification outside the reconcile (never blocking it) and record the outcome."""
        try:
            raw = self.view.workflow(namespace, name)
            url = self.settings.notify_start_url if kind == "start" else self.settings.notify_stop_url
            if raw is None or url is None:
                return
            workflow = Workflow.from_object(raw)
            payload = notification_payload(
                self.settings.operator_key,
                job_secret(self.settings.operator_key, workflow.uid),
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
            state = "Sent" if delivery.delivered else "Failed"
            outcome = {
                "state": state,
                "attempts": delivery.attempts,
                "lastAttemptAt": now_stamp(),
                "message": delivery.message,
            }
            await self.record(namespace, name, {"notifications": {kind: outcome}})
            NOTIFICATIONS.labels(kind, state).inc()
        except Exception:  # a background task: nobody awaits it, so say what went wrong here
            log.exception("Could not send or record the %s notification of %s/%s", kind, namespace, name)


class ResultExpiry:
    """The results records: kept as each Workflow's status says (`keep`, from its reconcile), and acted
    on when due (`run`, the work queue's "expiry" key of one record)."""

    def __init__(self, settings: Settings, cluster: Cluster, view: View, effects: Effects) -> None:
        self.publish = settings.publish
        self.stores = result_stores(settings)
        self.seal_key = record_seal_key(settings)
        self.cluster = cluster
        self.view = view
        self.effects = effects
        self._store_slots = asyncio.Semaphore(STORE_CONCURRENCY)

    async def keep(self, workflow: Workflow, status: WorkflowStatus, storage_expiry_hours: int) -> None:
        """Make the cluster hold the record `workflow` needs with `status`, before that status is written
        (and before a TTL deletes the Workflow): a record that outlives a crash is re-derived the same."""
        wanted = wanted_record(workflow, status, self.stores, storage_expiry_hours)
        name = record_name(workflow.uid)
        current = self.view.record(workflow.namespace, name)
        if wanted is None:
            # Nothing (more) to expire: a record left from Publishing goes. One that is due is the
            # expiry's to delete, after it has removed what it names.
            parsed = parse_record(current, self.seal_key) if current is not None else None
            if parsed is not None and (parsed.state is State.PUBLISHING or status.get("resultsExpiredAt")):
                await self.cluster.delete("ConfigMap", workflow.namespace, name)
                log.info("Deleted ConfigMap %s/%s: nothing of it is left to expire", workflow.namespace, name)
            return
        if not record_data_differs(current, wanted, self.seal_key):
            return
        manifest = build_record(wanted, self.seal_key)
        if current is None and await self.cluster.ensure(manifest):
            log.info("Created ConfigMap %s/%s (results record, %s)", workflow.namespace, name, wanted.state)
            return
        await self.cluster.merge_patch("ConfigMap", workflow.namespace, name, {"data": manifest["data"]})
        log.info("Updated ConfigMap %s/%s (results record, %s)", workflow.namespace, name, wanted.state)

    async def run(self, namespace: str, name: str) -> float | None:
        """Act on one record: seconds until it is due (the queue wakes it then), or None once done or
        when only an event can make it due. Store errors raise: the queue retries with backoff."""
        body = self.view.record(namespace, name)
        record = parse_record(body, self.seal_key) if body is not None else None
        if record is None:
            if body is not None:
                log.warning(
                    "Ignored ConfigMap %s/%s: not a results record the operator sealed", namespace, name
                )
            return None
        raw = self.view.workflow(namespace, record.workflow)
        alive = raw is not None and raw["metadata"].get("uid") == record.uid
        delay = due_in(record, alive, time.time())
        if delay is None or delay > 0:
            return delay
        others = [r for r in self.view.records(self.seal_key) if r.uid != record.uid]
        if self._store_slots.locked():
            return STORE_BUSY_RETRY_SECONDS  # others wait on the stores already: do not hold a worker
        async with self._store_slots:
            try:
                async with asyncio.timeout(STORE_DEADLINE_SECONDS):
                    deleted, unpinned = await remove_results(record, others, self.publish)
            except TimeoutError:
                raise StoreUnavailableError(
                    f"removing the results of Workflow {namespace}/{record.workflow}: the result stores"
                    f" did not answer within {STORE_DEADLINE_SECONDS:g} s"
                ) from None
        if alive and raw is not None and not (raw.get("status") or {}).get("resultsExpiredAt"):
            await self._mark_expired(namespace, record.workflow)
        await self.cluster.delete("ConfigMap", namespace, name)
        log.info(
            "Removed the results of Workflow %s/%s (%s): %d S3 objects deleted, %d CIDs unpinned",
            namespace,
            record.workflow,
            "publish did not finish" if record.state is not State.PUBLISHED else "expired",
            deleted,
            unpinned,
        )
        return None

    async def _mark_expired(self, namespace: str, workflow: str) -> None:
        """resultsExpiredAt on the Workflow, before its record goes (else its reconcile would want the
        record back); a Workflow that keeps changing is tried again by the queue."""
        written = await self.effects.record(namespace, workflow, {"resultsExpiredAt": now_stamp()})
        if not written and self.view.workflow(namespace, workflow) is not None:
            raise ConflictError(f"could not record the expiry on Workflow {namespace}/{workflow}")


def record_seal_key(settings: Settings) -> bytes:
    """The key results records are sealed with: derived from the operator's private key, so it is
    never stored anywhere and stays the same across restarts."""
    secret = settings.operator_key.private_key.to_bytes()
    return hmac.new(secret, b"ocean-c2d/results-record", hashlib.sha256).digest()


def result_stores(settings: Settings) -> ResultStores:
    """What of the operator's result stores it expires itself: the S3 bucket, and a kubo node's pins."""
    publish = settings.publish
    unpins = bool(publish.ipfs_output) and (publish.ipfs_type or "CLIENT").upper() != "CLUSTER"
    return ResultStores(
        s3_bucket=publish.aws_bucket_output or None,
        ipfs_prefix=normalize_prefix(publish.ipfs_output_prefix) if unpins else None,
    )
