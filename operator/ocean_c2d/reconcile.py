"""The reconcile, as a pure function: (workflow, environment, observed children, admission, settings,
now) -> Plan. No I/O, no clock, no randomness: everything arrives as an argument, so every transition is
a table-driven unit test, and reconciling the result of a reconcile plans nothing.

A Workflow moves Queued -> Configuring -> RunningAlgorithm -> [Filtering] -> Publishing -> Finished.
Each stage is one Kubernetes Job, created only when the previous stage's outcome calls for it, and never
created twice: a stage whose Job was recorded in status (or observed) is never started again.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ocean_c2d import status as st
from ocean_c2d.model import Environment, JobState, Observed, StageJob, Workflow
from ocean_c2d.render import Templates, spec_hash
from ocean_c2d.status import Outcome, Stage
from ocean_c2d.steps.contract import (
    EXIT_ALGORITHM_PROVISIONING_FAILED,
    EXIT_RESULTS_BLOCKED,
    ISOLATION_CHECK_CONTAINER,
)

CONFIGURE, ALGORITHM, FILTER, PUBLISH = "configure", "algorithm", "filter", "publish"
STAGE_OF_JOB = {
    CONFIGURE: Stage.CONFIGURING,
    ALGORITHM: Stage.RUNNING_ALGORITHM,
    FILTER: Stage.FILTERING,
    PUBLISH: Stage.PUBLISHING,
}
# The status stage -> the Job stage (and status.stages record) that runs during it.
JOB_OF_STAGE: dict[str, str] = {stage.value: job for job, stage in STAGE_OF_JOB.items()}


IMAGE_PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})


@dataclass(frozen=True)
class PlanSettings:
    """The part of the operator's settings the reconcile reads."""

    cleanup: bool = True  # False with DEBUG_NO_CLEANUP: children stay after the Workflow ends
    notify_start: bool = False  # NOTIFY_START_URL is set
    notify_stop: bool = False  # NOTIFY_STOP_URL is set
    workflow_ttl_seconds: int | None = None
    filtering_container: str | None = None
    configure_timeout: int = 3600
    filter_timeout: int = 1800
    publish_timeout: int = 3600
    template_values: dict[str, Any] = field(default_factory=dict)  # images, pull policy, ... for templates


@dataclass(frozen=True)
class Admission:
    """The environment queue's answer for one Workflow (environments.py computes it)."""

    may_start: bool
    position: int | None = None  # 1-based position among the queued, when it may not start


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    desired: tuple[dict[str, Any], ...] = ()  # children that must exist (created when missing)
    unwanted: tuple[tuple[str, str], ...] = ()  # (kind, name) of children to delete
    status: dict[str, Any] | None = None  # the new status, when it differs from the current one
    events: tuple[Event, ...] = ()
    notify: tuple[str, ...] = ()  # "start" / "stop" notifications due
    expire_results: tuple[str, ...] = ()  # URLs of results past their expiry, to delete or unpin now
    delete_workflow: bool = False  # the finished Workflow's TTL has passed
    requeue_after: float | None = None  # reconcile again after this many seconds, even without events

    def writes(self, observed: Observed) -> int:
        """How many API writes applying this plan takes against `observed` (0 means idle)."""
        return (
            len(missing_or_drifted(self.desired, observed))
            + len([u for u in self.unwanted if _present(u, observed)])
            + (1 if self.status is not None else 0)
            + len(self.events)
            + (1 if self.delete_workflow else 0)
        )


def _present(ref: tuple[str, str], observed: Observed) -> bool:
    kind, name = ref
    if kind == "Job":
        return any(job.name == name and not job.deleting for job in observed.jobs.values())
    return ref in observed.others


def needs_write(manifest: dict[str, Any], observed: Observed) -> bool:
    """A desired child is written when absent, or when its spec hash differs from the observed one.
    Jobs are never patched: their pod template is immutable once created."""
    ref = (manifest["kind"], manifest["metadata"]["name"])
    if not _present(ref, observed):
        return True
    return ref[0] != "Job" and observed.hashes.get(ref) != spec_hash(manifest)


def missing_or_drifted(desired: tuple[dict[str, Any], ...], observed: Observed) -> list[dict[str, Any]]:
    return [manifest for manifest in desired if needs_write(manifest, observed)]


@dataclass
class _Draft:
    """The status being built by one plan, and what it decided on the way."""

    workflow: Workflow
    now: datetime
    status: dict[str, Any]
    settings: PlanSettings
    events: list[Event] = field(default_factory=list)
    notify: list[str] = field(default_factory=list)

    def stage_record(self, stage: str) -> dict[str, Any]:
        stages: dict[str, Any] = self.status.setdefault("stages", {})
        record: dict[str, Any] = stages.setdefault(stage, {})
        return record

    def enter(self, stage: Stage, code: st.Code, message: str = "") -> None:
        if self.status.get("stage") != stage.value and stage is not Stage.FINISHED:  # that one says more
            self.events.append(Event("Normal", stage.value, message or code.text))
        self.status["stage"] = stage.value
        self.status["statusCode"] = code.number
        self.status["statusText"] = code.text
        if message:
            self.status["message"] = message

    def fail(self, outcome: Outcome, message: str) -> None:
        """Record the first thing that went wrong; later stages still run but cannot overwrite it."""
        if self.status.get("reason") in (None, Outcome.SUCCEEDED.value):
            self.status["reason"] = outcome.value
            self.status["message"] = message
            self.events.append(Event("Warning", outcome.value, message))

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.status.get("reason") or Outcome.SUCCEEDED.value)


def plan(
    workflow: Workflow,
    environment: Environment | None,
    observed: Observed,
    admission: Admission,
    settings: PlanSettings,
    templates: Templates,
    job_secret: str,
    now: datetime,
) -> Plan:
    """Everything that should be true for `workflow` now, given what exists."""
    draft = _Draft(workflow, now, json.loads(json.dumps(workflow.status)), settings)
    draft.status["observedGeneration"] = workflow.generation

    if workflow.finished:
        return _plan_finished(draft, observed, settings)

    if environment is None:
        _finish(
            draft,
            Outcome.UNKNOWN_ENVIRONMENT,
            f"ComputeEnvironment {workflow.spec.environment!r} does not exist in namespace "
            f"{workflow.namespace!r}",
        )
        return _result(draft, (), (), settings)

    if not workflow.admitted:
        if workflow.spec.stop:
            _finish(draft, Outcome.STOPPED, "Stopped before it started")
            return _result(draft, (), (), settings)
        if not admission.may_start:
            draft.enter(Stage.QUEUED, st.WARMING_UP)
            draft.status["queuePosition"] = admission.position
            draft.status["message"] = (
                f"Queued: position {admission.position} for environment {environment.name}"
                f" (at most {environment.max_jobs} running)"
            )
            _conditions(draft, admitted=False)
            return _result(draft, (), (), settings)
        draft.status.pop("queuePosition", None)
        draft.status["admittedAt"] = st.format_time(now)
        draft.status["startedAt"] = st.format_time(now)
        draft.status.pop("message", None)
        if settings.notify_start:
            draft.status["notifications"] = {"start": {"state": "Pending", "attempts": 0}}
        draft.enter(Stage.CONFIGURING, st.CONFIGURING_VOLUMES)

    context = templates.context(workflow, environment, settings, job_secret)
    base = tuple(templates.render_base(context))
    desired_jobs = _advance(draft, environment, observed, settings, templates, context)
    _conditions(draft, admitted=True)
    # A stage that is over (stopped) while its Job still runs: end that Job.
    records = draft.status.get("stages", {})
    unwanted = tuple(
        ("Job", job.name)
        for stage_name, job in sorted(observed.jobs.items())
        if job.state is JobState.PENDING
        and not job.deleting
        and records.get(stage_name, {}).get("finishedAt")
    )
    if draft.status.get("stage") == Stage.FINISHED.value:
        return _plan_finished(draft, observed, settings)
    return _result(draft, base + desired_jobs, unwanted, settings)


def _advance(
    draft: _Draft,
    environment: Environment,
    observed: Observed,
    settings: PlanSettings,
    templates: Templates,
    context: dict[str, Any],
) -> tuple[dict[str, Any], ...]:
    """Walk the stages from the current one as far as the observed Jobs allow, in one pass, so a stage
    that finished starts the next one in the same reconcile."""
    while True:
        # A stop ends the stage that runs when it arrives; the stages after it (filter, publish) still
        # run, to publish what exists, so a stop already acted on (stoppedAt) ends nothing more.
        stop = draft.workflow.spec.stop and "stoppedAt" not in draft.status
        stage_name = _current_job_stage(draft)
        if stage_name is None:
            return ()
        record = draft.stage_record(stage_name)
        job = observed.jobs.get(stage_name)

        if job is None and not record.get("jobName"):
            if stop:
                _stop_stage(draft, stage_name, environment, settings)
                continue
            # A pod of an earlier stage still runs (a stopped or timed-out algorithm being killed: `sh`
            # as PID 1 ignores SIGTERM, and a Job's deletion returns before its pod is gone). Its
            # processes could still write to the volume the next stage reads: wait for the pod to end.
            if observed.running_pods - {stage_name}:
                return ()
            _record_algorithm_end(draft)
            # Not created yet: create it. The shell writes this status only after the create succeeded.
            # Outputs leave only when no filter blocked them; logs are published either way.
            blocked = draft.status.get("filter", {}).get("verdict") == "Block"
            manifest = templates.render_job(
                stage_name,
                {**context, "publish_outputs": not blocked},
                _deadline(stage_name, draft.workflow, environment, settings),
            )
            record["jobName"] = manifest["metadata"]["name"]
            record["startedAt"] = st.format_time(draft.now)
            return (manifest,)
        if job is not None and not record.get("jobName"):
            record["jobName"] = job.name
            record["startedAt"] = st.format_time(job.started or draft.now)
        if job is None:
            # Recorded as created, gone now: deleted by someone. Never re-run a stage.
            _stage_failed(draft, stage_name, None, "its Job was deleted before it finished")
            record["finishedAt"] = st.format_time(draft.now)
            record["reason"] = "JobDeleted"
            _next_stage(draft, stage_name, environment, settings)
            continue
        if job.state is JobState.PENDING:
            if not stop:
                return ()
            _stop_stage(draft, stage_name, environment, settings)
            continue
        record["finishedAt"] = st.format_time(job.finished or draft.now)
        if job.exit_code is not None:
            record["exitCode"] = job.exit_code
        if job.termination_reason or job.failure_reason:
            record["reason"] = job.failure_reason or job.termination_reason
        if job.state is JobState.SUCCEEDED:
            _stage_succeeded(draft, stage_name, job)
        else:
            _stage_failed(draft, stage_name, job, None)
        _next_stage(draft, stage_name, environment, settings)


def _record_algorithm_end(draft: _Draft) -> None:
    """`stages.algorithm.endedAt`: when its processes were over. An algorithm that exited by itself ended
    when its Job finished; one that was stopped, timed out or deleted ended when its pod was seen gone,
    which is now (the next stage starts only then)."""
    record = draft.status.get("stages", {}).get(ALGORITHM)
    if not record or not record.get("finishedAt") or "endedAt" in record:
        return
    killed = record.get("reason") in ("Stopped", "DeadlineExceeded", "JobDeleted")
    record["endedAt"] = st.format_time(draft.now) if killed else record["finishedAt"]


def _current_job_stage(draft: _Draft) -> str | None:
    return JOB_OF_STAGE.get(draft.status.get("stage") or "")


def _deadline(stage: str, workflow: Workflow, environment: Environment, settings: PlanSettings) -> int:
    if stage == ALGORITHM:
        requested = workflow.spec.max_duration or environment.max_job_duration
        return min(requested, environment.max_job_duration)
    return {
        CONFIGURE: settings.configure_timeout,
        FILTER: settings.filter_timeout,
        PUBLISH: settings.publish_timeout,
    }[stage]


def _stop_stage(draft: _Draft, stage: str, environment: Environment, settings: PlanSettings) -> None:
    """End `stage` now; like the original, what exists still goes through filter and publish."""
    draft.fail(Outcome.STOPPED, f"Stopped during the {stage} stage")
    draft.status["stoppedAt"] = st.format_time(draft.now)
    record = draft.stage_record(stage)
    record.setdefault("finishedAt", st.format_time(draft.now))
    record["reason"] = "Stopped"
    _next_stage(draft, stage, environment, settings)


def _stage_succeeded(draft: _Draft, stage: str, job: StageJob) -> None:
    if stage == CONFIGURE:
        draft.events.append(Event("Normal", "Provisioned", st.PROVISIONING_SUCCESS.text))
    elif stage == FILTER:
        draft.status["filter"] = {"verdict": "Pass", "reasons": []}
    elif stage == PUBLISH:
        results, manifest = _parse_results(job.termination_message)
        draft.status["results"] = results
        if manifest:
            draft.status["resultsManifest"] = manifest


def _stage_failed(draft: _Draft, stage: str, job: StageJob | None, why: str | None) -> None:
    detail = why or _failure_detail(job)
    code = job.exit_code if job else None
    if stage == CONFIGURE:
        if code == EXIT_ALGORITHM_PROVISIONING_FAILED:
            draft.fail(Outcome.ALGORITHM_PROVISIONING_FAILED, f"Algorithm provisioning failed: {detail}")
        else:
            draft.fail(Outcome.DATA_PROVISIONING_FAILED, f"Data provisioning failed: {detail}")
    elif stage == ALGORITHM:
        never_started = (
            job is not None and job.exit_code is None and job.waiting_reason in IMAGE_PULL_FAILURES
        )
        if job is not None and job.init_failure == ISOLATION_CHECK_CONTAINER:
            draft.fail(
                Outcome.NETWORK_NOT_ISOLATED,
                "The algorithm was not started: its pod could still reach the network at the isolation"
                " check's deadline (the cluster does not enforce the Workflow's NetworkPolicy, or not in"
                " time)",
            )
        elif never_started:
            draft.fail(Outcome.CONTAINER_CREATION_FAILED, f"The algorithm container never started: {detail}")
        elif job is not None and job.failure_reason == "DeadlineExceeded":
            draft.fail(Outcome.ALGORITHM_TIMED_OUT, f"The algorithm ran past its time limit: {detail}")
        else:
            draft.fail(Outcome.ALGORITHM_FAILED, f"The algorithm failed: {detail}")
    elif stage == FILTER:
        reasons = _parse_reasons(job.termination_message if job else None)
        if job is not None and job.init_failure == ISOLATION_CHECK_CONTAINER:
            reasons = [
                "the filter pod could still reach the network (NetworkPolicy not enforced); results withheld"
            ]
        elif code != EXIT_RESULTS_BLOCKED:
            reasons = [f"the filter failed ({detail}); results withheld", *reasons]
        draft.status["filter"] = {"verdict": "Block", "reasons": reasons}
        draft.fail(Outcome.RESULTS_BLOCKED, "Results blocked by the filter: " + "; ".join(reasons))
    else:
        draft.fail(Outcome.RESULTS_UPLOAD_FAILED, f"Publishing the results failed: {detail}")


def _failure_detail(job: StageJob | None) -> str:
    if job is None:
        return "no Job"
    parts = []
    if job.exit_code is not None:
        parts.append(f"exit code {job.exit_code}")
    if job.termination_reason and job.termination_reason not in ("Error", "Completed"):
        parts.append(job.termination_reason)
    if job.failure_reason:
        parts.append(job.failure_reason)
    if job.waiting_reason:
        parts.append(job.waiting_reason)
    said = _step_message(job.termination_message)
    if said:
        parts.append(said[:500])
    return ", ".join(parts) or "unknown reason"


def _step_message(text: str | None) -> str | None:
    """What a step said about its failure: the `message` of its JSON termination message, or the text."""
    if not text or not text.strip():
        return None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return text.strip()
    message = document.get("message") if isinstance(document, dict) else None
    return str(message) if message else None


def _next_stage(draft: _Draft, finished: str, environment: Environment, settings: PlanSettings) -> None:
    """Choose the stage after `finished`: the original's order, with its bugs fixed (the filter never
    runs without algorithm output, and never overwrites an earlier failure)."""
    outcome = draft.outcome
    if finished == CONFIGURE:
        if outcome is Outcome.SUCCEEDED:
            draft.enter(Stage.RUNNING_ALGORITHM, st.RUNNING_ALGORITHM)
        else:
            draft.enter(Stage.PUBLISHING, st.PUBLISHING_RESULTS)
    elif finished == ALGORITHM:
        algorithm_ran = outcome not in (Outcome.CONTAINER_CREATION_FAILED, Outcome.NETWORK_NOT_ISOLATED)
        if algorithm_ran and _filter_wanted(environment, settings):
            draft.enter(Stage.FILTERING, st.FILTERING_RESULTS)
        else:
            draft.enter(Stage.PUBLISHING, st.PUBLISHING_RESULTS)
    elif finished == FILTER:
        draft.enter(Stage.PUBLISHING, st.PUBLISHING_RESULTS)
    else:
        _enter_finished(draft)


def _filter_wanted(environment: Environment, settings: PlanSettings) -> bool:
    return settings.filtering_container is not None or environment.filter.enabled


def _enter_finished(draft: _Draft) -> None:
    outcome = draft.outcome
    code = st.FINAL_CODES[outcome]
    draft.status["reason"] = outcome.value
    draft.enter(
        Stage.FINISHED, code, draft.status.get("message", "") if outcome is not Outcome.SUCCEEDED else ""
    )
    if outcome is Outcome.SUCCEEDED:
        draft.status.pop("message", None)
    draft.status["finishedAt"] = st.format_time(draft.now)
    started = draft.status.get("startedAt")
    if started:
        elapsed = (draft.now - datetime.fromisoformat(started.replace("Z", "+00:00"))).total_seconds()
        draft.status["duration"] = st.format_duration(elapsed)
    if draft.settings.notify_stop and "admittedAt" in draft.status:
        draft.status.setdefault("notifications", {})["stop"] = {"state": "Pending", "attempts": 0}
    draft.events.append(
        Event(
            "Normal" if outcome is Outcome.SUCCEEDED else "Warning",
            "Finished",
            f"{code.text} ({outcome.value})",
        )
    )


def _finish(draft: _Draft, outcome: Outcome, message: str) -> None:
    """End a Workflow that never started a stage (unknown environment, stopped while queued)."""
    draft.status.pop("queuePosition", None)
    draft.fail(outcome, message)
    _enter_finished(draft)
    _conditions(draft, admitted=False)


def _conditions(draft: _Draft, admitted: bool) -> None:
    status, generation, now = draft.status, draft.workflow.generation, draft.now
    conditions = list(status.get("conditions") or [])
    if admitted:
        conditions = st.set_condition(
            conditions,
            st.ADMITTED,
            "True",
            "Admitted",
            "A slot of the environment was granted",
            generation,
            now,
        )
    else:
        conditions = st.set_condition(
            conditions,
            st.ADMITTED,
            "False",
            "Queued" if status.get("stage") == Stage.QUEUED.value else status.get("reason", ""),
            status.get("message", ""),
            generation,
            now,
        )
    finished = status.get("stage") == Stage.FINISHED.value
    reason = status.get("reason") or Outcome.SUCCEEDED.value
    conditions = st.set_condition(
        conditions,
        st.FINISHED,
        "True" if finished else "False",
        reason if finished else "InProgress",
        status.get("statusText", ""),
        generation,
        now,
    )
    succeeded = "Unknown" if not finished else ("True" if reason == Outcome.SUCCEEDED.value else "False")
    conditions = st.set_condition(
        conditions,
        st.SUCCEEDED,
        succeeded,
        reason if finished else "InProgress",
        status.get("message", ""),
        generation,
        now,
    )
    status["conditions"] = conditions


def _plan_finished(draft: _Draft, observed: Observed, settings: PlanSettings) -> Plan:
    """A finished Workflow never moves again; all that remains is notifying, cleaning up, expiring its
    results when their time comes (STORAGE_EXPIRY, IPFS_EXPIRY_TIME) and deleting it after its TTL."""
    _conditions(draft, admitted=bool(draft.status.get("admittedAt")))
    unwanted: tuple[tuple[str, str], ...] = ()
    if settings.cleanup:
        unwanted = tuple(
            sorted(
                {("Job", job.name) for job in observed.jobs.values() if not job.deleting}
                | set(observed.others)
            )
        )
    delete_workflow = False
    wake_ups: list[float] = []
    finished_at = draft.status.get("finishedAt")
    if settings.workflow_ttl_seconds is not None and finished_at:
        expiry = datetime.fromisoformat(finished_at.replace("Z", "+00:00")) + timedelta(
            seconds=settings.workflow_ttl_seconds
        )
        if draft.now >= expiry:
            delete_workflow = True
        else:
            wake_ups.append((expiry - draft.now).total_seconds())
    expire_results: tuple[str, ...] = ()
    expiring = [r for r in draft.status.get("results") or [] if isinstance(r.get("expiresAt"), int)]
    if expiring and "resultsExpiredAt" not in draft.status:
        # All of one Workflow's results expire together, once the last of them is due.
        due = max(r["expiresAt"] for r in expiring) - draft.now.timestamp()
        if due <= 0:
            expire_results = tuple(str(r["url"]) for r in expiring)
        else:
            wake_ups.append(due)
    result = _result(draft, (), unwanted, settings, delete_workflow, min(wake_ups) if wake_ups else None)
    return dataclasses.replace(result, expire_results=expire_results)


def _result(
    draft: _Draft,
    desired: tuple[dict[str, Any], ...],
    unwanted: tuple[tuple[str, str], ...],
    settings: PlanSettings,
    delete_workflow: bool = False,
    requeue_after: float | None = None,
) -> Plan:
    notifications = draft.status.get("notifications", {})
    due = tuple(kind for kind in ("start", "stop") if notifications.get(kind, {}).get("state") == "Pending")
    changed = draft.status != draft.workflow.status
    return Plan(
        desired=desired,
        unwanted=unwanted,
        status=draft.status if changed else None,
        events=tuple(draft.events),
        notify=due,
        delete_workflow=delete_workflow,
        requeue_after=requeue_after,
    )


def _parse_results(message: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """The publish step's termination message: {"results": [...]} or {"manifest": "<url>"}."""
    if not message:
        return [], None
    try:
        document = json.loads(message)
    except json.JSONDecodeError:
        return [], None
    if not isinstance(document, dict):
        return [], None
    results = [r for r in document.get("results", []) if isinstance(r, dict)]
    manifest = document.get("manifest")
    return results, manifest if isinstance(manifest, str) else None


def _parse_reasons(message: str | None) -> list[str]:
    """The filter step's termination message: {"verdict": "Block", "reasons": [...]}."""
    if not message:
        return []
    try:
        document = json.loads(message)
    except json.JSONDecodeError:
        return [message.strip()[:500]]
    reasons = document.get("reasons", []) if isinstance(document, dict) else []
    return [str(r) for r in reasons]
