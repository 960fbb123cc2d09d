"""`ct lint` (chart-testing, built by toolchain/build.sh) on the chart with ct.yaml: helm lint of every ci/
scenario, yamllint of Chart.yaml and values.yaml, Chart.yaml against ct's schema. And a broken copy of the
chart, to show the check can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from unit_tests.built_tools import built

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "ocean-c2d"


def ct_lint(*charts: Path) -> subprocess.CompletedProcess[str]:
    # ct runs helm, and yamllint and yamale from the virtualenv.
    path = ":".join(
        (built("chart-testing"), built("helm"), str(Path(sys.executable).parent), os.environ["PATH"])
    )
    etc = Path(built("chart-testing")) / "etc"
    return subprocess.run(
        [
            "ct",
            "lint",
            "--config",
            str(ROOT / "ct.yaml"),
            "--chart-yaml-schema",
            str(etc / "chart_schema.yaml"),
            "--lint-conf",
            str(etc / "lintconf.yaml"),
            *(["--charts", ",".join(str(c) for c in charts)] if charts else []),
        ],
        cwd=ROOT,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ct_lint_passes_for_every_scenario() -> None:
    result = ct_lint()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "All charts linted successfully" in output
    scenarios = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
    assert scenarios
    for scenario in scenarios:
        assert f'values file "helm/ocean-c2d/ci/{scenario}"' in output


def test_ct_lint_fails_on_a_duplicate_key_in_values(tmp_path: Path) -> None:
    broken = tmp_path / "ocean-c2d"
    shutil.copytree(CHART, broken)
    values = broken / "values.yaml"
    values.write_text(values.read_text() + "\nnameOverride: again\n")
    result = ct_lint(broken)
    assert result.returncode != 0
    assert "duplication of key" in result.stdout + result.stderr
