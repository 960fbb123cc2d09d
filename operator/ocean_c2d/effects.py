"""What a reconcile starts but does not wait for: notifications (start, stop) and expiring results.

Each runs as a background task, at most one per (Workflow, kind), so a slow receiver never holds a
reconcile. Its outcome is written to the Workflow's status through the same guarded path as the
reconcile's: conditional on the resourceVersion read (a conflict reads again and retries), and kept in
the view until the watch shows it, so the next reconcile never plans from a status without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import httpx

from ocean_c2d.expiry import expire_results
from ocean_c2d.k8s import Cluster, ConflictError
from ocean_c2d.metrics import NOTIFICATIONS
from ocean_c2d.model import Workflow
from ocean_c2d.notify import send_notification
from ocean_c2d.resilience import redact_url
from ocean_c2d.settings import Settings
from ocean_c2d.signing import job_secret, notification_payload
from ocean_c2d.times import now_stamp
from ocean_c2d.view import View

log = logging.getLogger("ocean_c2d")

STATUS_WRITE_ATTEMPTS = 5  # conflicts in a row before an outcome is given up (the next reconcile retries)


class Effects:
    def __init__(self, settings: Settings, cluster: Cluster, http: httpx.AsyncClient, view: View) -> None:
        self.settings = settings
        self.cluster = cluster
        self.http = http
        self.view = view
        self._running: set[tuple[str, str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, namespace: str, name: str, notify: tuple[str, ...], expire: tuple[str, ...]) -> None:
        """Start the notifications due and the expiry of `expire` (URLs), unless already under way."""
        for kind in notify:
            self._spawn((namespace, name, kind), self._notify(namespace, name, kind))
        if expire:
            self._spawn((namespace, name, "expiry"), self._expire(namespace, name, expire))

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
            await self.record(namespace, name, {"resultsExpiredAt": now_stamp()})
            log.info("Expired %d results of Workflow %s/%s", len(urls) - len(leftovers), namespace, name)
        except Exception:  # a background task: nobody awaits it
            log.exception("Could not expire the results of %s/%s; will retry", namespace, name)

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
