"""Status codes, outcomes and conditions of a Workflow (pure: no I/O).

The codes are the original operator-engine's (1, 20, 30, 31, 32, 40, 50, 60, 70), so Ocean clients read
them unchanged, plus distinct codes for what the original hid behind 70 "Job finished": ocean-node's numbers
where it has one (22, 41, 62), and our own otherwise (23, 43, 51, 72, 90).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any


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
    Outcome.INVALID_SPEC: INVALID_WORKFLOW,
}

# Condition types. `kubectl wait --for=condition=Succeeded workflow/<name>` waits for success;
# `--for=condition=Finished` for any end.
ADMITTED = "Admitted"
FINISHED = "Finished"
SUCCEEDED = "Succeeded"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, second precision: what the API server stores for date-time fields."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    kind: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """Conditions with `kind` set; lastTransitionTime moves only when the status itself changes."""
    previous = next((c for c in conditions if c.get("type") == kind), None)
    transition = (
        previous["lastTransitionTime"]
        if previous is not None and previous.get("status") == status and "lastTransitionTime" in previous
        else format_time(now)
    )
    updated = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
        "observedGeneration": generation,
    }
    others = [c for c in conditions if c.get("type") != kind]
    return sorted([*others, updated], key=lambda c: str(c["type"]))


def format_duration(seconds: float) -> str:
    """A short human duration for the Duration column: 45s, 3m12s, 2h5m."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
