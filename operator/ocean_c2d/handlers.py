"""kopf wiring only: which watch events feed which index, and which keys they put on the work queue.

Only low-level handlers are used (`kopf.index`, `kopf.on.event`): they persist nothing on the objects
(no finalizers, no annotations, no status), so an idle operator sends no write at all. They are all
`async`: kopf would run plain functions in a thread pool, one thread hop per watch event. kopf lists every
indexed resource before it calls any handler, so the first reconcile after a start already sees every
Job, pod and child that exists: that is what lets a restarted operator resume without duplicating work.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from typing import Any

import kopf

from ocean_c2d import observe
from ocean_c2d.controller import Controller
from ocean_c2d.identity import MANAGED_BY
from ocean_c2d.model import GROUP, VERSION
from ocean_c2d.retention import RECORD_LABELS
from ocean_c2d.status import Stage
from ocean_c2d.view import (
    CHILD_INDEXES,
    ENVIRONMENT_INDEX,
    JOB_INDEX,
    POD_INDEX,
    RECORD_INDEX,
    WORKFLOW_INDEX,
    WORKFLOWS_BY_ENVIRONMENT_INDEX,
    compact_workflow,
    release_bulk,
)


def _ns(namespace: str | None) -> str:
    return namespace or ""  # every resource watched here is namespaced


def _controller(memo: Any) -> Controller:
    controller: Controller = memo.controller
    return controller


# ---- login ---------------------------------------------------------------------------------------------


def in_cluster_server(environ: Mapping[str, str]) -> str | None:
    """The API server as a pod reaches it, by the rule client-go's in-cluster config follows: the
    KUBERNETES_SERVICE_HOST and _PORT the kubelet sets in every container (an IPv6 host in brackets)."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    try:
        bracketed = ipaddress.ip_address(host).version == 6
    except ValueError:
        bracketed = False
    return f"https://[{host}]:{port}" if bracketed else f"https://{host}:{port}"


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account's token at the address of `in_cluster_server`: kopf's own login
    dials https://kubernetes.default.svc, a name only cluster DNS resolves. Outside a pod, the kubeconfig."""
    info = kopf.login_with_service_account(**kwargs)
    if info is None:
        return kopf.login_with_kubeconfig(**kwargs)
    server = in_cluster_server(os.environ)
    return dataclasses.replace(info, server=server) if server else info


# ---- indexes: the operator's view of the cluster -----------------------------------------------------


@kopf.index(GROUP, VERSION, "workflows", id=WORKFLOW_INDEX)
async def workflow_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    # Compact, not a deep copy: a free-form customData parsed into Python objects costs ~25 times its text,
    # and every Workflow of every watched namespace sits in this index. kopf's own body is shrunk too: it
    # holds it until the initial listing of every kind is over.
    compact = compact_workflow(body)
    release_bulk(body, compact)
    return {(_ns(namespace), name): compact}


@kopf.index(GROUP, VERSION, "workflows", id=WORKFLOWS_BY_ENVIRONMENT_INDEX)
async def workflow_by_environment_index(
    namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[Any, Any]:
    # Only Workflows that run or wait: every admission reads this environment's list, and finished ones
    # would make it grow with the environment's history. {} (not None, which kopf reads as "keep the old
    # value") takes a Workflow out once it is finished. A finished Workflow is still reconciled on its own
    # events and at the resync (its results record follows the environment's storageExpiry).
    if status.get("stage") == Stage.FINISHED.value:
        return {}
    return {(_ns(namespace), spec.get("environment", "")): name}


@kopf.index(GROUP, VERSION, "computeenvironments", id=ENVIRONMENT_INDEX)
async def environment_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(_ns(namespace), name): copy.deepcopy(dict(body))}


@kopf.index("batch", "v1", "jobs", labels=MANAGED_BY, id=JOB_INDEX)
async def job_index(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(_ns(namespace), labels.get("workflow", "")): observe.job_record(body)}


@kopf.index("v1", "pods", labels=MANAGED_BY, id=POD_INDEX)
async def pod_index(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(_ns(namespace), labels.get("workflow", "")): observe.pod_record(body)}


# Results records (retention.py): ConfigMaps no Workflow owns, which outlive it to drive its expiry.
@kopf.index("v1", "configmaps", labels=RECORD_LABELS, id=RECORD_INDEX)
async def results_record_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {
        (_ns(namespace), name): {
            "metadata": {"name": name, "namespace": _ns(namespace)},
            "data": dict(body.get("data") or {}),
        }
    }


# The children other than Jobs and pods (view.CHILD_INDEXES): the reconcile needs their names and spec
# hashes only.
async def child_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(_ns(namespace), labels.get("workflow", "")): observe.child_record(body)}


for _index_id, (_api_version, _plural) in CHILD_INDEXES.items():
    _group, _, _version = _api_version.rpartition("/")  # the core group is ""
    kopf.index(group=_group, version=_version, plural=_plural, labels=MANAGED_BY, id=_index_id)(child_index)


# ---- triggers: any change of a Workflow or of something it owns reconciles that Workflow ----------------


@kopf.on.event(GROUP, VERSION, "workflows")
async def workflow_reconcile(namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    controller = _controller(memo)
    controller.bind(kwargs)
    controller.workflow_changed(_ns(namespace), name)


@kopf.on.event(GROUP, VERSION, "computeenvironments")
async def environment_reconcile(
    namespace: str | None, name: str, meta: kopf.Meta, memo: Any, **kwargs: Any
) -> None:
    controller = _controller(memo)
    controller.bind(kwargs)
    controller.environment_changed(_ns(namespace), name, meta.get("generation"))


@kopf.on.event("v1", "configmaps", labels=RECORD_LABELS, id="results_records_changed")
async def results_record_changed(namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    controller = _controller(memo)
    controller.bind(kwargs)
    controller.record_changed(_ns(namespace), name)


async def child_changed(namespace: str | None, labels: kopf.Labels, memo: Any, **kwargs: Any) -> None:
    controller = _controller(memo)
    controller.bind(kwargs)
    if labels.get("workflow"):
        controller.workflow_changed(_ns(namespace), labels["workflow"])


for _api_version, _plural in (("batch/v1", "jobs"), ("v1", "pods"), *CHILD_INDEXES.values()):
    _group, _, _version = _api_version.rpartition("/")
    kopf.on.event(group=_group, version=_version, plural=_plural, labels=MANAGED_BY, id=f"{_plural}_changed")(
        child_changed
    )
