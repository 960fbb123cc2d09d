"""Static checks of the CustomResourceDefinitions in crds/; e2e/test_crds.py has the API server check them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

CRDS = Path(__file__).resolve().parent.parent / "crds"

# (file, kind, plural, singular, short names)
DEFINITIONS = [
    ("workflows.yaml", "Workflow", "workflows", "workflow", ["wf"]),
    (
        "computeenvironments.yaml",
        "ComputeEnvironment",
        "computeenvironments",
        "computeenvironment",
        ["c2denv"],
    ),
]
FILES = [definition[0] for definition in DEFINITIONS]

# The ObjectMeta fields a printer column may name: a CRD schema cannot describe metadata's fields.
OBJECT_META = {"name", "namespace", "uid", "generation", "creationTimestamp", "labels", "annotations"}

# The only free-form objects: user data handed through to the algorithm, and Kubernetes tolerations.
FREE_FORM = {
    "workflows.yaml": {
        "spec.inputs[].userData",
        "spec.algorithm.userData",
        "spec.algorithm.customData",
    },
    # An environment is the cluster admin's object; its Kubernetes-typed fields are checked at Job creation.
    "computeenvironments.yaml": {"spec.tolerations[]", "spec.affinity"},
}


def load(file: str) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load((CRDS / file).read_text())
    return crd


def only_version(crd: dict[str, Any]) -> dict[str, Any]:
    [version] = crd["spec"]["versions"]
    assert isinstance(version, dict)
    return version


def root_schema(file: str) -> dict[str, Any]:
    schema: dict[str, Any] = only_version(load(file))["schema"]["openAPIV3Schema"]
    return schema


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path: `a.b` for properties, `a[]` for items, `a{}` for map values."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def node_at(schema: dict[str, Any], json_path: str) -> dict[str, Any] | None:
    """The schema node a simple printer-column JSONPath such as `.status.stage` names, if any."""
    node = schema
    for name in json_path.removeprefix(".").split("."):
        child = node.get("properties", {}).get(name)
        if child is None:
            return None
        node = child
    return node


@pytest.mark.parametrize(("file", "kind", "plural", "singular", "short_names"), DEFINITIONS)
def test_names_group_and_scope(
    file: str, kind: str, plural: str, singular: str, short_names: list[str]
) -> None:
    crd = load(file)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{plural}.oceanprotocol.com"
    spec = crd["spec"]
    assert spec["group"] == "oceanprotocol.com"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": singular,
        "shortNames": short_names,
        "categories": ["c2d"],
    }


@pytest.mark.parametrize("file", FILES)
def test_one_served_storage_version_with_a_status_subresource(file: str) -> None:
    version = only_version(load(file))
    assert version["name"] == "v1alpha1"
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("file", FILES)
def test_every_printer_column_names_a_field_of_the_schema(file: str) -> None:
    schema = root_schema(file)
    columns = only_version(load(file))["additionalPrinterColumns"]
    assert columns
    for column in columns:
        path = column["jsonPath"]
        if path.startswith(".metadata."):
            assert path.removeprefix(".metadata.") in OBJECT_META, column
            continue
        node = node_at(schema, path)
        assert node is not None, f"column {column['name']} names {path}, which the schema lacks"
        expected = {"date": ("string", "date-time"), "integer": ("integer", None), "number": ("number", None)}
        if column["type"] in expected:
            node_type, node_format = expected[column["type"]]
            # A number column shows integers too; a date column needs an RFC 3339 timestamp.
            assert node["type"] in ({node_type, "integer"} if node_type == "number" else {node_type}), column
            if node_format:
                assert node.get("format") == node_format, column
        else:
            assert node["type"] == column["type"], column


@pytest.mark.parametrize(
    ("file", "columns"),
    [
        (
            "workflows.yaml",
            [
                ("Status", 0),
                ("Stage", 0),
                ("Environment", 0),
                ("Started", 0),
                ("Duration", 0),
                ("Reason", 0),
                ("Age", 0),
                ("Code", 1),
                ("Queue", 1),
                ("Message", 1),
            ],
        ),
        (
            "computeenvironments.yaml",
            [
                ("Jobs", 0),
                ("Queued", 0),
                ("Next", 0),
                ("CPU", 0),
                ("GPU", 0),
                ("RAM", 0),
                ("Price", 0),
                ("Age", 0),
            ],
        ),
    ],
)
def test_printer_columns_in_order_with_the_wide_ones_last(file: str, columns: list[tuple[str, int]]) -> None:
    defined = only_version(load(file))["additionalPrinterColumns"]
    assert [(column["name"], column.get("priority", 0)) for column in defined] == columns


@pytest.mark.parametrize("file", FILES)
def test_schema_is_structural_every_node_has_a_type(file: str) -> None:
    untyped = [path or "<root>" for path, node in walk(root_schema(file)) if "type" not in node]
    assert untyped == []


@pytest.mark.parametrize("file", FILES)
def test_every_field_has_a_description(file: str) -> None:
    undescribed = [path for path, node in walk(root_schema(file)) if path and not node.get("description")]
    # Items of a list of strings are described by their list; metadata is ObjectMeta's (next test).
    assert [path for path in undescribed if not path.endswith(("[]", "{}"))] == ["metadata"]


@pytest.mark.parametrize("file", FILES)
def test_metadata_schema_says_nothing_but_its_type(file: str) -> None:
    # The API server refuses a CRD whose metadata schema specifies anything but name and generateName,
    # even a description ("metadata is implicitly specified").
    assert root_schema(file)["properties"]["metadata"] == {"type": "object"}


@pytest.mark.parametrize("file", FILES)
def test_exclusive_bounds_are_openapi_3_0_booleans(file: str) -> None:
    # JSONSchemaProps has `exclusiveMinimum: bool` next to `minimum`: a number there (JSON Schema
    # 2019 style) makes the API server refuse the whole CRD ("cannot unmarshal number ... of type bool").
    for path, node in walk(root_schema(file)):
        for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if exclusive in node:
                assert node[exclusive] is True, path
                assert bound in node, path


@pytest.mark.parametrize("file", FILES)
def test_only_user_data_preserves_unknown_fields(file: str) -> None:
    preserving = {
        path for path, node in walk(root_schema(file)) if node.get("x-kubernetes-preserve-unknown-fields")
    }
    assert preserving == FREE_FORM[file]
    for path in preserving:
        node = dict(walk(root_schema(file)))[path]
        assert node["type"] == "object"


@pytest.mark.parametrize("file", FILES)
def test_conditions_are_the_standard_map_list(file: str) -> None:
    conditions = node_at(root_schema(file), ".status.conditions")
    assert conditions is not None
    assert conditions["type"] == "array"
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status", "lastTransitionTime"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert item["properties"]["observedGeneration"]["format"] == "int64"


def test_workflow_name_limit_leaves_room_for_the_longest_stage_job_name() -> None:
    rules = root_schema("workflows.yaml")["x-kubernetes-validations"]
    [rule] = [r for r in rules if "metadata.name" in r["rule"]]
    assert rule["rule"] == "self.metadata.name.size() <= 48"
    assert len("x" * 48 + "-configure-job") <= 63
    assert "at most 48 characters" in rule["message"]


@pytest.mark.parametrize(
    ("file", "path", "default"),
    [
        ("workflows.yaml", ".spec.algorithm.container.tag", "latest"),
        ("workflows.yaml", ".spec.stop", False),
        ("computeenvironments.yaml", ".spec.nCPU", 1),
        ("computeenvironments.yaml", ".spec.nGPU", 0),
        ("computeenvironments.yaml", ".spec.ramGB", 1),
        ("computeenvironments.yaml", ".spec.diskGB", 1),
        ("computeenvironments.yaml", ".spec.priceMinute", 0),
        ("computeenvironments.yaml", ".spec.maxJobs", 10),
        ("computeenvironments.yaml", ".spec.maxJobDuration", 3600),
        ("computeenvironments.yaml", ".spec.storageExpiry", 0),
        ("computeenvironments.yaml", ".spec.allowNetwork", False),
        ("computeenvironments.yaml", ".spec.filter.enabled", False),
        ("computeenvironments.yaml", ".spec.filter.blockCopiedInputs", True),
    ],
)
def test_defaults(file: str, path: str, default: object) -> None:
    node = node_at(root_schema(file), path)
    assert node is not None
    assert node["default"] == default
    assert type(node["default"]) is type(default)


def test_workflow_spec_requires_what_every_job_needs() -> None:
    spec = node_at(root_schema("workflows.yaml"), ".spec")
    assert spec is not None
    assert set(spec["required"]) == {"environment", "owner", "inputs", "algorithm"}
    container = node_at(root_schema("workflows.yaml"), ".spec.algorithm.container")
    assert container is not None
    assert set(container["required"]) == {"image", "entrypoint"}


def test_the_frozen_spec_rule_names_every_spec_field_but_stop() -> None:
    """The CEL rule that freezes an admitted Workflow's spec must compare every field of the spec: a field
    added to the schema later and forgotten here could be swapped after the order was checked."""
    schema = root_schema("workflows.yaml")
    [rule] = [r for r in schema["x-kubernetes-validations"] if "oldSelf" in r["rule"]]
    fields = set(schema["properties"]["spec"]["properties"])
    compared = {f for f in fields if f"self.spec.{f} == oldSelf.spec.{f}" in rule["rule"]}
    assert compared == fields - {"stop"}


# What a Workflow author writes is bounded field by field, so no field can make one Workflow cost the
# operator more than the chosen maximum (issue 11, D18). The free-form objects' nested content is out of
# OpenAPI's and CEL's reach (CEL sees no field of an x-kubernetes-preserve-unknown-fields object): the API
# server's object size limit bounds it, and the operator's view keeps it as text (view.compact_workflow).
def user_fields() -> list[tuple[str, dict[str, Any]]]:
    spec = node_at(root_schema("workflows.yaml"), ".spec")
    assert spec is not None
    return list(walk(spec, "spec"))


def unbounded(path: str, node: dict[str, Any]) -> str | None:
    """Why `node` lets a Workflow author write an unbounded amount, if it does."""
    kind = node.get("type")
    if kind == "string" and "maxLength" not in node and "enum" not in node:
        return f"{path}: a string without maxLength"
    if kind == "array" and "maxItems" not in node:
        return f"{path}: an array without maxItems"
    if kind == "object" and node.get("x-kubernetes-preserve-unknown-fields") and "maxProperties" not in node:
        return f"{path}: a free-form object without maxProperties"
    if kind == "object" and node.get("additionalProperties") and "maxProperties" not in node:
        return f"{path}: a map without maxProperties"
    return None


def test_every_field_a_workflow_author_writes_is_bounded() -> None:
    fields = user_fields()
    assert {path for path, _ in fields} >= {
        "spec.inputs",
        "spec.algorithm.rawCode",
        *FREE_FORM["workflows.yaml"],
    }
    assert [why for path, node in fields if (why := unbounded(path, node))] == []


def test_the_bound_check_catches_what_it_should() -> None:
    """The check above must be able to fail: a field stripped of its bound is reported."""
    assert unbounded("s", {"type": "string"}) is not None
    assert unbounded("a", {"type": "array", "items": {"type": "string", "maxLength": 1}}) is not None
    assert unbounded("o", {"type": "object", "x-kubernetes-preserve-unknown-fields": True}) is not None
    assert unbounded("m", {"type": "object", "additionalProperties": {"type": "string"}}) is not None
    assert unbounded("e", {"type": "string", "enum": ["a"]}) is None


@pytest.mark.parametrize(
    ("path", "bound", "value"),
    [
        # Ocean identifiers have one length; a bound above it would only hide a wrong pattern.
        (".spec.owner", "maxLength", 42),
        (".spec.inputs", "maxItems", 64),
        (".spec.algorithm.did", "maxLength", len("did:op:" + "0" * 64)),
        (".spec.algorithm.container.checksum", "maxLength", len("sha256:" + "0" * 64)),
        # Far above what Ocean clients send (recorded: rawcode 15 characters, userdata 0 or 1 keys).
        (".spec.algorithm.rawCode", "maxLength", 256 * 1024),
        (".spec.algorithm.customData", "maxProperties", 256),
        (".spec.algorithm.userData", "maxProperties", 256),
    ],
)
def test_workflow_bounds(path: str, bound: str, value: int) -> None:
    node = node_at(root_schema("workflows.yaml"), path)
    assert node is not None
    assert node[bound] == value
