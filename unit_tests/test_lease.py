"""The Elector (lease.py) against an in-memory Lease with compare-and-swap, on a fake clock."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from ocean_c2d.leadership import LeaderElectionSettings, LeaseRecord
from ocean_c2d.lease import (
    Elector,
    LeaseClient,
    NotLeaderError,
    ReadLease,
    SignerEndpoint,
    to_record,
    to_spec,
)

SETTINGS = LeaderElectionSettings()  # 15 s, 10 s, 2 s


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeLease(LeaseClient):
    """One Lease held in memory; writes carry a resourceVersion and meet 409 when it is stale."""

    def __init__(self) -> None:
        self.namespace, self.name = "ops", "ocean-c2d"
        self.record: LeaseRecord | None = None
        self.version = 0
        self.calls: list[str] = []
        self.down = False

    async def read(self) -> ReadLease:
        self._call("read")
        return ReadLease(self.record, str(self.version) if self.record else None)

    async def create(self, record: LeaseRecord) -> str | None:
        self._call("create")
        if self.record is not None:
            return None
        return self._store(record)

    async def update(self, record: LeaseRecord, resource_version: str) -> str | None:
        self._call("update")
        if self.record is None or resource_version != str(self.version):
            return None
        return self._store(record)

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if self.down:
            raise httpx.ConnectError("partitioned")

    def _store(self, record: LeaseRecord) -> str:
        self.record = record
        self.version += 1
        return str(self.version)


@pytest.fixture
def lease() -> FakeLease:
    return FakeLease()


def electors(lease: FakeLease) -> tuple[Elector, Elector, Clock, Clock]:
    # Two replicas, each with its own monotonic clock (they need not agree on the time of day).
    clock_a, clock_b = Clock(), Clock()
    clock_b.now = 5.0
    return (
        Elector(lease, "replica-a", SETTINGS, clock_a),
        Elector(lease, "replica-b", SETTINGS, clock_b),
        clock_a,
        clock_b,
    )


async def test_one_acquires_the_other_stands_by_and_is_refused_every_write(lease: FakeLease) -> None:
    a, b, _, _ = electors(lease)
    assert await a._attempt() == "no Lease"
    assert a.leading
    a.check("POST")
    assert await b._attempt() == "replica-a holds the Lease"
    assert not b.leading
    with pytest.raises(NotLeaderError):
        b.check("POST")
    assert lease.record is not None
    assert lease.record.holder == "replica-a"


async def test_the_leaders_renewal_is_one_write_and_no_read(lease: FakeLease) -> None:
    a, _, clock_a, _ = electors(lease)
    await a._attempt()
    lease.calls.clear()
    clock_a.now += 2
    assert await a._attempt() == "renewed"
    assert lease.calls == ["update"]
    assert a.until == clock_a.now + SETTINGS.renew_deadline_seconds


async def test_writes_are_refused_from_the_renew_deadline_on(lease: FakeLease) -> None:
    a, _, clock_a, _ = electors(lease)
    await a._attempt()
    clock_a.now += 9.999
    a.check("PATCH")
    clock_a.now += 0.001
    with pytest.raises(NotLeaderError):
        a.check("PATCH")


async def test_a_partitioned_leader_is_replaced_and_stands_down_when_it_comes_back(lease: FakeLease) -> None:
    a, b, clock_a, clock_b = electors(lease)
    await a._attempt()
    await b._attempt()  # b first sees a's record now (its clock: 5.0)
    lease.down = True  # a cannot reach the API server any more; b still can (a fake's simplification)
    clock_a.now += 2
    assert "did not answer" in await a._attempt()
    assert a.leading  # a failed renewal does not end the term before its deadline
    lease.down = False
    clock_b.now += 14.9
    assert await b._attempt() == "replica-a holds the Lease"
    clock_a.now += 8  # 10 s after a's last successful renewal: a may no longer write...
    assert not a.leading
    clock_b.now += 0.1  # ...5 s before b may take over
    assert await b._attempt() == "replica-a did not renew it"
    assert b.leading
    assert lease.record is not None
    assert (lease.record.holder, lease.record.transitions) == ("replica-b", 1)
    # a comes back: its renewal meets b's newer record (409), it reads and stands down.
    assert await a._attempt() == "the renew deadline passed"
    assert a.until is None


async def test_a_leader_that_sees_another_holder_stands_down(lease: FakeLease) -> None:
    a, _, clock_a, _ = electors(lease)
    await a._attempt()
    assert lease.record is not None
    lease.record = dataclasses.replace(lease.record, holder="replica-b")
    lease.version += 1
    clock_a.now += 2
    assert await a._attempt() == "replica-b holds the Lease"
    assert not a.leading


async def test_release_hands_the_lease_over_at_once(lease: FakeLease) -> None:
    a, b, _, _ = electors(lease)
    await a._attempt()
    await b._attempt()
    await a.release()
    assert lease.record is not None
    assert (lease.record.holder, lease.record.lease_duration_seconds) == ("", 1)
    assert not a.leading
    assert await b._attempt() == "released"
    assert b.leading


async def test_release_of_a_lease_someone_else_took_writes_nothing(lease: FakeLease) -> None:
    a, _, _, _ = electors(lease)
    await a._attempt()
    lease.version += 1  # someone else wrote since
    await a.release()
    assert lease.record is not None
    assert lease.record.holder == "replica-a"


async def test_hold_returns_when_no_renewal_succeeds_before_the_deadline(lease: FakeLease) -> None:
    fast = LeaderElectionSettings(
        lease_duration_seconds=2, renew_deadline_seconds=0.3, retry_period_seconds=0.05
    )
    a = Elector(lease, "replica-a", fast)
    await a._attempt()
    lease.down = True
    assert "renew deadline passed" in await a.hold()
    assert not a.leading


def test_the_record_round_trips_through_the_lease_spec(lease: FakeLease) -> None:
    from datetime import UTC, datetime

    moment = datetime(2026, 12, 1, 22, 0, 0, 123456, tzinfo=UTC)
    record = LeaseRecord("replica-a", 15, moment, moment, 2)
    spec = to_spec(record)
    assert spec["renewTime"] == "2026-12-01T22:00:00.123456Z"
    assert to_record({"spec": spec}) == record
    assert to_record({"spec": {}}) == LeaseRecord("", 0, None, None, 0)


def test_the_signers_endpoint_slice_names_its_service_and_the_leaders_address() -> None:
    route = SignerEndpoint(None, "ops", "c2d-ocean-c2d-signer", "10.1.2.3", 8090)  # type: ignore[arg-type]
    manifest = route.manifest("41")
    assert manifest["metadata"]["labels"]["kubernetes.io/service-name"] == "c2d-ocean-c2d-signer"
    assert manifest["metadata"]["resourceVersion"] == "41"
    assert manifest["addressType"] == "IPv4"
    assert manifest["endpoints"] == [{"addresses": ["10.1.2.3"], "conditions": {"ready": True}}]
    assert manifest["ports"] == [{"name": "signer", "port": 8090, "protocol": "TCP"}]
    assert "resourceVersion" not in route.manifest(None)["metadata"]
    assert SignerEndpoint(None, "ops", "s", "fd00::1", 1).manifest(None)["addressType"] == "IPv6"  # type: ignore[arg-type]
