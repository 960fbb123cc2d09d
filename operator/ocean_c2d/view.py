"""The operator's view of the cluster: kopf's indexes (live mappings its watches keep), and what they
mean for one Workflow (`Observed`, its peers, its environment).

Right after a write, the indexes lag behind our own change until its watch event arrives; the small
overlays below bridge exactly that gap and are dropped as soon as the watch shows the write. Nothing here
is state that a restart needs: on start, kopf lists everything before the first reconcile, so a restarted
operator resumes from the cluster alone.

The index names are constants shared with handlers.py (each kopf index is declared with `id=` one of
them): a renamed handler cannot silently leave an index empty, and `bind` fails loudly on a missing one.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from ocean_c2d import observe, retention, telemetry
from ocean_c2d.model import Environment, InvalidWorkflow, Observed, RawJSON, Workflow

WORKFLOW_INDEX = "workflow_index"  # (namespace, name) -> the Workflow's body, compact_workflow's copy
WORKFLOWS_BY_ENVIRONMENT_INDEX = "workflow_by_environment_index"  # (namespace, environment) -> names
ENVIRONMENT_INDEX = "environment_index"  # (namespace, name) -> the ComputeEnvironment's body
JOB_INDEX = "job_index"  # (namespace, workflow) -> observe.JobRecord
POD_INDEX = "pod_index"  # (namespace, workflow) -> observe.PodRecord
RECORD_INDEX = "results_record_index"  # (namespace, name) -> a results record's ConfigMap (retention.py)
# The children other than Jobs and pods (name and spec hash only): index name -> (apiVersion, plural).
CHILD_INDEXES: dict[str, tuple[str, str]] = {
    "configmap_index": ("v1", "configmaps"),
    "secret_index": ("v1", "secrets"),  # the record keeps the name and a hash, never the data
    "pvc_index": ("v1", "persistentvolumeclaims"),
    "networkpolicy_index": ("networking.k8s.io/v1", "networkpolicies"),
}
INDEXES = (
    WORKFLOW_INDEX,
    WORKFLOWS_BY_ENVIRONMENT_INDEX,
    ENVIRONMENT_INDEX,
    JOB_INDEX,
    POD_INDEX,
    RECORD_INDEX,
    *CHILD_INDEXES,
)
# How long a child we created may stay unseen by the watches before the view forgets it (it was created
# and deleted in between, and the watch never showed it).
CREATED_OVERLAY_SECONDS = 60.0

Ref = tuple[str, str]  # (kind, name)
WorkflowKey = tuple[str, str]  # (namespace, name)


class View:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.indexes: dict[str, Mapping[Any, Iterable[Any]]] = {}
        self._clock = clock
        # Our own status writes not yet shown by the watch: the versions we wrote over, and what we wrote.
        self._written: dict[WorkflowKey, tuple[frozenset[str], dict[str, Any]]] = {}
        self._created: dict[
            WorkflowKey, dict[Ref, tuple[float, observe.JobRecord | observe.ChildRecord]]
        ] = {}
        self._deleted: dict[WorkflowKey, set[Ref]] = {}
        # Each body parsed once per (uid, resourceVersion): a body at one version never changes, and
        # parsing every peer of an environment on every reconcile was most of the operator's CPU.
        self._workflow_models: dict[WorkflowKey, tuple[str, str, Workflow | str]] = {}
        self._environment_models: dict[WorkflowKey, tuple[str, Environment]] = {}

    def bind(self, handler_kwargs: Mapping[str, Any]) -> None:
        """Take kopf's indexes from a handler's keyword arguments (kopf passes every index to every
        handler, by its id). A missing one is a wiring bug: fail now, not with an empty view."""
        if len(self.indexes) == len(INDEXES):
            return
        missing = [name for name in INDEXES if name not in handler_kwargs]
        if missing:
            raise RuntimeError(f"kopf did not pass the indexes {missing}: handlers.py and view.py disagree")
        self.indexes = {name: handler_kwargs[name] for name in INDEXES}

    def values(self, index: str, key: Hashable) -> list[Any]:
        mapping = self.indexes.get(index)
        if mapping is None or key not in mapping:
            return []
        return list(mapping[key])

    def keys(self, index: str) -> list[Any]:
        return list(self.indexes.get(index, {}))

    # ---- Workflows and environments -------------------------------------------------------------------

    def workflow(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Workflow's body as we last know it: the watch's, or our own newer write."""
        key = (namespace, name)
        [indexed] = self.values(WORKFLOW_INDEX, key) or [None]
        if indexed is None:
            self._written.pop(key, None)
            self._workflow_models.pop(key, None)
            return None
        written = self._written.get(key)
        if written is not None:
            stale_versions, body = written
            if indexed["metadata"].get("resourceVersion") in stale_versions:
                return body  # the watch has not shown our own status write yet
            del self._written[key]
        result: dict[str, Any] = indexed
        return result

    def remember_written(
        self, namespace: str, name: str, read: dict[str, Any], written: dict[str, Any]
    ) -> None:
        """We wrote `written` over `read` (a body this view gave): while the watch shows `read`'s version,
        or one we wrote over before, `workflow()` answers `written`. Never the version the index shows
        now: by the time the write returned, the watch may already hold something newer (a user's stop)."""
        key = (namespace, name)
        versions = {read["metadata"].get("resourceVersion")}
        if key in self._written:  # `read` was our previous write, not yet shown by the watch
            versions |= self._written[key][0]
        # `written` is the API server's answer, the whole body: kept compact, as the index keeps it.
        self._written[key] = (frozenset(v for v in versions if v), compact_workflow(written))

    def model(self, namespace: str, name: str) -> Workflow | None:
        """The typed Workflow of `workflow()`'s body (None: gone); InvalidWorkflow when its spec cannot be
        read. Parsed once per version of the body."""
        body = self.workflow(namespace, name)
        if body is None:
            return None
        parsed = self._parsed(namespace, name, body)
        if isinstance(parsed, str):
            raise InvalidWorkflow(parsed)
        return parsed

    def _readable(self, namespace: str, name: str) -> Workflow | None:
        """`model`, or the Workflow's identity and status alone when its spec cannot be read."""
        body = self.workflow(namespace, name)
        if body is None:
            return None
        parsed = self._parsed(namespace, name, body)
        return Workflow.header(body) if isinstance(parsed, str) else parsed

    def _parsed(self, namespace: str, name: str, body: dict[str, Any]) -> Workflow | str:
        """The Workflow, or the InvalidWorkflow message, of `body`, from the cache when it holds this
        version (the model shares the body's nested values: nothing mutates either)."""
        key = (namespace, name)
        metadata = body.get("metadata") or {}
        uid, version = str(metadata.get("uid") or ""), str(metadata.get("resourceVersion") or "")
        cached = self._workflow_models.get(key)
        if cached is not None and version and cached[:2] == (uid, version):
            return cached[2]
        try:
            parsed: Workflow | str = Workflow.from_object(body)
        except InvalidWorkflow as error:
            parsed = error.message
        if version:
            self._workflow_models[key] = (uid, version, parsed)
        return parsed

    def forget_models(self) -> None:
        """Drop the parsed models of Workflows the index no longer holds (the resync's sweep: a deleted
        Workflow's model is dropped by `workflow()` when it is next asked for, or here)."""
        held = set(self.keys(WORKFLOW_INDEX))
        for key in [key for key in self._workflow_models if key not in held]:
            del self._workflow_models[key]
        environments = set(self.keys(ENVIRONMENT_INDEX))
        for key in [key for key in self._environment_models if key not in environments]:
            del self._environment_models[key]

    def workflows(self) -> list[Workflow]:
        """Every Workflow the view holds (unreadable ones by their identity and status alone)."""
        found = (self._readable(namespace, name) for namespace, name in self.keys(WORKFLOW_INDEX))
        return [workflow for workflow in found if workflow is not None]

    def levels(self) -> telemetry.ClusterLevels:
        """The cluster-state gauges of /metrics (called at every scrape, on the loop)."""
        environments = [
            (namespace, environment)
            for namespace, name in sorted(self.keys(ENVIRONMENT_INDEX))
            if (environment := self.environment_model(namespace, name)) is not None
        ]
        return telemetry.cluster_levels(self.workflows(), environments)

    def environment(self, namespace: str, name: str) -> dict[str, Any] | None:
        [body] = self.values(ENVIRONMENT_INDEX, (namespace, name)) or [None]
        return dict(body) if body is not None else None

    def environment_model(self, namespace: str, name: str) -> Environment | None:
        """The typed ComputeEnvironment (None: none of that name), parsed once per version."""
        [body] = self.values(ENVIRONMENT_INDEX, (namespace, name)) or [None]
        key = (namespace, name)
        if body is None:
            self._environment_models.pop(key, None)
            return None
        version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        cached = self._environment_models.get(key)
        if cached is not None and version and cached[0] == version:
            return cached[1]
        environment = Environment.from_object(dict(body))
        if version:
            self._environment_models[key] = (version, environment)
        return environment

    def peers(self, namespace: str, environment: str) -> list[Workflow]:
        """Every Workflow of `environment` that is not finished (the index keeps no finished one). One
        whose spec cannot be read still counts, by its status (it runs or waits like any other until its
        own reconcile ends it InvalidSpec)."""
        names = self.values(WORKFLOWS_BY_ENVIRONMENT_INDEX, (namespace, environment))
        found = (self._readable(namespace, n) for n in names)
        return [workflow for workflow in found if workflow is not None and not workflow.finished]

    # ---- results records (retention.py): they outlive their Workflows --------------------------------

    def record(self, namespace: str, name: str) -> dict[str, Any] | None:
        [body] = self.values(RECORD_INDEX, (namespace, name)) or [None]
        return dict(body) if body is not None else None

    def record_keys(self) -> list[tuple[str, str]]:
        return [(str(key[0]), str(key[1])) for key in self.keys(RECORD_INDEX)]

    def records(self, seal_key: bytes) -> list[retention.ResultRecord]:
        """Every results record the watches hold (in every watched namespace) that the operator sealed."""
        bodies = (self.record(namespace, name) for namespace, name in self.record_keys())
        return [
            r
            for body in bodies
            if body is not None and (r := retention.parse_record(body, seal_key)) is not None
        ]

    # ---- one Workflow's children ----------------------------------------------------------------------

    def observed(self, namespace: str, workflow: str, uid: str | None = None) -> Observed:
        """What `workflow` has: with its `uid`, only the objects it controls (see observe.observed)."""
        key = (namespace, workflow)
        jobs = self.values(JOB_INDEX, key)
        children = [c for index in CHILD_INDEXES for c in self.values(index, key)]
        present = {("Job", j.name) for j in jobs} | {(c.kind, c.name) for c in children}
        created = self._created.get(key, {})
        expired = self._clock() - CREATED_OVERLAY_SECONDS
        for ref in [ref for ref, (at, _) in created.items() if ref in present or at < expired]:
            del created[ref]  # the watch caught up
        if not created:
            self._created.pop(key, None)
        for _, record in created.values():
            if isinstance(record, observe.JobRecord):
                jobs.append(record)
            else:
                children.append(record)
        deleted = self._deleted.get(key, set())
        deleted &= present  # forget deletions the watch has shown
        if not deleted:
            self._deleted.pop(key, None)
        jobs = [j if ("Job", j.name) not in deleted else _deleting(j) for j in jobs]
        children = [c for c in children if (c.kind, c.name) not in deleted]
        return observe.observed(jobs, self.values(POD_INDEX, key), children, uid)

    def remember_children(
        self, namespace: str, workflow: str, created: Iterable[dict[str, Any]], deleted: Iterable[Ref]
    ) -> None:
        """Children we just created or deleted, until the watches show it."""
        key = (namespace, workflow)
        for manifest in created:
            ref = (manifest["kind"], manifest["metadata"]["name"])
            record = observe.job_record(manifest) if ref[0] == "Job" else observe.child_record(manifest)
            self._created.setdefault(key, {})[ref] = (self._clock(), record)
        deleted = set(deleted)
        if deleted:
            self._deleted.setdefault(key, set()).update(deleted)


# The free-form fields of a Workflow's spec (the CRD's x-kubernetes-preserve-unknown-fields): the schema
# bounds their keys but not their depth, so only the API server's object size limit bounds them, and a
# parsed JSON tree costs ~25 times its text. Only the ConfigMap's workflow.json reads them.
FREE_FORM_INPUT_FIELDS = ("userData",)
FREE_FORM_ALGORITHM_FIELDS = ("userData", "customData")


def compact_workflow(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the view keeps of a Workflow: a copy of `body` (kopf reuses its own) without
    metadata.managedFields (the API server's bookkeeping, as large as the spec), its free-form user data
    as RawJSON text. Everything the planner reads is there as it was; templates get the free-form data
    back byte for byte through model.dumps (render's `json` filter)."""
    compact = {key: copy.deepcopy(value) for key, value in body.items() if key not in ("metadata", "spec")}
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping):
        compact["metadata"] = {k: copy.deepcopy(v) for k, v in metadata.items() if k != "managedFields"}
    spec = body.get("spec")
    if isinstance(spec, Mapping):
        compact["spec"] = _compact_spec(spec)
    elif "spec" in body:
        compact["spec"] = copy.deepcopy(spec)
    return compact


def _compact_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    compact = {key: copy.deepcopy(value) for key, value in spec.items() if key not in ("inputs", "algorithm")}
    inputs = spec.get("inputs")
    if "inputs" in spec:
        compact["inputs"] = (
            [_freeze(item, FREE_FORM_INPUT_FIELDS) for item in inputs]
            if isinstance(inputs, list)
            else copy.deepcopy(inputs)
        )
    if "algorithm" in spec:
        compact["algorithm"] = _freeze(spec["algorithm"], FREE_FORM_ALGORITHM_FIELDS)
    return compact


def _freeze(item: Any, free_form: tuple[str, ...]) -> Any:
    """`item` (an input or the algorithm) copied, its `free_form` fields as RawJSON."""
    if not isinstance(item, Mapping):
        return copy.deepcopy(item)
    return {
        key: RawJSON.of(_plain(value)) if key in free_form else copy.deepcopy(value)
        for key, value in item.items()
    }


def release_bulk(body: Mapping[str, Any], compact: Mapping[str, Any]) -> None:
    """Shrink kopf's own parsed `body` to what `compact` (its compact_workflow) holds: no managedFields,
    the free-form data as the same RawJSON. On start kopf keeps every listed body until all watched
    kinds are listed (its indexes are complete before any handler runs): in full, a thousand Workflows
    of the largest size would cost ~25 GiB then. No handler after the index reads those fields."""
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)
    spec, compact_spec = body.get("spec"), compact.get("spec")
    if not isinstance(spec, dict) or not isinstance(compact_spec, dict):
        return
    inputs, compact_inputs = spec.get("inputs"), compact_spec.get("inputs")
    if isinstance(inputs, list) and isinstance(compact_inputs, list):
        for item, compact_item in zip(inputs, compact_inputs, strict=False):
            _swap(item, compact_item, FREE_FORM_INPUT_FIELDS)
    _swap(spec.get("algorithm"), compact_spec.get("algorithm"), FREE_FORM_ALGORITHM_FIELDS)


def _swap(item: Any, compact_item: Any, free_form: tuple[str, ...]) -> None:
    if isinstance(item, dict) and isinstance(compact_item, dict):
        for key in free_form:
            if key in item and key in compact_item:
                item[key] = compact_item[key]


def _plain(value: Any) -> Any:
    """A kopf mapping view as the dict it shows (json.dumps takes dicts and lists only)."""
    if isinstance(value, Mapping) and not isinstance(value, dict):
        return {key: _plain(child) for key, child in value.items()}
    return value


def _deleting(job: observe.JobRecord) -> observe.JobRecord:
    return observe.JobRecord(
        job.component, job.name, job.state, job.started, job.finished, job.failure_reason, deleting=True
    )
