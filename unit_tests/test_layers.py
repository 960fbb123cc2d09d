"""The rules that keep the core easy to change, checked on the import graph of the whole package.

The graph is grimp's (import-linter's graph library, `make lint` runs the contracts of pyproject.toml's
[tool.importlinter] on it). Every import counts: at module level, inside a function, under TYPE_CHECKING;
and every rule is transitive: a pure module may not reach an I/O library through another module either.

- the pure modules import no I/O library (nor the standard library's asyncio, socket, subprocess) and no
  module of the I/O shell;
- the pod-side steps import nothing of the operator's runtime;
- only k8s, lease (leader election's Lease), informer (the watches kopf does not keep) and the API's
  cluster_store (and runner and the API's server, which make the clients) import kr8s;
- no import cycle among the package's own modules;
- every module of the package is on one side: pure or shell (a new module must be put on one).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import grimp
import pytest

PACKAGE = "ocean_c2d"
# Pure: (inputs) -> outputs, no I/O. What they may import of this package: pure modules only.
PURE = {
    "ocean_c2d.addresses",
    "ocean_c2d.api",
    "ocean_c2d.api.auth",
    "ocean_c2d.api.environments",
    "ocean_c2d.api.params",
    "ocean_c2d.api.replay",
    "ocean_c2d.api.settings",
    "ocean_c2d.api.status_object",
    "ocean_c2d.api.store",
    "ocean_c2d.api.translate",
    "ocean_c2d.changes",
    "ocean_c2d.environments",
    "ocean_c2d.identity",
    "ocean_c2d.leadership",
    "ocean_c2d.model",
    "ocean_c2d.observe",
    "ocean_c2d.reconcile",
    "ocean_c2d.render",
    "ocean_c2d.resilience",
    "ocean_c2d.retention",
    "ocean_c2d.settings",
    "ocean_c2d.signing",
    "ocean_c2d.stages",
    "ocean_c2d.status",
    "ocean_c2d.steps.contract",
    "ocean_c2d.telemetry",
    "ocean_c2d.times",
}
# The I/O shell, and the pod-side steps and storage (they do I/O in the stage pods).
SHELL = {
    "ocean_c2d",
    "ocean_c2d.api.app",
    "ocean_c2d.api.results",
    "ocean_c2d.api.cluster_store",
    "ocean_c2d.api.metrics",
    "ocean_c2d.api.nonces",
    "ocean_c2d.api.server",
    "ocean_c2d.cli",
    "ocean_c2d.controller",
    "ocean_c2d.effects",
    "ocean_c2d.expiry",
    "ocean_c2d.handlers",
    "ocean_c2d.informer",
    "ocean_c2d.k8s",
    "ocean_c2d.lease",
    "ocean_c2d.metrics",
    "ocean_c2d.notify",
    "ocean_c2d.queue_command",
    "ocean_c2d.runner",
    "ocean_c2d.signer",
    "ocean_c2d.view",
    "ocean_c2d.workqueue",
    "ocean_c2d.steps",
    "ocean_c2d.steps.configure",
    "ocean_c2d.steps.egress",
    "ocean_c2d.steps.filter",
    "ocean_c2d.steps.isolation",
    "ocean_c2d.steps.judged",
    "ocean_c2d.steps.publish",
    "ocean_c2d.steps.signer_client",
    "ocean_c2d.steps.sources",
    "ocean_c2d.steps.streaming",
    "ocean_c2d.storage",
    "ocean_c2d.storage.ipfs",
    "ocean_c2d.storage.s3",
}
IO_LIBRARIES = {"kopf", "kr8s", "httpx", "boto3", "aioipfs", "prometheus_client", "aiohttp", "requests"}
STDLIB_IO = {"asyncio", "socket", "subprocess"}
# What the stage pods' code must not know of: the operator's runtime.
RUNTIME = {
    "ocean_c2d.controller",
    "ocean_c2d.view",
    "ocean_c2d.effects",
    "ocean_c2d.workqueue",
    "ocean_c2d.handlers",
    "ocean_c2d.runner",
    "ocean_c2d.k8s",
    "ocean_c2d.reconcile",
    "ocean_c2d.signer",
    "kopf",
    "kr8s",
}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # cache_dir=None: no .grimp_cache written into the repository.
    return grimp.build_graph(PACKAGE, include_external_packages=True, cache_dir=None)


def internal(graph: grimp.ImportGraph) -> set[str]:
    return {m for m in graph.modules if m == PACKAGE or m.startswith(PACKAGE + ".")}


def via(graph: grimp.ImportGraph, module: str, imported: str) -> str:
    chain = graph.find_shortest_chain(importer=module, imported=imported)
    return " -> ".join(chain or (module, "?", imported))


def ast_imports(module: str) -> set[str]:
    """The top-level names of what `module`'s source imports (absolute imports), read from its file."""
    spec = importlib.util.find_spec(module)
    origin = spec.origin if spec else None
    assert origin is not None, module
    tree = ast.parse(Path(origin).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_every_module_is_pure_or_shell(graph: grimp.ImportGraph) -> None:
    assert not PURE & SHELL
    unclassified = internal(graph) - PURE - SHELL
    assert not unclassified, f"put each of these in PURE or SHELL (and the contracts): {sorted(unclassified)}"


def test_the_graph_sees_every_import_the_source_has(graph: grimp.ImportGraph) -> None:
    """grimp lists the standard library among the external packages; were it to stop, the rules below
    would pass for want of anything to see. Every module's own imports must be edges of the graph."""
    for module in sorted(internal(graph)):
        seen = {name.split(".")[0] for name in graph.find_modules_directly_imported_by(module)}
        assert ast_imports(module) <= seen, module


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_reach_no_io(graph: grimp.ImportGraph, module: str) -> None:
    assert module in graph.modules, f"{module} is listed as pure but does not exist"
    reached = graph.find_upstream_modules(module)
    io = sorted(m for m in reached if m.split(".")[0] in IO_LIBRARIES | STDLIB_IO)
    assert not io, [via(graph, module, m) for m in io]
    impure = sorted(m for m in reached if m.startswith(PACKAGE + ".") and m not in PURE)
    assert not impure, [via(graph, module, m) for m in impure]


def test_the_steps_know_nothing_of_the_operators_runtime(graph: grimp.ImportGraph) -> None:
    steps = sorted(m for m in internal(graph) if m == "ocean_c2d.steps" or m.startswith("ocean_c2d.steps."))
    assert "ocean_c2d.steps.configure" in steps
    for module in steps:
        reached = sorted(graph.find_upstream_modules(module) & RUNTIME)
        assert not reached, [via(graph, module, m) for m in reached]


def test_only_k8s_talks_to_the_kubernetes_api(graph: grimp.ImportGraph) -> None:
    users = sorted(graph.find_modules_that_directly_import("kr8s"))
    # The runner and the API's server only make the client; the API (its own process) reads and writes
    # through api.cluster_store's Kube; `ocean-c2d queue` is a read-only client of its own (one LIST).
    assert users == [
        "ocean_c2d.api.cluster_store",
        "ocean_c2d.api.server",
        "ocean_c2d.informer",
        "ocean_c2d.k8s",
        "ocean_c2d.lease",
        "ocean_c2d.queue_command",
        "ocean_c2d.runner",
    ]


def test_no_import_cycle_among_the_packages_modules(graph: grimp.ImportGraph) -> None:
    cycles: set[tuple[str, ...]] = set()
    for importer in sorted(internal(graph)):
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & internal(graph)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycle = (importer, *back)
                start = cycle.index(min(cycle[:-1]))  # one spelling of each cycle
                cycles.add((*cycle[start:-1], *cycle[:start], cycle[start]))
    assert not cycles, sorted(" -> ".join(cycle) for cycle in cycles)
