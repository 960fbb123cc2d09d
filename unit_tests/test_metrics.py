"""metrics: what the operator's own gauges report, read from its registry."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from ocean_c2d import metrics, runner
from ocean_c2d.settings import load_settings
from unit_tests.factories import settings_environ


def leader() -> float | None:
    return metrics.REGISTRY.get_sample_value("ocean_c2d_leader")


def test_the_leader_gauge_is_1_on_a_replica_that_acts_without_leader_election() -> None:
    """OceanC2DNoLeader fires when no scraped replica reports 1: a bare `ocean-c2d run` (LEADER_ELECTION
    off) acts at once, so it reports 1; with leader election a replica starts as a standby (0)."""
    cluster = cast(Any, SimpleNamespace(write_guard=None))
    api = cast(Any, SimpleNamespace(namespace="c2d"))
    elected = load_settings(settings_environ(LEADER_ELECTION="true", LEASE_NAME="ocean-c2d"))
    elector = runner.leader_elector(elected, api, "c2d", cluster)
    assert elector is not None
    assert cluster.write_guard == elector.check
    assert leader() == 0
    assert runner.leader_elector(load_settings(settings_environ()), api, "c2d", cluster) is None
    assert leader() == 1
