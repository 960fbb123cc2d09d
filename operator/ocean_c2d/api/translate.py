"""POST /compute: the original's validation, and the workflow document -> a Workflow object (pure).

The workflow document is what provider v4 and ocean-node's OPF_K8 build (one stage: input, algorithm,
compute, output); the Workflow is our CRD's spec (crds/workflows.yaml), what `model.Workflow.from_object`
reads. The quirks of the recorded clients, each handled below:
- inputs by DID carry `remote: {txId, serviceId, userdata}`; URL inputs carry `url` as a string or a
  list (one input per URL); an input naming neither was skipped by the original and is skipped here;
- provider writes `userdata` on inputs but `userData` on the algorithm's remote, and `algouserdata`
  beside it; any of them is the algorithm's userData;
- a raw algorithm's code wins over everything else: ocean-node's raw algorithm carries
  `"remote": {"userdata": {}}` without txId, provider's has `"id": ""` and `"url": null` or "";
- `algocustomdata: null` means none;
- `compute` ({Instances, namespace, maxtime: 3600}) is provider's hard-coded value: the original engine
  overwrote maxtime with the environment's maxJobDuration, so it is not translated (the environment
  decides the limit, as it did);
- `agreementId` is often the algorithm's order transaction, not an input's: kept as given.

What the status object needs and the spec cannot say (the original's algoDID "" for `"id": ""`, "raw"
for no id key; the DIDs of URL inputs that had an id; dateCreated to the microsecond) is kept in the
annotation COMPAT_ANNOTATION.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ocean_c2d.api.params import missing_attribute
from ocean_c2d.model import API_VERSION

# The original's POST /compute required these, in this order.
START_REQUIRED = ("workflow", "agreementId", "owner", "providerSignature", "environment", "nonce")
START_ROUTE = "POST:/compute"
STAGE_KEYS = ("algorithm", "compute", "input", "output")

COMPAT_ANNOTATION = "ocean-c2d.oceanprotocol.com/operator-service"
CREATED_BY_LABEL = "ocean-c2d.oceanprotocol.com/created-by"
CREATED_BY = "api"

# The original's messages, exactly.
EMPTY_WORKFLOW = "`workflow` is required in the payload and must include workflow stages"
AGREEMENT_IN_USE = "`agreementId` already in use for other job."
UNKNOWN_ENVIRONMENT = "Environment invalid or does not exist"
MISSING_STAGES = "Missing stages"
MULTIPLE_STAGES = "Multiple stages are not supported yet"

_DID = re.compile(r"^did:op:[0-9a-fA-F]{64}$")
_OWNER = re.compile(r"^0x[0-9a-fA-F]{40}$")
_CHECKSUM = re.compile(r"^sha256:[0-9a-f]{64}$")
_URL = re.compile(r"^(https?|ipfs|s3)://.+")
_METADATA_URI = re.compile(r"^https?://.+")
_ENVIRONMENT = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class Rejected(Exception):  # noqa: N818 (an answer, not a crash)
    """POST /compute refused: 400 with {"error": message}."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check_payload(params: Any) -> None:
    """The checks the original made before looking at its database: required names, a workflow."""
    problem = missing_attribute(params, START_REQUIRED, START_ROUTE)
    if problem:
        raise Rejected(problem)
    if not params["workflow"] or not isinstance(params["workflow"], dict):
        raise Rejected(EMPTY_WORKFLOW)


def check_environment_name(environment: Any) -> bool:
    """Whether `environment` can name a ComputeEnvironment at all (else it surely does not exist)."""
    return isinstance(environment, str) and len(environment) <= 63 and bool(_ENVIRONMENT.match(environment))


def check_stages(workflow: Mapping[str, Any]) -> dict[str, Any]:
    """The one stage, after the original's stage checks (made after the signature's)."""
    stages = workflow.get("stages")
    if not stages or not isinstance(stages, list):
        raise Rejected(MISSING_STAGES)
    if len(stages) > 1:
        raise Rejected(MULTIPLE_STAGES)
    stage = stages[0]
    if not isinstance(stage, dict):
        raise Rejected(MISSING_STAGES)
    for key in STAGE_KEYS:
        if key not in stage:
            raise Rejected(f"Missing {key} in stage 0")
    return stage


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_text(moment: datetime) -> str:
    """A time as the original's dates (dateCreated, dateFinished, lastSeen): Postgres
    `extract(epoch ...)` as text, six decimals, "1796111664.372540". Integer arithmetic: a float has too
    few digits for sixteen. A naive `moment` would be read in the machine's zone: refused."""
    if moment.tzinfo is None:
        raise ValueError("an epoch text needs a time zone-aware moment")
    delta = moment.astimezone(UTC) - _EPOCH
    return f"{delta.days * 86400 + delta.seconds}.{delta.microseconds:06d}"


def build_workflow(params: Mapping[str, Any], job_id: str, now: datetime) -> dict[str, Any]:
    """The Workflow object for a validated POST /compute (after check_payload and check_stages)."""
    stage = check_stages(params["workflow"])
    owner = params["owner"]
    if not isinstance(owner, str) or not _OWNER.match(owner):
        # The original stored anything; the CRD (and every later owner check) needs an address.
        raise Rejected("`owner` must be an Ethereum address")
    spec: dict[str, Any] = {
        "environment": params["environment"],
        "owner": owner,
        "agreementId": _text(params["agreementId"])[:256],
        "inputs": _inputs(stage["input"]),
        "algorithm": _algorithm(stage["algorithm"]),
    }
    chain_id = _chain_id(params.get("chainId"))
    if chain_id is not None:
        spec["chainId"] = chain_id
    output = stage.get("output")
    metadata_uri = output.get("metadataUri") if isinstance(output, dict) else None
    if isinstance(metadata_uri, str) and metadata_uri:
        if not _METADATA_URI.match(metadata_uri) or len(metadata_uri) > 2048:
            raise Rejected("`output.metadataUri` must be an http(s) URL")
        spec["output"] = {"metadataUri": metadata_uri}
    compat = {
        "algoDID": _algo_did(stage["algorithm"]),
        "inputDID": _input_dids(stage["input"]),
        "dateCreated": epoch_text(now),
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "Workflow",
        "metadata": {
            "name": job_id,
            "labels": {CREATED_BY_LABEL: CREATED_BY},
            "annotations": {COMPAT_ANNOTATION: json.dumps(compat, separators=(",", ":"))},
        },
        "spec": spec,
    }


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _chain_id(value: Any) -> int | None:
    """chainId as the CRD's positive integer; provider and ocean-node send 8996 as a JSON number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 1 else None
    if isinstance(value, str) and value.isdigit() and int(value) >= 1:
        return int(value)
    return None


def _algo_did(algorithm: Any) -> str:
    """The original's algoDID: the algorithm's `id` when the key exists (provider's raw one: ""),
    else "raw" (ocean-node's raw one has no id key)."""
    if isinstance(algorithm, dict) and "id" in algorithm:
        return _text(algorithm["id"]) if algorithm["id"] is not None else ""
    return "raw"


def _input_dids(inputs: Any) -> list[str]:
    """The original's inputDID: the `id` of every input that has one, in order."""
    return [_text(item["id"]) for item in _list(inputs) if isinstance(item, dict) and "id" in item]


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def _user_data(*candidates: Any) -> dict[str, Any] | None:
    """The first free-form user data that is a non-empty object; None when there is none."""
    for value in candidates:
        if isinstance(value, dict) and value:
            if len(value) > 256:
                raise Rejected("user data has more than 256 keys")
            return value
    return None


def _url(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _URL.match(value) or len(value) > 2048:
        raise Rejected(f"{what} must be an http, https, ipfs or s3 URL")
    return value


def _inputs(inputs: Any) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    for n, item in enumerate(_list(inputs)):
        if not isinstance(item, dict):
            raise Rejected(f"input {n} is not an object")
        urls = [u for u in _list(item.get("url")) if u]
        remote = _mapping(item.get("remote"))
        if urls:
            # pod-configuration fetched an input's url (string or list) before looking at its remote.
            result.extend({"url": _url(url, f"input {n}'s url")} for url in urls)
        elif remote.get("txId") and item.get("id"):
            result.append(_by_did(item["id"], remote, f"input {n}", item.get("userdata")))
        # else: neither url nor an order: the original skipped it (and counted it a success).
        if len(result) > 64:
            raise Rejected("more than 64 inputs")
    return result


def _by_did(did: Any, remote: Mapping[str, Any], what: str, *user_data: Any) -> dict[str, Any]:
    if not isinstance(did, str) or not _DID.match(did):
        raise Rejected(f"{what}'s id must be a did:op: DID")
    entry: dict[str, Any] = {
        "did": did,
        "serviceId": _text(remote.get("serviceId") or "")[:256],
        "transferTxId": _text(remote["txId"])[:256],
    }
    data = _user_data(remote.get("userdata"), remote.get("userData"), *user_data)
    if data is not None:
        entry["userData"] = data
    return entry


def _algorithm(algorithm: Any) -> dict[str, Any]:
    if not isinstance(algorithm, dict):
        raise Rejected("Missing algorithm in stage 0")
    remote = _mapping(algorithm.get("remote"))
    raw_code = algorithm.get("rawcode")
    urls = [u for u in _list(algorithm.get("url")) if u]
    result: dict[str, Any]
    if isinstance(raw_code, str) and raw_code:
        if len(raw_code) > 262144:
            raise Rejected("the algorithm's rawcode is longer than 256 KiB")
        result = {"rawCode": raw_code}
    elif urls:
        result = {"url": _url(urls[0], "the algorithm's url")}
    elif remote.get("txId") and algorithm.get("id"):
        result = _by_did(
            algorithm["id"], remote, "the algorithm", remote.get("userData"), algorithm.get("algouserdata")
        )
    else:
        # The original accepted it and failed at provisioning (32); the CRD cannot hold it.
        raise Rejected("the algorithm names none of rawcode, url, or a DID with its order")
    result["container"] = _container(algorithm.get("container"))
    custom = algorithm.get("algocustomdata")
    if custom is not None:
        if not isinstance(custom, dict):
            raise Rejected("algocustomdata must be an object")
        if len(custom) > 256:
            raise Rejected("algocustomdata has more than 256 keys")
        result["customData"] = custom
    return result


def _container(container: Any) -> dict[str, Any]:
    if not isinstance(container, dict):
        raise Rejected("the algorithm has no container")
    image, entrypoint = container.get("image"), container.get("entrypoint")
    if not isinstance(image, str) or not image or len(image) > 512:
        raise Rejected("the algorithm's container has no image")
    if not isinstance(entrypoint, str) or not entrypoint or len(entrypoint) > 4096:
        raise Rejected("the algorithm's container has no entrypoint")
    result: dict[str, Any] = {"image": image, "entrypoint": entrypoint}
    tag = container.get("tag")
    if tag:
        if not isinstance(tag, str) or len(tag) > 128:
            raise Rejected("the algorithm's container tag is not a tag")
        result["tag"] = tag
    checksum = container.get("checksum")
    if checksum:
        if not isinstance(checksum, str) or not _CHECKSUM.match(checksum):
            # A wrong digest would run some other image, or none: refuse rather than drop it.
            raise Rejected("the algorithm's container checksum must be sha256: and 64 lowercase hex digits")
        result["checksum"] = checksum
    return result
