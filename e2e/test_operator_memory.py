"""The operator stays up whatever Workflows users write (issue 11, D18): twenty Workflows at the largest
size the schema and the API server accept keep the operator's resident memory under the chart's limit,
while they are created and reconciled and after a restart lists them all at once; and the real API
server refuses a Workflow one byte (one character, one key) over a bound of the CRD."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import kr8s
import kr8s.asyncio
import pytest
import yaml

from e2e.operator_fixtures import (
    DID,
    GROUP_VERSION,
    OPERATOR_ADDRESS,
    OperatorProcess,
    create_environment,
    workflow_manifest,
)
from e2e.operator_handle import REPO, Operator, StartOperator

pytestmark = [pytest.mark.simulated, pytest.mark.local_only]  # reads the operator process's /proc

WORKFLOWS = 20
# The largest Workflow the API server stores: etcd refuses a request over 1.5 MiB (--max-request-bytes'
# default), so the free-form data, which neither OpenAPI nor CEL can bound, fills up to just under it.
OBJECT_BYTES = 1_450_000


def chart_memory_limit() -> int:
    """The operator pod's memory limit in the chart's values, in bytes."""
    values = yaml.safe_load((REPO / "helm" / "ocean-c2d" / "values.yaml").read_text())
    limit = str(values["resources"]["limits"]["memory"])
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    return int(limit[:-2]) * units[limit[-2:]] if limit[-2:] in units else int(limit)


def crd_node(*path: str) -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / "workflows.yaml").read_text())
    node: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for name in path:
        node = node["items"] if name == "[]" else node["properties"][name]
    return node


def bound(*path: str, key: str = "maxLength") -> int:
    value = crd_node(*path)[key]
    assert isinstance(value, int)
    return value


def largest_workflow(name: str) -> dict[str, Any]:
    """Every bounded field at its bound, and free-form data, in the shape that costs Python the most
    memory once parsed (a dict per `{}`), up to the API server's object limit."""
    spec = ("spec",)
    algorithm = (*spec, "algorithm")
    keys = bound(*algorithm, "customData", key="maxProperties")
    inputs = [
        {
            "did": DID,
            "serviceId": "s" * bound(*spec, "inputs", "[]", "serviceId"),
            "transferTxId": "t" * bound(*spec, "inputs", "[]", "transferTxId"),
            "userData": {
                f"k{n}": [{}] * 4
                for n in range(bound(*spec, "inputs", "[]", "userData", key="maxProperties"))
            },
            "checksum": "sha256:" + "0" * 64,
            "size": 1,
        }
        for _ in range(bound(*spec, "inputs", key="maxItems"))
    ]
    manifest: dict[str, Any] = {
        "metadata": {"name": name},
        "spec": {
            "environment": "cpu",
            "owner": OPERATOR_ADDRESS,
            "agreementId": "a" * bound(*spec, "agreementId"),
            "chainId": 8996,
            "inputs": inputs,
            "algorithm": {
                "rawCode": "x" * bound(*algorithm, "rawCode"),
                "userData": {f"u{n}": [{}] for n in range(keys)},
                "customData": {},
                "container": {
                    "image": "i" * bound(*algorithm, "container", "image"),
                    "tag": "t" * bound(*algorithm, "container", "tag"),
                    "entrypoint": "e" * bound(*algorithm, "container", "entrypoint"),
                },
            },
            "output": {"metadataUri": "https://" + "m" * (bound(*spec, "output", "metadataUri") - 8)},
            "maxDuration": 60,
        },
    }
    room = OBJECT_BYTES - len(json.dumps(manifest, separators=(",", ":")))
    per_key = room // keys // 3  # "{}," is 3 bytes
    manifest["spec"]["algorithm"]["customData"] = {f"c{n:03d}": [{}] * per_key for n in range(keys)}
    return manifest


def memory_of(operator: Operator) -> tuple[int, int]:
    """(VmRSS, VmHWM: the peak) of the operator process, in bytes."""
    assert isinstance(operator, OperatorProcess)
    status = Path(f"/proc/{operator.process.pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


# Raw JSON requests, not kr8s objects: kr8s turns every nested dict of a body into an object of its own,
# which for these Workflows takes minutes of the test's CPU.
async def create(api: kr8s.asyncio.Api, namespace: str, manifest: dict[str, Any]) -> None:
    body = {"apiVersion": GROUP_VERSION, "kind": "Workflow", **manifest}
    async with api.call_api(
        "POST", version=GROUP_VERSION, namespace=namespace, url="workflows", json=body
    ) as response:
        response.read()


async def delete(api: kr8s.asyncio.Api, namespace: str, name: str) -> None:
    async with api.call_api("DELETE", version=GROUP_VERSION, namespace=namespace, url=f"workflows/{name}"):
        pass


async def wait_reconciled(api: kr8s.asyncio.Api, namespace: str, names: set[str], timeout: float) -> None:
    """Until each Workflow of `names` has a status stage (the operator reconciled it): a list, then a
    watch from its resourceVersion."""
    waiting = set(names)
    async with asyncio.timeout(timeout):
        async with api.call_api("GET", version=GROUP_VERSION, namespace=namespace, url="workflows") as listed:
            found = listed.json()
        waiting -= {item["metadata"]["name"] for item in found["items"] if _stage(item)}
        params = {"watch": "1", "resourceVersion": found["metadata"]["resourceVersion"]}
        while waiting:
            async with api.call_api(
                "GET", version=GROUP_VERSION, namespace=namespace, url="workflows", params=params, stream=True
            ) as stream:
                async for line in stream.aiter_lines():
                    event = json.loads(line)
                    item = event["object"]
                    if event["type"] == "ERROR":
                        raise AssertionError(f"the watch ended: {item}")
                    params["resourceVersion"] = item["metadata"]["resourceVersion"]
                    if _stage(item):
                        waiting.discard(item["metadata"]["name"])
                    if not waiting:
                        break


def _stage(item: dict[str, Any]) -> str | None:
    stage = (item.get("status") or {}).get("stage")
    return str(stage) if stage else None


async def reconcile_one(api: kr8s.asyncio.Api, namespace: str, name: str) -> None:
    """A small Workflow, until the operator has given it a status. kopf lists every indexed resource
    before it calls any handler, so then a (re)started operator holds every Workflow that exists."""
    await create(api, namespace, workflow_manifest(name))
    await wait_reconciled(api, namespace, {name}, timeout=180)


def small_workflow(name: str) -> dict[str, Any]:
    """Every field at its bound but customData: the API server's bounds are checked on it."""
    manifest = largest_workflow(name)
    manifest["spec"]["algorithm"]["customData"] = {"epochs": 3}
    return manifest


async def test_twenty_workflows_of_the_largest_size_keep_the_operator_under_its_memory_limit(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    limit = chart_memory_limit()
    await create_environment(api, namespace, maxJobs=2)  # most of them queue
    operator = await start_operator()
    await reconcile_one(api, namespace, "before")
    idle = memory_of(operator)

    size = len(json.dumps(largest_workflow("x" * 48), separators=(",", ":")))
    names = {f"largest-{n:02d}-".ljust(48, "x") for n in range(WORKFLOWS)}
    for name in sorted(names):
        await create(api, namespace, largest_workflow(name))
    await wait_reconciled(api, namespace, names, timeout=240)
    running = memory_of(operator)

    await operator.kill()
    restarted = await start_operator()
    await reconcile_one(api, namespace, "after-restart")  # so it has listed all twenty
    after_restart = memory_of(restarted)

    mib = 1024**2
    print(
        f"\n{WORKFLOWS} Workflows of {size / mib:.2f} MiB each (JSON), chart limit {limit / mib:.0f} MiB;"
        f" operator RSS/peak: idle {idle[0] / mib:.0f}/{idle[1] / mib:.0f} MiB,"
        f" after creating them {running[0] / mib:.0f}/{running[1] / mib:.0f} MiB,"
        f" restarted {after_restart[0] / mib:.0f}/{after_restart[1] / mib:.0f} MiB"
    )
    assert size > 1_400_000
    for rss, peak in (running, after_restart):
        assert peak < limit, f"peak RSS {peak / mib:.0f} MiB over the chart's {limit / mib:.0f} MiB"
        assert rss < limit


async def refused(api: kr8s.asyncio.Api, namespace: str, manifest: dict[str, Any]) -> str:
    """The API server's refusal of `manifest` (fails the test when it is accepted)."""
    with pytest.raises(kr8s.ServerError) as caught:
        await create(api, namespace, manifest)
    response = caught.value.response
    return response.text if response is not None else str(caught.value)


async def accepted(api: kr8s.asyncio.Api, namespace: str, manifest: dict[str, Any]) -> None:
    await create(api, namespace, manifest)
    await delete(api, namespace, manifest["metadata"]["name"])


@pytest.mark.usefixtures("ocean_crds")
async def test_the_api_server_refuses_a_workflow_one_over_a_bound(
    api: kr8s.asyncio.Api, namespace: str
) -> None:
    raw_code = bound("spec", "algorithm", "rawCode")
    keys = bound("spec", "algorithm", "customData", key="maxProperties")
    at_bound = small_workflow("at-bound")
    at_bound["spec"]["algorithm"]["customData"] = {f"c{n}": n for n in range(keys)}
    await accepted(api, namespace, at_bound)  # every field at its bound: rawCode, customData's keys, ...

    too_long = small_workflow("raw-code-too-long")
    too_long["spec"]["algorithm"]["rawCode"] = "x" * (raw_code + 1)
    assert "spec.algorithm.rawCode" in await refused(api, namespace, too_long)

    too_many = small_workflow("custom-data-too-many-keys")
    too_many["spec"]["algorithm"]["customData"] = {f"c{n}": n for n in range(keys + 1)}
    assert "spec.algorithm.customData" in await refused(api, namespace, too_many)

    too_many_inputs = small_workflow("too-many-inputs")
    too_many_inputs["spec"]["inputs"].append(too_many_inputs["spec"]["inputs"][0])
    assert "spec.inputs" in await refused(api, namespace, too_many_inputs)

    # The free-form data's nested content: the API server's object size limit is its bound.
    await accepted(api, namespace, largest_workflow("largest"))
    too_large = largest_workflow("too-large")
    too_large["spec"]["algorithm"]["customData"]["c000"] += [{}] * 100_000
    assert "too large" in await refused(api, namespace, too_large)
