"""`ocean-c2d isolation-check`: the init container of algorithm and filter pods.

A NetworkPolicy is enforced by the cluster's policy engine some time after the pod exists: kube-router,
for one, programs its rules only once it has learned the pod's IP from the API, after the sandbox is up
(measured on the local cluster: a connection at t=0.0 s got through, from t=0.5 s on it was refused).
The algorithm runs in the same pod network as this init container, so it starts only after this check
has seen egress blocked: no window. A cluster whose CNI ignores NetworkPolicy never blocks, and the check
fails closed: it exits EXIT_NOT_ISOLATED and the algorithm never starts.

The probe target is an address every pod reaches unless a policy forbids it: the API server
(KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT, which the kubelet sets in every container), or the
operator's ISOLATION_PROBE_ADDRESS. A target that is unreachable anyway would pass the check without
proving anything, so pick one that is reachable from an unisolated pod.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ocean_c2d.steps.contract import EXIT_NOT_ISOLATED, split_host_port, write_termination_message

# Blocked this many times in a row counts as enforced: a policy, once programmed, stays.
CONSECUTIVE_BLOCKS = 3
ATTEMPT_TIMEOUT_SECONDS = 0.5
PAUSE_SECONDS = 0.1


@dataclass(frozen=True)
class Verdict:
    isolated: bool
    attempts: int
    elapsed: float
    message: str


def probe_target(environ: Mapping[str, str]) -> tuple[str, int]:
    """ISOLATION_PROBE_ADDRESS (host:port), else the API server's in-cluster address."""
    address = environ.get("ISOLATION_PROBE_ADDRESS") or ""
    if address:
        return split_host_port(address)
    host = environ.get("KUBERNETES_SERVICE_HOST") or ""
    port = environ.get("KUBERNETES_SERVICE_PORT") or "443"
    if not host:
        raise ValueError(
            "no probe target: neither ISOLATION_PROBE_ADDRESS nor KUBERNETES_SERVICE_HOST is set"
        )
    return host, int(port)


def tcp_connects(host: str, port: int) -> bool:
    """True when a TCP connection to host:port is established (egress is open)."""
    try:
        with socket.create_connection((host, port), timeout=ATTEMPT_TIMEOUT_SECONDS):
            return True
    except OSError:  # refused, unreachable, timed out: blocked as far as this pod can tell
        return False


def check(
    connects: Callable[[], bool],
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    pause: Callable[[float], None] = time.sleep,
) -> Verdict:
    """Probe until egress has been blocked CONSECUTIVE_BLOCKS times in a row, or `timeout` passed."""
    start = clock()
    attempts = blocked_in_a_row = 0
    while True:
        attempts += 1
        if connects():
            blocked_in_a_row = 0
        else:
            blocked_in_a_row += 1
            if blocked_in_a_row >= CONSECUTIVE_BLOCKS:
                elapsed = clock() - start
                return Verdict(True, attempts, elapsed, f"egress blocked after {elapsed:.1f}s")
        elapsed = clock() - start
        if elapsed >= timeout:
            return Verdict(
                False,
                attempts,
                elapsed,
                f"the cluster did not enforce the Workflow's NetworkPolicy within {timeout:g}s "
                "(the probe still connected); the algorithm was not started",
            )
        pause(PAUSE_SECONDS)


def main(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    timeout = float(environ.get("ISOLATION_TIMEOUT_SECONDS") or 60)
    try:
        host, port = probe_target(environ)
    except ValueError as error:
        write_termination_message({"message": str(error)})
        print(f"isolation-check: {error}", file=sys.stderr)
        return EXIT_NOT_ISOLATED
    verdict = check(lambda: tcp_connects(host, port), timeout)
    print(
        f"isolation-check: {verdict.message} ({verdict.attempts} attempts to {host}:{port})", file=sys.stderr
    )
    if verdict.isolated:
        return 0
    write_termination_message({"message": verdict.message})
    return EXIT_NOT_ISOLATED
