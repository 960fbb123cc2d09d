"""The CRDs in crds/ as the API server enforces them: validation (schema and CEL), defaults, pruning,
the status subresource and the printer columns."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import kr8s
import kr8s.asyncio
import pytest
from kr8s.asyncio.objects import APIObject

from e2e.operator_fixtures import DID as DATA_DID
from e2e.operator_fixtures import GROUP_VERSION, ComputeEnvironment, Workflow
from e2e.operator_fixtures import OPERATOR_ADDRESS as OWNER
from ocean_c2d.times import format_time

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
ALGO_DID = "did:op:" + "FEDCBA9876543210" * 4  # upper-case hex: the schema accepts both cases
SHA256 = "sha256:" + "ab" * 32


def workflow_manifest(name: str = "valid") -> dict[str, Any]:
    """A valid Workflow: one input and the algorithm, both published assets named by DID."""
    return {
        "metadata": {"name": name},
        "spec": {
            "environment": "cpu-small",
            "owner": OWNER,
            "agreementId": "0x" + "12" * 32,
            "chainId": 8996,
            "inputs": [{"did": DATA_DID, "serviceId": "compute", "transferTxId": "0x" + "34" * 32}],
            "algorithm": {
                "did": ALGO_DID,
                "serviceId": "compute",
                "transferTxId": "0x" + "56" * 32,
                "container": {"image": "oceanprotocol/algo_dockers", "entrypoint": "python $ALGO"},
            },
        },
    }


async def create_workflow(
    api: kr8s.asyncio.Api, namespace: str, manifest: dict[str, Any] | None = None
) -> APIObject:
    workflow: APIObject = await Workflow(manifest or workflow_manifest(), namespace=namespace, api=api)
    await workflow.create()
    return workflow


def rejection_status(error: kr8s.ServerError) -> int | None:
    return error.response.status_code if error.response is not None else None


@pytest.mark.usefixtures("ocean_crds")
async def test_valid_workflow_is_accepted_with_defaults(api: kr8s.asyncio.Api, namespace: str) -> None:
    workflow = await create_workflow(api, namespace)
    await workflow.refresh()

    spec = workflow.raw["spec"]
    assert spec["algorithm"]["container"]["tag"] == "latest"
    assert spec["stop"] is False
    assert spec["inputs"] == workflow_manifest()["spec"]["inputs"]
    assert spec["algorithm"]["did"] == ALGO_DID
    assert workflow.metadata.generation == 1
    assert "status" not in workflow.raw


def _parent(manifest: dict[str, Any], path: str) -> tuple[Any, str]:
    """The node holding the last key of a dotted path (numbers index lists), and that key."""
    *parents, last = path.split(".")
    node: Any = manifest
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    return node, last


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change to a manifest: set the value at a dotted path."""

    def change(manifest: dict[str, Any]) -> None:
        node, key = _parent(manifest, path)
        node[key] = value

    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    """A change to a manifest: remove the field at a dotted path."""

    def change(manifest: dict[str, Any]) -> None:
        node, key = _parent(manifest, path)
        del node[key]

    return change


# The `namespace` fixture names its namespace after the test, which a parametrized id (with its
# brackets) would make invalid: each table below runs in one test, and reports every failing case.
INVALID_WORKFLOWS: list[tuple[str, Callable[[dict[str, Any]], None], list[str]]] = [
    ("bad owner", _set("spec.owner", "0x1234"), ["spec.owner", "should match"]),
    (
        "input with did and url",
        _set("spec.inputs.0.url", "https://example.com/data.csv"),
        ["spec.inputs[0]", "an input names exactly one of did or url"],
    ),
    (
        "input with neither did nor url",
        _set("spec.inputs", [{"checksum": SHA256, "size": 10}]),
        ["spec.inputs[0]", "an input names exactly one of did or url"],
    ),
    (
        "did input without transferTxId",
        _drop("spec.inputs.0.transferTxId"),
        ["spec.inputs[0]", "an input by did needs serviceId and transferTxId"],
    ),
    (
        "algorithm with did and rawCode",
        _set("spec.algorithm.rawCode", "print('hello')"),
        ["spec.algorithm", "the algorithm comes from exactly one of did, url or rawCode"],
    ),
    (
        "algorithm with none of did, url, rawCode",
        _drop("spec.algorithm.did"),
        ["spec.algorithm", "the algorithm comes from exactly one of did, url or rawCode"],
    ),
    (
        "input checksum not sha256",
        _set("spec.inputs", [{"url": "https://example.com/data.csv", "checksum": "md5:" + "ab" * 16}]),
        ["spec.inputs[0].checksum", "should match"],
    ),
    (
        "image checksum in uppercase hex",
        _set("spec.algorithm.container.checksum", "sha256:" + "AB" * 32),
        ["spec.algorithm.container.checksum", "should match"],
    ),
    ("name of 49 characters", _set("metadata.name", "w" * 49), ["a Workflow name is at most 48 characters"]),
    (
        "maxDuration 0",
        _set("spec.maxDuration", 0),
        ["spec.maxDuration", "should be greater than or equal to 1"],
    ),
    ("environment in uppercase", _set("spec.environment", "CPU-Small"), ["spec.environment", "should match"]),
    ("no owner", _drop("spec.owner"), ["spec.owner", "Required value"]),
    ("no image", _drop("spec.algorithm.container.image"), ["spec.algorithm.container.image", "Required"]),
    ("no spec", _drop("spec"), ["spec", "Required value"]),
]


@pytest.mark.usefixtures("ocean_crds")
async def test_invalid_workflows_are_rejected(api: kr8s.asyncio.Api, namespace: str) -> None:
    problems = []
    for case, change, expected in INVALID_WORKFLOWS:
        manifest = workflow_manifest("invalid")
        change(manifest)
        try:
            await create_workflow(api, namespace, manifest)
        except kr8s.ServerError as error:
            status, message = rejection_status(error), str(error)
            if status != 422 or not all(part in message for part in expected):
                problems.append(f"{case}: HTTP {status} {message!r} lacks {expected}")
        else:
            problems.append(f"{case}: accepted")

    assert problems == []
    assert [w async for w in Workflow.list(namespace=namespace, api=api)] == []


@pytest.mark.usefixtures("ocean_crds")
async def test_name_of_48_characters_is_accepted(api: kr8s.asyncio.Api, namespace: str) -> None:
    workflow = await create_workflow(api, namespace, workflow_manifest("w" * 48))
    assert len(workflow.name) == 48
    assert await workflow.exists()


@pytest.mark.usefixtures("ocean_crds")
async def test_unknown_fields_are_pruned_and_user_data_is_kept(api: kr8s.asyncio.Api, namespace: str) -> None:
    manifest = workflow_manifest()
    manifest["spec"]["priority"] = "high"
    manifest["spec"]["algorithm"]["container"]["gpu"] = True
    manifest["spec"]["inputs"][0]["mountPath"] = "/elsewhere"
    manifest["spec"]["inputs"][0]["userData"] = {"rows": 10, "nested": {"anything": ["goes"]}}
    manifest["spec"]["algorithm"]["customData"] = {"learningRate": 0.01, "epochs": 3}

    workflow = await create_workflow(api, namespace, manifest)
    await workflow.refresh()

    spec = workflow.raw["spec"]
    assert "priority" not in spec
    assert "gpu" not in spec["algorithm"]["container"]
    assert "mountPath" not in spec["inputs"][0]
    assert spec["inputs"][0]["userData"] == {"rows": 10, "nested": {"anything": ["goes"]}}
    assert spec["algorithm"]["customData"] == {"learningRate": 0.01, "epochs": 3}


@pytest.mark.usefixtures("ocean_crds")
async def test_status_is_written_only_through_the_status_subresource(
    api: kr8s.asyncio.Api, namespace: str
) -> None:
    workflow = await create_workflow(api, namespace)

    # Through the main resource: the spec change lands, the status is dropped.
    await workflow.patch({"spec": {"stop": True}, "status": {"stage": "Queued", "statusText": "Queued"}})
    await workflow.refresh()
    assert workflow.raw["spec"]["stop"] is True
    assert "status" not in workflow.raw
    assert workflow.metadata.generation == 2

    # Through /status: the status lands, a spec change in the same patch is dropped.
    status = {
        "observedGeneration": 2,
        "stage": "Queued",
        "statusCode": 1,
        "statusText": "Job started",
        "queuePosition": 3,
        "reason": "WaitingForSlot",
        "conditions": [
            {
                "type": "Admitted",
                "status": "False",
                "reason": "EnvironmentFull",
                "message": "10 of 10 jobs run",
                "lastTransitionTime": "2025-01-02T03:04:05Z",
                "observedGeneration": 2,
            }
        ],
    }
    await workflow.patch({"spec": {"stop": False}, "status": status}, subresource="status")
    await workflow.refresh()
    assert workflow.raw["status"] == status
    assert workflow.raw["spec"]["stop"] is True
    assert workflow.metadata.generation == 2  # a status write is not a spec change

    # The status is validated too.
    with pytest.raises(kr8s.ServerError) as rejected:
        await workflow.patch({"status": {"stage": "Sleeping"}}, subresource="status")
    assert rejection_status(rejected.value) == 422
    assert "status.stage" in str(rejected.value)


async def table(api: kr8s.asyncio.Api, namespace: str, plural: str) -> dict[str, Any]:
    """What `kubectl get <plural>` shows: the server-side Table of the namespace's objects."""
    async with api.call_api(
        "GET", version=GROUP_VERSION, namespace=namespace, url=plural, headers={"Accept": TABLE}
    ) as response:
        result: dict[str, Any] = response.json()
    assert result["kind"] == "Table"
    return result


@pytest.mark.usefixtures("ocean_crds")
async def test_the_spec_of_an_admitted_workflow_is_frozen_but_for_stop(
    api: kr8s.asyncio.Api, namespace: str
) -> None:
    """The order was checked against this image, entrypoint, inputs and metadata cache: once admitted,
    none may be swapped (a CEL transition rule); only `stop` may still be set."""
    workflow = await create_workflow(api, namespace)
    await workflow.patch({"spec": {"maxDuration": 60}})  # queued: still editable
    await workflow.patch(
        {"status": {"stage": "Configuring", "admittedAt": "2026-01-01T12:00:00Z"}}, subresource="status"
    )

    swaps: dict[str, dict[str, Any]] = {
        "image": {"algorithm": {"container": {"image": "evil/exfiltrate"}}},
        "inputs": {"inputs": [{"url": "https://attacker.example/x"}]},
        "output": {"output": {"metadataUri": "https://attacker.example"}},
        "maxDuration": {"maxDuration": 61},
    }
    for field, spec in swaps.items():
        with pytest.raises(kr8s.ServerError) as rejected:
            await workflow.patch({"spec": spec})
        assert rejection_status(rejected.value) == 422, field
        assert "cannot change, except stop" in str(rejected.value), field
    await workflow.patch({"spec": {"stop": True}})
    await workflow.refresh()
    assert workflow.raw["spec"]["stop"] is True
    assert workflow.raw["spec"]["algorithm"]["container"]["image"] == "oceanprotocol/algo_dockers"
    await workflow.patch({"status": {"stage": "Finished"}}, subresource="status")  # status writes still land


@pytest.mark.usefixtures("ocean_crds")
async def test_workflow_table_columns(api: kr8s.asyncio.Api, namespace: str) -> None:
    workflow = await create_workflow(api, namespace)
    await workflow.patch(
        {
            "status": {
                "statusCode": 40,
                "statusText": "Running algorithm",
                "stage": "RunningAlgorithm",
                "reason": "AlgorithmStarted",
                "message": "the algorithm pod is running",
                "queuePosition": 0,
                "startedAt": format_time(datetime.now(UTC) - timedelta(days=5, hours=12)),
            }
        },
        subresource="status",
    )

    result = await table(api, namespace, "workflows")

    columns = [(c["name"], c["priority"]) for c in result["columnDefinitions"]]
    assert columns == [
        ("Name", 0),
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
    ]
    [row] = result["rows"]
    cells = dict(zip([name for name, _ in columns], row["cells"], strict=True))
    assert cells["Name"] == "valid"
    assert cells["Status"] == "Running algorithm"
    assert cells["Stage"] == "RunningAlgorithm"
    assert cells["Environment"] == "cpu-small"
    assert cells["Started"] in ("5d12h", "5d11h")  # a date column shows how long ago it was
    assert cells["Duration"] is None  # not finished
    assert cells["Reason"] == "AlgorithmStarted"
    assert (cells["Code"], cells["Queue"]) == (40, 0)
    assert cells["Message"] == "the algorithm pod is running"


@pytest.mark.usefixtures("ocean_crds")
async def test_compute_environment_defaults(api: kr8s.asyncio.Api, namespace: str) -> None:
    environment = await ComputeEnvironment(
        {"metadata": {"name": "cpu-small"}, "spec": {}}, namespace=namespace, api=api
    )
    await environment.create()
    await environment.refresh()

    assert environment.raw["spec"] == {
        "nCPU": 1,
        "nGPU": 0,
        "ramGB": 1,
        "diskGB": 1,
        "priceMinute": 0,
        "maxJobs": 10,
        "maxJobDuration": 3600,
        "storageExpiry": 0,
        "allowNetwork": False,
    }

    await environment.patch({"spec": {"filter": {}}})
    assert environment.raw["spec"]["filter"] == {"enabled": False, "blockCopiedInputs": True}


INVALID_ENVIRONMENTS: list[tuple[str, dict[str, Any], str]] = [
    ("gpuRam without nGPU", {"gpuRam": 40}, "gpuRam needs nGPU > 0"),
    ("gpuRam with nGPU 0", {"nGPU": 0, "gpuRam": 40}, "gpuRam needs nGPU > 0"),
    ("ramGB 0", {"ramGB": 0}, "spec.ramGB"),
    ("nCPU 0", {"nCPU": 0}, "spec.nCPU"),
    ("non-string node label", {"nodeSelector": {"gpu": True}}, "spec.nodeSelector.gpu"),
]


@pytest.mark.usefixtures("ocean_crds")
async def test_invalid_compute_environments_are_rejected(api: kr8s.asyncio.Api, namespace: str) -> None:
    problems = []
    for case, spec, expected in INVALID_ENVIRONMENTS:
        environment = await ComputeEnvironment(
            {"metadata": {"name": "invalid"}, "spec": spec}, namespace=namespace, api=api
        )
        try:
            await environment.create()
        except kr8s.ServerError as error:
            status, message = rejection_status(error), str(error)
            if status != 422 or expected not in message:
                problems.append(f"{case}: HTTP {status} {message!r} lacks {expected!r}")
        else:
            problems.append(f"{case}: accepted")

    assert problems == []
    assert [e async for e in ComputeEnvironment.list(namespace=namespace, api=api)] == []


@pytest.mark.usefixtures("ocean_crds")
async def test_gpu_environment_is_accepted_and_its_table_shows_it(
    api: kr8s.asyncio.Api, namespace: str
) -> None:
    spec = {
        "nCPU": 8,
        "nGPU": 1,
        "gpuRam": 40,
        "gpuType": "NVIDIA-A100-SXM4-40GB",
        "ramGB": 63.5,
        "priceMinute": 0.25,
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    environment = await ComputeEnvironment(
        {"metadata": {"name": "gpu-a100"}, "spec": spec}, namespace=namespace, api=api
    )
    await environment.create()
    await environment.patch(
        {"status": {"jobs": "2/10", "queuedJobs": 5, "queueHead": "wf-7"}}, subresource="status"
    )
    assert environment.raw["spec"]["tolerations"] == spec["tolerations"]

    result = await table(api, namespace, "computeenvironments")

    names = [c["name"] for c in result["columnDefinitions"]]
    assert names == ["Name", "Jobs", "Queued", "Next", "CPU", "GPU", "RAM", "Price", "Age"]
    [row] = result["rows"]
    cells = dict(zip(names, row["cells"], strict=True))
    assert cells["Name"] == "gpu-a100"
    assert (cells["Jobs"], cells["Queued"], cells["Next"]) == ("2/10", 5, "wf-7")
    assert (cells["CPU"], cells["GPU"]) == (8, 1)
    assert (cells["RAM"], cells["Price"]) == (63.5, 0.25)


@pytest.mark.usefixtures("ocean_crds")
async def test_api_group_serves_both_kinds_with_short_names_and_category(api: kr8s.asyncio.Api) -> None:
    # Last in the module: discovery is refreshed right after a CRD is Established, not with it.
    async with api.call_api("GET", version=GROUP_VERSION) as response:
        resources = {r["name"]: r for r in response.json()["resources"]}

    assert resources["workflows"]["kind"] == "Workflow"
    assert resources["workflows"]["shortNames"] == ["wf"]
    assert resources["workflows"]["namespaced"] is True
    assert resources["computeenvironments"]["kind"] == "ComputeEnvironment"
    assert resources["computeenvironments"]["shortNames"] == ["c2denv"]
    for plural in ("workflows", "computeenvironments"):
        assert resources[plural]["categories"] == ["c2d"]
        assert f"{plural}/status" in resources
