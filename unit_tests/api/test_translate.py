"""POST /compute's validation and translation: every recorded POST body -> a Workflow object, checked
against the Workflow CRD's openAPIV3Schema (crds/workflows.yaml, the schema the API server enforces) by
a checker of the subset of OpenAPI and of the CEL rules the CRD uses; and the original's rejections."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from ocean_c2d.api import translate
from ocean_c2d.api.params import parse_json
from ocean_c2d.api.translate import COMPAT_ANNOTATION, Rejected, build_workflow, check_payload, check_stages
from ocean_c2d.model import Workflow
from unit_tests.api.fixtures import COMPAT

FIXTURES = COMPAT
CRD = Path(__file__).resolve().parents[2] / "crds" / "workflows.yaml"
NOW = datetime(2026, 12, 1, 7, 54, 21, 956364, tzinfo=UTC)
JOB = "38c8ca27d61e4f42ab352c5598162241"


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    [version] = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
    "number": (int, float),
}


def schema_errors(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """What the API server would refuse (or silently prune: an unknown field) in `value`."""
    kind = schema.get("type")
    if kind is not None:
        if isinstance(value, bool) and kind in ("integer", "number"):
            return [f"{path}: a boolean where {kind} is expected"]
        if not isinstance(value, TYPES[kind]):
            return [f"{path}: {type(value).__name__} where {kind} is expected"]
    errors: list[str] = []
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: does not match {schema['pattern']}")
    if isinstance(value, int) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: above {schema['maximum']}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: not one of {schema['enum']}")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        for n, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), f"{path}[{n}]")
    if isinstance(value, dict):
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(f"{path}: more than {schema['maxProperties']} keys")
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: required")
        properties = schema.get("properties")
        for name, item in value.items():
            if properties is not None and name in properties:
                errors += schema_errors(item, properties[name], f"{path}.{name}")
            elif properties is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{name}: unknown field (the API server would prune it)")
        errors += [f"{path}: {message}" for message in cel_errors(value, schema)]
    return errors


def cel_errors(value: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """The CRD's x-kubernetes-validations on spec fields, evaluated by hand (each rule is matched by its
    text, so a rule this checker does not know fails the test rather than passing unchecked)."""
    errors = []
    for validation in schema.get("x-kubernetes-validations", []):
        rule = validation["rule"]
        if rule == "has(self.did) != has(self.url)":
            ok = ("did" in value) != ("url" in value)
        elif rule == "!has(self.did) || (has(self.serviceId) && has(self.transferTxId))":
            ok = "did" not in value or ("serviceId" in value and "transferTxId" in value)
        elif rule == "[has(self.did), has(self.url), has(self.rawCode)].filter(x, x).size() == 1":
            ok = sum(key in value for key in ("did", "url", "rawCode")) == 1
        elif rule == "self.metadata.name.size() <= 48":
            ok = len(value["metadata"]["name"]) <= 48
        elif rule.startswith("!has(oldSelf.status)"):
            ok = True  # a transition rule: a create has no old object
        else:
            raise AssertionError(f"the checker does not know the rule {rule!r}")
        if not ok:
            errors.append(validation["message"])
    return errors


def recorded_posts() -> list[tuple[str, int, dict[str, Any], int]]:
    """(file, seq, the body as the API parses it, the recorded status) of every recorded POST /compute."""
    posts = []
    for file in [
        "provider-v4.json",
        "oceanpy_provider-v4.json",
        "ocean-node-OPF_K8_9f2870dd.json",
        "probe.json",
    ]:
        for exchange in json.loads((FIXTURES / file).read_text()):
            request = exchange["request"]
            if request["method"] == "POST" and request["path"].endswith("/compute") and request["body_raw"]:
                body = parse_json(request["body_raw"].encode())
                posts.append((file, exchange["seq"], body, exchange["response"]["status"]))
    return posts


ACCEPTED = [(f, s, b) for f, s, b, status in recorded_posts() if status == 200]


def test_the_checker_catches_what_it_should() -> None:
    schema = crd_schema()
    good = build_workflow(ACCEPTED[0][2], JOB, NOW)
    assert schema_errors(good, schema) == []
    bad = json.loads(json.dumps(good))
    bad["spec"]["owner"] = "0xnope"
    bad["spec"]["inputs"][0]["url"] = "http://x/y"
    bad["spec"]["algorithm"]["extra"] = 1
    bad["spec"]["chainId"] = True
    errors = schema_errors(bad, schema)
    assert any("owner: does not match" in e for e in errors)
    assert any("an input names exactly one of did or url" in e for e in errors)
    assert any("algorithm.extra: unknown field" in e for e in errors)
    assert any("chainId: a boolean" in e for e in errors)


def test_every_recorded_post_is_accepted_or_refused_as_recorded() -> None:
    assert len(ACCEPTED) == 7  # provider 2, ocean.py 2, OPF_K8 2, the probe's one good POST
    refused = [(f, s) for f, s, _, status in recorded_posts() if status != 200]
    assert len(refused) == 14


@pytest.mark.parametrize(("file", "seq", "body"), ACCEPTED, ids=[f"{f}:{s}" for f, s, _ in ACCEPTED])
def test_every_accepted_post_translates_to_a_valid_workflow(
    file: str, seq: int, body: dict[str, Any]
) -> None:
    check_payload(body)
    obj = build_workflow(body, JOB, NOW)
    assert schema_errors(obj, crd_schema()) == []
    obj["metadata"]["creationTimestamp"] = "2026-12-01T07:54:21Z"
    workflow = Workflow.from_object(obj)  # what the operator reads of it
    assert workflow.name == JOB
    assert workflow.spec.environment == "ocean-compute"
    assert workflow.spec.owner == "0xBE5449a6A97aD46c8558A3356267Ee5D2731ab5e"
    assert workflow.spec.agreement_id == body["agreementId"]
    assert workflow.spec.chain_id == 8996
    assert workflow.spec.max_duration is None  # provider's hard-coded maxtime is not the consumer's


def posted(file: str, seq: int) -> dict[str, Any]:
    return next(b for f, s, b in ACCEPTED if f == file and s == seq)


def test_provider_published_algorithm() -> None:
    obj = build_workflow(posted("provider-v4.json", 7), JOB, NOW)
    assert obj["spec"] == {
        "environment": "ocean-compute",
        "owner": "0xBE5449a6A97aD46c8558A3356267Ee5D2731ab5e",
        "agreementId": "0x" + "2" * 64,
        "chainId": 8996,
        "inputs": [
            {
                "did": "did:op:4809985403da8f7d90de14f8027887df5101f088b3618d03f67a086fda446d8c",
                "serviceId": "compute-1",
                "transferTxId": "0x" + "1" * 64,
            }
        ],
        "algorithm": {
            # userData null, algouserdata null, algocustomdata null: none of them.
            "did": "did:op:4ca762e608035d2410dcd9bb885bf3d58247601bf99cbe096314d14da5bb0d3a",
            "serviceId": "algo-access-1",
            "transferTxId": "0x" + "2" * 64,
            "container": {
                "image": "node",
                "entrypoint": "node $ALGO",
                "tag": "18",
                "checksum": "sha256:" + "a" * 64,
            },
        },
        "output": {"metadataUri": "http://127.0.0.1:15000"},
    }
    assert obj["metadata"]["name"] == JOB
    assert json.loads(obj["metadata"]["annotations"][COMPAT_ANNOTATION]) == {
        "algoDID": "did:op:4ca762e608035d2410dcd9bb885bf3d58247601bf99cbe096314d14da5bb0d3a",
        "inputDID": ["did:op:4809985403da8f7d90de14f8027887df5101f088b3618d03f67a086fda446d8c"],
        "dateCreated": "1796111661.956364",
    }


def test_provider_raw_algorithm_with_input_userdata() -> None:
    obj = build_workflow(posted("provider-v4.json", 10), JOB, NOW)
    inputs = obj["spec"]["inputs"]
    assert inputs[0]["userData"] == {"threshold": 3}  # provider writes `userdata` on inputs
    assert "userData" not in inputs[1]
    assert inputs[1]["transferTxId"] == "0x" + "4" * 64
    # `"id": ""`, `"url": null`: the rawcode is the algorithm.
    assert obj["spec"]["algorithm"] == {
        "rawCode": "console.log(42)",
        "container": {
            "image": "node",
            "entrypoint": "node $ALGO",
            "tag": "18",
            "checksum": "sha256:" + "b" * 64,
        },
    }
    assert json.loads(obj["metadata"]["annotations"][COMPAT_ANNOTATION])["algoDID"] == ""


def test_oceanpy_raw_algorithm_with_empty_url() -> None:
    algorithm = build_workflow(posted("oceanpy_provider-v4.json", 6), JOB, NOW)["spec"]["algorithm"]
    assert algorithm["rawCode"] == "print(42)"
    assert "url" not in algorithm  # "url": "" is no url


def test_ocean_node_published_algorithm_with_empty_userdata_and_no_output() -> None:
    obj = build_workflow(posted("ocean-node-OPF_K8_9f2870dd.json", 2), JOB, NOW)
    assert "userData" not in obj["spec"]["inputs"][0]  # userdata {}: nothing to pass
    assert obj["spec"]["algorithm"]["transferTxId"] == "0x" + "2" * 64
    assert "userData" not in obj["spec"]["algorithm"]
    assert "output" not in obj["spec"]  # output: {}


def test_ocean_node_raw_algorithm_wins_over_a_remote_without_txid_and_url_lists() -> None:
    obj = build_workflow(posted("ocean-node-OPF_K8_9f2870dd.json", 3), JOB, NOW)
    assert obj["spec"]["algorithm"]["rawCode"] == "console.log(42)"
    assert obj["spec"]["inputs"] == [
        {
            "did": "did:op:4809985403da8f7d90de14f8027887df5101f088b3618d03f67a086fda446d8c",
            "serviceId": "compute-1",
            "transferTxId": "0x" + "3" * 64,
            "userData": {"threshold": 3},
        },
        {"url": "http://127.0.0.1:15000/files/data.csv"},  # url: [one URL] -> one input
    ]
    compat = json.loads(obj["metadata"]["annotations"][COMPAT_ANNOTATION])
    assert compat["algoDID"] == "raw"  # no id key at all
    assert compat["inputDID"] == ["did:op:4809985403da8f7d90de14f8027887df5101f088b3618d03f67a086fda446d8c"]


def test_a_19_digit_nonce_is_read_exactly() -> None:
    assert posted("provider-v4.json", 7)["nonce"] == 1796111661885572351


def probe_post(seq: int) -> dict[str, Any]:
    return next(b for f, s, b, _ in recorded_posts() if f == "probe.json" and s == seq)


@pytest.mark.parametrize(
    ("seq", "message"),
    [
        (7, "payload seems empty."),
        (9, '"workflow" is required in the call to POST:/compute'),
        (10, '"agreementId" is required in the call to POST:/compute'),
        (11, '"owner" is required in the call to POST:/compute'),
        (12, '"providerSignature" is required in the call to POST:/compute'),
        (13, '"environment" is required in the call to POST:/compute'),
        (14, '"nonce" is required in the call to POST:/compute'),
        (15, "`workflow` is required in the payload and must include workflow stages"),
    ],
)
def test_payload_checks_in_the_original_words(seq: int, message: str) -> None:
    with pytest.raises(Rejected) as rejected:
        check_payload(probe_post(seq))
    assert rejected.value.message == message


@pytest.mark.parametrize(
    ("seq", "message"),
    [
        (16, "Missing stages"),
        (17, "Multiple stages are not supported yet"),
        (18, "Missing output in stage 0"),
    ],
)
def test_stage_checks_in_the_original_words(seq: int, message: str) -> None:
    body = probe_post(seq)
    check_payload(body)  # these pass the payload checks: the stage checks come after the signature's
    with pytest.raises(Rejected) as rejected:
        check_stages(body["workflow"])
    assert rejected.value.message == message


def test_each_stage_key_is_required_in_the_original_order() -> None:
    stage = dict(posted("provider-v4.json", 7)["workflow"]["stages"][0])
    for key in translate.STAGE_KEYS:
        without = {k: v for k, v in stage.items() if k != key}
        with pytest.raises(Rejected, match=f"^Missing {key} in stage 0$"):
            check_stages({"stages": [without]})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(rawcode="", id="", remote={}), "names none of rawcode, url, or a DID"),
        (lambda a: a["container"].update(checksum="sha256:XYZ"), "checksum must be sha256:"),
        (lambda a: a["container"].pop("image"), "container has no image"),
        (lambda a: a.update(algocustomdata="text"), "algocustomdata must be an object"),
        (lambda a: a.update(rawcode="", url="ftp://x"), "must be an http, https, ipfs or s3 URL"),
    ],
)
def test_what_the_crd_cannot_hold_is_refused_before_anything_is_created(change: Any, message: str) -> None:
    body = json.loads(json.dumps(posted("provider-v4.json", 10)))
    change(body["workflow"]["stages"][0]["algorithm"])
    with pytest.raises(Rejected, match=re.escape(message)):
        build_workflow(body, JOB, NOW)


def test_an_owner_that_is_no_address_is_refused() -> None:
    body = dict(posted("provider-v4.json", 7), owner="x")
    with pytest.raises(Rejected, match="owner"):
        build_workflow(body, JOB, NOW)


def test_custom_data_and_algorithm_user_data_are_kept() -> None:
    body = json.loads(json.dumps(posted("provider-v4.json", 7)))
    algorithm = body["workflow"]["stages"][0]["algorithm"]
    algorithm["algocustomdata"] = {"rounds": 3}
    algorithm["remote"]["userData"] = {"seed": 7}  # provider's camelCase on the algorithm
    spec = build_workflow(body, JOB, NOW)["spec"]
    assert spec["algorithm"]["customData"] == {"rounds": 3}
    assert spec["algorithm"]["userData"] == {"seed": 7}
    assert schema_errors(build_workflow(body, JOB, NOW), crd_schema()) == []


def test_an_input_naming_nothing_fetchable_is_skipped_as_the_original_did() -> None:
    body = json.loads(json.dumps(posted("provider-v4.json", 7)))
    body["workflow"]["stages"][0]["input"].append({"index": 1, "id": "did:op:" + "c" * 64})
    obj = build_workflow(body, JOB, NOW)
    assert len(obj["spec"]["inputs"]) == 1
    # ... but its DID is still listed, as the original listed every input's id.
    assert len(json.loads(obj["metadata"]["annotations"][COMPAT_ANNOTATION])["inputDID"]) == 2
