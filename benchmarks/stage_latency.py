"""Benchmark: how fast the operator moves Workflows through their stages, and what it costs in API writes.

Scenario S2 of the harness (benchmarks/bench.py, `make bench`) at one size, printed: a thin front kept
for its command line. Runs against the cluster KUBECONFIG names (default: the local one), in a fresh
namespace, with the operator as a local process; writes are counted from the API server's audit log.

    .venv/bin/python -m benchmarks.stage_latency --workflows 20 --max-jobs 10
"""

from __future__ import annotations

import argparse
import tempfile

from benchmarks import bench
from benchmarks.harness import cpu_seconds, percentile

__all__ = ["cpu_seconds", "main", "percentile"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=20)
    parser.add_argument("--max-jobs", type=int, default=10)
    parser.add_argument("--run-for", default="1s", help="how long each stage's pod runs (kwok)")
    parser.add_argument("--idle-seconds", type=float, default=10)
    given = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        bench.main(  # prints the results' table
            [
                *("--scenarios", "S2,S3,S4", "--workflows", str(given.workflows)),
                *("--max-jobs", str(given.max_jobs), "--run-for", given.run_for),
                *("--idle-seconds", str(given.idle_seconds), "--out", out),
            ]
        )


if __name__ == "__main__":
    main()
