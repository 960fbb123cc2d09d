"""The watch wiring only: which watch events feed which index, and which keys they put on the work queue.

Two mechanisms. The kinds that grow with the cluster's history, Workflows and results records, are
watched by informers (informer.py: a LIST in pages, each object trimmed as it arrives, then a WATCH),
feeding the view's stores: in kopf, each object of a watched kind costs its per-object machinery, and its
start-up barrier is quadratic in the objects listed (10,000 finished Workflows: 610 s and 548 MB). kopf
keeps the small kinds (a running Workflow's stage pods and children, the environments), with only
low-level handlers (`kopf.index`, `kopf.on.event`): they persist nothing on the objects (no finalizers,
no annotations, no status), so an idle operator sends no write at all. They are all `async`: kopf would
run plain functions in a thread pool, one thread hop per watch event.

No reconcile runs before every kind is listed once (Controller.listed, which the work queue awaits): the
first reconcile after a start must see every pod and child that exists, or a restarted operator
would create them again. An informer says so itself (`synced`). kopf calls no handler before every kind
it watches is listed and indexed, so its first handler call says so for all of its kinds; as kopf calls
none for a kind without objects, one object is always there to be called for: the namespace's
kube-root-ca.crt ConfigMap, which Kubernetes publishes in every namespace (LISTED_SENTINEL).
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
from ocean_c2d.informer import Api, Informer
from ocean_c2d.model import GROUP, VERSION
from ocean_c2d.retention import RECORD_KEY, RECORD_LABELS
from ocean_c2d.view import CHILD_INDEXES, ENVIRONMENT_INDEX, POD_INDEX

# A ConfigMap the control plane publishes in every namespace (the API server's CA): kopf always has one
# object to call a handler for once its kinds are listed (see the module's docstring).
LISTED_SENTINEL = "kube-root-ca.crt"
# kopf's ConfigMap watch leaves out the results records (the records' informer has them): server-side,
# so kopf never holds one. It must still list the sentinel, so no managed-by selector here: the sentinel
# has no labels, a watch has one selector whose terms all must hold (no "or"), so any selector it passes
# also passes every unlabelled ConfigMap; and with managed-by alone an operator with no child and no
# environment yet would be called for nothing, never be listed, and reconcile nothing (not even end a
# Workflow that names no environment).
KOPF_CONFIGMAP_SELECTOR = f"!{RECORD_KEY}"


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


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


def informers(api: Api, namespace: str | None, controller: Controller) -> list[Informer]:
    """The Workflows (view.WorkflowStore: a finished one kept trimmed) and the results records
    (retention.py: ConfigMaps no Workflow owns, which outlive it to drive its expiry). Their failed
    requests count in the cluster's ApiHealth, as the operator's own and kopf's do."""
    view = controller.view
    health = controller.cluster.health
    return [
        Informer(
            api,
            f"{GROUP}/{VERSION}",
            "workflows",
            namespace,
            view.workflow_store,
            lambda key: controller.workflow_changed(*key),
            health=health,
        ),
        Informer(
            api,
            "v1",
            "configmaps",
            namespace,
            view.record_store,
            lambda key: controller.record_changed(*key),
            label_selector=_selector(RECORD_LABELS),
            health=health,
        ),
    ]


@kopf.index(GROUP, VERSION, "computeenvironments", id=ENVIRONMENT_INDEX)
async def environment_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(_ns(namespace), name): copy.deepcopy(dict(body))}


@kopf.index("v1", "pods", labels=MANAGED_BY, id=POD_INDEX)
async def pod_index(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(_ns(namespace), labels.get("workflow", "")): observe.pod_record(body)}


# The children other than the stage pods (view.CHILD_INDEXES): the reconcile needs their names and spec
# hashes only.
async def child_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(_ns(namespace), labels.get("workflow", "")): observe.child_record(body)}


for _index_id, (_api_version, _plural) in CHILD_INDEXES.items():
    _group, _, _version = _api_version.rpartition("/")  # the core group is ""
    kopf.index(group=_group, version=_version, plural=_plural, labels=MANAGED_BY, id=_index_id)(child_index)


# ---- triggers: any change of a Workflow or of something it owns reconciles that Workflow ----------------


@kopf.on.event("v1", "configmaps", field="metadata.name", value=LISTED_SENTINEL, id="kopf_listed")
async def kopf_listed(memo: Any, **kwargs: Any) -> None:
    _controller(memo).bind(kwargs)  # binding is what says kopf's kinds are listed


@kopf.on.event(GROUP, VERSION, "computeenvironments")
async def environment_reconcile(
    namespace: str | None, name: str, meta: kopf.Meta, memo: Any, **kwargs: Any
) -> None:
    controller = _controller(memo)
    controller.bind(kwargs)
    controller.environment_changed(_ns(namespace), name, meta.get("generation"))


async def child_changed(namespace: str | None, labels: kopf.Labels, memo: Any, **kwargs: Any) -> None:
    controller = _controller(memo)
    controller.bind(kwargs)
    if labels.get("workflow"):
        controller.workflow_changed(_ns(namespace), labels["workflow"])


for _api_version, _plural in (("v1", "pods"), *CHILD_INDEXES.values()):
    _group, _, _version = _api_version.rpartition("/")
    kopf.on.event(group=_group, version=_version, plural=_plural, labels=MANAGED_BY, id=f"{_plural}_changed")(
        child_changed
    )
