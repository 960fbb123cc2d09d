"""The rule that keeps the core easy to change: pure modules do no I/O and import no I/O library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "operator" / "ocean_c2d"
PURE = [
    "reconcile",
    "model",
    "render",
    "status",
    "environments",
    "observe",
    "signing",
    "settings",
    "steps.contract",
]
IO_LIBRARIES = {
    "kopf",
    "kr8s",
    "httpx",
    "boto3",
    "aioipfs",
    "prometheus_client",
    "asyncio",
    "socket",
    "subprocess",
    "requests",
    "aiohttp",
}
# The modules those pure ones may import from this package: pure ones only.
IMPURE_SIBLINGS = {"k8s", "controller", "handlers", "runner", "notify", "metrics", "cli"}


def imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module.replace('.', '/')}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io_library(module: str) -> None:
    found = imports(module)
    assert not {name.split(".")[0] for name in found} & IO_LIBRARIES
    siblings = {name.split(".")[1] for name in found if name.startswith("ocean_c2d.")}
    assert not siblings & IMPURE_SIBLINGS


def test_only_k8s_talks_to_the_kubernetes_api() -> None:
    users = sorted(p.stem for p in PACKAGE.glob("*.py") if any(n.startswith("kr8s") for n in imports(p.stem)))
    assert users == ["k8s", "runner"]  # the runner only makes the client
