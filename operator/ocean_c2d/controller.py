"""The operator's runtime: each key off the work queue is reconciled by the pure `plan` against the view
the watches keep; the diff (`changes`) is sent by `k8s.Cluster`; what must not hold a reconcile
(notifications, expiry) goes to `effects`.

Two kinds of failure: temporary ones (an API error, a timeout, a conflict) raise, and the work queue
retries with backoff; permanent ones (InvalidWorkflow: the Workflow cannot be run as written) end the
Workflow InvalidSpec at once, which frees its slot for the next in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any

import httpx

from ocean_c2d import metrics, telemetry
from ocean_c2d.changes import changes
from ocean_c2d.effects import Effects, ResultExpiry
from ocean_c2d.environments import (
    admission,
    environment_status,
    isolation_recheck,
    isolation_signal,
    isolation_status,
    occupancy_changed,
    to_wake,
)
from ocean_c2d.informer import Informer
from ocean_c2d.k8s import Cluster, ConflictError
from ocean_c2d.metrics import RECONCILE_SECONDS, RECONCILES
from ocean_c2d.model import Admission, InvalidWorkflow, Observed, Plan, Workflow
from ocean_c2d.reconcile import invalid, plan
from ocean_c2d.render import Templates
from ocean_c2d.settings import Settings
from ocean_c2d.signing import job_secret, signer_token
from ocean_c2d.times import utc_now
from ocean_c2d.view import WORKFLOW_INDEX, WORKFLOWS_BY_ENVIRONMENT_INDEX, View
from ocean_c2d.workqueue import Key, WorkQueue

log = logging.getLogger("ocean_c2d")

# The counts of a ComputeEnvironment's status (currentJobs, queuedJobs, its head) are written at most this
# often per environment: under a burst they change with every admission, and what `kubectl get c2denv`
# shows may lag by this much. Nothing decides on them (admission counts from the Workflows themselves).
ENVIRONMENT_STATUS_SECONDS = 2.0
# How long the start may wait for every watched kind's first listing before it says so in the log.
LISTING_WARN_SECONDS = 60.0


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
        self.view = View()
        self.effects = Effects(settings, cluster, http, self.view)
        self.expiry = ResultExpiry(settings, cluster, self.view, self.effects)
        self.queue = WorkQueue(self._reconcile_key, workers=workers, ready=self.listed)
        self._informers: list[Informer] = []
        # Set by the first call of any kopf handler: kopf calls none before every kind it watches is
        # listed and indexed (its pre-indexing barrier), so from then on its indexes are complete.
        self._kopf_listed = asyncio.Event()
        self._admission_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._environment_generations: dict[tuple[str, str], int] = {}
        self._environment_written: dict[tuple[str, str], float] = {}  # loop time of the last count write

    # ---- wiring from handlers.py -------------------------------------------------------------------

    def bind(self, handler_kwargs: dict[str, Any]) -> None:
        self.view.bind(handler_kwargs)
        self._kopf_listed.set()

    def start_watches(self, informers: list[Informer]) -> list[asyncio.Task[None]]:
        """Run the informers (the kinds kopf does not watch); `listed` waits for their first LIST."""
        self._informers = list(informers)
        return [asyncio.create_task(informer.run()) for informer in self._informers]

    async def listed(self) -> None:
        """Until every watched kind has been listed once: the informers' (each its own first LIST) and
        kopf's (its first handler call). No reconcile runs before: the first one after a restart must see
        every pod and child that exists, or it would create them again."""
        waits = [self._kopf_listed.wait(), *(informer.synced.wait() for informer in self._informers)]
        started = asyncio.get_running_loop().time()
        pending = {asyncio.ensure_future(wait) for wait in waits}
        try:
            while pending:
                _, pending = await asyncio.wait(pending, timeout=LISTING_WARN_SECONDS)
                if pending:
                    log.warning(
                        "Still waiting for the first listing (%s) after %.0fs: no reconcile before it",
                        ", ".join(self._unlisted()),
                        asyncio.get_running_loop().time() - started,
                    )
        finally:
            for wait in pending:
                wait.cancel()
        log.info(
            "Every watched kind is listed (%d Workflows) after %.1fs: reconciling",
            len(self.view.workflow_store),
            asyncio.get_running_loop().time() - started,
        )

    def _unlisted(self) -> list[str]:
        kinds = [informer.plural for informer in self._informers if not informer.synced.is_set()]
        return kinds + ([] if self._kopf_listed.is_set() else ["kopf's kinds"])

    def workflow_changed(self, namespace: str, name: str) -> None:
        self.queue.add(("workflow", namespace, name))

    def environment_changed(self, namespace: str, name: str, generation: int | None) -> None:
        """A ComputeEnvironment event. Its status updates (our own writes) concern no Workflow; a new
        spec (or one seen for the first time) may change what every Workflow of it gets."""
        self.queue.add(("environment", namespace, name))
        if generation is None or self._environment_generations.get((namespace, name)) != generation:
            self._environment_generations[(namespace, name)] = generation or 0
            for workflow in self.view.values(WORKFLOWS_BY_ENVIRONMENT_INDEX, (namespace, name)):
                self.queue.add(("workflow", namespace, workflow))

    def queue_moved(self, namespace: str, environment: str) -> None:
        """A Workflow of `environment` arrived, started or finished: its counts change, and the head of the
        queue may start. Only the Workflows whose reconcile may change something are woken (environments.
        to_wake: those that may start, and the next head), not every one waiting: that was a reconcile per
        waiting Workflow per admission, each for nothing."""
        self.queue.add(("environment", namespace, environment))
        env = self.view.environment_model(namespace, environment)
        if env is None:
            return  # its Workflows end UnknownEnvironment, woken by the environment's own event
        for workflow in to_wake(self.view.peers(namespace, environment), env):
            self.queue.add(("workflow", namespace, workflow.name))

    def record_changed(self, namespace: str, name: str) -> None:
        """A results record appeared or changed: it may be due now, or later (its timer)."""
        self.queue.add(("expiry", namespace, name))

    def resync(self) -> None:
        """The slow safety timer: everything once more, in case an event was missed."""
        self.view.forget_models()
        for namespace, name in self.view.keys(WORKFLOW_INDEX):
            self.queue.add(("workflow", namespace, name))
        for namespace, name in self.view.record_keys():
            self.queue.add(("expiry", namespace, name))

    # ---- reconciles ------------------------------------------------------------------------------------

    async def _reconcile_key(self, key: Key) -> float | None:
        kind, namespace, name = key
        if kind == "environment":
            return await self.reconcile_environment(namespace, name)
        if kind == "expiry":
            return await self.expiry.run(namespace, name)
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
        raw = self.view.workflow(namespace, name)
        if raw is None:
            RECONCILES.labels("idle").inc()
            # Deleted: the garbage collector removes what it owned; its results records (which it does
            # not own) now decide by themselves, e.g. a publish cut short is cleaned up at once.
            for record in self.view.records(self.expiry.seal_key):
                if (record.namespace, record.workflow) == (namespace, name):
                    self.queue.add(("expiry", namespace, record.name))
            return None
        now = utc_now()
        try:
            workflow = self.view.model(namespace, name)
            if workflow is None:  # gone between the two reads (never: no await between them)
                return None
            async with self._admission_lock(namespace, workflow):
                observed = self.view.observed(namespace, name, workflow.uid)
                result = self._plan(workflow, observed, now)
                return await self._apply(raw, workflow, result, observed)
        except InvalidWorkflow as error:
            # Permanent: decided where it was understood (the model, a template, the API server's 422).
            header = Workflow.header(raw)
            log.warning("Workflow %s/%s cannot run as written: %s", namespace, name, error.message)
            ended = invalid(header, error.message, self.plan_settings, now)
            return await self._apply(raw, header, ended, Observed())

    def _admission_lock(
        self, namespace: str, workflow: Workflow
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        """Admission decisions of one environment are taken one at a time, on a view that includes the
        decisions just written, so a burst can never admit more than maxJobs."""
        if workflow.admitted:
            return contextlib.nullcontext()
        return self._admission_locks.setdefault((namespace, workflow.spec.environment), asyncio.Lock())

    def _plan(self, workflow: Workflow, observed: Observed, now: datetime) -> Plan:
        namespace = workflow.namespace
        env_body = self.view.environment(namespace, workflow.spec.environment)
        environment = self.view.environment_model(namespace, workflow.spec.environment)
        # Only a Workflow still waiting needs its peers: reading every Workflow of the environment on
        # each reconcile of a running one would make a busy environment quadratic.
        if workflow.admitted:
            verdict = Admission(may_start=True)
        elif environment is None:
            verdict = Admission(may_start=False)
        else:
            peers = self.view.peers(namespace, workflow.spec.environment)
            verdict = admission(workflow, peers, environment, (env_body or {}).get("status") or {})
        key = self.settings.operator_key
        secret = job_secret(key, workflow.uid)
        token = signer_token(key, workflow.uid)
        return plan(
            workflow,
            environment,
            observed,
            verdict,
            self.plan_settings,
            self.templates,
            secret,
            now,
            signer_token=token,
        )

    async def _apply(
        self, raw: dict[str, Any], workflow: Workflow, result: Plan, observed: Observed
    ) -> float | None:
        namespace, name = workflow.namespace, workflow.name
        # The results record first: it must exist before the status that calls for it, and before a TTL
        # deletes the Workflow.
        await self.expiry.keep(
            workflow,
            result.status if result.status is not None else workflow.status,
            self._storage_expiry(workflow),
        )
        delta = changes(result, observed)
        if len(delta) == 0:
            RECONCILES.labels("idle").inc()
        else:
            applied = await self.cluster.apply(raw, delta, utc_now())
            RECONCILES.labels("changed").inc()
            if applied.workflow is not None:
                self.view.remember_written(namespace, name, raw, applied.workflow)
            self.view.remember_children(namespace, name, applied.created, applied.deleted)
            if result.status is not None:
                # Metric labels name only environments that exist (never whatever a Workflow says).
                ref = (namespace, workflow.spec.environment)
                known = {ref} if self.view.environment(*ref) is not None else set()
                metrics.record(namespace, telemetry.transition_observations(workflow, result.status, known))
                if occupancy_changed(workflow.status, result.status):
                    self.queue_moved(namespace, workflow.spec.environment)
                signal = isolation_signal(workflow, workflow.status, result.status)
                if signal is not None:
                    await self._record_isolation(workflow, signal)
        self.effects.start(namespace, name, result.notify)
        return result.requeue_after

    def _storage_expiry(self, workflow: Workflow) -> int:
        environment = self.view.environment_model(workflow.namespace, workflow.spec.environment)
        return environment.storage_expiry if environment is not None else 0

    async def _record_isolation(self, workflow: Workflow, isolated: bool) -> None:
        """A Workflow of an isolating environment passed or failed its isolation check: the environment's
        NetworkIsolation condition says so (False holds its queue: see environments.isolation_hold)."""
        namespace, name = workflow.namespace, workflow.spec.environment
        body = self.view.environment(namespace, name)
        environment = self.view.environment_model(namespace, name)
        if body is None or environment is None or environment.allow_network:
            return
        conditions = isolation_status(
            body.get("status") or {},
            isolated,
            workflow.name,
            body["metadata"].get("generation", 1),
            utc_now(),
        )
        if conditions is None:
            return
        await self.cluster.write_status_fields(
            "ComputeEnvironment", namespace, name, {"conditions": conditions}
        )
        log.log(
            logging.INFO if isolated else logging.WARNING,
            "Set NetworkIsolation=%s on ComputeEnvironment %s/%s (Workflow %s)",
            isolated,
            namespace,
            name,
            workflow.name,
        )
        self.queue_moved(namespace, name)

    async def reconcile_environment(self, namespace: str, name: str) -> float | None:
        """The environment's status; when only its counts changed and they were written less than
        ENVIRONMENT_STATUS_SECONDS ago, the seconds to wait (the work queue comes back then)."""
        body = self.view.environment(namespace, name)
        environment = self.view.environment_model(namespace, name)
        if body is None or environment is None:
            return None
        metrics.initialise_environment(namespace, name)
        desired = environment_status(
            environment,
            self.view.peers(namespace, name),
            self.settings.operator_key.address,
            body["metadata"].get("generation", 1),
        )
        current = body.get("status") or {}
        recheck = isolation_recheck(
            current, body["metadata"].get("annotations") or {}, desired["observedGeneration"], utc_now()
        )
        if recheck is not None:
            desired.update(recheck)
        if any(current.get(k) != v for k, v in desired.items()):
            now, key = asyncio.get_running_loop().time(), (namespace, name)
            last = self._environment_written.get(key, -ENVIRONMENT_STATUS_SECONDS)
            wait = last + ENVIRONMENT_STATUS_SECONDS - now
            generation_seen = current.get("observedGeneration") == desired["observedGeneration"]
            if wait > 0 and recheck is None and generation_seen:
                return wait
            self._environment_written[key] = now
            await self.cluster.write_status_fields("ComputeEnvironment", namespace, name, desired)
            if recheck is not None and "conditions" in recheck:
                log.info(
                    "Set NetworkIsolation=Unknown on ComputeEnvironment %s/%s: recheck asked", namespace, name
                )
                self.queue_moved(namespace, name)  # the Workflows it held may start now
        return None
