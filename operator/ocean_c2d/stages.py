"""The stage machine as one table (pure): for each stage, its pod template, its time limit, its retries,
the stage that follows on success and on failure, and how its end is read. `reconcile.plan` walks this
table; to follow a transition, find the stage here and read its `succeeded` or `failed` function.

    Queued -> configure -> algorithm -> [filter] -> publish -> Finished

A failure is recorded (the first one wins) and the Workflow still moves on, so the logs and whatever exists
are still filtered and published: only a failed configure skips the algorithm (there is nothing to run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ocean_c2d import status as st
from ocean_c2d.model import (
    ALGORITHM,
    CONFIGURE,
    FILTER,
    PUBLISH,
    Environment,
    Event,
    PlanSettings,
    StageJob,
    Workflow,
)
from ocean_c2d.status import FilterVerdict, Outcome, Stage, WorkflowStatus
from ocean_c2d.steps.contract import (
    EXIT_ALGORITHM_PROVISIONING_FAILED,
    EXIT_RESULTS_BLOCKED,
    ISOLATION_CHECK_CONTAINER,
    read_filter_manifest,
    read_filter_reasons,
    read_results,
    read_step_message,
)

IMAGE_PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
# Outcomes after which the algorithm wrote nothing: there is nothing to filter.
NO_ALGORITHM_OUTPUT = frozenset({Outcome.CONTAINER_CREATION_FAILED, Outcome.NETWORK_NOT_ISOLATED})


@dataclass(frozen=True)
class Verdict:
    """How one stage ended, as the Workflow's status records it."""

    outcome: Outcome | None = None  # None: the stage succeeded
    message: str = ""
    status: WorkflowStatus = field(default_factory=lambda: WorkflowStatus())  # fields it sets
    event: Event | None = None  # a Normal Event that says what the success means


@dataclass(frozen=True)
class StageDefinition:
    name: str  # its pod's `component` label and its `status.stages` key
    stage: Stage  # the status stage while it runs
    code: st.Code  # the status code while it runs
    template: str  # templates/<template>.yaml.j2
    deadline: Callable[[Workflow, Environment, PlanSettings], int]  # seconds, over all of its pods
    after_success: str | None  # the next stage when nothing has failed so far; None: Finished
    after_failure: str | None  # the next stage once something failed (here or before)
    succeeded: Callable[[StageJob], Verdict]
    failed: Callable[[StageJob | None, str], Verdict]  # its pod (None: deleted) and what went wrong
    wanted: Callable[[Environment, PlanSettings, Outcome], bool] = lambda *_: True  # or skipped
    # What a stop of this stage records besides the outcome (a stopped filter gave no Pass: a Block).
    stopped: Callable[[], WorkflowStatus] = WorkflowStatus
    # Whether its pod's termination message is the operator's own step speaking. The algorithm's is the
    # consumer's code: copied into status or an Event it would be a channel around filter and publish.
    trusted_message: bool = True
    # How many times a pod that was disrupted (evicted, preempted, drained) or deleted before it ended is
    # replaced by a new one: only the operator's own steps, which may run twice; third-party code never does.
    retries: int = 0


def failure_detail(job: StageJob | None, its_own_words: bool = True) -> str:
    """What went wrong with a stage's pod, in a few words for `status.message`: the kubelet's (and the
    operator's: DeadlineExceeded) words, and, when `its_own_words`, what the step said in its termination
    message."""
    if job is None:
        return "no pod"
    parts = []
    if job.exit_code is not None:
        parts.append(f"exit code {job.exit_code}")
    if job.termination_reason and job.termination_reason not in ("Error", "Completed"):
        parts.append(job.termination_reason)
    if job.failure_reason:
        parts.append(job.failure_reason)
    if job.waiting_reason:
        parts.append(job.waiting_reason)
    said = read_step_message(job.termination_message) if its_own_words else None
    if said:
        parts.append(said[:500])
    return ", ".join(parts) or "unknown reason"


# ---- configure: fetch the inputs and the algorithm into the data volume ----------------------------------


def _configured(_: StageJob) -> Verdict:
    return Verdict(event=Event("Normal", "Provisioned", st.PROVISIONING_SUCCESS.text))


def _configure_failed(job: StageJob | None, why: str) -> Verdict:
    if job is not None and job.exit_code == EXIT_ALGORITHM_PROVISIONING_FAILED:
        return Verdict(Outcome.ALGORITHM_PROVISIONING_FAILED, f"Algorithm provisioning failed: {why}")
    return Verdict(Outcome.DATA_PROVISIONING_FAILED, f"Data provisioning failed: {why}")


# ---- algorithm: run the consumer's code, without network -------------------------------------------------


def _algorithm_deadline(workflow: Workflow, environment: Environment, _: PlanSettings) -> int:
    requested = workflow.spec.max_duration or environment.max_job_duration
    return min(requested, environment.max_job_duration)


def _algorithm_failed(job: StageJob | None, why: str) -> Verdict:
    if job is not None and job.init_failure == ISOLATION_CHECK_CONTAINER:
        return Verdict(
            Outcome.NETWORK_NOT_ISOLATED,
            "The algorithm was not started: its pod could still reach the network at the isolation"
            " check's deadline (the cluster does not enforce the Workflow's NetworkPolicy, or not in"
            " time)",
        )
    if job is not None and job.exit_code is None and job.waiting_reason in IMAGE_PULL_FAILURES:
        return Verdict(Outcome.CONTAINER_CREATION_FAILED, f"The algorithm container never started: {why}")
    if job is not None and job.failure_reason == "DeadlineExceeded":
        return Verdict(Outcome.ALGORITHM_TIMED_OUT, f"The algorithm ran past its time limit: {why}")
    return Verdict(Outcome.ALGORITHM_FAILED, f"The algorithm failed: {why}")


# ---- filter: judge the outputs against the environment's policy ------------------------------------------


def _filter_wanted(environment: Environment, settings: PlanSettings, outcome: Outcome) -> bool:
    configured = settings.filtering_container is not None or environment.filter.enabled
    return configured and outcome not in NO_ALGORITHM_OUTPUT


def _filter_passed(job: StageJob) -> Verdict:
    verdict = FilterVerdict(verdict="Pass", reasons=[])
    manifest = read_filter_manifest(job.termination_message)
    if manifest is not None:  # the built-in filter's (a custom filter's pod records it in a file only)
        verdict["manifestSha256"] = manifest
    return Verdict(status=WorkflowStatus(filter=verdict))


def _filter_failed(job: StageJob | None, why: str) -> Verdict:
    """Any end of the filter but a Pass blocks the outputs: a blocking verdict (exit 51) with its reasons,
    or a filter that failed, could not run isolated, or was deleted."""
    reasons = read_filter_reasons(job.termination_message if job else None)
    if job is not None and job.init_failure == ISOLATION_CHECK_CONTAINER:
        reasons = [
            "the filter pod could still reach the network (NetworkPolicy not enforced); results withheld"
        ]
    elif job is None or job.exit_code != EXIT_RESULTS_BLOCKED:
        reasons = [f"the filter failed ({why}); results withheld", *reasons]
    return Verdict(
        Outcome.RESULTS_BLOCKED,
        "Results blocked by the filter: " + "; ".join(reasons),
        WorkflowStatus(filter=FilterVerdict(verdict="Block", reasons=reasons)),
    )


def _filter_stopped() -> WorkflowStatus:
    """A filter stopped before its verdict never said Pass: nothing it was judging leaves."""
    reasons = ["the filter was stopped before its verdict; results withheld"]
    return WorkflowStatus(filter=FilterVerdict(verdict="Block", reasons=reasons))


# ---- publish: upload the outputs (unless blocked) and the logs -------------------------------------------


def _published(job: StageJob) -> Verdict:
    results, manifest = read_results(job.termination_message)
    fields = WorkflowStatus(results=results)
    if manifest:
        fields["resultsManifest"] = manifest
    return Verdict(status=fields)


def _publish_failed(_: StageJob | None, why: str) -> Verdict:
    return Verdict(Outcome.RESULTS_UPLOAD_FAILED, f"Publishing the results failed: {why}")


STAGES: dict[str, StageDefinition] = {
    CONFIGURE: StageDefinition(
        name=CONFIGURE,
        stage=Stage.CONFIGURING,
        code=st.CONFIGURING_VOLUMES,
        template="configure-pod",
        retries=2,
        deadline=lambda _w, _e, settings: settings.configure_timeout,
        after_success=ALGORITHM,
        after_failure=PUBLISH,  # nothing to run: publish the logs of what happened
        succeeded=_configured,
        failed=_configure_failed,
    ),
    ALGORITHM: StageDefinition(
        name=ALGORITHM,
        stage=Stage.RUNNING_ALGORITHM,
        code=st.RUNNING_ALGORITHM,
        template="algorithm-pod",
        deadline=_algorithm_deadline,
        after_success=FILTER,
        after_failure=FILTER,  # what a failed algorithm wrote is still judged before anything leaves
        succeeded=lambda _: Verdict(),
        failed=_algorithm_failed,
        trusted_message=False,
    ),
    FILTER: StageDefinition(
        name=FILTER,
        stage=Stage.FILTERING,
        code=st.FILTERING_RESULTS,
        template="filter-pod",
        deadline=lambda _w, _e, settings: settings.filter_timeout,
        after_success=PUBLISH,
        after_failure=PUBLISH,  # publish then uploads the admin logs only
        succeeded=_filter_passed,
        failed=_filter_failed,
        wanted=_filter_wanted,
        stopped=_filter_stopped,
    ),
    PUBLISH: StageDefinition(
        name=PUBLISH,
        stage=Stage.PUBLISHING,
        code=st.PUBLISHING_RESULTS,
        template="publish-pod",
        retries=2,
        deadline=lambda _w, _e, settings: settings.publish_timeout,
        after_success=None,
        after_failure=None,
        succeeded=_published,
        failed=_publish_failed,
    ),
}
FIRST_STAGE = STAGES[CONFIGURE]
STAGE_BY_STATUS = {definition.stage.value: definition for definition in STAGES.values()}


def next_stage(
    finished: StageDefinition, outcome: Outcome, environment: Environment, settings: PlanSettings
) -> StageDefinition | None:
    """The stage after `finished`, given the Workflow's outcome so far; None when the Workflow is over.
    A stage that is not wanted (no filter configured, or nothing to filter) passes the Workflow on."""
    name = finished.after_success if outcome is Outcome.SUCCEEDED else finished.after_failure
    while name is not None and not STAGES[name].wanted(environment, settings, outcome):
        name = STAGES[name].after_success if outcome is Outcome.SUCCEEDED else STAGES[name].after_failure
    return STAGES[name] if name is not None else None
