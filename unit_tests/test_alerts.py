"""The chart's alert rules (helm/ocean-c2d/files/alerts.yaml) under promtool, built by toolchain/build.sh:
`check rules` (syntax, templates) and `test rules` with the cases in unit_tests/monitoring/. A copy of the
rules with one threshold changed must fail those cases, so they are shown to test something."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from unit_tests.built_tools import binary

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "helm" / "ocean-c2d" / "files" / "alerts.yaml"
CASES = ROOT / "unit_tests" / "monitoring" / "alerts-test.yaml"


def promtool() -> str:
    return binary("prometheus", "promtool")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_rules_are_valid() -> None:
    result = run("check", "rules", str(RULES), cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_test_case() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    cases = yaml.safe_load(CASES.read_text())["tests"]
    tested = {check["alertname"] for case in cases for check in case.get("alert_rule_test", [])}
    assert alerts == tested
    # ... and each is shown firing at least once, not only silent.
    firing = {c["alertname"] for case in cases for c in case["alert_rule_test"] if c.get("exp_alerts")}
    assert firing == alerts


def test_rule_cases_pass() -> None:
    result = run("test", "rules", CASES.name, cwd=CASES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_cases_catch_a_changed_threshold(tmp_path: Path) -> None:
    rules = RULES.read_text()
    assert "> 3600" in rules
    (tmp_path / "alerts.yaml").write_text(rules.replace("> 3600", "> 36000"))
    cases = CASES.read_text().replace("../../helm/ocean-c2d/files/alerts.yaml", "alerts.yaml")
    (tmp_path / CASES.name).write_text(cases)
    result = run("test", "rules", CASES.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "OceanC2DWorkflowStuckInStage" in result.stdout + result.stderr


def test_the_chart_ships_the_tested_file() -> None:
    template = (ROOT / "helm" / "ocean-c2d" / "templates" / "prometheusrule.yaml").read_text()
    assert '.Files.Get "files/alerts.yaml"' in template
    assert shutil.which(promtool())
