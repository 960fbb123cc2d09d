"""kopf wiring only: which watch events feed which index, and which keys they put on the work queue.

Only low-level handlers are used (`kopf.index`, `kopf.on.event`): they persist nothing on the objects
(no finalizers, no annotations, no status), so an idle operator sends no write at all. They are all
`async`: kopf would run plain functions in a thread pool, one thread hop per watch event. kopf lists every
indexed resource before it calls any handler, so the first reconcile after a start already sees every
Job, pod and child that exists: that is what lets a restarted operator resume without duplicating work.
"""

from __future__ import annotations

import copy
from typing import Any

import kopf

from ocean_c2d import observe
from ocean_c2d.controller import Controller
from ocean_c2d.model import GROUP, VERSION

MANAGED = {"app.kubernetes.io/managed-by": "ocean-c2d"}


def _ns(namespace: str | None) -> str:
    return namespace or ""  # every resource watched here is namespaced


def _controller(memo: Any) -> Controller:
    controller: Controller = memo.controller
    return controller


# ---- indexes: the operator's view of the cluster -----------------------------------------------------


@kopf.index(GROUP, VERSION, "workflows")
async def workflow_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(_ns(namespace), name): copy.deepcopy(dict(body))}


@kopf.index(GROUP, VERSION, "workflows")
async def workflow_by_environment_index(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[Any, Any]:
    return {(_ns(namespace), spec.get("environment", "")): name}


@kopf.index(GROUP, VERSION, "computeenvironments")
async def environment_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(_ns(namespace), name): copy.deepcopy(dict(body))}


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
async def job_index(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(_ns(namespace), labels.get("workflow", "")): observe.job_record(body)}


@kopf.index("v1", "pods", labels=MANAGED)
async def pod_index(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(_ns(namespace), labels.get("workflow", "")): observe.pod_record(body)}


def _child(namespace: str, labels: kopf.Labels, body: kopf.Body) -> dict[Any, Any]:
    return {(_ns(namespace), labels.get("workflow", "")): observe.child_record(body)}


@kopf.index("v1", "configmaps", labels=MANAGED)
async def configmap_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return _child(_ns(namespace), labels, body)


@kopf.index("v1", "secrets", labels=MANAGED)
async def secret_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return _child(_ns(namespace), labels, body)  # the record keeps the name and a hash, never the data


@kopf.index("v1", "persistentvolumeclaims", labels=MANAGED)
async def pvc_index(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return _child(_ns(namespace), labels, body)


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels=MANAGED)
async def networkpolicy_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return _child(_ns(namespace), labels, body)


# ---- triggers: any change of a Workflow or of something it owns reconciles that Workflow ----------------


@kopf.on.event(GROUP, VERSION, "workflows")
async def workflow_reconcile(namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    controller = _controller(memo)
    controller.bind(kwargs)
    controller.workflow_changed(_ns(namespace), name)


@kopf.on.event(GROUP, VERSION, "computeenvironments")
async def environment_reconcile(namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    controller = _controller(memo)
    controller.bind(kwargs)
    controller.environment_changed(_ns(namespace), name)


def _child_changed(namespace: str, labels: kopf.Labels, memo: Any, kwargs: dict[str, Any]) -> None:
    controller = _controller(memo)
    controller.bind(kwargs)
    if labels.get("workflow"):
        controller.workflow_changed(namespace, labels["workflow"])


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def job_changed(namespace: str | None, labels: kopf.Labels, memo: Any, **kwargs: Any) -> None:
    _child_changed(_ns(namespace), labels, memo, kwargs)


@kopf.on.event("v1", "pods", labels=MANAGED)
async def pod_changed(namespace: str | None, labels: kopf.Labels, memo: Any, **kwargs: Any) -> None:
    _child_changed(_ns(namespace), labels, memo, kwargs)


@kopf.on.event("v1", "configmaps", labels=MANAGED)
async def configmap_changed(namespace: str | None, labels: kopf.Labels, memo: Any, **kwargs: Any) -> None:
    _child_changed(_ns(namespace), labels, memo, kwargs)


@kopf.on.event("v1", "secrets", labels=MANAGED)
async def secret_changed(namespace: str | None, labels: kopf.Labels, memo: Any, **kwargs: Any) -> None:
    _child_changed(_ns(namespace), labels, memo, kwargs)


@kopf.on.event("v1", "persistentvolumeclaims", labels=MANAGED)
async def pvc_changed(namespace: str | None, labels: kopf.Labels, memo: Any, **kwargs: Any) -> None:
    _child_changed(_ns(namespace), labels, memo, kwargs)


@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=MANAGED)
async def networkpolicy_changed(namespace: str | None, labels: kopf.Labels, memo: Any, **kwargs: Any) -> None:
    _child_changed(_ns(namespace), labels, memo, kwargs)
