"""Typed views of what the reconcile reads: Workflows, ComputeEnvironments, observed stage Jobs (pure).

The API objects arrive as dicts (the CRD schema already validated them); these frozen views pick out what
the pure core needs, so `reconcile.plan` never digs through raw dicts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ocean_c2d.status import Stage

GROUP = "oceanprotocol.com"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Container:
    image: str
    tag: str
    checksum: str | None
    entrypoint: str

    @property
    def reference(self) -> str:
        """image@checksum when a sha256 checksum pins it (as the original did), else image:tag."""
        if self.checksum and self.checksum.startswith("sha256:"):
            return f"{self.image}@{self.checksum}"
        return f"{self.image}:{self.tag}"


@dataclass(frozen=True)
class WorkflowSpec:
    environment: str
    owner: str
    inputs: tuple[dict[str, Any], ...]
    algorithm: dict[str, Any]
    container: Container
    agreement_id: str | None = None
    chain_id: int | None = None
    metadata_uri: str | None = None
    max_duration: int | None = None
    stop: bool = False

    @property
    def input_dids(self) -> list[str]:
        """The inputs' DIDs with their did:op: prefix (the notify payload's DID list)."""
        return [str(i["did"]) for i in self.inputs if i.get("did")]

    @property
    def algorithm_did(self) -> str | None:
        did = self.algorithm.get("did")
        return str(did) if did else None


@dataclass(frozen=True)
class Workflow:
    name: str
    namespace: str
    uid: str
    generation: int
    created: datetime
    spec: WorkflowSpec
    status: dict[str, Any]
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def stage(self) -> Stage | None:
        value = self.status.get("stage")
        return Stage(value) if value else None

    @property
    def finished(self) -> bool:
        return self.stage is Stage.FINISHED

    @property
    def admitted(self) -> bool:
        return self.stage not in (None, Stage.QUEUED)

    @property
    def queue_key(self) -> tuple[datetime, str]:
        """First come, first served: creation time, then name to break ties deterministically."""
        return (self.created, self.name)

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> Workflow:
        metadata = obj["metadata"]
        spec = obj.get("spec", {})
        algorithm = dict(spec.get("algorithm", {}))
        container = algorithm.get("container", {})
        return cls(
            name=metadata["name"],
            namespace=metadata.get("namespace", ""),
            uid=metadata.get("uid", ""),
            generation=int(metadata.get("generation", 1)),
            created=parse_time(metadata.get("creationTimestamp")) or datetime.min.replace(tzinfo=UTC),
            labels=dict(metadata.get("labels") or {}),
            annotations=dict(metadata.get("annotations") or {}),
            status=dict(obj.get("status") or {}),
            spec=WorkflowSpec(
                environment=spec.get("environment", ""),
                owner=spec.get("owner", ""),
                inputs=tuple(spec.get("inputs") or ()),
                algorithm=algorithm,
                container=Container(
                    image=container.get("image", ""),
                    tag=container.get("tag") or "latest",
                    checksum=container.get("checksum"),
                    entrypoint=container.get("entrypoint", ""),
                ),
                agreement_id=spec.get("agreementId"),
                chain_id=spec.get("chainId"),
                metadata_uri=(spec.get("output") or {}).get("metadataUri"),
                max_duration=spec.get("maxDuration"),
                stop=bool(spec.get("stop", False)),
            ),
        )


@dataclass(frozen=True)
class FilterPolicy:
    enabled: bool = False
    max_output_bytes: int | None = None
    forbidden_extensions: tuple[str, ...] = ()
    block_copied_inputs: bool = True


@dataclass(frozen=True)
class Environment:
    """A ComputeEnvironment: what one algorithm pod gets, and how many may run at once."""

    name: str
    n_cpu: int = 1
    cpu_type: str = ""
    n_gpu: int = 0
    gpu_ram: float = 0
    gpu_type: str = ""
    ram_gb: float = 1
    disk_gb: float = 1
    price_minute: float = 0
    description: str = ""
    max_jobs: int = 10
    max_job_duration: int = 3600
    storage_expiry: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] = field(default_factory=dict)  # a pod affinity, as the pod spec has it
    allow_network: bool = False
    storage_class_name: str | None = None
    filter: FilterPolicy = field(default_factory=FilterPolicy)

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> Environment:
        spec = obj.get("spec", {})
        policy = spec.get("filter") or {}
        return cls(
            name=obj["metadata"]["name"],
            n_cpu=int(spec.get("nCPU", 1)),
            cpu_type=spec.get("cpuType", ""),
            n_gpu=int(spec.get("nGPU", 0)),
            gpu_ram=float(spec.get("gpuRam", 0)),
            gpu_type=spec.get("gpuType", ""),
            ram_gb=float(spec.get("ramGB", 1)),
            disk_gb=float(spec.get("diskGB", 1)),
            price_minute=float(spec.get("priceMinute", 0)),
            description=spec.get("description", ""),
            max_jobs=int(spec.get("maxJobs", 10)),
            max_job_duration=int(spec.get("maxJobDuration", 3600)),
            storage_expiry=int(spec.get("storageExpiry", 0)),
            node_selector=dict(spec.get("nodeSelector") or {}),
            tolerations=tuple(spec.get("tolerations") or ()),
            affinity=dict(spec.get("affinity") or {}),
            allow_network=bool(spec.get("allowNetwork", False)),
            storage_class_name=spec.get("storageClassName") or None,
            filter=FilterPolicy(
                enabled=bool(policy.get("enabled", False)),
                max_output_bytes=policy.get("maxOutputBytes"),
                forbidden_extensions=tuple(policy.get("forbiddenExtensions") or ()),
                block_copied_inputs=bool(policy.get("blockCopiedInputs", True)),
            ),
        )


class JobState(enum.Enum):
    PENDING = "Pending"  # created, not finished (scheduling, pulling, running)
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class StageJob:
    """What the reconcile needs to know of one observed stage Job and its pod."""

    name: str
    state: JobState
    started: datetime | None = None
    finished: datetime | None = None
    failure_reason: str | None = None  # the Job's Failed condition reason, e.g. DeadlineExceeded
    exit_code: int | None = None  # the pod's container exit code, when it terminated
    termination_reason: str | None = None  # e.g. OOMKilled, Error, Completed
    termination_message: str | None = None
    waiting_reason: str | None = None  # e.g. ErrImagePull, ImagePullBackOff: never started
    deleting: bool = False
    init_failure: str | None = None  # the init container that ended non-zero (e.g. the isolation check)


@dataclass(frozen=True)
class Observed:
    """The children of one Workflow as the operator's watches last saw them."""

    jobs: dict[str, StageJob] = field(default_factory=dict)  # by stage name: configure, algorithm, ...
    others: frozenset[tuple[str, str]] = frozenset()  # (kind, name) of the non-Job children present
    hashes: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> spec hash annotation
    # Stages with a pod whose containers may still run (not Succeeded or Failed, deleting or not). Its
    # processes can still write to the data volume, so the next stage waits until it is gone.
    running_pods: frozenset[str] = frozenset()
