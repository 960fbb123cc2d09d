"""High availability (issue 13 §4): two operator processes on one namespace, leader election on.

Each replica authenticates as its own ServiceAccount (a TokenRequest token in a kubeconfig of its own, as
a pod's projected token would be), so the API server's audit log tells them apart by user: that is how
"at no moment do two replicas write" is checked. The check walks every write both replicas sent, in the
order the API server received them: a successful Lease write by a replica makes it the holder from then
on, and every other write must come from the holder of that moment.

- one acts, the other stands by; SIGKILL the leader mid-run: the other takes over (after the lease
  duration, 15 s) and finishes every Workflow; each stage pod is created once;
- SIGSTOP the new leader (it cannot renew): the other takes over; SIGCONT it: it sends no write after
  the takeover and exits 1;
- idle: the only writes are the leader's Lease renewals, one per retry period; on SIGTERM the leader
  releases the Lease and the standby takes it.

Runs in about 100 s (the lease duration twice, Workflows of ~10 s).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import kr8s.asyncio
import pytest
from kr8s.asyncio.objects import APIObject, RoleBinding, ServiceAccount, new_class

from e2e.audit import AuditLog, Mark, Request, in_namespace
from e2e.operator_fixtures import (
    OperatorProcess,
    create_environment,
    create_workflow,
    status,
    wait_finished,
    wait_for_event,
)
from e2e.operator_handle import Operator, StartOperator
from e2e.test_chart_install import write_token_kubeconfig
from e2e.waiting import wait_for, wait_for_object

pytestmark = [pytest.mark.simulated, pytest.mark.local_only]  # signals local operator processes

Lease = new_class(kind="Lease", version="coordination.k8s.io/v1", namespaced=True, asyncio=True)
LEASE = "ocean-c2d"
LEASE_DURATION = 15  # the defaults: lease 15 s, renew deadline 10 s, retry period 2 s
RETRY_PERIOD = 2
REPLICAS = ("replica-a", "replica-b")


async def replica_kubeconfig(api: kr8s.asyncio.Api, kubeconfig: str, namespace: str, name: str) -> Path:
    """A ServiceAccount of its own for one replica (all rights in the test namespace, none outside)."""
    account = await ServiceAccount({"metadata": {"name": name}}, namespace=namespace, api=api)
    await account.create()
    binding = await RoleBinding(
        {
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
        namespace=namespace,
        api=api,
    )
    await binding.create()
    async with api.call_api(
        "POST",
        version="v1",
        namespace=namespace,
        url=f"serviceaccounts/{name}/token",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    ) as response:
        token = response.json()["status"]["token"]
    path = Path(kubeconfig).parent / f"{namespace}-{name}.kubeconfig"
    write_token_kubeconfig(Path(kubeconfig), token, name, namespace, path)
    return path


def user(namespace: str, replica: str) -> str:
    return f"system:serviceaccount:{namespace}:{replica}"


class Replicas:
    def __init__(self, api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator) -> None:
        self.api, self.namespace, self.start_operator = api, namespace, start_operator
        self.kubeconfigs: dict[str, Path] = {}

    async def prepare(self, kubeconfig: str) -> None:
        for replica in REPLICAS:
            self.kubeconfigs[replica] = await replica_kubeconfig(
                self.api, kubeconfig, self.namespace, replica
            )

    async def start(self, replica: str) -> OperatorProcess:
        operator = await self.start_operator(
            KUBECONFIG=str(self.kubeconfigs[replica]), LEADER_ELECTION="true", LEADER_IDENTITY=replica
        )
        assert isinstance(operator, OperatorProcess)
        return operator

    async def lease(self) -> APIObject:
        await wait_for_object(self.api, "leases", LEASE, namespace=self.namespace, timeout=60)
        lease: APIObject = await Lease.get(LEASE, namespace=self.namespace, api=self.api)
        return lease

    async def wait_holder(self, replica: str, timeout: float) -> float:
        """Seconds until the Lease names `replica`."""
        started = time.monotonic()
        lease = await self.lease()
        await wait_for(lease, lambda lease: holder(lease) == replica, timeout=timeout)
        return time.monotonic() - started


def holder(lease: APIObject) -> str:
    return str((lease.raw.get("spec") or {}).get("holderIdentity") or "")


async def wait_log(operator: OperatorProcess, text: str, timeout: float = 60) -> None:
    """Until the operator's log (a local file) says `text`."""
    async with asyncio.timeout(timeout):
        while text not in await operator.log_text():  # noqa: ASYNC110  (a local file, not the cluster)
            await asyncio.sleep(0.2)


async def leader_gauge(operator: Operator) -> float:
    return await operator.total("ocean_c2d_leader")


def replica_writes(audit: AuditLog, mark: Mark, namespace: str) -> list[Request]:
    users = {user(namespace, replica) for replica in REPLICAS}
    writes = [r for r in audit.since(mark, where=in_namespace(namespace)) if r.is_write and r.user in users]
    return sorted(writes, key=lambda r: r.received)


def terms(writes: list[Request]) -> tuple[list[tuple[str, str]], list[Request]]:
    """The holders in turn, each with the moment its term began (its first successful Lease write), and
    the writes sent by a replica that was not the holder when the API server received them (must be
    none). A failed Lease write (409: it lost the race for the Lease) is no act; any other write is,
    whatever its answer."""
    current = ""
    turns: list[tuple[str, str]] = []
    outside: list[Request] = []
    for request in writes:
        if request.resource == "leases":
            if request.code in (200, 201) and request.user != current:
                current = request.user
                turns.append((current, request.received))
            continue
        if request.user != current:
            outside.append(request)
    return turns, outside


def pod_creates(writes: list[Request]) -> Counter[str]:
    return Counter(r.name for r in writes if r.resource == "pods" and r.verb == "create" and r.code == 201)


def describe(requests: list[Request]) -> str:
    return "\n".join(f"{r.received} {r.user} {r.verb} {r.resource} {r.name} {r.code}" for r in requests[:40])


async def test_one_replica_acts_and_the_other_takes_over_when_it_is_killed_or_partitioned(
    api: kr8s.asyncio.Api, namespace: str, kubeconfig: str, start_operator: StartOperator
) -> None:
    audit = AuditLog()
    assert audit.available(), f"no audit log at {audit.path}"
    mark = audit.mark()
    replicas = Replicas(api, namespace, start_operator)
    await replicas.prepare(kubeconfig)
    a, b = "replica-a", "replica-b"
    await create_environment(api, namespace, maxJobs=8)

    first = await replicas.start(a)
    await replicas.wait_holder(a, timeout=60)
    standby = await replicas.start(b)
    await wait_log(standby, "is standing by")
    assert await leader_gauge(first) == 1
    assert await leader_gauge(standby) == 0  # both serve /metrics

    # Killed mid-run: every Workflow is past its first stage when the leader dies.
    names = [f"ha-{i}" for i in range(4)]
    workflows = [await create_workflow(api, namespace, n, sim={"algorithm.run-for": "10s"}) for n in names]
    for workflow in workflows:
        await wait_for(workflow, lambda w: status(w).get("stage") == "RunningAlgorithm", timeout=60)
    await first.kill()
    took = await replicas.wait_holder(b, timeout=LEASE_DURATION * 4)
    print(f"\nSIGKILL of the leader -> the standby holds the Lease after {took:.1f} s (lease 15 s)")
    for workflow in workflows:
        assert (await wait_finished(workflow, standby, timeout=120))["statusCode"] == 70
    assert await leader_gauge(standby) == 1

    # Partitioned: the leader (now b) cannot renew while stopped; a (restarted) takes over.
    again = await replicas.start(a)
    await wait_log(again, "is standing by")
    more = [f"ha-late-{i}" for i in range(3)]
    late = [await create_workflow(api, namespace, n, sim={"algorithm.run-for": "10s"}) for n in more]
    for workflow in late:
        await wait_for(workflow, lambda w: status(w).get("stage") == "RunningAlgorithm", timeout=60)
    # Paused once its writes for the stage are done (the Event follows the status write): a write that
    # passed the term's guard just before a pause goes out on waking, past the term. client-go's leader
    # election has the same limit; only a fencing token checked by the API server could close it.
    for name in more:
        await wait_for_event(api, namespace, name, "RunningAlgorithm")
    standby.process.send_signal(signal.SIGSTOP)
    try:
        took = await replicas.wait_holder(a, timeout=LEASE_DURATION * 4)
    finally:
        standby.process.send_signal(signal.SIGCONT)
    print(f"SIGSTOP of the leader -> the other holds the Lease after {took:.1f} s")
    async with asyncio.timeout(60):
        code = await standby.process.wait()
    assert code == 1, await standby.log_tail()
    assert "lost Lease" in await standby.log_text()
    for workflow in late:
        assert (await wait_finished(workflow, again, timeout=120))["statusCode"] == 70

    writes = replica_writes(audit, mark, namespace)
    turns, outside = terms(writes)
    assert [who for who, _ in turns] == [user(namespace, a), user(namespace, b), user(namespace, a)], (
        describe(writes)
    )
    assert not outside, f"writes by a replica that did not hold the Lease:\n{describe(outside)}"
    # From the takeover on, not one request of the stopped-then-woken leader reached the API server.
    takeover = turns[2][1]
    after = [r for r in writes if r.user == user(namespace, b) and r.received >= takeover]
    assert not after, f"the old leader wrote after the takeover at {takeover}:\n{describe(after)}"
    # Every Workflow's Jobs, each created once: none duplicated by the takeovers.
    creates = pod_creates(writes)
    assert len(creates) == 3 * (len(names) + len(more)), creates
    assert set(creates.values()) == {1}, creates
    acting = Counter(r.user.rsplit(":", 1)[-1] for r in writes if r.resource != "leases")
    print(f"writes by replica (Lease writes aside): {dict(acting)}; terms began at {[t for _, t in turns]}")


async def test_idle_with_leader_election_only_the_leader_renews_the_lease(
    api: kr8s.asyncio.Api, namespace: str, kubeconfig: str, start_operator: StartOperator
) -> None:
    audit = AuditLog()
    assert audit.available(), f"no audit log at {audit.path}"
    replicas = Replicas(api, namespace, start_operator)
    await replicas.prepare(kubeconfig)
    environment = await create_environment(api, namespace)
    leader = await replicas.start("replica-a")
    await replicas.wait_holder("replica-a", timeout=60)
    standby = await replicas.start("replica-b")
    await wait_log(standby, "is standing by")
    # The environment's counts, written once by the leader (and never by the standby).
    await wait_for(environment, lambda e: (e.raw.get("status") or {}).get("jobs") == "0/10", timeout=30)
    mark = audit.mark()
    window = 10.0
    await asyncio.sleep(window)  # the window observed, not a poll
    writes = replica_writes(audit, mark, namespace)
    kinds: Counter[tuple[str, str, str, str]] = Counter(
        (r.user.rsplit(":", 1)[-1], r.verb, r.resource, r.name) for r in writes
    )
    print(f"\nwrites in {window:.0f} s idle with HA on: {dict(kinds)}")
    assert set(kinds) <= {("replica-a", "update", "leases", LEASE)}, describe(writes)
    renewals = kinds[("replica-a", "update", "leases", LEASE)]
    assert 1 <= renewals <= window / RETRY_PERIOD + 1
    assert await leader_gauge(leader) == 1
    assert await leader_gauge(standby) == 0

    # SIGTERM: the leader stops its workers and hands the Lease over; the standby need not wait it out.
    await leader.stop()
    took = await replicas.wait_holder("replica-b", timeout=LEASE_DURATION * 4)
    print(f"SIGTERM of the leader -> the standby holds the Lease after {took:.1f} s (released, not expired)")
    assert "released Lease" in await leader.log_text()
    assert leader.process.returncode == 0
