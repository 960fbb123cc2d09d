"""What must expire, recorded where it outlives the Workflow (pure: no I/O).

A Workflow's published results are deleted (S3) or unpinned (a kubo node) when they expire, and the
uploads of a publish that did not finish are removed at once. The Workflow object cannot carry that
promise: its TTL, or a user, may delete it first. So the operator keeps one *results record* per
Workflow (by uid): a ConfigMap in the Workflow's namespace, labelled as the operator's, NOT owned by the
Workflow (the garbage collector leaves it), holding the S3 key prefix, the IPFS CIDs and when they are
due. Its life:

    publish starts   -> Publishing  (nothing due while the Workflow lives; gone with it: clean now)
    publish succeeds -> Published   (due at the results' expiresAt; no expiry: no record)
    publish fails    -> Failed      (due now: whatever it uploaded goes)
    done             -> the operator writes the Workflow's resultsExpiredAt (if it still exists), then
                        deletes the record

Records are sealed: an HMAC, under a key only the operator holds (derived from its private key), over
their data. Whoever may write ConfigMaps in a watched namespace cannot forge one to have the operator
delete or unpin someone else's results: an unsealed or altered record is ignored.

The record, not the Workflow, drives the expiry: its watch event and the work queue's timed wake-up at
its due time. A CID stays pinned while any other live record names it (IPFS content is shared by hash).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ocean_c2d.identity import MANAGED_BY
from ocean_c2d.model import PUBLISH, Workflow
from ocean_c2d.status import Stage, WorkflowStatus
from ocean_c2d.times import parse_time

# The label that marks a results record (besides managed-by); its watch selects on both.
RECORD_KEY = "ocean-c2d/record"
RECORD_LABELS = {**MANAGED_BY, RECORD_KEY: "results"}
RECORD_PREFIX = "ocean-c2d-results-"


class State(enum.StrEnum):
    PUBLISHING = "Publishing"
    PUBLISHED = "Published"
    FAILED = "Failed"


@dataclass(frozen=True)
class ResultStores:
    """Where the operator's settings say results go, as far as expiring them is concerned."""

    s3_bucket: str | None = None  # AWS_BUCKET_OUTPUT: objects under the Workflow's prefix are deleted
    ipfs_prefix: str | None = None  # the normalised IPFS_OUTPUT_PREFIX, when the operator unpins (kubo)


@dataclass(frozen=True)
class ResultRecord:
    namespace: str
    workflow: str
    uid: str
    state: State
    expires_at: int | None = None  # Unix seconds; None: not due while the Workflow lives (Publishing)
    s3_bucket: str | None = None
    s3_prefix: str | None = None  # "<namespace>/<name>/<uid>/": the publish step's RESULTS_PREFIX
    cids: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return record_name(self.uid)


def record_name(uid: str) -> str:
    return f"{RECORD_PREFIX}{uid}"


def results_prefix(namespace: str, name: str, uid: str) -> str:
    """The S3 key prefix of one Workflow's uploads, as the publish pod's RESULTS_PREFIX sets it, with
    the "/" that keeps `a/b/<uid>` from matching anything but that Workflow's keys."""
    return f"{namespace}/{name}/{uid}/"


def cid_of(url: str, prefix: str) -> str | None:
    """The directory CID of an IPFS result URL "<prefix><cid>/<filename>" (see storage.ipfs)."""
    if not url.startswith(prefix):
        return None
    return url[len(prefix) :].split("/", 1)[0] or None


def wanted_record(
    workflow: Workflow, status: WorkflowStatus, stores: ResultStores, storage_expiry_hours: int = 0
) -> ResultRecord | None:
    """The record `workflow` needs given its (new) `status`; None when nothing of it must expire."""
    if not stores.s3_bucket and not stores.ipfs_prefix:
        return None
    publish = (status.get("stages") or {}).get(PUBLISH) or {}
    if not (publish.get("podName") or publish.get("jobName")) or status.get("resultsExpiredAt"):
        return None  # publish never started (nothing uploaded), or its results are gone already
    base = ResultRecord(
        namespace=workflow.namespace,
        workflow=workflow.name,
        uid=workflow.uid,
        state=State.PUBLISHING,
        s3_bucket=stores.s3_bucket,
        s3_prefix=results_prefix(workflow.namespace, workflow.name, workflow.uid)
        if stores.s3_bucket
        else None,
    )
    if status.get("stage") != Stage.FINISHED.value:
        return base
    if "results" not in status:
        # Publish ended without a result list (failed, stopped, deleted): its uploads go now.
        finished = parse_time(publish.get("finishedAt") or status.get("finishedAt"))
        due = int(finished.timestamp()) if finished is not None else 0
        return dataclasses.replace(base, state=State.FAILED, expires_at=due)
    results = status.get("results") or []
    expiring = [int(r["expiresAt"]) for r in results if isinstance(r.get("expiresAt"), int)]
    expires = max(expiring) if expiring else _manifest_expiry(status, publish, storage_expiry_hours)
    if expires is None:
        return None  # kept for ever: nothing to record
    prefix = stores.ipfs_prefix
    cids = (
        tuple(dict.fromkeys(c for r in results if (c := cid_of(str(r.get("url", "")), prefix)) is not None))
        if prefix
        else ()
    )
    return dataclasses.replace(base, state=State.PUBLISHED, expires_at=expires, cids=cids)


def _manifest_expiry(status: WorkflowStatus, publish: Mapping[str, Any], hours: int) -> int | None:
    """Too many results for the termination message: the list is in a manifest the operator does not
    read, so the expiry is the environment's storageExpiry after publish ended (S3's rule)."""
    finished = parse_time(publish.get("finishedAt"))
    if not status.get("resultsManifest") or hours <= 0 or finished is None:
        return None
    return int(finished.timestamp()) + hours * 3600


def seal(data: dict[str, str], key: bytes) -> str:
    """The HMAC-SHA256 of a record's data (all but the seal), canonically encoded."""
    text = json.dumps({k: v for k, v in data.items() if k != "seal"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def build_record(record: ResultRecord, key: bytes) -> dict[str, Any]:
    """The ConfigMap of `record`, sealed with `key`. Not owned by the Workflow: it must outlive it."""
    data = {
        "workflow": record.workflow,
        "uid": record.uid,
        "state": record.state.value,
        "cids": json.dumps(list(record.cids)),
    }
    if record.expires_at is not None:
        data["expiresAt"] = str(record.expires_at)
    if record.s3_bucket and record.s3_prefix:
        data["s3Bucket"] = record.s3_bucket
        data["s3Prefix"] = record.s3_prefix
    data["seal"] = seal(data, key)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": record.name, "namespace": record.namespace, "labels": dict(RECORD_LABELS)},
        "data": data,
    }


def parse_record(body: dict[str, Any], key: bytes) -> ResultRecord | None:
    """The record a ConfigMap holds; None when it is not one the operator sealed with `key` (or cannot
    be read): such a ConfigMap is left alone."""
    metadata = body.get("metadata") or {}
    data = body.get("data") or {}
    if not key or not hmac.compare_digest(str(data.get("seal", "")), seal(dict(data), key)):
        return None
    try:
        cids = json.loads(data.get("cids") or "[]")
        expires = data.get("expiresAt")
        record = ResultRecord(
            namespace=str(metadata.get("namespace") or ""),
            workflow=str(data["workflow"]),
            uid=str(data["uid"]),
            state=State(data["state"]),
            expires_at=int(expires) if expires is not None else None,
            s3_bucket=data.get("s3Bucket") or None,
            s3_prefix=data.get("s3Prefix") or None,
            cids=tuple(str(c) for c in cids if isinstance(c, str)),
        )
    except (KeyError, TypeError, ValueError):
        return None
    if metadata.get("name") != record.name:
        return None  # a record names its own uid: anything else was not written by the operator
    if record.s3_prefix is not None and record.s3_prefix != results_prefix(
        record.namespace, record.workflow, record.uid
    ):
        return None  # the prefix is always derived, never trusted: nothing outside it is ever deleted
    return record


def due_in(record: ResultRecord, workflow_alive: bool, now: float) -> float | None:
    """Seconds until `record` is due (0: now); None: not before an event (its Workflow still
    publishing)."""
    if record.state is State.PUBLISHING:
        return None if workflow_alive else 0.0
    if record.expires_at is None:
        return 0.0
    return max(0.0, record.expires_at - now)


def unpinnable(record: ResultRecord, others: Iterable[ResultRecord]) -> tuple[str, ...]:
    """The CIDs of `record` no other live record names: shared content stays pinned for the others."""
    shared = {cid for other in others if other.uid != record.uid for cid in other.cids}
    return tuple(cid for cid in record.cids if cid not in shared)


def record_data_differs(current: dict[str, Any] | None, wanted: ResultRecord, key: bytes) -> bool:
    """Whether the observed ConfigMap body says something else than `wanted`."""
    if current is None:
        return True
    observed: dict[str, Any] = dict(current.get("data") or {})
    desired: dict[str, Any] = build_record(wanted, key)["data"]
    return observed != desired
