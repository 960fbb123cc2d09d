"""results.md (markdown tables) and PNG plots of a benchmark run's results.json (benchmarks/bench.py).

.venv/bin/python -m benchmarks.report .artifacts/bench/latest   # redraw from results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

NA = "-"
CLIENT_ORDER = (
    "operator",
    "ocean-c2d-baseline",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok-controller",
)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return NA
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _with_ratio(value: Any, ratio: Any) -> str:
    return _fmt(value) if ratio is None else f"{_fmt(value)} ({_fmt(ratio, 2)}x S0)"


def _load(run: dict[str, Any]) -> str:
    load = run.get("load_average") or {}
    return f"{_fmt(load.get('mean'), 2)} (max {_fmt(load.get('max'), 2)}, {load.get('cores', '?')} cores)"


def _spread(values: dict[str, Any], unit: str = "") -> str:
    if not values or not values.get("n"):
        return NA
    return " / ".join(
        f"{_fmt(values.get(k), 0 if unit == 'ms' else 1)}" for k in ("p50", "p95", "p99", "max")
    ) + (f" {unit}" if unit else "")


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Benchmark run {results.get('run_id', '?')}", ""]
    lines.append(
        f"Started {results.get('started')}, finished {results.get('finished', '(unfinished)')}; "
        f"{results['machine']['cores']} cores; load average before "
        f"{' '.join(f'{x:.2f}' for x in results['machine']['load_average_before'])}. "
        f"Options: {json.dumps({k: v for k, v in results['options'].items() if k != 'out'})}."
    )
    stages = results.get("kwok_stages") or {}
    jitter = [name for name, s in stages.items() if s.get("jitter_ms") or s.get("jitter_from")]
    lines.append(
        "kwok pod stages: "
        + ", ".join(f"{name} {s['delay_from'] or str(s['delay_ms']) + ' ms'}" for name, s in stages.items())
        + (
            "; jitter: " + ", ".join(jitter)
            if jitter
            else "; no jitter (delay = jitter-delay = the stated time)"
        )
    )
    lines.append("")
    s0, s2 = results.get("S0") or {}, results.get("S2") or {}
    if s0 or s2:
        keys = sorted(set(s0) | set(s2), key=int)
        header = ["figure"]
        for key in keys:
            header += [f"S0 maxJobs {key}"] if key in s0 else []
            header += [f"S2 maxJobs {key}"] if key in s2 else []
        rows: list[tuple[str, str, Any]] = [
            ("Workflows (finished)", "workflows", None),
            ("throughput, Workflows/min", "throughput_per_minute", "throughput"),
            ("created in, s (within 60 s)", "create_seconds", None),
            ("drain time, s", "drain_seconds", None),
            ("pod Succeeded -> next stage created, p50/p95/p99/max ms", "transition_ms", None),
            ("status writes per Workflow, p50/p95/p99/max", "status_writes_per_workflow", None),
            ("writes per Workflow, every client", "writes", "writes_per_workflow"),
            ("the controller's own writes per Workflow", "own", None),
            ("operator writes without Events / Events", "events", None),
            ("operator writes over the minimum (without Events)", "minimum", None),
            ("controller CPU-s (per 1,000 Workflows)", "cpu_seconds", "cpu_seconds"),
            ("peak RSS, MB", "peak_rss_mb", "peak_rss"),
            ("stages run twice / algorithm re-runs", "duplicates", None),
            ("load average during the run", "load", None),
        ]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label, field, ratio_key in rows:
            cells = [label]
            for key in keys:
                for name, runs in (("S0", s0), ("S2", s2)):
                    if key not in runs:
                        continue
                    cells.append(_cell(name, runs[key], field, ratio_key))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += _writes_tables(s0, s2)
        lines += _idle_table(s2)
    if results.get("S5"):
        lines += ["## S5: start-up with finished Workflows", ""]
        lines += [
            "| finished Workflows | /metrics up, s | first reconcile, s | all reconciled, s | RSS after, MB "
            "| peak RSS, MB | CPU-s | operator writes | load average |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for key, run in sorted(results["S5"].items(), key=lambda item: int(item[0])):
            writes = sum(
                n
                for k, n in run["operator_requests"].items()
                if k.split()[0] != "get" and k.split()[0] != "list"
            )
            lines.append(
                f"| {int(key):,} | {_fmt(run['metrics_up_seconds'], 2)} "
                f"| {_fmt(run['first_reconcile_seconds'], 2)} | {_fmt(run['all_reconciled_seconds'], 2)} "
                f"| {_fmt(run['rss_mb'])} | {_fmt(run['peak_rss_mb'])} "
                f"| {_fmt(run['cpu_seconds'])} | {writes} | {_load(run)} |"
            )
        signal = next(iter(results["S5"].values()))["signal"]
        lines += ["", f"Reconciled: {signal}.", ""]
    if results.get("S6"):
        run = results["S6"]
        lines += ["## S6: SIGKILL with Workflows in flight, restart", ""]
        lines += [
            f"- {run['in_flight_at_kill']:,} of {run['workflows']:,} in flight at the kill "
            f"(stages of {run['stage_run_for']});",
            "- status change after the restart, p50/p95/p99/max: "
            f"{_spread(run['progress_after_restart_seconds'], 's')}; after the later of the restart and "
            f"its running stage's pod's end: {_spread(run.get('progress_after_due_seconds') or {}, 's')};",
            f"- finished {run['finished']:,}: {run['outcomes']}; "
            f"stages run twice {run['duplicate_stage_runs']}; "
            f"algorithm re-runs {run['algorithm_reruns']}; load average {_load(run)}.",
            "",
        ]
    return "\n".join(lines) + "\n"


def _cell(name: str, run: dict[str, Any], field: str, ratio_key: str | None) -> str:
    ratio = (run.get("vs_S0") or {}).get(ratio_key) if ratio_key else None
    if field == "workflows":
        return f"{run['workflows']:,} ({run['finished']:,})"
    if field == "transition_ms":
        text = _spread(run["transition_ms"], "ms")
        vs = run.get("vs_S0") or {}
        return text + (f" (p99 {_fmt(vs.get('transition_p99'), 2)}x S0)" if vs.get("transition_p99") else "")
    if field == "status_writes_per_workflow":
        return _spread(run.get("status_writes_per_workflow") or {}) if name == "S2" else "0 (no status)"
    if field == "writes":
        return _with_ratio(run["writes"]["total_per_workflow"], ratio)
    if field == "own":
        if name == "S0":
            return _fmt(run["child_writes_per_workflow"], 2)
        return _fmt(run["operator_writes_per_workflow"], 2)
    if field == "events":
        if name == "S0":
            return NA
        without, events = run["operator_writes_without_events"], run["operator_events_per_workflow"]
        return f"{_fmt(without, 2)} / {_fmt(events, 2)}"
    if field == "minimum":
        if name == "S0" or run.get("minimum_writes_per_workflow") is None:
            return NA
        return (
            f"{_fmt(run['operator_writes_over_minimum'], 2)}x "
            f"({_fmt(run['operator_writes_over_minimum_without_events'], 2)}x) "
            f"of {_fmt(run['minimum_writes_per_workflow'], 2)}"
        )
    if field == "cpu_seconds":
        return _with_ratio(run["cpu_seconds"], ratio) + f" ({_fmt(run['cpu_seconds_per_1000'])})"
    if field == "duplicates":
        return f"{run['duplicate_stage_runs']} / {run.get('algorithm_reruns', NA)}"
    if field == "load":
        return _load(run)
    return _with_ratio(run.get(field), ratio)


def _writes_tables(s0: dict[str, Any], s2: dict[str, Any]) -> list[str]:
    lines = ["## S3: writes per Workflow by client, and by verb and resource (audit log)", ""]
    for name, runs in (("S0", s0), ("S2", s2)):
        for key, run in sorted(runs.items(), key=lambda item: int(item[0])):
            lines.append(f"**{name} maxJobs {key}**: {run['writes']['total_per_workflow']} in all")
            lines.append("")
            for client, kinds in run["writes"]["by_client_and_kind"].items():
                total = run["writes"]["by_client"].get(client, 0)
                detail = ", ".join(f"{kind} {count}" for kind, count in kinds.items())
                lines.append(f"- {client}: {total} ({detail})")
            lines.append("")
    return lines


def _idle_table(s2: dict[str, Any]) -> list[str]:
    idle = {key: run["idle"] for key, run in s2.items() if run.get("idle")}
    if not idle:
        return []
    lines = ["## S4: idle after the run (the operator's requests, audit log)", ""]
    for key, run in sorted(idle.items(), key=lambda item: int(item[0])):
        lines.append(
            f"- after S2 maxJobs {key}, {run['seconds']:.0f} s: {run['operator_writes']} writes, "
            f"{run['operator_reads']} reads (watches are not logged) {run['operator_requests'] or ''}; "
            f"{run['operator_cpu_seconds']} CPU-s; every client's writes in the namespace (the cluster "
            "still cleaning up): "
            f"{run['all_writes']}"
        )
    return [*lines, ""]


# --- plots ---


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    s0, s2 = results.get("S0") or {}, results.get("S2") or {}
    runs = [(f"S0 maxJobs {k}", r) for k, r in sorted(s0.items(), key=lambda i: int(i[0]))]
    runs += [(f"S2 maxJobs {k}", r) for k, r in sorted(s2.items(), key=lambda i: int(i[0]))]

    def caption(run: dict[str, Any]) -> str:
        load = run.get("load_average") or {}
        return f"load {load.get('mean', float('nan')):.1f}"

    def save(figure: Any, name: str) -> None:
        path = out / name
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)

    if runs:
        labels = [f"{label}\n({caption(run)})" for label, run in runs]
        figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        axes[0].bar(labels, [run["throughput_per_minute"] for _, run in runs], color="tab:blue")
        axes[0].set_title("throughput, Workflows/min")
        for stat, offset in (("p50", -0.25), ("p99", 0.0), ("max", 0.25)):
            axes[1].bar(
                [i + offset for i in range(len(runs))],
                [run["transition_ms"].get(stat, 0) for _, run in runs],
                width=0.25,
                label=stat,
            )
        axes[1].set_xticks(range(len(runs)), labels)
        axes[1].set_yscale("log")
        axes[1].set_title("pod Succeeded -> next stage created, ms")
        axes[1].legend()
        axes[2].bar(labels, [run["cpu_seconds"] for _, run in runs], color="tab:red")
        axes[2].set_title("controller CPU-s")
        for axis in axes:
            axis.tick_params(axis="x", labelsize=8)
        save(figure, "s0-s2.png")

        figure, axis = plt.subplots(figsize=(10, 5))
        bottom = [0.0] * len(runs)
        clients = sorted(
            {c for _, run in runs for c in run["writes"]["by_client"]},
            key=lambda c: CLIENT_ORDER.index(c) if c in CLIENT_ORDER else len(CLIENT_ORDER),
        )
        for client in clients:
            values = [run["writes"]["by_client"].get(client, 0.0) for _, run in runs]
            axis.bar(labels, values, bottom=bottom, label=client)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        axis.set_title("S3: writes per Workflow by client (audit log)")
        axis.legend(fontsize=8)
        save(figure, "s3-writes.png")

    if results.get("S5"):
        items = sorted(results["S5"].items(), key=lambda i: int(i[0]))
        counts = [int(k) for k, _ in items]
        figure, axes = plt.subplots(1, 2, figsize=(11, 4))
        axes[0].plot(counts, [r["rss_mb"] for _, r in items], marker="o", label="RSS after")
        axes[0].plot(counts, [r["peak_rss_mb"] for _, r in items], marker="x", label="peak RSS")
        axes[0].set_xlabel("finished Workflows")
        axes[0].set_title("S5: operator memory, MB")
        axes[0].legend()
        axes[1].plot(counts, [r["all_reconciled_seconds"] or float("nan") for _, r in items], marker="o")
        axes[1].set_xlabel("finished Workflows")
        axes[1].set_title("S5: start until every one reconciled, s")
        for axis in axes:
            loads = ", ".join(f"{c:,}: {caption(r)}" for c, (_, r) in zip(counts, items, strict=True))
            axis.text(0.01, 0.95, loads, transform=axis.transAxes, fontsize=7, va="top")
        save(figure, "s5-startup.png")
    return written


def write(results: dict[str, Any], out: Path) -> None:
    (out / "results.md").write_text(markdown(results))
    plots(results, out)


def combine(out: Path, directories: list[Path]) -> dict[str, Any]:
    """One results.json of several runs' (say S0 and S2 run one after the other, each a short turn on a
    shared machine): the scenarios of each, the ratios to S0 computed again."""
    from benchmarks.bench import ratios

    merged: dict[str, Any] = {}
    for directory in directories:
        results = json.loads((directory / "results.json").read_text())
        for key, value in results.items():
            if key.startswith("S") and isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            elif key not in merged or key in ("finished",):
                merged[key] = value
    merged["run_id"] = " + ".join(json.loads((d / "results.json").read_text())["run_id"] for d in directories)
    ratios(merged)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(merged, indent=2, default=str))
    write(merged, out)
    return merged


if __name__ == "__main__":
    # python -m benchmarks.report DIR: redraw DIR from its results.json;
    # python -m benchmarks.report OUT DIR DIR...: combine runs into OUT.
    paths = [Path(arg).resolve() for arg in sys.argv[1:]]
    if len(paths) == 1:
        write(json.loads((paths[0] / "results.json").read_text()), paths[0])
    else:
        combine(paths[0], paths[1:])
