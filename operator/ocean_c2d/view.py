"""The operator's view of the cluster: live mappings its watches keep (kopf's indexes for the small kinds,
the informers' stores for the kinds that grow with history: Workflows and results records), and what
they mean for one Workflow (`Observed`, its peers, its environment).

Right after a write, the indexes lag behind our own change until its watch event arrives; the small
overlays below bridge exactly that gap and are dropped as soon as the watch shows the write. Nothing here
is state that a restart needs: on start, every watched kind is listed before the first reconcile
(Controller.listed), so a restarted operator resumes from the cluster alone.

What is kept of each Workflow is what its reconcile needs: a running or waiting one as compact_workflow's
copy (the templates read its spec), a finished one as FinishedWorkflow (identity, environment, the DIDs
a pending notification names, its status), as JSON text until asked for: 10,000 finished Workflows cost
tens of MB, not hundreds.

The index names are constants shared with handlers.py (each kopf index is declared with `id=` one of
them): a renamed handler cannot silently leave an index empty, and `bind` fails loudly on a missing one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ocean_c2d import observe, retention, telemetry
from ocean_c2d.model import Environment, InvalidWorkflow, Observed, RawJSON, Workflow
from ocean_c2d.status import Stage

WORKFLOW_INDEX = "workflow_index"  # (namespace, name) -> its WorkflowEntry (WorkflowStore)
WORKFLOWS_BY_ENVIRONMENT_INDEX = "workflow_by_environment_index"  # (namespace, environment) -> names
ENVIRONMENT_INDEX = "environment_index"  # (namespace, name) -> the ComputeEnvironment's body
POD_INDEX = "pod_index"  # (namespace, workflow) -> observe.PodRecord
RECORD_INDEX = "results_record_index"  # (namespace, name) -> a results record's ConfigMap (retention.py)
# The children other than the stage pods (name and spec hash only): index name -> (apiVersion, plural).
CHILD_INDEXES: dict[str, tuple[str, str]] = {
    "configmap_index": ("v1", "configmaps"),
    "secret_index": ("v1", "secrets"),  # the record keeps the name and a hash, never the data
    "pvc_index": ("v1", "persistentvolumeclaims"),
    "networkpolicy_index": ("networking.k8s.io/v1", "networkpolicies"),
}
# The indexes kopf keeps (handlers.py declares each with `id=` one of them); the others are the informers'
# stores (WorkflowStore, RecordStore), which the view holds from the start.
KOPF_INDEXES = (ENVIRONMENT_INDEX, POD_INDEX, *CHILD_INDEXES)
INDEXES = (WORKFLOW_INDEX, WORKFLOWS_BY_ENVIRONMENT_INDEX, RECORD_INDEX, *KOPF_INDEXES)
# How long a child we created may stay unseen by the watches before the view forgets it (it was created
# and deleted in between, and the watch never showed it).
CREATED_OVERLAY_SECONDS = 60.0

Ref = tuple[str, str]  # (kind, name)
WorkflowKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class FinishedWorkflow:
    """What the view keeps of a finished Workflow: what its reconcile (conditions, cleanup, TTL), its
    results record, a pending stop notification and the metrics read, the body as compact JSON text."""

    namespace: str
    name: str
    resource_version: str
    environment: str
    text: str

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.text)
        return body

    def header(self) -> Workflow:
        """Identity, environment and stage only (the metrics' counts), without parsing the text."""
        return Workflow.header(
            {
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"environment": self.environment},
                "status": {"stage": Stage.FINISHED.value},
            }
        )


WorkflowEntry = dict[str, Any] | FinishedWorkflow


def _finished(body: Mapping[str, Any]) -> bool:
    status = body.get("status")
    return isinstance(status, Mapping) and status.get("stage") == Stage.FINISHED.value


def finished_workflow(body: Mapping[str, Any]) -> FinishedWorkflow:
    """A finished Workflow's entry. No labels or annotations (read only before admission and by the
    templates), no spec but its environment, owner, stop and the DIDs (the stop notification's payload)."""
    metadata = body.get("metadata") or {}
    spec = body.get("spec") if isinstance(body.get("spec"), Mapping) else {}
    assert isinstance(spec, Mapping)
    kept_metadata = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp")
    trimmed: dict[str, Any] = {k: spec[k] for k in ("environment", "owner", "stop") if k in spec}
    inputs = spec.get("inputs")
    if isinstance(inputs, list):
        trimmed["inputs"] = [
            {"did": item["did"]} for item in inputs if isinstance(item, Mapping) and item.get("did")
        ]
    algorithm = spec.get("algorithm")
    if isinstance(algorithm, Mapping):
        trimmed["algorithm"] = {"did": algorithm["did"]} if algorithm.get("did") else {}
    kept = {
        **{key: body[key] for key in ("apiVersion", "kind") if key in body},
        "metadata": {k: _plain(metadata[k]) for k in kept_metadata if k in metadata},
        "spec": _plain(trimmed),
        "status": _plain(body.get("status") or {}),
    }
    environment = spec.get("environment")
    return FinishedWorkflow(
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        resource_version=str(metadata.get("resourceVersion") or ""),
        environment=environment if isinstance(environment, str) else "",
        text=json.dumps(kept, separators=(",", ":")),
    )


def workflow_entry(body: Mapping[str, Any]) -> WorkflowEntry:
    """What the view keeps of a Workflow: compact_workflow's copy while it runs or waits, a
    FinishedWorkflow once finished."""
    return finished_workflow(body) if _finished(body) else compact_workflow(body)


def entry_version(entry: WorkflowEntry) -> str:
    if isinstance(entry, FinishedWorkflow):
        return entry.resource_version
    return str((entry.get("metadata") or {}).get("resourceVersion") or "")


def entry_body(entry: WorkflowEntry) -> dict[str, Any]:
    return entry.body() if isinstance(entry, FinishedWorkflow) else entry


class WorkflowStore:
    """The Workflows' informer.Sink: the two indexes the view reads, WORKFLOW_INDEX ((namespace, name) ->
    one entry) and WORKFLOWS_BY_ENVIRONMENT_INDEX ((namespace, environment) -> the names of those not
    finished: every admission reads its environment's, and finished ones would make it grow with the
    environment's history). A finished Workflow is still reconciled on its own events and at the resync
    (its results record follows the environment's storageExpiry)."""

    def __init__(self) -> None:
        self.workflows: dict[WorkflowKey, tuple[WorkflowEntry]] = {}
        self.by_environment: dict[tuple[str, str], dict[str, None]] = {}
        self._environment_of: dict[WorkflowKey, str] = {}
        # The finished entries by group, counted as they come and go: a scrape reads the counts instead of
        # walking every finished Workflow (View.levels).
        self.finished = telemetry.FinishedCounts()

    def __len__(self) -> int:
        return len(self.workflows)

    def entry(self, obj: dict[str, Any]) -> WorkflowEntry:
        return workflow_entry(obj)

    def replace(self, entries: dict[WorkflowKey, Any]) -> list[WorkflowKey]:
        changed = [key for key in self.workflows if key not in entries]
        for key in changed:
            self.remove(key)
        for key, entry in entries.items():
            old = self.workflows.get(key)
            if old is None or entry_version(old[0]) != entry_version(entry) or not entry_version(entry):
                changed.append(key)
            self.put(key, entry)
        return changed

    def put(self, key: WorkflowKey, entry: WorkflowEntry) -> None:
        self._unlink(key)
        self.workflows[key] = (entry,)
        if isinstance(entry, FinishedWorkflow):
            self.finished.add(entry.namespace, entry.environment)
        else:
            environment = (entry.get("spec") or {}).get("environment", "")
            environment = environment if isinstance(environment, str) else ""
            self.by_environment.setdefault((key[0], environment), {})[key[1]] = None
            self._environment_of[key] = environment

    def remove(self, key: WorkflowKey) -> None:
        self._unlink(key)
        self.workflows.pop(key, None)

    def _unlink(self, key: WorkflowKey) -> None:
        held = self.workflows.get(key)
        if held is not None and isinstance(held[0], FinishedWorkflow):
            self.finished.discard(held[0].namespace, held[0].environment)
        environment = self._environment_of.pop(key, None)
        if environment is None:
            return
        names = self.by_environment.get((key[0], environment))
        if names is not None:
            names.pop(key[1], None)
            if not names:
                del self.by_environment[(key[0], environment)]


class RecordStore:
    """The results records' informer.Sink (RECORD_INDEX): name and data of each, all the expiry reads."""

    def __init__(self) -> None:
        self.records: dict[WorkflowKey, tuple[dict[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def entry(self, obj: dict[str, Any]) -> dict[str, Any]:
        metadata = obj.get("metadata") or {}
        name, namespace = str(metadata.get("name") or ""), str(metadata.get("namespace") or "")
        return {"metadata": {"name": name, "namespace": namespace}, "data": dict(obj.get("data") or {})}

    def replace(self, entries: dict[WorkflowKey, Any]) -> list[WorkflowKey]:
        changed = [key for key in self.records if key not in entries]
        for key in changed:
            del self.records[key]
        for key, entry in entries.items():
            old = self.records.get(key)
            if old is None or old[0] != entry:
                changed.append(key)
            self.records[key] = (entry,)
        return changed

    def put(self, key: WorkflowKey, entry: dict[str, Any]) -> None:
        self.records[key] = (entry,)

    def remove(self, key: WorkflowKey) -> None:
        self.records.pop(key, None)


class View:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.workflow_store = WorkflowStore()
        self.record_store = RecordStore()
        self.indexes: dict[str, Mapping[Any, Iterable[Any]]] = {
            WORKFLOW_INDEX: self.workflow_store.workflows,
            WORKFLOWS_BY_ENVIRONMENT_INDEX: self.workflow_store.by_environment,
            RECORD_INDEX: self.record_store.records,
        }
        self._bound = False
        self._clock = clock
        # Our own status writes not yet shown by the watch: the versions we wrote over, and what we wrote.
        self._written: dict[WorkflowKey, tuple[frozenset[str], WorkflowEntry]] = {}
        self._created: dict[
            WorkflowKey, dict[Ref, tuple[float, observe.PodRecord | observe.ChildRecord]]
        ] = {}
        self._deleted: dict[WorkflowKey, set[Ref]] = {}
        # Each body parsed once per (uid, resourceVersion): a body at one version never changes, and
        # parsing every peer of an environment on every reconcile was most of the operator's CPU.
        self._workflow_models: dict[WorkflowKey, tuple[str, str, Workflow | str]] = {}
        self._environment_models: dict[WorkflowKey, tuple[str, Environment]] = {}

    def bind(self, handler_kwargs: Mapping[str, Any]) -> None:
        """Take kopf's indexes from a handler's keyword arguments (kopf passes every index to every
        handler, by its id; any of INDEXES given replaces the view's own, as tests do). A missing one is a
        wiring bug: fail now, not with an empty view."""
        if self._bound:
            return
        missing = [name for name in KOPF_INDEXES if name not in handler_kwargs]
        if missing:
            raise RuntimeError(f"kopf did not pass the indexes {missing}: handlers.py and view.py disagree")
        self.indexes.update({name: handler_kwargs[name] for name in INDEXES if name in handler_kwargs})
        self._bound = True

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
            stale_versions, entry = written
            if _version_of(indexed) in stale_versions:
                return entry_body(entry)  # the watch has not shown our own status write yet
            del self._written[key]
        return _body_of(indexed)

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
        # `written` is the API server's answer, the whole body: kept as the index keeps it.
        self._written[key] = (frozenset(v for v in versions if v), workflow_entry(written))

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
        # A finished Workflow is parsed when asked for (its trimmed body is small): caching every one
        # would keep as many models as the history has Workflows.
        if version and not _finished(body):
            self._workflow_models[key] = (uid, version, parsed)
        else:
            self._workflow_models.pop(key, None)
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
        index = self.indexes.get(WORKFLOW_INDEX, {})
        found: list[Workflow | None] = []
        for namespace, name in self.keys(WORKFLOW_INDEX):
            entries = list(index.get((namespace, name), ()))
            if (
                entries
                and isinstance(entries[0], FinishedWorkflow)
                and (namespace, name) not in self._written
            ):
                found.append(entries[0].header())  # the metrics' counts: no need to parse it
            else:
                found.append(self._readable(namespace, name))
        return [workflow for workflow in found if workflow is not None]

    def levels(self) -> telemetry.ClusterLevels:
        """The cluster-state gauges of /metrics (called at every scrape, on the loop): the same numbers as
        from `workflows()`, but finished Workflows come as the store's counts, not one by one (bar those
        our own write overlays), so the scrape costs what the unfinished ones cost."""
        environments = [
            (namespace, environment)
            for namespace, name in sorted(self.keys(ENVIRONMENT_INDEX))
            if (environment := self.environment_model(namespace, name)) is not None
        ]
        store = self.workflow_store
        if (
            self.indexes.get(WORKFLOW_INDEX) is not store.workflows
            or self.indexes.get(WORKFLOWS_BY_ENVIRONMENT_INDEX) is not store.by_environment
        ):  # indexes a test gave instead of the store's: no counts kept for them
            return telemetry.cluster_levels(self.workflows(), environments)
        finished = dict(store.finished.counts)
        keys = [(namespace, name) for (namespace, _), names in store.by_environment.items() for name in names]
        for key in list(self._written):
            held = store.workflows.get(key)
            if held is not None and isinstance(held[0], FinishedWorkflow):  # read through the overlay
                finished[(held[0].namespace, held[0].environment)] -= 1
                keys.append(key)
        found = (self._readable(namespace, name) for namespace, name in keys)
        return telemetry.cluster_levels([w for w in found if w is not None], environments, finished)

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
        pods = self.values(POD_INDEX, key)
        children = [c for index in CHILD_INDEXES for c in self.values(index, key)]
        present = {("Pod", p.name) for p in pods} | {(c.kind, c.name) for c in children}
        created = self._created.get(key, {})
        expired = self._clock() - CREATED_OVERLAY_SECONDS
        for ref in [ref for ref, (at, _) in created.items() if ref in present or at < expired]:
            del created[ref]  # the watch caught up
        if not created:
            self._created.pop(key, None)
        for _, record in created.values():
            if isinstance(record, observe.PodRecord):
                pods.append(record)
            else:
                children.append(record)
        deleted = self._deleted.get(key, set())
        deleted &= present  # forget deletions the watch has shown
        if not deleted:
            self._deleted.pop(key, None)
        pods = [p if ("Pod", p.name) not in deleted else dataclasses.replace(p, deleting=True) for p in pods]
        children = [c for c in children if (c.kind, c.name) not in deleted]
        return observe.observed(pods, children, uid)

    def remember_children(
        self, namespace: str, workflow: str, created: Iterable[dict[str, Any]], deleted: Iterable[Ref]
    ) -> None:
        """Children we just created or deleted, until the watches show it."""
        key = (namespace, workflow)
        for manifest in created:
            ref = (manifest["kind"], manifest["metadata"]["name"])
            record = (
                # Newer than any pod the watch has shown: a replacement pod is the stage's newest.
                dataclasses.replace(observe.pod_record(manifest), created=datetime.now(UTC))
                if ref[0] == "Pod"
                else observe.child_record(manifest)
            )
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


def _plain(value: Any) -> Any:
    """A kopf mapping view as the dict it shows (json.dumps takes dicts and lists only)."""
    if isinstance(value, Mapping) and not isinstance(value, dict):
        return {key: _plain(child) for key, child in value.items()}
    return value


def _version_of(entry: Any) -> str | None:
    """The resourceVersion of an index entry (a body, or a FinishedWorkflow)."""
    if isinstance(entry, FinishedWorkflow):
        return entry.resource_version
    version = (entry.get("metadata") or {}).get("resourceVersion")
    return str(version) if version is not None else None


def _body_of(entry: Any) -> dict[str, Any]:
    body: dict[str, Any] = entry.body() if isinstance(entry, FinishedWorkflow) else entry
    return body
