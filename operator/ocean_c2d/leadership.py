"""Leader election on a coordination.k8s.io/v1 Lease, the decisions only (pure; lease.py does the I/O).

The contract is client-go's (k8s.io/client-go/tools/leaderelection), so `kubectl get lease` reads as it
does for kube-controller-manager: spec.holderIdentity, leaseDurationSeconds, acquireTime, renewTime,
leaseTransitions. Every write is a compare-and-swap on the Lease's resourceVersion (a 409 means another
replica wrote first, and we read again).

- A replica that does not hold the Lease takes it when it is free (no Lease, or an empty holder: a leader
  released it) or when the record has not changed for `leaseDurationSeconds` *as measured on our own
  monotonic clock since we first saw it so* (client-go's observedTime). The renewTime written in the Lease
  is never compared with our clock: the two replicas' wall clocks may disagree by any amount.
- The leader renews every retry period. It may act only until `renew_deadline` after the start of its last
  successful renewal (its monotonic clock, taken before the request was sent); after that it stops writing
  and exits, as client-go's OnStoppedLeading does.

Why a partitioned leader stops before the Lease can be taken (renew deadline < lease duration): the other
replica sees our last renewal no earlier than we sent it, and then waits a full lease duration on its own
clock before it takes over; we stop at most `renew_deadline` after sending it, on ours. This holds while
(a) both monotonic clocks run at the same rate to within (lease - deadline) / lease (a third with the
defaults 15 s and 10 s; real clocks differ by parts per million), and (b) a write we started before our
deadline reaches the API server within the remaining margin (lease - deadline = 5 s by default). A paused
process (SIGSTOP, a frozen VM) is covered by (a): the monotonic clock keeps running while it is paused, so
on waking it finds its deadline passed and refuses every write before it sends one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime

# client-go's JitterFactor: a retry may come up to 1.2 retry periods after the last one, so the renew
# deadline must leave room for at least one retry.
JITTER_FACTOR = 1.2


@dataclass(frozen=True)
class LeaderElectionSettings:
    """LEADER_ELECTION and its LEASE_* settings (settings.py reads and validates them)."""

    lease_name: str = "ocean-c2d"
    lease_namespace: str | None = None  # None: the watched namespace (the operator's own in a pod)
    identity: str | None = None  # None: the host name and a random suffix, unique per process
    lease_duration_seconds: int = 15
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0
    # The signer's Service has no selector when set: the leader points this EndpointSlice (in the Lease's
    # namespace) at its own POD_IP, so configure pods reach the leader's signer only.
    signer_endpoint_slice: str | None = None
    pod_ip: str | None = None

    def problems(self) -> list[str]:
        """client-go's rules: lease duration > renew deadline > 1.2 x retry period > 0."""
        found = []
        if self.lease_duration_seconds <= self.renew_deadline_seconds:
            found.append(
                "LEASE_DURATION_SECONDS: must be greater than RENEW_DEADLINE_SECONDS "
                f"({self.lease_duration_seconds} <= {self.renew_deadline_seconds:g})"
            )
        if self.renew_deadline_seconds <= JITTER_FACTOR * self.retry_period_seconds:
            found.append(
                f"RENEW_DEADLINE_SECONDS: must be greater than {JITTER_FACTOR} x RETRY_PERIOD_SECONDS "
                f"({self.renew_deadline_seconds:g} <= {JITTER_FACTOR * self.retry_period_seconds:g})"
            )
        if self.signer_endpoint_slice is not None and self.pod_ip is None:
            found.append("POD_IP: required with SIGNER_ENDPOINT_SLICE (the leader's own address)")
        return found


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec, as client-go's LeaderElectionRecord; holder "" means nobody holds it."""

    holder: str
    lease_duration_seconds: int
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int


@dataclass(frozen=True)
class Observation:
    """The record last read (None: there was no Lease) and when, on our monotonic clock, we first saw it
    as it is: a record that stays the same for a lease duration from then has expired."""

    record: LeaseRecord | None
    since: float


class Action(enum.Enum):
    CREATE = "create"  # no Lease: create it, holding it
    ACQUIRE = "acquire"  # free or expired: take it (a new holder, one more transition)
    RENEW = "renew"  # ours: write a new renewTime
    WAIT = "wait"  # someone else holds it and it has not expired
    STAND_DOWN = "stand down"  # we led, and now someone else holds it (or our deadline passed)


@dataclass(frozen=True)
class Decision:
    action: Action
    write: LeaseRecord | None  # what to write for CREATE, ACQUIRE and RENEW
    observation: Observation
    reason: str


def observe(previous: Observation | None, record: LeaseRecord | None, now: float) -> Observation:
    """The observation after reading `record` at monotonic time `now`: the clock restarts when it changed."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def expired(observation: Observation, now: float) -> bool:
    """True once the record has stayed unchanged for its own leaseDurationSeconds (at the very edge too,
    as client-go: held only while observedTime + duration is after now)."""
    record = observation.record
    if record is None or not record.holder:
        return True
    return observation.since + record.lease_duration_seconds <= now


def may_act(leading_until: float | None, now: float) -> bool:
    """Whether a leader may still write: before its renew deadline (strictly)."""
    return leading_until is not None and now < leading_until


def leading_until(renew_started: float, settings: LeaderElectionSettings) -> float:
    """The end of a leader's term after a renewal (or acquisition) whose request started at
    `renew_started`: the renew deadline from then, never from when the answer came."""
    return renew_started + settings.renew_deadline_seconds


def decide(
    previous: Observation | None,
    record: LeaseRecord | None,
    *,
    identity: str,
    leading: float | None,
    wall: datetime,
    now: float,
    settings: LeaderElectionSettings,
) -> Decision:
    """What to do after reading the Lease (`record`; None when it does not exist). `leading` is the end of
    our term when we lead (else None), `wall` the time to write into the record, `now` our monotonic clock."""
    observation = observe(previous, record, now)
    if leading is not None and not may_act(leading, now):
        return Decision(Action.STAND_DOWN, None, observation, "the renew deadline passed")
    if record is None:
        fresh = LeaseRecord(identity, settings.lease_duration_seconds, wall, wall, 0)
        return Decision(Action.CREATE, fresh, observation, "no Lease")
    if record.holder == identity:
        if leading is None:
            # Ours, but not from this term (a restart that kept its identity): take it as a new term.
            return Decision(Action.ACQUIRE, _taken(record, identity, wall, settings), observation, "ours")
        renewed = replace(record, renew_time=wall, lease_duration_seconds=settings.lease_duration_seconds)
        return Decision(Action.RENEW, renewed, observation, "ours")
    if leading is not None and record.holder:
        return Decision(Action.STAND_DOWN, None, observation, f"{record.holder} holds the Lease")
    if not expired(observation, now):
        return Decision(Action.WAIT, None, observation, f"{record.holder} holds the Lease")
    reason = "released" if not record.holder else f"{record.holder} did not renew it"
    return Decision(Action.ACQUIRE, _taken(record, identity, wall, settings), observation, reason)


def _taken(
    record: LeaseRecord, identity: str, wall: datetime, settings: LeaderElectionSettings
) -> LeaseRecord:
    return LeaseRecord(identity, settings.lease_duration_seconds, wall, wall, record.transitions + 1)


def released(record: LeaseRecord, wall: datetime) -> LeaseRecord:
    """What a leader that stops writes on its way out (client-go's ReleaseOnCancel): no holder and a
    duration of 1 s, so the other replica takes over at its next retry instead of after a lease duration."""
    return LeaseRecord("", 1, wall, wall, record.transitions)
