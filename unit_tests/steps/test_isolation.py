"""The isolation check of algorithm and filter pods: egress must be seen blocked before the algorithm
starts, and a cluster that never blocks it fails closed."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocean_c2d.steps import isolation
from ocean_c2d.steps.contract import EXIT_NOT_ISOLATED


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def scripted(answers: list[bool], clock: FakeClock) -> Iterator[bool]:
    for answer in answers:
        clock.now += 0.01
        yield answer
    while True:  # after the script: whatever came last
        clock.now += 0.01
        yield answers[-1]


def run(answers: list[bool], timeout: float = 5) -> isolation.Verdict:
    clock = FakeClock()
    replies = scripted(answers, clock)
    return isolation.check(lambda: next(replies), timeout, clock=clock, pause=clock.sleep)


def test_blocked_from_the_first_attempt_passes_after_three_blocks() -> None:
    verdict = run([False])
    assert verdict.isolated
    assert verdict.attempts == isolation.CONSECUTIVE_BLOCKS


def test_a_policy_that_arrives_late_is_waited_for() -> None:
    # kube-router programs its rules only after the pod exists: open at first, then blocked.
    verdict = run([True, True, True, False])
    assert verdict.isolated
    assert verdict.attempts == 3 + isolation.CONSECUTIVE_BLOCKS


def test_an_open_connection_between_blocks_starts_the_count_again() -> None:
    verdict = run([False, False, True, False, False, False])
    assert verdict.isolated
    assert verdict.attempts == 6


def test_egress_that_stays_open_fails_closed_at_the_deadline() -> None:
    verdict = run([True], timeout=2)
    assert not verdict.isolated
    assert verdict.elapsed >= 2
    assert "NetworkPolicy" in verdict.message


def test_the_target_is_the_api_server_unless_configured() -> None:
    assert isolation.probe_target(
        {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    ) == (
        "10.0.0.1",
        443,
    )
    assert isolation.probe_target(
        {"ISOLATION_PROBE_ADDRESS": "[fd00::1]:8443", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    ) == ("fd00::1", 8443)
    with pytest.raises(ValueError, match="no probe target"):
        isolation.probe_target({})


def test_tcp_connects_tells_an_open_port_from_a_closed_one() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert isolation.tcp_connects("127.0.0.1", port)
    assert not isolation.tcp_connects("127.0.0.1", port)  # closed now: refused


def test_main_exits_23_with_a_message_when_egress_stays_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    termination_log = tmp_path / "termination-log"
    monkeypatch.setattr(
        isolation, "write_termination_message", lambda doc: termination_log.write_text(doc["message"])
    )
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        port = server.getsockname()[1]
        code = isolation.main(
            {"ISOLATION_PROBE_ADDRESS": f"127.0.0.1:{port}", "ISOLATION_TIMEOUT_SECONDS": "0.3"}
        )
    assert code == EXIT_NOT_ISOLATED
    assert "did not enforce" in termination_log.read_text()


def test_main_exits_0_once_egress_is_blocked() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]  # bound, not listening: every connection is refused
        assert (
            isolation.main({"ISOLATION_PROBE_ADDRESS": f"127.0.0.1:{port}", "ISOLATION_TIMEOUT_SECONDS": "5"})
            == 0
        )
