"""The reconcile, as a pure function: (workflow, environment, observed children, admission, settings,
now) -> Plan. No I/O, no clock, no randomness: everything arrives as an argument, so every transition is
a table-driven unit test, and reconciling the result of a reconcile plans nothing.

A Workflow moves Queued -> Configuring -> RunningAlgorithm -> [Filtering] -> Publishing -> Finished, by
the table in stages.py. Each stage is one pod the Workflow owns, created only when the previous stage's
outcome calls for it, and never created twice: a stage whose pod was recorded in status (or observed) is
never started again, but for the operator's own steps, whose pod is replaced (under a new name) when it
was disrupted or deleted before it ended (StageDefinition.retries). The stage's time limit is the pod's
activeDeadlineSeconds, which the kubelet enforces; the plan enforces it too, a little later
(DEADLINE_GRACE_SECONDS), for a pod no kubelet runs (unschedulable, on a node that is gone).
A Workflow that can never run as written ends InvalidSpec (`invalid`), not in a retry loop.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ocean_c2d import status as st
from ocean_c2d.model import (
    JOB_OF_STAGE,
    Admission,
    Environment,
    Event,
    JobState,
    Observed,
    Plan,
    PlanSettings,
    StageJob,
    TemplateInputs,
    Workflow,
)
from ocean_c2d.render import Templates, stage_pod_name
from ocean_c2d.stages import FIRST_STAGE, STAGES, StageDefinition, Verdict, failure_detail, next_stage
from ocean_c2d.status import Outcome, Stage, StageRecord, WorkflowStatus
from ocean_c2d.times import format_duration, format_time, parse_time

# Why a stage ended without its own verdict: its processes were killed rather than exiting by themselves.
KILLED = ("Stopped", "DeadlineExceeded", "PodDeleted")
# How long after a stage's deadline the plan ends it itself: the kubelet, which counts from when it took the
# pod, says so first when it runs the pod.
DEADLINE_GRACE_SECONDS = 5.0


@dataclass
class _Draft:
    """The status being built by one plan, and what it decided on the way."""

    workflow: Workflow
    now: datetime
    status: WorkflowStatus
    settings: PlanSettings
    events: list[Event] = field(default_factory=list)
    wake_up: float | None = None  # seconds until a running stage's deadline

    def stage_record(self, stage: str) -> StageRecord:
        return self.status.setdefault("stages", {}).setdefault(stage, StageRecord())

    def enter(self, stage: Stage, code: st.Code, message: str = "") -> None:
        if self.status.get("stage") != stage.value and stage is not Stage.FINISHED:  # that one says more
            self.events.append(Event("Normal", stage.value, message or code.text))
        self.status["stage"] = stage.value
        self.status["statusCode"] = code.number
        self.status["statusText"] = code.text
        if message:
            self.status["message"] = st.printable(message)

    def fail(self, outcome: Outcome, message: str) -> None:
        """Record the first thing that went wrong; later stages still run but cannot overwrite it."""
        if self.status.get("reason") in (None, Outcome.SUCCEEDED.value):
            message = st.printable(message)
            self.status["reason"] = outcome.value
            self.status["message"] = message
            self.events.append(Event("Warning", outcome.value, message))

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.status.get("reason") or Outcome.SUCCEEDED.value)

    @property
    def stopping(self) -> bool:
        """A stop that has not been acted on yet. It ends the stage that runs when it arrives; the stages
        after it (filter, publish) still run, to publish what exists, so once acted on it ends nothing."""
        return self.workflow.spec.stop and "stoppedAt" not in self.status


def plan(
    workflow: Workflow,
    environment: Environment | None,
    observed: Observed,
    admission: Admission,
    settings: PlanSettings,
    templates: Templates,
    job_secret: str,
    now: datetime,
    *,
    signer_token: str = "",
) -> Plan:
    """Everything that should be true for `workflow` now, given what exists."""
    draft = _draft(workflow, settings, now)

    if workflow.finished:
        return _plan_finished(draft, observed, settings)

    if environment is None:
        _finish(
            draft,
            Outcome.UNKNOWN_ENVIRONMENT,
            f"ComputeEnvironment {workflow.spec.environment!r} does not exist in namespace "
            f"{workflow.namespace!r}",
        )
        return _result(draft)

    if not workflow.admitted:
        if workflow.spec.stop:
            _finish(draft, Outcome.STOPPED, "Stopped before it started")
            return _result(draft)
        if admission.denied:  # permanent: the environment's spec.access does not admit it
            _finish(draft, Outcome.ENVIRONMENT_DENIED, admission.denied)
            return _result(draft)
        if not admission.may_start:
            draft.enter(Stage.QUEUED, st.WARMING_UP)
            # Only the head of the queue carries its position, and the message is the same at every
            # position: every admission moves each waiting Workflow up by one, and writing that into each
            # one's status cost one write per waiting Workflow per admission (the queue's length, again and
            # again). `ocean-c2d queue` answers any Workflow's position on demand; the environment's
            # status names its head.
            if admission.position == 1:
                draft.status["queuePosition"] = 1
            else:
                draft.status.pop("queuePosition", None)
            queued = (
                f"Queued for environment {environment.name} (at most {environment.max_jobs} running); "
                f"`ocean-c2d queue {workflow.name}` shows its position"
            )
            draft.status["message"] = st.printable(admission.held) if admission.held else queued
            draft.status["conditions"] = st.conditions(draft.status, False, workflow.generation, now)
            return _result(draft)
        _admit(draft)

    inputs = TemplateInputs(
        workflow,
        environment,
        settings.template_values,
        settings.filtering_container,
        job_secret,
        signer_token,
    )
    base = tuple(templates.render_base(inputs))
    desired_jobs = _advance(draft, environment, observed, templates, inputs)
    draft.status["conditions"] = st.conditions(draft.status, True, workflow.generation, now)
    if draft.status.get("stage") == Stage.FINISHED.value:
        return _plan_finished(draft, observed, settings)
    return _result(
        draft, base + desired_jobs, _ended_but_running(draft, observed), requeue_after=draft.wake_up
    )


def invalid(workflow: Workflow, message: str, settings: PlanSettings, now: datetime) -> Plan:
    """End `workflow` InvalidSpec (code 90) now: it cannot be run as written (`message` says what is at
    fault). Its children are left to the next reconcile, which cleans up after a finished Workflow, and
    its slot of the environment is free as soon as this status is written."""
    draft = _draft(workflow, settings, now)
    if workflow.finished:
        return _plan_finished(draft, Observed(), settings)
    _finish(draft, Outcome.INVALID_SPEC, f"Invalid Workflow: {message}")
    return _result(draft)


def _draft(workflow: Workflow, settings: PlanSettings, now: datetime) -> _Draft:
    draft = _Draft(workflow, now, copy.deepcopy(workflow.status), settings)
    draft.status["observedGeneration"] = workflow.generation
    return draft


def _admit(draft: _Draft) -> None:
    draft.status.pop("queuePosition", None)
    draft.status["admittedAt"] = format_time(draft.now)
    draft.status["startedAt"] = format_time(draft.now)
    draft.status.pop("message", None)
    if draft.settings.notify_start:
        draft.status["notifications"] = {"start": {"state": "Pending", "attempts": 0}}
    draft.enter(FIRST_STAGE.stage, FIRST_STAGE.code)


def _ended_but_running(draft: _Draft, observed: Observed) -> tuple[tuple[str, str], ...]:
    """Pods of stages that are over (stopped, past their deadline) while they still run: end them."""
    records = draft.status.get("stages", {})
    return tuple(
        ("Pod", job.name)
        for stage_name, job in sorted(observed.jobs.items())
        if job.state is JobState.PENDING
        and not job.deleting
        and records.get(stage_name, {}).get("finishedAt")
    )


def _advance(
    draft: _Draft,
    environment: Environment,
    observed: Observed,
    templates: Templates,
    inputs: TemplateInputs,
) -> tuple[dict[str, Any], ...]:
    """Walk the stages from the current one as far as the observed pods allow, in one pass, so a stage
    that finished starts the next one in the same reconcile. Returns the pod to create, if any."""
    while (definition := STAGES.get(JOB_OF_STAGE.get(draft.status.get("stage") or "", ""))) is not None:
        wanted = _step(draft, definition, environment, observed, templates, inputs)
        if wanted is not None:
            return wanted
    return ()


@dataclass(frozen=True)
class _Stage:
    """One stage being planned: the draft it writes, its definition, and what renders its pod."""

    draft: _Draft
    definition: StageDefinition
    environment: Environment
    templates: Templates
    inputs: TemplateInputs

    @property
    def record(self) -> StageRecord:
        return self.draft.stage_record(self.definition.name)

    def attempt_of(self, pod: str | None) -> int:
        return attempt_of(pod, self.inputs.workflow.name, self.definition.name)

    def deadline(self) -> datetime:
        """When the stage's time runs out: it counts from its first pod's creation."""
        seconds = self.definition.deadline(self.draft.workflow, self.environment, self.draft.settings)
        started = parse_time(self.record.get("startedAt")) or self.draft.now
        return started + timedelta(seconds=seconds)

    def conclude(self, verdict: Verdict) -> None:
        _conclude(self.draft, self.definition, verdict, self.environment)

    def stop(self) -> None:
        _stop_stage(self.draft, self.definition, self.environment)


def _step(
    draft: _Draft,
    definition: StageDefinition,
    environment: Environment,
    observed: Observed,
    templates: Templates,
    inputs: TemplateInputs,
) -> tuple[dict[str, Any], ...] | None:
    """One stage: the pod to create (or () to wait for the cluster), or None when the stage is over and
    the Workflow has moved on to the next one."""
    stage = _Stage(draft, definition, environment, templates, inputs)
    record = stage.record
    job = observed.jobs.get(definition.name)
    recorded = stage.attempt_of(record.get("podName"))
    if not recorded and record.get("jobName"):
        # Run as a Job by an operator from before stages ran as pods: its pod is not the Workflow's own, so
        # the stage counts as one attempt whose pod is gone (the operator's own steps run again as pods).
        recorded = 1
    if job is None and not recorded:
        if draft.stopping:
            stage.stop()
            return None
        # A pod of an earlier stage still runs (a stopped or timed-out algorithm being killed: a pod's
        # deletion returns before it is gone). Its processes could still write to the volume the next
        # stage reads: wait for the pod to end.
        if observed.running_pods - {definition.name}:
            return ()
        _record_algorithm_end(draft)
        # Not created yet: create it. The shell writes this status only after the create succeeded.
        record["startedAt"] = format_time(draft.now)
        return (_stage_pod(stage, 1),)
    seen = stage.attempt_of(job.name) if job is not None else 0
    if job is not None and seen > recorded:  # created by an earlier reconcile, its status not written
        record["podName"] = job.name
        record.setdefault("startedAt", format_time(job.started or draft.now))
        if seen > 1:
            record["attempts"] = seen
        recorded = seen
    if job is None or seen < recorded:  # recorded as created, gone now: deleted by someone
        return _replace_or_fail(stage, recorded, "PodDeleted")
    if job.state is JobState.PENDING:
        if draft.stopping:
            stage.stop()
            return None
        if job.disrupted:  # evicted, preempted, drained: its end is not the stage's outcome
            if job.running:
                return ()  # its processes may still write to the volume
            return _replace_or_fail(stage, recorded, "Disrupted")
        return _until_deadline(stage, job)
    _record_end(record, job, draft.now)
    stage.conclude(
        definition.succeeded(job)
        if job.state is JobState.SUCCEEDED
        else definition.failed(job, failure_detail(job, definition.trusted_message))
    )
    return None


def attempt_of(pod: str | None, workflow: str, stage: str) -> int:
    """Which attempt of `stage` the pod named `pod` is (render.stage_pod_name): 1, 2, ...; 0 for no pod."""
    if not pod:
        return 0
    first = stage_pod_name(workflow, stage)
    if pod == first:
        return 1
    number = pod.removeprefix(first + "-") if pod.startswith(first + "-") else ""
    return int(number) if number.isdigit() and int(number) > 1 else 0


def _stage_pod(stage: _Stage, attempt: int) -> dict[str, Any]:
    """The pod of `attempt` of the stage, its name recorded; a replacement gets what is left of the time."""
    draft, definition = stage.draft, stage.definition
    # What the algorithm wrote (outputs/, logs/) leaves only when no filter blocked it; admin logs always.
    judged = draft.status.get("filter")
    blocked = judged is not None and judged.get("verdict") == "Block"
    ends = stage.deadline()
    seconds = definition.deadline(draft.workflow, stage.environment, draft.settings)
    if attempt > 1:
        seconds = max(1, int((ends - draft.now).total_seconds()))
    _wake_at(draft, ends)
    manifest = stage.templates.render_pod(
        definition.name, stage.inputs, seconds, publish_outputs=not blocked, judged=judged, attempt=attempt
    )
    stage.record["podName"] = manifest["metadata"]["name"]
    if attempt > 1:
        stage.record["attempts"] = attempt
    return manifest


def _replace_or_fail(stage: _Stage, attempt: int, reason: str) -> tuple[dict[str, Any], ...] | None:
    """The stage's pod ended without an outcome of its own (`reason`: Disrupted, PodDeleted): a new pod
    while the stage has retries and time left and no stop came, else the stage failed."""
    draft = stage.draft
    if attempt <= stage.definition.retries and not draft.stopping and draft.now < stage.deadline():
        return (_stage_pod(stage, attempt + 1),)
    if draft.stopping:
        stage.stop()
        return None
    stage.record["finishedAt"] = format_time(draft.now)
    stage.record["reason"] = reason
    why = "its pod was deleted before it finished" if reason == "PodDeleted" else "its pod was disrupted"
    stage.conclude(stage.definition.failed(None, why))
    return None


def _wake_at(draft: _Draft, deadline: datetime) -> bool:
    """Reconcile again when `deadline` (and its grace) has passed; False if it has already."""
    remaining = (deadline - draft.now).total_seconds() + DEADLINE_GRACE_SECONDS
    if remaining <= 0:
        return False
    draft.wake_up = remaining if draft.wake_up is None else min(draft.wake_up, remaining)
    return True


def _until_deadline(stage: _Stage, job: StageJob) -> tuple[dict[str, Any], ...] | None:
    """A stage whose pod has not ended: wait, and wake up at its deadline; past it (and the grace the
    kubelet gets to say so first), the stage timed out and its pod is ended (_ended_but_running)."""
    if _wake_at(stage.draft, stage.deadline()):
        return ()
    stage.record["finishedAt"] = format_time(stage.draft.now)
    stage.record["reason"] = "DeadlineExceeded"
    timed_out = dataclasses.replace(job, failure_reason="DeadlineExceeded")
    stage.conclude(
        stage.definition.failed(timed_out, failure_detail(timed_out, stage.definition.trusted_message))
    )
    return None


def _record_end(record: StageRecord, job: StageJob, now: datetime) -> None:
    record["finishedAt"] = format_time(job.finished or now)
    if job.exit_code is not None:
        record["exitCode"] = job.exit_code
    reason = job.failure_reason or job.termination_reason
    if reason:
        record["reason"] = reason


def _conclude(draft: _Draft, definition: StageDefinition, verdict: Verdict, environment: Environment) -> None:
    """Record how `definition` ended and enter the stage after it."""
    draft.status.update(verdict.status)
    if verdict.event is not None:
        draft.events.append(verdict.event)
    if verdict.outcome is not None:
        draft.fail(verdict.outcome, verdict.message)
    following = next_stage(definition, draft.outcome, environment, draft.settings)
    if following is None:
        _enter_finished(draft)
    else:
        draft.enter(following.stage, following.code)


def _stop_stage(draft: _Draft, definition: StageDefinition, environment: Environment) -> None:
    """End the running stage now; like the original, what exists still goes through filter and publish."""
    draft.status["stoppedAt"] = format_time(draft.now)
    record = draft.stage_record(definition.name)
    record.setdefault("finishedAt", format_time(draft.now))
    record["reason"] = "Stopped"
    stopped = Verdict(Outcome.STOPPED, f"Stopped during the {definition.name} stage", definition.stopped())
    _conclude(draft, definition, stopped, environment)


def _record_algorithm_end(draft: _Draft) -> None:
    """`stages.algorithm.endedAt`: when its processes were over. An algorithm that exited by itself ended
    when its pod finished; one that was stopped, timed out or deleted ended when its pod was seen gone,
    which is now (the next stage starts only then)."""
    record = draft.status.get("stages", {}).get("algorithm")
    if not record or not record.get("finishedAt") or "endedAt" in record:
        return
    record["endedAt"] = format_time(draft.now) if record.get("reason") in KILLED else record["finishedAt"]


def _enter_finished(draft: _Draft) -> None:
    outcome = draft.outcome
    code = st.FINAL_CODES[outcome]
    draft.status["reason"] = outcome.value
    draft.enter(
        Stage.FINISHED, code, draft.status.get("message", "") if outcome is not Outcome.SUCCEEDED else ""
    )
    if outcome is Outcome.SUCCEEDED:
        draft.status.pop("message", None)
    draft.status["finishedAt"] = format_time(draft.now)
    started = parse_time(draft.status.get("startedAt"))
    if started is not None:
        draft.status["duration"] = format_duration((draft.now - started).total_seconds())
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
    """End a Workflow without running (more of) its stages: unknown environment, stopped while queued,
    invalid as written."""
    draft.status.pop("queuePosition", None)
    draft.fail(outcome, message)
    _enter_finished(draft)
    admitted = bool(draft.status.get("admittedAt"))
    draft.status["conditions"] = st.conditions(draft.status, admitted, draft.workflow.generation, draft.now)


def _plan_finished(draft: _Draft, observed: Observed, settings: PlanSettings) -> Plan:
    """A finished Workflow never moves again; all that remains is notifying, cleaning up and deleting it
    after its TTL."""
    admitted = bool(draft.status.get("admittedAt"))
    draft.status["conditions"] = st.conditions(draft.status, admitted, draft.workflow.generation, draft.now)
    unwanted: tuple[tuple[str, str], ...] = ()
    if settings.cleanup:
        unwanted = tuple(sorted({("Pod", name) for name in observed.stage_pods} | set(observed.others)))
    delete_workflow = False
    wake_ups: list[float] = []
    finished_at = parse_time(draft.status.get("finishedAt"))
    if settings.workflow_ttl_seconds is not None and finished_at is not None:
        expiry = finished_at + timedelta(seconds=settings.workflow_ttl_seconds)
        if draft.now >= expiry:
            delete_workflow = True
        else:
            wake_ups.append((expiry - draft.now).total_seconds())
    # Expiring the results is not the Workflow's business: its results record (retention.py) outlives it.
    return _result(draft, (), unwanted, delete_workflow, min(wake_ups) if wake_ups else None)


def _result(
    draft: _Draft,
    desired: tuple[dict[str, Any], ...] = (),
    unwanted: tuple[tuple[str, str], ...] = (),
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
