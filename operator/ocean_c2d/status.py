"""A Workflow's status: its typed shape, status codes, outcomes and conditions (pure: no I/O).

The TypedDicts below are the status subresource as the CRD (crds/workflows.yaml) declares it: the API edge
stays a plain dict (what kopf and the API server hand over), but every read and write of it is typed.

The codes are the original operator-engine's (1, 20, 30, 31, 32, 40, 50, 60, 70), so Ocean clients read
them unchanged, plus distinct codes for what the original hid behind 70 "Job finished": ocean-node's numbers
where it has one (22, 41, 62), and our own otherwise (23, 43, 51, 72, 90).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NotRequired, TypedDict

from ocean_c2d.times import format_time


class StageRecord(TypedDict, total=False):
    """`status.stages.<stage>`: one stage's pod, when it ran, and how it ended."""

    podName: str
    attempts: int  # only when more than one pod ran it (a disrupted one replaced)
    jobName: str  # deprecated: the stage's Job, on a Workflow that ran before stages ran as pods
    startedAt: str
    finishedAt: str
    endedAt: str  # the algorithm only: when its processes were over (a stopped pod ends later)
    exitCode: int
    reason: str


class FilterVerdict(TypedDict):
    verdict: Literal["Pass", "Block"]
    reasons: list[str]
    # The SHA-256 of the built-in filter's manifest (what it judged); publish uploads exactly that.
    manifestSha256: NotRequired[str]


class NotificationRecord(TypedDict, total=False):
    state: Literal["Pending", "Sent", "Failed"]
    attempts: int
    lastAttemptAt: str
    message: str


class Condition(TypedDict):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int


class WorkflowStatus(TypedDict, total=False):
    observedGeneration: int
    stage: str  # a Stage value
    statusCode: int
    statusText: str
    reason: str  # an Outcome value
    message: str
    queuePosition: int | None
    admittedAt: str
    startedAt: str
    finishedAt: str
    stoppedAt: str
    duration: str
    stages: dict[str, StageRecord]
    results: list[dict[str, Any]]  # as the publish step reported them: filename, filesize, url, type, ...
    resultsManifest: str
    resultsExpiredAt: str
    filter: FilterVerdict
    notifications: dict[str, NotificationRecord]
    conditions: list[Condition]


class Stage(enum.StrEnum):
    """Where a Workflow is in its life; the `Stage` printer column."""

    QUEUED = "Queued"
    CONFIGURING = "Configuring"
    RUNNING_ALGORITHM = "RunningAlgorithm"
    FILTERING = "Filtering"
    PUBLISHING = "Publishing"
    FINISHED = "Finished"


@dataclass(frozen=True)
class Code:
    number: int
    text: str


WARMING_UP = Code(1, "Warming up")
CONFIGURING_VOLUMES = Code(20, "Configuring volumes")
CONTAINER_CREATION_FAILED = Code(22, "Container creation failed")
# Ours: the algorithm (or filter) pod's isolation check saw egress open at its deadline, so the algorithm
# never started (the cluster does not enforce NetworkPolicy, or not in time). Fails closed.
NETWORK_NOT_ISOLATED = Code(23, "Network isolation not enforced")
PROVISIONING_SUCCESS = Code(30, "Provisioning success")
DATA_PROVISIONING_FAILED = Code(31, "Data provisioning failed")
ALGORITHM_PROVISIONING_FAILED = Code(32, "Algorithm provisioning failed")
# The original's text had a trailing space ("Running algorithm "); clients that compare it exactly are
# rare and the code (40) is what they switch on, so the space is not kept.
RUNNING_ALGORITHM = Code(40, "Running algorithm")
ALGORITHM_FAILED = Code(41, "Algorithm failed")
ALGORITHM_TIMED_OUT = Code(43, "Algorithm timed out")
FILTERING_RESULTS = Code(50, "Filtering results")
RESULTS_BLOCKED = Code(51, "Results blocked by filter")
PUBLISHING_RESULTS = Code(60, "Publishing results")
RESULTS_UPLOAD_FAILED = Code(62, "Results upload failed")
JOB_FINISHED = Code(70, "Job finished")
JOB_STOPPED = Code(72, "Job stopped")
INVALID_WORKFLOW = Code(90, "Invalid workflow")


class Outcome(enum.StrEnum):
    """Why a Workflow ended the way it did: `status.reason`, and the final status code.

    An outcome is decided as soon as something goes wrong (say the algorithm fails) and kept while the
    remaining stages still run (the filter and publish stages publish the logs), so the final code says
    what went wrong first, never "Job finished".
    """

    SUCCEEDED = "Succeeded"
    DATA_PROVISIONING_FAILED = "DataProvisioningFailed"
    ALGORITHM_PROVISIONING_FAILED = "AlgorithmProvisioningFailed"
    CONTAINER_CREATION_FAILED = "ContainerCreationFailed"
    NETWORK_NOT_ISOLATED = "NetworkNotIsolated"
    ALGORITHM_FAILED = "AlgorithmFailed"
    ALGORITHM_TIMED_OUT = "AlgorithmTimedOut"
    RESULTS_BLOCKED = "ResultsBlocked"
    RESULTS_UPLOAD_FAILED = "ResultsUploadFailed"
    STOPPED = "Stopped"
    UNKNOWN_ENVIRONMENT = "UnknownEnvironment"
    ENVIRONMENT_DENIED = "EnvironmentDenied"  # its spec.access does not admit the Workflow
    INVALID_SPEC = "InvalidSpec"


FINAL_CODES: dict[Outcome, Code] = {
    Outcome.SUCCEEDED: JOB_FINISHED,
    Outcome.DATA_PROVISIONING_FAILED: DATA_PROVISIONING_FAILED,
    Outcome.ALGORITHM_PROVISIONING_FAILED: ALGORITHM_PROVISIONING_FAILED,
    Outcome.CONTAINER_CREATION_FAILED: CONTAINER_CREATION_FAILED,
    Outcome.NETWORK_NOT_ISOLATED: NETWORK_NOT_ISOLATED,
    Outcome.ALGORITHM_FAILED: ALGORITHM_FAILED,
    Outcome.ALGORITHM_TIMED_OUT: ALGORITHM_TIMED_OUT,
    Outcome.RESULTS_BLOCKED: RESULTS_BLOCKED,
    Outcome.RESULTS_UPLOAD_FAILED: RESULTS_UPLOAD_FAILED,
    Outcome.STOPPED: JOB_STOPPED,
    Outcome.UNKNOWN_ENVIRONMENT: INVALID_WORKFLOW,
    Outcome.ENVIRONMENT_DENIED: INVALID_WORKFLOW,
    Outcome.INVALID_SPEC: INVALID_WORKFLOW,
}

# Condition types. `kubectl wait --for=condition=Succeeded workflow/<name>` waits for success;
# `--for=condition=Finished` for any end.
ADMITTED = "Admitted"
FINISHED = "Finished"
SUCCEEDED = "Succeeded"
# A ComputeEnvironment's: False once a Workflow of it failed its isolation check (the cluster does not
# enforce its NetworkPolicy); it then admits nothing that needs isolation (environments.py).
NETWORK_ISOLATION = "NetworkIsolation"


MESSAGE_LIMIT = 1024  # characters of a status message or an Event's message
_CONTROL = dict.fromkeys([*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029], " ")


def printable(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text` fit for a status field, an Event or a log line: control characters (newlines, escapes that
    would drive a terminal, C1 codes, line separators) become spaces, and it is cut at `limit` with an
    ellipsis. Messages quote what users and remote servers said; this keeps that from forging lines."""
    cleaned = text.translate(_CONTROL)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def set_condition(
    conditions: list[Condition],
    kind: str,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> list[Condition]:
    """Conditions with `kind` set; lastTransitionTime moves only when the status itself changes."""
    previous = next((c for c in conditions if c.get("type") == kind), None)
    transition = (
        previous["lastTransitionTime"]
        if previous is not None and previous.get("status") == status and "lastTransitionTime" in previous
        else format_time(now)
    )
    updated: Condition = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
        "observedGeneration": generation,
    }
    others = [c for c in conditions if c.get("type") != kind]
    return sorted([*others, updated], key=lambda c: str(c["type"]))


def conditions(status: WorkflowStatus, admitted: bool, generation: int, now: datetime) -> list[Condition]:
    """Admitted, Finished and Succeeded, as `status` (stage, reason, message) says them."""
    current = list(status.get("conditions") or [])
    if admitted:
        current = set_condition(
            current, ADMITTED, "True", "Admitted", "A slot of the environment was granted", generation, now
        )
    else:
        current = set_condition(
            current,
            ADMITTED,
            "False",
            "Queued" if status.get("stage") == Stage.QUEUED.value else status.get("reason", ""),
            status.get("message", ""),
            generation,
            now,
        )
    finished = status.get("stage") == Stage.FINISHED.value
    reason = status.get("reason") or Outcome.SUCCEEDED.value
    current = set_condition(
        current,
        FINISHED,
        "True" if finished else "False",
        reason if finished else "InProgress",
        status.get("statusText", ""),
        generation,
        now,
    )
    succeeded: Literal["True", "False", "Unknown"] = (
        "Unknown" if not finished else ("True" if reason == Outcome.SUCCEEDED.value else "False")
    )
    return set_condition(
        current,
        SUCCEEDED,
        succeeded,
        reason if finished else "InProgress",
        status.get("message", ""),
        generation,
        now,
    )
