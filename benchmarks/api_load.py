"""Benchmark: concurrent status polls of `ocean-c2d api`, as providers poll GET /compute for their users.

The scenario (e2e/test_api_load.py, `make bench-api`): Workflows created through the API and running on the
local cluster, then `pollers` concurrent clients, each polling `rounds` times in a row, each poll a provider
v4 GET /compute signed with a fresh nonce. Measured: each poll's latency (send to full answer), its status
code, whether it named the polled job; the API-server requests the API sent meanwhile (its own counter,
ocean_c2d_api_kube_requests_total), the API process's CPU time and the machine's load average.

Prints numbers; the e2e test asserts only what must hold at any speed (every poll answered 200 with its job,
no Workflow read from the API server: the watch cache answers).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from e2e.api_client import PREFIX, job_query

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class PollReport:
    pollers: int
    rounds: int
    jobs: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, one per answered poll
    codes: Counter[int] = field(default_factory=Counter)
    wrong_job: int = 0  # 200 answers that did not name exactly the polled job
    transport_errors: int = 0
    kube_requests: dict[str, float] = field(default_factory=dict)  # by "{verb=...,resource=...}"
    api_cpu_seconds: float = 0.0
    client_cpu_seconds: float = 0.0  # this process's (the pollers', signing and HTTP)
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def polls(self) -> int:
        return self.pollers * self.rounds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")

    def kube_per_poll(self, verb: str, resource: str) -> float:
        wanted = {f'verb="{verb}"', f'resource="{resource}"'}
        found = (
            n for labels, n in self.kube_requests.items() if set(labels.strip("{}").split(",")) == wanted
        )
        return sum(found) / self.polls

    def lines(self) -> list[str]:
        ms = [1000 * x for x in self.latencies]
        spent = ", ".join(
            f"{labels} {int(n)} ({n / self.polls:.3f}/poll)"
            for labels, n in sorted(self.kube_requests.items())
            if n
        )
        load = " ".join(f"{x:.2f}" for x in self.load_average)
        return [
            f"API load: {self.pollers} concurrent pollers x {self.rounds} polls, {self.jobs} running jobs: "
            f"{self.polls} signed GET /compute in {self.seconds:.1f} s ({self.polls / self.seconds:.0f}/s)",
            f"  answers: {dict(sorted(self.codes.items()))}, wrong job {self.wrong_job}, "
            f"transport errors {self.transport_errors}",
            f"  latency ms: p50 {statistics.median(ms):.0f}, p90 {1000 * self.percentile(0.9):.0f}, "
            f"p99 {1000 * self.percentile(0.99):.0f}, max {max(ms):.0f}",
            f"  API-server requests meanwhile: {spent or 'none'}",
            f"  API process CPU: {self.api_cpu_seconds:.1f} s "
            f"({1000 * self.api_cpu_seconds / self.polls:.1f} ms/poll); pollers' process CPU "
            f"{self.client_cpu_seconds:.1f} s; load average {load}",
        ]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def poll_load(
    url: str,
    job_ids: Sequence[str],
    pollers: int,
    rounds: int,
    *,
    api_pid: int,
    kube_requests: Callable[[], Awaitable[dict[str, float]]],
) -> PollReport:
    """`pollers` clients at once, each polling `rounds` times in a row (job `(poller + round) % jobs`)."""
    report = PollReport(pollers, rounds, len(job_ids))
    # aiohttp, not httpx: httpx's pool spends ~10 ms of CPU a request with 200 connections open, which
    # made the pollers, not the API, what was measured.
    connector = aiohttp.TCPConnector(limit=pollers)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as client:

        async def poller(number: int) -> None:
            for round_ in range(rounds):
                job_id = job_ids[(number + round_) % len(job_ids)]
                query = job_query(job_id)  # signed here, just before sending: a fresh nonce, as provider
                sent = time.perf_counter()
                try:
                    async with client.get(f"{PREFIX}/compute", params=query) as response:
                        body = await response.json(content_type=None)
                except aiohttp.ClientError:
                    report.transport_errors += 1
                    continue
                report.latencies.append(time.perf_counter() - sent)
                report.codes[response.status] += 1
                if response.status == 200 and [j.get("jobId") for j in body] != [job_id]:
                    report.wrong_job += 1

        before, cpu_before = await kube_requests(), cpu_seconds(api_pid)
        client_before = cpu_seconds(os.getpid())
        started = time.perf_counter()
        await asyncio.gather(*(poller(n) for n in range(pollers)))
        report.seconds = time.perf_counter() - started
        report.api_cpu_seconds = cpu_seconds(api_pid) - cpu_before
        report.client_cpu_seconds = cpu_seconds(os.getpid()) - client_before
        after = await kube_requests()
    report.kube_requests = {labels: after[labels] - before.get(labels, 0.0) for labels in after}
    report.load_average = os.getloadavg()
    return report
