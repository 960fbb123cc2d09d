"""The one diff between what a Plan wants and what the watches observed (pure): the Changes to send.

A desired child is created when absent and patched when its spec hash differs from the observed one (stage
pods are never patched: a pod's spec is immutable); an unwanted child is deleted only while present.
Reconciling the result of a reconcile therefore yields no changes, and an idle operator writes nothing.
"""

from __future__ import annotations

from typing import Any

from ocean_c2d.model import Changes, ChildRef, Observed, Plan
from ocean_c2d.render import spec_hash


def present(ref: ChildRef, observed: Observed) -> bool:
    kind, name = ref
    if kind == "Pod":
        return name in observed.stage_pods
    return ref in observed.others


def _ref(manifest: dict[str, Any]) -> ChildRef:
    return manifest["kind"], manifest["metadata"]["name"]


def changes(plan: Plan, observed: Observed) -> Changes:
    """What applying `plan` takes against `observed`; empty (len 0) means idle."""
    create = tuple(m for m in plan.desired if not present(_ref(m), observed))
    patch = tuple(
        m
        for m in plan.desired
        if m["kind"] != "Pod" and present(_ref(m), observed) and observed.hashes.get(_ref(m)) != spec_hash(m)
    )
    return Changes(
        create=create,
        patch=patch,
        status=plan.status,
        delete=tuple(ref for ref in plan.unwanted if present(ref, observed)),
        events=plan.events,
        delete_workflow=plan.delete_workflow,
    )
