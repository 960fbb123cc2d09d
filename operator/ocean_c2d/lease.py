"""Leader election's I/O: the Lease read and written through kr8s (leadership.py decides).

`Elector.acquire` returns once this replica holds the Lease; `Elector.hold` renews it every retry period
and returns (never raises, bar cancellation) when the replica must stop acting; `Elector.check` is the
guard every operator write passes first (k8s.Cluster): past the renew deadline it refuses, so no write is
sent after the term ends even if the loop that would notice was paused; `Elector.release` hands the Lease
over on a clean stop. Every write carries the resourceVersion it was decided on (409: someone else wrote).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import kr8s
import kr8s.asyncio

from ocean_c2d import metrics
from ocean_c2d.leadership import (
    Action,
    LeaderElectionSettings,
    LeaseRecord,
    Observation,
    decide,
    leading_until,
    may_act,
    released,
)
from ocean_c2d.times import format_precise_time, parse_time, utc_now

log = logging.getLogger("ocean_c2d")

LEASE_VERSION = "coordination.k8s.io/v1"


class NotLeaderError(Exception):
    """A write was attempted without a valid term: refused before it was sent."""


@dataclass(frozen=True)
class ReadLease:
    record: LeaseRecord | None
    resource_version: str | None


def to_record(lease: dict[str, Any]) -> LeaseRecord:
    spec = lease.get("spec") or {}
    return LeaseRecord(
        holder=spec.get("holderIdentity") or "",
        lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=parse_time(spec.get("acquireTime")),
        renew_time=parse_time(spec.get("renewTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
    )


def to_spec(record: LeaseRecord) -> dict[str, Any]:
    def micro(moment: Any) -> str | None:  # MicroTime: RFC 3339 with microseconds
        return format_precise_time(moment) if moment is not None else None

    return {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.lease_duration_seconds,
        "acquireTime": micro(record.acquire_time),
        "renewTime": micro(record.renew_time),
        "leaseTransitions": record.transitions,
    }


class LeaseClient:
    """GET, create and compare-and-swap update of one Lease."""

    def __init__(self, api: kr8s.asyncio.Api, namespace: str, name: str) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name

    async def read(self) -> ReadLease:
        try:
            async with self.api.call_api(
                "GET", version=LEASE_VERSION, namespace=self.namespace, url=f"leases/{self.name}"
            ) as response:
                lease: dict[str, Any] = response.json()
        except kr8s.ServerError as error:
            if error.response is not None and error.response.status_code == 404:
                return ReadLease(None, None)
            raise
        return ReadLease(to_record(lease), lease["metadata"]["resourceVersion"])

    async def create(self, record: LeaseRecord) -> str | None:
        """The new resourceVersion, or None when someone created it first (409)."""
        body = {
            "apiVersion": LEASE_VERSION,
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": to_spec(record),
        }
        return await self._write("POST", "leases", body)

    async def update(self, record: LeaseRecord, resource_version: str) -> str | None:
        """The new resourceVersion, or None when the Lease changed since `resource_version` (409)."""
        body = {
            "apiVersion": LEASE_VERSION,
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace, "resourceVersion": resource_version},
            "spec": to_spec(record),
        }
        return await self._write("PUT", f"leases/{self.name}", body)

    async def _write(self, verb: str, url: str, body: dict[str, Any]) -> str | None:
        try:
            async with self.api.call_api(
                verb, version=LEASE_VERSION, namespace=self.namespace, url=url, json=body
            ) as response:
                written: dict[str, Any] = response.json()
        except kr8s.ServerError as error:
            if error.response is not None and error.response.status_code == 409:
                return None
            raise
        version: str = written["metadata"]["resourceVersion"]
        return version


class Elector:
    def __init__(
        self,
        client: LeaseClient,
        identity: str,
        settings: LeaderElectionSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.clock = clock
        self.identity = identity
        self.settings = settings
        self.observation: Observation | None = None
        self.until: float | None = None  # the end of our term (monotonic), None when we do not lead
        self._record: LeaseRecord | None = None  # what we last wrote, with its resourceVersion
        self._version: str | None = None
        metrics.LEADER.set(0)

    @property
    def leading(self) -> bool:
        return may_act(self.until, self.clock())

    def check(self, verb: str) -> None:
        """The write guard: raise NotLeaderError unless this replica's term is still running."""
        if not self.leading:
            raise NotLeaderError(f"{verb} refused: this replica does not hold the Lease")

    async def acquire(self) -> None:
        """Return once this replica holds the Lease, trying every retry period."""
        announced = False
        while True:
            outcome = await self._attempt()
            if self.until is not None:
                metrics.LEADER.set(1)
                log.info(
                    "Leader election: %s acquired Lease %s/%s (%s)",
                    self.identity,
                    self.client.namespace,
                    self.client.name,
                    outcome,
                )
                return
            if not announced:
                log.info("Leader election: %s is standing by (%s)", self.identity, outcome)
                announced = True
            await asyncio.sleep(self.settings.retry_period_seconds)

    async def hold(self) -> str:
        """Renew every retry period while we lead; return why we stopped leading (the caller stops acting
        at once). Each attempt may take only what is left of the term: a hung request cannot extend it."""
        while True:
            await asyncio.sleep(self.settings.retry_period_seconds)
            left = (self.until or 0.0) - self.clock()
            if left <= 0:
                return self._lost("the renew deadline passed")
            try:
                async with asyncio.timeout(left):
                    outcome = await self._attempt()
            except TimeoutError:
                return self._lost("the renew deadline passed during a renewal")
            if self.until is None:
                return self._lost(outcome)

    def _lost(self, reason: str) -> str:
        self.until = None
        metrics.LEADER.set(0)
        log.error("Leader election: %s lost Lease %s: %s", self.identity, self.client.name, reason)
        return reason

    async def release(self) -> None:
        """On a clean stop: hand the Lease over (no holder, duration 1 s) if it is still ours."""
        if self._record is None or self._version is None or self.until is None:
            return
        self.until = None
        metrics.LEADER.set(0)
        try:
            async with asyncio.timeout(self.settings.retry_period_seconds):
                written = await self.client.update(released(self._record, utc_now()), self._version)
        except (TimeoutError, httpx.HTTPError, kr8s.ServerError) as error:
            log.warning("Leader election: could not release Lease %s: %s", self.client.name, error)
            return
        if written is not None:
            log.info("Leader election: %s released Lease %s", self.identity, self.client.name)

    async def _attempt(self) -> str:
        """One round of read-decide-write; sets `until` (None when we do not lead). Returns what happened.
        The leader skips the read and updates from what it wrote last (client-go's fast path): idle, a
        renewal is one write per retry period and nothing else."""
        started = self.clock()
        try:
            if self.until is not None and self._record is not None and self._version is not None:
                renewed = LeaseRecord(
                    self.identity,
                    self.settings.lease_duration_seconds,
                    self._record.acquire_time,
                    utc_now(),
                    self._record.transitions,
                )
                if await self._write(Action.RENEW, renewed, self._version, started):
                    return "renewed"
            read = await self.client.read()
        except (httpx.HTTPError, kr8s.ServerError) as error:
            # A failed renewal keeps the term as it was: it ends at its deadline unless a retry succeeds.
            log.warning("Leader election: Lease %s: %s", self.client.name, error)
            return f"the API server did not answer ({type(error).__name__})"
        decision = decide(
            self.observation,
            read.record,
            identity=self.identity,
            leading=self.until,
            wall=utc_now(),
            now=self.clock(),
            settings=self.settings,
        )
        self.observation = decision.observation
        if read.record is not None:
            metrics.LEADER_TRANSITIONS.set(read.record.transitions)
        if decision.action in (Action.WAIT, Action.STAND_DOWN) or decision.write is None:
            self.until = None
            return decision.reason
        try:
            written = await self._write(decision.action, decision.write, read.resource_version, started)
        except (httpx.HTTPError, kr8s.ServerError) as error:
            log.warning("Leader election: Lease %s: %s", self.client.name, error)
            return f"the API server did not answer ({type(error).__name__})"
        if not written:  # the Lease changed between our read and our write: whoever wrote holds it
            self.until = None
            return "another replica wrote first"
        return decision.reason

    async def _write(self, action: Action, record: LeaseRecord, version: str | None, started: float) -> bool:
        if action is Action.CREATE or version is None:
            written = await self.client.create(record)
        else:
            written = await self.client.update(record, version)
        if written is None:  # 409: someone else wrote in between; the next read tells who
            self._record = self._version = None
            return False
        self._record, self._version = record, written
        self.until = leading_until(started, self.settings)
        metrics.LEADER_TRANSITIONS.set(record.transitions)
        return True


class SignerEndpoint:
    """The signer Service's one EndpointSlice, pointed at the leader's own address (the Service has no
    selector): configure pods reach the leader's signer only, and a standby's never. Patroni routes to
    its leader the same way. Written by the leader only, once per term (and retried until it is)."""

    def __init__(self, api: kr8s.asyncio.Api, namespace: str, name: str, ip: str, port: int) -> None:
        self.api, self.namespace, self.name, self.ip, self.port = api, namespace, name, ip, port

    def manifest(self, resource_version: str | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "labels": {
                "kubernetes.io/service-name": self.name,
                "endpointslice.kubernetes.io/managed-by": "ocean-c2d",
            },
        }
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": metadata,
            "addressType": "IPv6" if ":" in self.ip else "IPv4",
            "endpoints": [{"addresses": [self.ip], "conditions": {"ready": True}}],
            "ports": [{"name": "signer", "port": self.port, "protocol": "TCP"}],
        }

    async def point_here(self) -> None:
        """GET, then PUT on its resourceVersion (or POST when there is none); a 409 raises (retried)."""
        version: str | None = None
        try:
            async with self.api.call_api(
                "GET",
                version="discovery.k8s.io/v1",
                namespace=self.namespace,
                url=f"endpointslices/{self.name}",
            ) as response:
                current: dict[str, Any] = response.json()
                version = current["metadata"]["resourceVersion"]
                if current.get("endpoints") == self.manifest(None)["endpoints"]:
                    return  # already here (a restart of the same pod): no write
        except kr8s.ServerError as error:
            if error.response is None or error.response.status_code != 404:
                raise
        verb, url = ("PUT", f"endpointslices/{self.name}") if version else ("POST", "endpointslices")
        async with self.api.call_api(
            verb,
            version="discovery.k8s.io/v1",
            namespace=self.namespace,
            url=url,
            json=self.manifest(version),
        ):
            pass
        log.info("Leader election: the signer's Service now reaches this replica (%s)", self.ip)

    async def keep_trying(self, elector: Elector) -> None:
        """Until it is written, while we lead: without it, configure pods cannot reach a signer."""
        while True:
            elector.check("PUT")
            try:
                await self.point_here()
                return
            except (httpx.HTTPError, kr8s.ServerError) as error:
                log.warning("Leader election: could not point the signer's Service here: %s", error)
            await asyncio.sleep(elector.settings.retry_period_seconds)
