"""Leader election's decisions (leadership.py) on a fake clock, and its settings.

`now` is the replica's monotonic clock, `wall` what it writes into the Lease; the two are deliberately
unrelated here, as the decisions must never compare a Lease's renewTime with the local clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ocean_c2d.leadership import (
    Action,
    LeaderElectionSettings,
    LeaseRecord,
    Observation,
    decide,
    expired,
    leading_until,
    may_act,
    observe,
    released,
)
from ocean_c2d.settings import SettingsError, load_settings

KEY_HEX = "0x95c716e9df3bc4ffd7299e7861ce401de810e8d245d3127b8e7b430f4ca7fd27"
SETTINGS = LeaderElectionSettings()  # 15 s, 10 s, 2 s
WALL = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
ME, OTHER = "replica-a", "replica-b"


def held_by(
    holder: str, *, duration: int = 15, renewed: datetime = WALL, transitions: int = 3
) -> LeaseRecord:
    return LeaseRecord(holder, duration, WALL - timedelta(hours=1), renewed, transitions)


def step(
    previous: Observation | None,
    record: LeaseRecord | None,
    now: float,
    leading: float | None = None,
    wall: datetime = WALL,
) -> tuple[Action, LeaseRecord | None, Observation]:
    decision = decide(previous, record, identity=ME, leading=leading, wall=wall, now=now, settings=SETTINGS)
    return decision.action, decision.write, decision.observation


def test_no_lease_is_created_held_by_us() -> None:
    action, write, _ = step(None, None, now=100.0)
    assert action is Action.CREATE
    assert write == LeaseRecord(ME, 15, WALL, WALL, 0)


def test_a_lease_held_by_another_is_waited_for_a_full_lease_duration_on_our_clock() -> None:
    record = held_by(OTHER)
    action, write, seen = step(None, record, now=1000.0)
    assert (action, write) == (Action.WAIT, None)
    assert seen == Observation(record, 1000.0)
    # Unchanged just before the duration has passed on our clock: still theirs.
    assert step(seen, record, now=1014.999)[0] is Action.WAIT
    # At the very edge it has expired (client-go: held only while observedTime + duration is after now).
    action, write, _ = step(seen, record, now=1015.0)
    assert action is Action.ACQUIRE
    assert write == LeaseRecord(ME, 15, WALL, WALL, 4)  # a new holder: one more transition


def test_every_change_of_the_record_restarts_the_wait() -> None:
    first = held_by(OTHER)
    _, _, seen = step(None, first, now=0.0)
    renewed = held_by(OTHER, renewed=WALL + timedelta(seconds=2))
    action, _, seen = step(seen, renewed, now=14.0)
    assert action is Action.WAIT
    assert seen.since == 14.0
    assert step(seen, renewed, now=28.9)[0] is Action.WAIT
    assert step(seen, renewed, now=29.0)[0] is Action.ACQUIRE


@pytest.mark.parametrize("skew", [timedelta(hours=-5), timedelta(0), timedelta(days=400)])
def test_the_renew_time_written_in_the_lease_is_never_compared_with_our_clock(skew: timedelta) -> None:
    """A holder whose wall clock is hours behind (or a year ahead) is judged by observation only."""
    record = held_by(OTHER, renewed=WALL + skew)
    _, _, seen = step(None, record, now=50.0, wall=WALL)
    assert step(seen, record, now=64.0)[0] is Action.WAIT
    assert step(seen, record, now=65.0)[0] is Action.ACQUIRE


def test_the_records_own_duration_counts_not_ours() -> None:
    record = held_by(OTHER, duration=60)
    _, _, seen = step(None, record, now=0.0)
    assert step(seen, record, now=59.0)[0] is Action.WAIT
    assert step(seen, record, now=60.0)[0] is Action.ACQUIRE


def test_a_released_lease_is_taken_at_once() -> None:
    record = released(held_by(OTHER, transitions=7), WALL)
    assert record == LeaseRecord("", 1, WALL, WALL, 7)
    action, write, _ = step(None, record, now=0.0)
    assert action is Action.ACQUIRE
    assert write is not None
    assert (write.holder, write.transitions) == (ME, 8)


def test_the_leader_renews_keeping_its_acquire_time_and_transitions() -> None:
    record = held_by(ME)
    later = WALL + timedelta(seconds=2)
    action, write, _ = step(None, record, now=5.0, leading=10.0, wall=later)
    assert action is Action.RENEW
    assert write == LeaseRecord(ME, 15, record.acquire_time, later, 3)


def test_the_leader_stands_down_when_someone_else_holds_it() -> None:
    action, write, _ = step(None, held_by(OTHER), now=5.0, leading=10.0)
    assert (action, write) == (Action.STAND_DOWN, None)


def test_the_leader_stands_down_at_its_renew_deadline_even_if_the_lease_still_names_it() -> None:
    record = held_by(ME)
    assert step(None, record, now=9.999, leading=10.0)[0] is Action.RENEW
    assert step(None, record, now=10.0, leading=10.0)[0] is Action.STAND_DOWN


def test_a_lease_naming_us_from_an_earlier_term_is_a_new_term() -> None:
    """The same LEADER_IDENTITY after a restart: ours at once, counted as a transition."""
    action, write, _ = step(None, held_by(ME), now=0.0, leading=None)
    assert action is Action.ACQUIRE
    assert write is not None
    assert write.transitions == 4


def test_a_leader_whose_lease_was_deleted_recreates_it() -> None:
    assert step(None, None, now=1.0, leading=10.0)[0] is Action.CREATE


def test_the_term_ends_a_renew_deadline_after_the_renewal_was_sent() -> None:
    until = leading_until(100.0, SETTINGS)
    assert until == 110.0
    assert may_act(until, 109.999)
    assert not may_act(until, 110.0)
    assert not may_act(None, 0.0)


def test_a_partitioned_leader_stops_before_the_other_can_take_over() -> None:
    """The leader sends its last renewal at t=100 (its clock); the other sees it no earlier, at 100.3 on
    its own clock. The leader may act until 110; the other takes over at 115.3 at the earliest."""
    until = leading_until(100.0, SETTINGS)
    record = held_by(ME)
    other = "replica-b"
    seen = observe(None, record, 100.3)
    first_takeover = next(
        t / 10
        for t in range(1003, 2000)
        if decide(seen, record, identity=other, leading=None, wall=WALL, now=t / 10, settings=SETTINGS).action
        is Action.ACQUIRE
    )
    assert first_takeover == 115.3
    assert until < first_takeover
    assert not may_act(until, first_takeover)


def test_observation_keeps_its_start_while_the_record_is_unchanged() -> None:
    record = held_by(OTHER)
    first = observe(None, record, 1.0)
    assert observe(first, record, 9.0) is first
    assert observe(first, None, 9.0) == Observation(None, 9.0)
    assert expired(Observation(None, 0.0), 0.0)
    assert expired(Observation(released(record, WALL), 5.0), 5.0)  # no holder: free


# ---- settings -------------------------------------------------------------------------------------------


def load(**extra: str) -> LeaderElectionSettings | None:
    return load_settings({"OPERATOR_PRIVATE_KEY": KEY_HEX, **extra}).leader_election


def problems(**extra: str) -> tuple[str, ...]:
    with pytest.raises(SettingsError) as caught:
        load_settings({"OPERATOR_PRIVATE_KEY": KEY_HEX, **extra})
    return caught.value.problems


def test_leader_election_is_off_unless_asked() -> None:
    assert load() is None
    assert load(LEADER_ELECTION="false") is None
    assert load(LEADER_ELECTION="TRUE") == LeaderElectionSettings()


def test_leader_election_settings_are_parsed() -> None:
    assert load(
        LEADER_ELECTION="true",
        LEASE_NAME="c2d-leader",
        LEASE_NAMESPACE="ops",
        LEADER_IDENTITY="pod-1",
        LEASE_DURATION_SECONDS="30",
        RENEW_DEADLINE_SECONDS="20",
        RETRY_PERIOD_SECONDS="0.5",
    ) == LeaderElectionSettings("c2d-leader", "ops", "pod-1", 30, 20.0, 0.5)
    on = load(LEADER_ELECTION="true", SIGNER_ENDPOINT_SLICE="c2d-signer", POD_IP="fd00::0:1")
    assert on is not None
    assert (on.signer_endpoint_slice, on.pod_ip) == ("c2d-signer", "fd00::1")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"LEADER_ELECTION": "maybe"}, "LEADER_ELECTION: expected one of true, false, got 'maybe'"),
        ({"LEASE_NAME": "Bad_Name"}, "LEASE_NAME: expected a DNS-1123 label"),
        ({"LEASE_NAMESPACE": "Ops"}, "LEASE_NAMESPACE: expected a namespace name, got 'Ops'"),
        ({"LEASE_DURATION_SECONDS": "1"}, "LEASE_DURATION_SECONDS: expected an integer >= 2, got '1'"),
        ({"RENEW_DEADLINE_SECONDS": "0"}, "RENEW_DEADLINE_SECONDS: expected a positive number, got '0'"),
        ({"RETRY_PERIOD_SECONDS": "nan"}, "RETRY_PERIOD_SECONDS: expected a positive number, got 'nan'"),
        ({"POD_IP": "10.0.0.300"}, "POD_IP: expected an IP address, got '10.0.0.300'"),
        ({"SIGNER_ENDPOINT_SLICE": "Signer"}, "SIGNER_ENDPOINT_SLICE: expected a DNS-1123 label"),
        ({"SIGNER_ENDPOINT_SLICE": "signer"}, "POD_IP: required with SIGNER_ENDPOINT_SLICE"),
        (
            {"LEASE_DURATION_SECONDS": "10"},
            "LEASE_DURATION_SECONDS: must be greater than RENEW_DEADLINE_SECONDS (10 <= 10)",
        ),
        (
            {"RETRY_PERIOD_SECONDS": "9"},
            "RENEW_DEADLINE_SECONDS: must be greater than 1.2 x RETRY_PERIOD_SECONDS (10 <= 10.8)",
        ),
    ],
)
def test_bad_leader_election_settings_are_reported_even_when_it_is_off(
    extra: dict[str, str], expected: str
) -> None:
    assert any(problem.startswith(expected) for problem in problems(**extra)), problems(**extra)
