"""The benchmark harness (benchmarks/bench.py, `make bench`) at a small size, so it cannot rot: S0 and S2
with 100 Workflows at maxJobs 10 (S3's counts, S4 for 5 s), S5 with 100 finished Workflows, S6 with 20 in
flight. It asserts only what holds at any speed: every Workflow finished Succeeded, the files exist and
parse, the writes were counted from the audit log (the baseline's to the request, the operator's Jobs one
per stage), no stage run twice, no algorithm re-run, every in-flight Workflow progressed after the restart.
Never a timing: the numbers are printed (`-s`). About 3 to 4 minutes on a busy 2-core machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench
from benchmarks.harness import BASELINE_AGENT, OPERATOR

pytestmark = [pytest.mark.simulated, pytest.mark.local_only, pytest.mark.timeout(480)]

WORKFLOWS = 100
IN_FLIGHT = 20
FINISHED = 100
PNG = b"\x89PNG\r\n\x1a\n"


async def test_the_benchmark_harness_runs_every_scenario_and_counts_writes_from_the_audit_log(
    kubeconfig: str, ocean_crds: list[str], tmp_path: Path
) -> None:
    options = bench.parse(
        [
            *("--scenarios", "S0,S2,S3,S4,S5,S6", "--workflows", str(WORKFLOWS), "--max-jobs", "10"),
            *("--idle-seconds", "5", "--finished", str(FINISHED), "--in-flight", str(IN_FLIGHT)),
            *("--in-flight-run-for", "3s", "--timeout", "300", "--out", str(tmp_path)),
        ]
    )
    results = await bench.run_and_write(options)
    print("\n" + (options.out / "results.md").read_text())

    assert json.loads((options.out / "results.json").read_text())["run_id"] == options.out.name
    assert (tmp_path / "latest").resolve() == options.out.resolve()
    table = (options.out / "results.md").read_text()
    assert "| throughput, Workflows/min |" in table
    assert "## S6" in table
    for plot in ("s0-s2.png", "s3-writes.png", "s5-startup.png"):
        assert (options.out / plot).read_bytes().startswith(PNG), plot

    s0, s2 = results["S0"]["10"], results["S2"]["10"]
    assert s0["finished"] == WORKFLOWS
    assert s2["outcomes"] == {"Succeeded": WORKFLOWS}
    # The audit log saw every write the baseline script counted itself, and each transition on both sides.
    assert s0["writes"]["by_client"][BASELINE_AGENT] == s0["script_writes_per_workflow"] > 0
    assert s0["transition_ms"]["n"] == s2["transition_ms"]["n"] == 2 * WORKFLOWS
    operator = s2["writes"]["by_client_and_kind"][OPERATOR]
    assert operator["create pods"] == 3.0  # one pod per stage: none created twice
    assert s2["status_writes_per_workflow"]["p50"] >= 1
    assert s2["minimum_writes_per_workflow"] > s0["child_writes_per_workflow"]
    assert s0["duplicate_stage_runs"] == s2["duplicate_stage_runs"] == s2["algorithm_reruns"] == 0
    assert s2["idle"] is not None
    assert s2["idle"]["seconds"] == 5

    s5 = results["S5"][str(FINISHED)]
    assert s5["reconciles_counted"] >= FINISHED
    assert s5["all_reconciled_seconds"] is not None

    s6 = results["S6"]
    assert s6["in_flight_at_kill"] > 0
    assert s6["progress_after_restart_seconds"]["n"] == s6["in_flight_at_kill"]
    assert s6["outcomes"] == {"Succeeded": IN_FLIGHT}
    assert s6["duplicate_stage_runs"] == 0
    assert s6["algorithm_reruns"] == 0
