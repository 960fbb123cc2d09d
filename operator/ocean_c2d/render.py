"""Child manifests from jinja2 templates (pure once the templates are loaded).

Templates live in templates/ (`*.yaml.j2`). Operators may point TEMPLATES_DIR at their own folder: a file
there replaces the built-in file of the same name, and can extend it (`{% extends "builtin/<name>" %}`)
to change one block only. Rendering is strict: a missing variable is an error, never an empty string.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import yaml

from ocean_c2d.identity import MANAGED_BY, PACKAGE
from ocean_c2d.model import API_VERSION, Environment, InvalidWorkflow, TemplateInputs, dumps
from ocean_c2d.stages import STAGES

SPEC_HASH_ANNOTATION = "ocean-c2d/spec-hash"
BASE_TEMPLATES = ("workflow-configmap", "job-secret", "data-pvc", "network-policy", "egress-policy")
POD_TEMPLATES = {name: definition.template for name, definition in STAGES.items()}
BUILTIN_DIR = Path(__file__).resolve().parents[2] / "templates"
_FAST_LOADER: type[yaml.SafeLoader] | None = getattr(yaml, "CSafeLoader", None)
# The base children rendered, by what they are rendered from (base_key): a running Workflow is reconciled
# on every event of its pods, and rendering (jinja2, then YAML) its base children again each time
# was a fifth of the operator's CPU. Bounded: the least recently used go first.
BASE_CACHE_ENTRIES = 2048


class TemplateError(InvalidWorkflow):
    """A template could not be rendered into a Kubernetes object (names the template). At start-up it
    stops the operator (a broken TEMPLATES_DIR); during a reconcile it ends that Workflow InvalidSpec."""


def spec_hash(manifest: dict[str, Any]) -> str:
    """A short hash of everything in `manifest` but its own hash annotation: drift detection."""
    annotations = manifest.get("metadata", {}).get("annotations", {})
    if SPEC_HASH_ANNOTATION in annotations:
        return str(annotations[SPEC_HASH_ANNOTATION])
    return _compute_hash(manifest)


def _compute_hash(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def strip_did(did: str) -> str:
    return did.removeprefix("did:op:")


def algorithm_resources(environment: Environment) -> dict[str, str]:
    """requests == limits for the algorithm: cpu, memory, ephemeral storage, and GPUs when nGPU > 0."""
    resources = {
        "cpu": str(environment.n_cpu),
        "memory": f"{environment.ram_gb:g}Gi",
        "ephemeral-storage": f"{environment.disk_gb:g}Gi",
    }
    if environment.n_gpu > 0:
        resources["nvidia.com/gpu"] = str(environment.n_gpu)
    return resources


def pod_affinity(environment: Environment, scope: str | None) -> dict[str, Any]:
    """The environment's affinity, with NODE_SELECTOR's required `scope` term ANDed into each of its node
    selector terms (terms are ORed, so the scope must be in every one)."""
    affinity: dict[str, Any] = json.loads(json.dumps(environment.affinity))
    if scope:
        term = {"key": "scope", "operator": "In", "values": [scope]}
        required = affinity.setdefault("nodeAffinity", {}).setdefault(
            "requiredDuringSchedulingIgnoredDuringExecution", {}
        )
        terms = required.setdefault("nodeSelectorTerms", [])
        if not terms:
            terms.append({})
        for selector in terms:
            selector.setdefault("matchExpressions", []).append(term)
    return affinity


def _join_surrogates(value: Any) -> Any:
    """`value` with every string's UTF-16 surrogate pairs joined. The `json` filter escapes a character
    beyond the BMP (an emoji, say) as a pair like \\ud83d\\ude00, and PyYAML decodes each half on its own,
    leaving a string no UTF-8 encoder accepts. A lone surrogate stays one: UnicodeError."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16") if _has_surrogate(value) else value
    if isinstance(value, dict):
        return {_join_surrogates(k): _join_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_surrogates(item) for item in value]
    return value


def _load(text: str) -> Any:
    """The rendered YAML, by libyaml's parser where PyYAML has it: the pure-Python one takes seconds, on
    the event loop, for the workflow.json of a Workflow with a large customData. libyaml refuses a
    `json`-escaped surrogate (an emoji in an entrypoint, say): that text is small, the pure parser
    takes it."""
    if _FAST_LOADER is not None:
        try:
            return yaml.load(text, Loader=_FAST_LOADER)  # a SafeLoader: plain data only
        except yaml.YAMLError:
            pass  # the pure parser decides, and words the error
    return yaml.safe_load(text)


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= char <= "\udfff" for char in text)


def _json(value: Any) -> str:
    """The `json` filter. An undefined variable is an error naming it, never a serialisation crash.
    Free-form user data arrives as model.RawJSON (the view keeps it as text) and is written as it was."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return dumps(value)


def base_key(inputs: TemplateInputs) -> str:
    """Everything the base children are rendered from (Templates.context), but the Workflow's status,
    which they never read: its identity, spec and annotations, the environment, the settings' values and
    the secrets, as one digest. The spec's repr is its whole content (frozen dataclasses all the way)."""
    workflow = inputs.workflow
    parts = (
        workflow.namespace,
        workflow.name,
        workflow.uid,
        repr(workflow.spec),
        repr(sorted(workflow.annotations.items())),
        repr(inputs.environment),
        repr(inputs.values),
        repr(inputs.filter_image),
        inputs.job_secret,
        inputs.signer_token,
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class Templates:
    """The loaded templates. Construct once at start-up (reads files); rendering does no I/O."""

    def __init__(self, directory: Path | None = None, builtin: Path = BUILTIN_DIR) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if directory is not None:
            _refuse_job_templates(directory)
            loaders.append(jinja2.FileSystemLoader(directory))
        loaders.append(jinja2.FileSystemLoader(builtin))
        self._env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(
                [jinja2.PrefixLoader({"builtin": jinja2.FileSystemLoader(builtin)}), *loaders]
            ),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
        )
        self._base_cache: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        # JSON is valid YAML: every string a template inserts goes through `json`, so no value can break
        # the document's structure (a quote or a newline in an entrypoint, say).
        self._env.filters["json"] = _json
        names = [f"{n}.yaml.j2" for n in (*BASE_TEMPLATES, *POD_TEMPLATES.values())]
        try:
            self._templates = {name.removesuffix(".yaml.j2"): self._env.get_template(name) for name in names}
        except jinja2.TemplateSyntaxError as error:
            raise TemplateError(f"cannot load template {error.name or error.filename}: {error}") from error
        except jinja2.TemplateError as error:
            raise TemplateError(f"cannot load templates: {error}") from error

    def context(self, inputs: TemplateInputs) -> dict[str, Any]:
        """Everything a template may use, by the names the templates know."""
        workflow, environment, values = inputs.workflow, inputs.environment, inputs.values
        spec = workflow.spec
        document = {
            "jobId": workflow.name,
            "owner": spec.owner,
            "agreementId": spec.agreement_id,
            "chainId": spec.chain_id,
            "environment": environment.name,
            "stages": [
                {
                    "index": 0,
                    "input": [dict(i, index=n) for n, i in enumerate(spec.inputs)],
                    "algorithm": spec.algorithm,
                    "output": {"metadataUri": spec.metadata_uri} if spec.metadata_uri else {},
                    "compute": {
                        "maxtime": min(
                            spec.max_duration or environment.max_job_duration, environment.max_job_duration
                        ),
                        "storageExpiry": environment.storage_expiry,
                    },
                }
            ],
        }
        return {
            "name": workflow.name,
            "namespace": workflow.namespace,
            "labels": {**MANAGED_BY, "app.kubernetes.io/name": PACKAGE, "workflow": workflow.name},
            "owner_reference": {
                "apiVersion": API_VERSION,
                "kind": "Workflow",
                "name": workflow.name,
                "uid": workflow.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            },
            "spec": spec,
            "workflow_annotations": dict(workflow.annotations),
            "container": spec.container,
            "dids": [strip_did(d) for d in spec.input_dids],
            "algorithm_did": strip_did(spec.algorithm_did or ""),
            "environment": environment,
            "algorithm_resources": algorithm_resources(environment),
            "job_secret": inputs.job_secret,
            "signer_token": inputs.signer_token,
            "workflow_document": document,
            "filter_image": inputs.filter_image,
            **dataclasses.asdict(values),
            "pod_affinity": pod_affinity(environment, values.node_selector_scope),
        }

    def render(self, template: str, context: dict[str, Any]) -> dict[str, Any] | None:
        """One manifest, with its spec hash annotation; None when the template renders nothing."""
        try:
            text = self._templates[template].render(context)
            manifest = _load(text)
            if "\\ud" in text:  # only `json`-escaped text can hold a surrogate
                manifest = _join_surrogates(manifest)
        except (jinja2.TemplateError, yaml.YAMLError, UnicodeError) as error:
            raise TemplateError(f"template {template}.yaml.j2: {error}") from error
        if manifest is None:
            return None
        if not isinstance(manifest, dict) or "kind" not in manifest or "metadata" not in manifest:
            raise TemplateError(f"template {template}.yaml.j2 did not render a Kubernetes object")
        annotations = manifest["metadata"].setdefault("annotations", {})
        annotations.pop(SPEC_HASH_ANNOTATION, None)
        annotations[SPEC_HASH_ANNOTATION] = _compute_hash(manifest)
        return manifest

    def render_base(self, inputs: TemplateInputs) -> list[dict[str, Any]]:
        """The children every admitted Workflow has: ConfigMap, Secret, PVC, NetworkPolicy (copies: the
        caller may change them)."""
        key = base_key(inputs)
        cached = self._base_cache.get(key)
        if cached is None:
            context = self.context(inputs)
            rendered = (self.render(name, context) for name in BASE_TEMPLATES)
            cached = [manifest for manifest in rendered if manifest is not None]
            self._base_cache[key] = cached
            while len(self._base_cache) > BASE_CACHE_ENTRIES:
                self._base_cache.popitem(last=False)
        else:
            self._base_cache.move_to_end(key)
        return copy.deepcopy(cached)

    def render_pod(
        self,
        stage: str,
        inputs: TemplateInputs,
        deadline_seconds: int,
        publish_outputs: bool = True,
        judged: Mapping[str, Any] | None = None,
        attempt: int = 1,
    ) -> dict[str, Any]:
        """A stage's pod; `publish_outputs` False when the filter blocked (then only admin logs go up).
        `judged` is status.filter: after a Pass, publish uploads only the files of the filter's manifest
        (verified against its recorded hash, when the built-in filter recorded one). `attempt` > 1: the
        pod that replaces a disrupted one, under a name of its own."""
        passed = judged is not None and judged.get("verdict") == "Pass"
        context = {
            **self.context(inputs),
            "stage": stage,
            "pod_name": stage_pod_name(inputs.workflow.name, stage, attempt),
            "deadline": deadline_seconds,
            "publish_outputs": publish_outputs,
            "manifest_required": passed,
            "manifest_sha256": str((judged or {}).get("manifestSha256") or "") if passed else "",
        }
        manifest = self.render(POD_TEMPLATES[stage], context)
        if manifest is None:
            raise TemplateError(f"template {POD_TEMPLATES[stage]}.yaml.j2 rendered nothing")
        if manifest.get("apiVersion") != "v1" or manifest.get("kind") != "Pod":
            raise TemplateError(f"template {POD_TEMPLATES[stage]}.yaml.j2 must render a v1 Pod")
        return manifest


def _refuse_job_templates(directory: Path) -> None:
    """Stages ran as Jobs before they ran as pods (`<stage>-job.yaml.j2`): such a file would now be
    ignored without a word, so the operator refuses to start and says what to rename."""
    stale = sorted(
        f"{stage}-job.yaml.j2" for stage in STAGES if (directory / f"{stage}-job.yaml.j2").exists()
    )
    if stale:
        raise TemplateError(
            f"TEMPLATES_DIR {directory} holds {', '.join(stale)}: stages run as pods now; rename each"
            " to <stage>-pod.yaml.j2, render `kind: Pod` (the Job's pod template's spec as the pod's spec,"
            " activeDeadlineSeconds in it) and extend builtin/<stage>-pod.yaml.j2"
        )


def stage_pod_name(workflow: str, stage: str, attempt: int = 1) -> str:
    """`<workflow>-<stage>`, and `-<attempt>` after for a replacement: no two Workflows' names collide
    (each ends in a stage name, or a stage name and a number)."""
    return f"{workflow}-{stage}" if attempt <= 1 else f"{workflow}-{stage}-{attempt}"
