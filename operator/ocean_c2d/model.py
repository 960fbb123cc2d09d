"""The vocabulary of the operator (pure): typed views of what the reconcile reads (Workflows,
ComputeEnvironments, observed stage pods), and the words of its answer (the Plan, and the Changes the
I/O shell sends).

The API objects arrive as dicts (the CRD schema already validated them); these frozen views pick out what
the pure core needs, so `reconcile.plan` never digs through raw dicts. Everything here is shared by the
planner, the templates, the settings and the shell, so none of them needs to import another to talk.
"""

from __future__ import annotations

import enum
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from ocean_c2d.addresses import EgressValues
from ocean_c2d.status import Stage, WorkflowStatus
from ocean_c2d.times import parse_time

GROUP = "oceanprotocol.com"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# The stages that run a pod, by the name their pod, its label `component` and `status.stages` record carry.
CONFIGURE, ALGORITHM, FILTER, PUBLISH = "configure", "algorithm", "filter", "publish"
STAGE_OF_JOB = {
    CONFIGURE: Stage.CONFIGURING,
    ALGORITHM: Stage.RUNNING_ALGORITHM,
    FILTER: Stage.FILTERING,
    PUBLISH: Stage.PUBLISHING,
}
# The status stage -> the pod stage (and status.stages record) that runs during it.
JOB_OF_STAGE: dict[str, str] = {stage.value: job for job, stage in STAGE_OF_JOB.items()}


class InvalidWorkflow(Exception):  # noqa: N818 (the issue's and the docs' name for it)
    """A permanent failure: this Workflow can never be run as written (a template cannot render it, the
    API server rejects a child made from it, a field cannot be read). It ends InvalidSpec (code 90)
    instead of being retried; `message` names the field or object at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class RawJSON:
    """Free-form user data (userData, customData) kept as the JSON text `json.dumps` gives it. Parsed, a
    JSON tree costs Python ~25 times its text (a dict per `{}`): the operator's view holds this instead
    (view.compact_workflow), and `dumps` writes it back byte for byte where a template needs it."""

    text: str

    @classmethod
    def of(cls, value: Any) -> RawJSON:
        return value if isinstance(value, RawJSON) else cls(json.dumps(value))

    def value(self) -> Any:
        return json.loads(self.text)


# Stands for a RawJSON while `dumps` serialises the rest. The per-process random part keeps a user's own
# string from ever being taken for one.
_RAW_MARK = f"\x00ocean-c2d-raw-{secrets.token_hex(8)}:"
_RAW_MARKED = re.compile(re.escape(json.dumps(_RAW_MARK)[:-1]) + r'(\d+)"')


def dumps(value: Any) -> str:
    """`json.dumps(value)` where every RawJSON inside counts as the value it holds: the same text as
    with the parsed tree, without ever building that tree."""
    fragments: list[str] = []

    def mark(item: Any) -> Any:
        if isinstance(item, RawJSON):
            fragments.append(item.text)
            return f"{_RAW_MARK}{len(fragments) - 1}"
        if isinstance(item, dict):
            return {key: mark(child) for key, child in item.items()}
        if isinstance(item, list | tuple):
            return [mark(child) for child in item]
        return item

    text = json.dumps(mark(value))
    if not fragments:
        return text
    return _RAW_MARKED.sub(lambda match: fragments[int(match[1])], text)


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
    status: WorkflowStatus
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
        """The typed view; InvalidWorkflow when a field cannot be read (the CRD schema should prevent it,
        but an older schema, or a client that bypassed it, may have stored anything)."""
        try:
            return cls._parse(obj)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise InvalidWorkflow(
                f"cannot read the Workflow's spec: {type(error).__name__}: {error}"
            ) from error

    @classmethod
    def header(cls, obj: dict[str, Any]) -> Workflow:
        """Identity and status only, with an empty spec: enough to end a Workflow whose spec cannot be
        read (`from_object` failed), so it can still be given a reason and an Event."""
        spec = obj.get("spec")
        environment = spec.get("environment") if isinstance(spec, dict) else None
        return cls(
            **_identity(obj),
            spec=WorkflowSpec(
                environment=environment if isinstance(environment, str) else "",
                owner="",
                inputs=(),
                algorithm={},
                container=Container(image="", tag="latest", checksum=None, entrypoint=""),
            ),
        )

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> Workflow:
        metadata = obj["metadata"]
        spec = obj.get("spec", {})
        algorithm = dict(spec.get("algorithm", {}))
        container = algorithm.get("container", {})
        _expect(spec.get("inputs") or [], list, "spec.inputs")
        for n, item in enumerate(spec.get("inputs") or []):
            _expect(item, dict, f"spec.inputs[{n}]")
        _expect(container, dict, "spec.algorithm.container")
        _expect(spec.get("maxDuration"), (int, type(None)), "spec.maxDuration")
        _expect(spec.get("chainId"), (int, type(None)), "spec.chainId")
        for key in ("image", "tag"):
            if any(c.isspace() for c in str(container.get(key) or "")):
                # The API server would refuse its pod; say why in the Workflow's own words.
                raise ValueError(f"spec.algorithm.container.{key} must not contain whitespace")
        return cls(
            **_identity(obj),
            labels=dict(metadata.get("labels") or {}),
            annotations=dict(metadata.get("annotations") or {}),
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


def controller_uid(metadata: dict[str, Any] | Any) -> str | None:
    """The uid of an object's controller (its ownerReference with `controller: true`), if it has one:
    the operator touches a child only when that is its Workflow's uid."""
    for reference in metadata.get("ownerReferences") or []:
        if reference.get("controller"):
            return str(reference.get("uid") or "") or None
    return None


def _identity(obj: dict[str, Any]) -> dict[str, Any]:
    """A Workflow's identity and status: what `from_object` and `header` both read."""
    metadata = obj["metadata"]
    return {
        "name": metadata["name"],
        "namespace": metadata.get("namespace", ""),
        "uid": metadata.get("uid", ""),
        "generation": int(metadata.get("generation", 1)),
        "created": parse_time(metadata.get("creationTimestamp")) or datetime.min.replace(tzinfo=UTC),
        "status": cast(WorkflowStatus, dict(obj.get("status") or {})),
    }


def _expect(value: Any, kind: type | tuple[type, ...], field_path: str) -> None:
    """The CRD schema's type, checked again where a wrong one would be misread rather than fail."""
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{field_path} has the wrong type ({type(value).__name__})")


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
    # What publish may upload at most, counted on the bytes it reads (a sparse file costs nothing on the
    # volume and reads as its full size): None = the volume's size (diskGB).
    publish_max_bytes: int | None = None
    publish_max_files: int = 10_000
    # The RuntimeClass of the algorithm pods (gVisor, Kata, ... where the cluster has one); None = default.
    runtime_class_name: str | None = None
    # Which Workflows may use the environment: namespaces (None = every watched namespace) and a label
    # selector on the Workflow (None = any). A network-allowed environment admits none unless one is set.
    access_namespaces: tuple[str, ...] | None = None
    access_selector: dict[str, Any] | None = None

    @property
    def publish_byte_cap(self) -> int:
        """The most bytes publish uploads: publish.maxBytes, else the size of the Workflow's volume."""
        if self.publish_max_bytes is not None:
            return self.publish_max_bytes
        return int(self.disk_gb * 1024**3)

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> Environment:
        spec = obj.get("spec", {})
        policy = spec.get("filter") or {}
        publish = spec.get("publish") or {}
        access = spec.get("access") or {}
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
            publish_max_bytes=publish.get("maxBytes"),
            publish_max_files=int(publish.get("maxFiles", 10_000)),
            runtime_class_name=spec.get("runtimeClassName") or None,
            access_namespaces=tuple(access["namespaces"]) if "namespaces" in access else None,
            access_selector=dict(access["workflowSelector"]) if "workflowSelector" in access else None,
        )


class JobState(enum.Enum):
    PENDING = "Pending"  # created, not finished (scheduling, pulling, running)
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class StageJob:
    """What the reconcile needs to know of one stage's run: its newest pod (observe.py)."""

    name: str
    state: JobState
    started: datetime | None = None
    finished: datetime | None = None
    failure_reason: str | None = None  # the failed pod's status.reason, e.g. DeadlineExceeded (kubelet)
    exit_code: int | None = None  # the pod's container exit code, when it terminated
    termination_reason: str | None = None  # e.g. OOMKilled, Error, Completed
    termination_message: str | None = None
    waiting_reason: str | None = None  # e.g. ErrImagePull, ImagePullBackOff: never started
    deleting: bool = False
    init_failure: str | None = None  # the init container that ended non-zero (e.g. the isolation check)
    disrupted: bool = False  # evicted, preempted, drained: its end is not the stage's outcome
    running: bool = True  # its containers may still run (the pod is not Succeeded or Failed)


@dataclass(frozen=True)
class Observed:
    """The children of one Workflow as the operator's watches last saw them."""

    jobs: dict[str, StageJob] = field(default_factory=dict)  # by stage name: configure, algorithm, ...
    others: frozenset[tuple[str, str]] = frozenset()  # (kind, name) of the children present but pods
    hashes: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> spec hash annotation
    # Stages with a pod whose containers may still run (not Succeeded or Failed, deleting or not). Its
    # processes can still write to the data volume, so the next stage waits until it is gone.
    running_pods: frozenset[str] = frozenset()
    # The names of every stage pod the Workflow owns that is not being deleted (every attempt).
    stage_pods: frozenset[str] = frozenset()


# ---- the plan's vocabulary: what the planner is told, and what it answers -------------------------------


@dataclass(frozen=True)
class TemplateValues:
    """What the child templates use besides the Workflow and its environment: images, the service
    account, where credentials are, publish settings. From the operator's settings; never a secret."""

    service_account: str = "default"
    pull_secret: str | None = None
    # The algorithm pod's (ALGORITHM_SERVICE_ACCOUNT, ALGORITHM_PULL_SECRET): never the stage pods' ones.
    algorithm_service_account: str = "default"
    algorithm_pull_secret: str | None = None
    user_namespaces: bool = False  # USER_NAMESPACES: hostUsers false on the pods that run third-party code
    node_selector_scope: str | None = None  # NODE_SELECTOR: a required node affinity `scope In [...]`
    pull_policy: str = "IfNotPresent"
    configure_image: str = "ocean-c2d:latest"
    publish_image: str = "ocean-c2d:latest"
    credentials_secret: str = "ocean-c2d-credentials"
    storage_class: str = ""
    publish_env: dict[str, Any] = field(default_factory=dict)  # IPFS_*, AWS_REGION, ... (no credentials)
    isolation_probe_address: str | None = None
    signer_url: str = ""  # SIGNER_URL: where configure pods reach the operator's download signer
    isolation_timeout: int = 60
    # Where configure and publish pods (and allowNetwork algorithms) may connect: their NetworkPolicies and
    # the configure step's egress guard and service allowlists (addresses.py).
    egress: EgressValues = field(default_factory=EgressValues)


@dataclass(frozen=True)
class PlanSettings:
    """The part of the operator's settings the reconcile reads."""

    cleanup: bool = True  # False with DEBUG_NO_CLEANUP: children stay after the Workflow ends
    notify_start: bool = False  # NOTIFY_START_URL is set
    notify_stop: bool = False  # NOTIFY_STOP_URL is set
    workflow_ttl_seconds: int | None = None
    filtering_container: str | None = None
    configure_timeout: int = 3600
    filter_timeout: int = 1800
    publish_timeout: int = 3600
    template_values: TemplateValues = field(default_factory=TemplateValues)


@dataclass(frozen=True)
class TemplateInputs:
    """Everything the child templates of one Workflow are rendered from."""

    workflow: Workflow
    environment: Environment
    values: TemplateValues
    filter_image: str | None  # FILTERING_CONTAINER
    job_secret: str
    # The configure pod's proof of which Workflow it works for, to the operator's signer (signer.py).
    signer_token: str = ""


@dataclass(frozen=True)
class Admission:
    """The environment queue's answer for one Workflow (environments.py computes it)."""

    may_start: bool
    position: int | None = None  # 1-based position among the queued, when it may not start
    denied: str | None = None  # the environment does not admit this Workflow (never will): why
    held: str | None = None  # it waits for a reason other than a free slot (isolation not enforced): why


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


ChildRef = tuple[str, str]  # (kind, name) of a child in the Workflow's namespace


@dataclass(frozen=True)
class Plan:
    """Everything that should be true for one Workflow now (the planner's answer, before the diff)."""

    desired: tuple[dict[str, Any], ...] = ()  # children that must exist (created when missing)
    unwanted: tuple[ChildRef, ...] = ()  # children to delete
    status: WorkflowStatus | None = None  # the new status, when it differs from the current one
    events: tuple[Event, ...] = ()
    notify: tuple[str, ...] = ()  # "start" / "stop" notifications due
    delete_workflow: bool = False  # the finished Workflow's TTL has passed
    requeue_after: float | None = None  # reconcile again after this many seconds, even without events


@dataclass(frozen=True)
class Changes:
    """The writes that take the cluster from what was observed to what a Plan wants, in the order the
    shell sends them: children first, then status, deletions, Events, and last the Workflow itself.
    No changes means idle: the operator sends nothing."""

    create: tuple[dict[str, Any], ...] = ()  # absent children (a create that meets 409 becomes a patch)
    patch: tuple[dict[str, Any], ...] = ()  # present children whose spec hash drifted (never a pod)
    status: WorkflowStatus | None = None  # the whole new status, guarded by the observed resourceVersion
    delete: tuple[ChildRef, ...] = ()
    events: tuple[Event, ...] = ()
    delete_workflow: bool = False

    def __len__(self) -> int:
        """How many API writes these changes take."""
        return (
            len(self.create)
            + len(self.patch)
            + (1 if self.status is not None else 0)
            + len(self.delete)
            + len(self.events)
            + (1 if self.delete_workflow else 0)
        )
