"""The replay window (api/replay.py, pure) and the ConfigMapNonceStore that keeps it in the cluster
(api/nonces.py), the latter against test_cluster_store's FakeKube (a model of the API server's GET, POST and
merge PATCH with a resourceVersion precondition, not the real thing: e2e/test_api.py runs it for real)."""

from __future__ import annotations

import asyncio
import random

from ocean_c2d.api.nonces import ConfigMapNonceStore, NonceConflictError, configmap_name
from ocean_c2d.api.replay import WINDOW, NonceWindow
from unit_tests.api.test_cluster_store import NS, PROVIDER, FakeKube

# ---- the window -------------------------------------------------------------------------------------------


def test_a_nonce_is_accepted_once_and_the_oldest_are_pushed_out_below_a_floor() -> None:
    window, verdicts = NonceWindow(None, (), size=3).accept([5, 3, 5, 9, 7, 3])
    assert verdicts == [True, True, False, True, True, False]
    # Four accepted, three kept: 3 is pushed out and becomes the floor.
    assert window == NonceWindow(3, (5, 7, 9), 3)
    assert [window.admits(n) for n in (1, 3, 4, 5, 6, 10)] == [False, False, True, False, True, True]


def test_no_order_of_arrival_accepts_a_nonce_twice() -> None:
    """Whatever the order, each nonce is accepted at most once, and never one at or below the floor."""
    generator = random.Random(7)
    for _ in range(200):
        sent = [generator.randrange(50) for _ in range(60)]
        window = NonceWindow(None, (), size=generator.randrange(1, 12))
        accepted: list[int] = []
        for nonce in sent:
            floor = window.floor
            window, [verdict] = window.accept([nonce])
            if verdict:
                assert floor is None or nonce > floor
                accepted.append(nonce)
        assert len(accepted) == len(set(accepted))
        # In increasing order nothing legitimate is refused.
        in_order = sorted(set(sent))
        assert all(NonceWindow(None, (), 3).accept(in_order)[1])


def test_out_of_order_arrivals_within_the_window_are_accepted_where_a_strict_counter_refuses() -> None:
    signed = list(range(1_000, 1_200))  # 200 concurrent polls, signed in this order
    arrived = signed[:]
    random.Random(3).shuffle(arrived)
    _, verdicts = NonceWindow(None, ()).accept(arrived)
    assert all(verdicts)
    strict_refusals = sum(1 for i, n in enumerate(arrived) if i and n < max(arrived[:i]))
    assert strict_refusals > 100  # what the first version (strictly increasing) would have answered 401


def test_the_window_round_trips_through_configmap_data_and_reads_the_old_counter() -> None:
    window = NonceWindow(None, ()).accept([10**19 + 5, 10**19 + 1])[0]
    assert window.to_data() == {"recent": f"{10**19 + 1} {10**19 + 5}"}
    assert NonceWindow.from_data(window.to_data()) == window
    assert NonceWindow.from_data({"floor": "4", "recent": "9 5 4 3"}) == NonceWindow(4, (5, 9))
    assert NonceWindow.from_data({"nonce": "12"}) == NonceWindow(12, ())  # the strict counter's form
    assert NonceWindow.from_data({}) == NonceWindow(None, ())
    assert NonceWindow.from_data({"recent": "1 2 3 4"}, size=2) == NonceWindow(2, (3, 4), 2)
    for unreadable in ({"floor": "x"}, {"recent": "1 -2"}, {"nonce": "1e9"}, {"recent": "٣"}):
        assert NonceWindow.from_data(unreadable) is None, unreadable


# ---- kept in a ConfigMap ----------------------------------------------------------------------------------


async def test_a_nonce_is_spent_once_and_kept_in_a_configmap_that_replicas_share() -> None:
    kube = FakeKube()
    nonces = ConfigMapNonceStore(kube, NS)
    assert await nonces.advance(PROVIDER, 10)
    name = configmap_name(PROVIDER)
    assert name == "ocean-c2d-api-nonce-0x00000000000000000000000000000000000000aa"
    assert kube.objects[("configmaps", NS, name)]["data"] == {"recent": "10"}
    assert not await nonces.advance(PROVIDER, 10)
    assert await nonces.advance(PROVIDER, 9)  # older but unused: concurrent requests arrive out of order
    assert await nonces.advance(PROVIDER, 1733000000000000000123)
    assert kube.objects[("configmaps", NS, name)]["data"] == {"recent": "9 10 1733000000000000000123"}
    # A second replica (or a restarted one) reads the same window.
    assert not await ConfigMapNonceStore(kube, NS).advance(PROVIDER, 9)
    # The first version's counter is read as the floor, and rewritten in the window's form.
    kube.objects[("configmaps", NS, name)]["data"] = {"nonce": "50"}
    fresh = ConfigMapNonceStore(kube, NS)
    assert not await fresh.advance(PROVIDER, 50)
    assert await fresh.advance(PROVIDER, 51)
    assert kube.objects[("configmaps", NS, name)]["data"] == {"floor": "50", "recent": "51"}


async def test_concurrent_requests_of_a_provider_are_decided_in_few_writes() -> None:
    kube = FakeKube()
    nonces = ConfigMapNonceStore(kube, NS)
    assert await nonces.advance(PROVIDER, 1)
    kube.requests.clear()
    signed = list(range(100, 300))
    arrived = signed[:]
    random.Random(5).shuffle(arrived)
    verdicts = await asyncio.gather(*(nonces.advance(PROVIDER, n) for n in arrived))
    assert all(verdicts)
    writes = [r for r in kube.requests if r[0] != "GET"]
    # All 200 were waiting before the first decision started: one write decides them all.
    assert len(writes) == 1, kube.requests
    assert [r for r in kube.requests if r[0] == "GET"] == []  # the last write is the guess of the next
    stored = NonceWindow.from_data(kube.objects[("configmaps", NS, configmap_name(PROVIDER))]["data"])
    assert stored is not None
    assert set(stored.recent) == {1, *signed}
    # Replayed all at once, all refused, and a refusal writes nothing.
    kube.requests.clear()
    again = await asyncio.gather(*(nonces.advance(PROVIDER, n) for n in arrived[:50]))
    assert not any(again)
    assert [r for r in kube.requests if r[0] != "GET"] == []


async def test_a_conflicting_write_is_read_again_and_decided_on_the_new_window() -> None:
    kube = FakeKube()
    nonces = ConfigMapNonceStore(kube, NS)
    assert await nonces.advance(PROVIDER, 10)
    name = configmap_name(PROVIDER)

    def other_replica() -> None:  # accepts 15 and 20 between our read and our write, once
        kube.before_write.clear()
        kube.objects[("configmaps", NS, name)]["data"] = {"recent": "10 15 20"}
        kube._bump(kube.objects[("configmaps", NS, name)])

    kube.before_write.append(other_replica)
    assert not await nonces.advance(PROVIDER, 15)  # 409, read again: 15 was spent there
    assert kube.objects[("configmaps", NS, name)]["data"] == {"recent": "10 15 20"}
    kube.before_write.append(other_replica)
    assert await nonces.advance(PROVIDER, 25)  # its guess is stale: 409, read again, 25 is unused
    assert kube.objects[("configmaps", NS, name)]["data"] == {"recent": "10 15 20 25"}


async def test_two_replicas_given_one_nonce_cannot_both_accept_it() -> None:
    kube = FakeKube()
    first, second = ConfigMapNonceStore(kube, NS), ConfigMapNonceStore(kube, NS)
    assert await first.advance(PROVIDER, 1)
    results = await asyncio.gather(first.advance(PROVIDER, 7), second.advance(PROVIDER, 7))
    assert sorted(results) == [False, True]
    # And two creating the ConfigMap at once: one creates, the other meets 409, reads, refuses.
    other = "0x" + "cd" * 20
    results = await asyncio.gather(first.advance(other, 3), second.advance(other, 3))
    assert sorted(results) == [False, True]


async def test_a_full_window_pushes_its_oldest_nonce_out_as_the_floor() -> None:
    kube = FakeKube()
    nonces = ConfigMapNonceStore(kube, NS, window=WINDOW)
    assert all(await asyncio.gather(*(nonces.advance(PROVIDER, n) for n in range(1, WINDOW + 2))))
    data = kube.objects[("configmaps", NS, configmap_name(PROVIDER))]["data"]
    assert data["floor"] == "1"
    assert len(data["recent"].split()) == WINDOW
    assert not await ConfigMapNonceStore(kube, NS).advance(PROVIDER, 1)


async def test_an_unreadable_window_refuses_and_endless_conflicts_fail_every_waiting_request() -> None:
    kube = FakeKube()
    name = configmap_name(PROVIDER)
    kube.put(
        "configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"nonce": "x"}},
    )
    assert not await ConfigMapNonceStore(kube, NS).advance(PROVIDER, 5)
    kube.put(
        "configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"nonce": "1"}},
    )

    def always() -> None:
        kube._bump(kube.objects[("configmaps", NS, name)])

    kube.before_write.append(always)
    nonces = ConfigMapNonceStore(kube, NS)
    outcomes = await asyncio.gather(
        nonces.advance(PROVIDER, 5), nonces.advance(PROVIDER, 6), return_exceptions=True
    )
    assert [type(o) for o in outcomes] == [NonceConflictError, NonceConflictError]
    # Nothing is left deciding: the next request starts afresh.
    kube.before_write.clear()
    assert await nonces.advance(PROVIDER, 7)
