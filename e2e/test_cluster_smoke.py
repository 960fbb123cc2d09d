"""Proof that the test cluster is a real one: real Job controller, scheduler, garbage collector and
CRD validation, with kwok playing the pods' lifecycle as their annotations say (e2e/README.md)."""

from __future__ import annotations

import uuid
from typing import Any

import kr8s
import kr8s.asyncio
import pytest
from kr8s.asyncio.objects import ConfigMap, Job, Node, PersistentVolumeClaim, Pod, new_class

from e2e.waiting import wait_for, wait_for_deletion

SIM = "sim.ocean-c2d/"


def job_manifest(name: str, annotations: dict[str, str], **pod_spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations, "labels": {"smoke": name}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "busybox:1.36", "command": ["true"]}],
                    **pod_spec,
                },
            },
        },
    }


def condition(obj: Any, kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in (obj.raw.get("status") or {}).get("conditions") or []
    )


async def only_pod_of(api: kr8s.asyncio.Api, job_name: str, namespace: str) -> Pod:
    listed = Pod.list(namespace=namespace, label_selector={"smoke": job_name}, api=api)
    pods = [p async for p in listed if isinstance(p, Pod)]
    assert len(pods) == 1, f"expected one pod for Job {job_name}, found {[p.name for p in pods]}"
    return pods[0]


def terminated_state(pod: Pod) -> dict[str, Any]:
    [status] = pod.raw["status"]["containerStatuses"]
    state: dict[str, Any] = status["state"]["terminated"]
    return state


async def test_job_runs_on_a_fake_node_and_completes(api: kr8s.asyncio.Api, namespace: str) -> None:
    job = await Job(job_manifest("completes", {SIM + "run-for": "2s"}), namespace=namespace, api=api)
    await job.create()

    await wait_for(job, lambda j: condition(j, "Complete") or condition(j, "Failed"), timeout=90)

    assert condition(job, "Complete"), job.raw["status"]
    assert job.raw["status"]["succeeded"] == 1
    pod = await only_pod_of(api, "completes", namespace)
    nodes = {node.name async for node in Node.list(api=api) if isinstance(node, Node)}
    assert pod.raw["spec"]["nodeName"] in nodes
    assert pod.raw["status"]["phase"] == "Succeeded"
    assert terminated_state(pod)["exitCode"] == 0
    started = job.raw["status"]["startTime"]
    finished = job.raw["status"]["completionTime"]
    assert started < finished or started == finished  # RFC 3339 strings sort in time order


@pytest.mark.simulated
async def test_failing_job_is_failed_with_the_exit_code_on_its_pod(
    api: kr8s.asyncio.Api, namespace: str
) -> None:
    annotations = {SIM + "run-for": "1s", SIM + "exit-code": "3", SIM + "message": "algorithm crashed"}
    job = await Job(job_manifest("fails", annotations), namespace=namespace, api=api)
    await job.create()

    await wait_for(job, lambda j: condition(j, "Complete") or condition(j, "Failed"), timeout=90)

    assert condition(job, "Failed"), job.raw["status"]
    assert not condition(job, "Complete")
    pod = await only_pod_of(api, "fails", namespace)
    assert pod.raw["status"]["phase"] == "Failed"
    terminated = terminated_state(pod)
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    assert terminated["message"] == "algorithm crashed"


@pytest.mark.simulated
async def test_oom_killed_container(api: kr8s.asyncio.Api, namespace: str) -> None:
    annotations = {SIM + "run-for": "1s", SIM + "exit-code": "137", SIM + "reason": "OOMKilled"}
    job = await Job(job_manifest("oom", annotations), namespace=namespace, api=api)
    await job.create()

    await wait_for(job, lambda j: condition(j, "Failed"), timeout=90)

    terminated = terminated_state(await only_pod_of(api, "oom", namespace))
    assert (terminated["exitCode"], terminated["reason"]) == (137, "OOMKilled")


@pytest.mark.simulated
async def test_image_that_cannot_be_pulled_keeps_the_pod_waiting(
    api: kr8s.asyncio.Api, namespace: str
) -> None:
    pod = await Pod(
        {
            "metadata": {"name": "bad-image", "annotations": {SIM + "image-pull": "fail"}},
            "spec": {"containers": [{"name": "main", "image": "registry.invalid/nope:1"}]},
        },
        namespace=namespace,
        api=api,
    )
    await pod.create()

    def waiting_reason(p: Pod) -> str | None:
        statuses = p.raw.get("status", {}).get("containerStatuses", [])
        return statuses[0]["state"].get("waiting", {}).get("reason") if statuses else None

    await wait_for(pod, lambda p: waiting_reason(p) == "ErrImagePull", timeout=60)
    assert pod.raw["status"]["phase"] == "Pending"
    await wait_for(pod, lambda p: waiting_reason(p) == "ImagePullBackOff", timeout=60)
    assert pod.raw["status"]["phase"] == "Pending"
    assert (
        "registry.invalid/nope:1" in pod.raw["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    )


@pytest.mark.simulated
async def test_gpu_pods_land_only_on_the_gpu_node(api: kr8s.asyncio.Api, namespace: str) -> None:
    def gpu_pod(name: str, gpus: int) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "annotations": {SIM + "run-for": "600s"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": "cuda:12",
                        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                    }
                ],
            },
        }

    placed = []
    for index in range(3):
        pod = await Pod(gpu_pod(f"gpu-{index}", 1), namespace=namespace, api=api)
        await pod.create()
        await wait_for(pod, lambda p: bool(p.raw["spec"].get("nodeName")), timeout=60)
        placed.append(pod.raw["spec"]["nodeName"])
    assert placed == ["gpu-node-1"] * 3

    # The GPU node has 4 GPUs and 3 are taken: a pod asking for 2 cannot be scheduled anywhere.
    greedy = await Pod(gpu_pod("gpu-greedy", 2), namespace=namespace, api=api)
    await greedy.create()

    def unschedulable(p: Pod) -> bool:
        return any(
            c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
            for c in p.raw.get("status", {}).get("conditions", [])
        )

    await wait_for(greedy, unschedulable, timeout=60)
    assert not greedy.raw["spec"].get("nodeName")
    [scheduled] = [c for c in greedy.raw["status"]["conditions"] if c["type"] == "PodScheduled"]
    assert "nvidia.com/gpu" in scheduled["message"]


async def test_deleting_an_owner_garbage_collects_its_child(api: kr8s.asyncio.Api, namespace: str) -> None:
    owner = await ConfigMap({"metadata": {"name": "owner"}, "data": {"k": "v"}}, namespace=namespace, api=api)
    await owner.create()
    child = await ConfigMap(
        {
            "metadata": {
                "name": "child",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": owner.name, "uid": owner.metadata.uid}
                ],
            },
            "data": {"k": "v"},
        },
        namespace=namespace,
        api=api,
    )
    await child.create()
    unrelated = await ConfigMap({"metadata": {"name": "unrelated"}}, namespace=namespace, api=api)
    await unrelated.create()

    await owner.delete(propagation_policy="Background")

    await wait_for_deletion(child, timeout=60)
    assert not await child.exists()
    assert await unrelated.exists()


@pytest.fixture
async def widget_crd(api: kr8s.asyncio.Api) -> Any:
    """A throwaway namespaced CRD with a structural schema, removed after the test."""
    group = f"smoke{uuid.uuid4().hex[:8]}.e2e.ocean-c2d.io"
    crd_class = new_class(
        kind="CustomResourceDefinition",
        version="apiextensions.k8s.io/v1",
        namespaced=False,
        asyncio=True,
    )
    crd = await crd_class(
        {
            "metadata": {"name": f"widgets.{group}"},
            "spec": {
                "group": group,
                "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
                "scope": "Namespaced",
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {
                                        "type": "object",
                                        "required": ["size"],
                                        "properties": {
                                            "size": {"type": "integer", "minimum": 1},
                                            "colour": {"type": "string", "enum": ["red", "blue"]},
                                        },
                                    }
                                },
                            }
                        },
                    }
                ],
            },
        },
        api=api,
    )
    await crd.create()
    await wait_for(crd, lambda c: condition(c, "Established"), timeout=60)
    yield group
    await crd.delete()


async def test_crd_schema_rejects_an_invalid_object(
    api: kr8s.asyncio.Api, namespace: str, widget_crd: str
) -> None:
    widget_class = new_class(kind="Widget", version=f"{widget_crd}/v1", namespaced=True, asyncio=True)

    invalid = await widget_class(
        {"metadata": {"name": "bad"}, "spec": {"size": 0, "colour": "green"}}, namespace=namespace, api=api
    )
    with pytest.raises(kr8s.ServerError) as rejected:
        await invalid.create()
    assert rejected.value.response is not None
    assert rejected.value.response.status_code == 422
    message = str(rejected.value)
    assert "spec.size" in message
    assert "spec.colour" in message

    valid = await widget_class(
        {"metadata": {"name": "good"}, "spec": {"size": 2, "unknownField": "dropped"}},
        namespace=namespace,
        api=api,
    )
    await valid.create()
    await valid.refresh()
    # A structural schema prunes fields it does not know.
    assert valid.raw["spec"] == {"size": 2}


async def test_claim_is_provisioned_and_its_pod_completes(api: kr8s.asyncio.Api, namespace: str) -> None:
    claim = await PersistentVolumeClaim(
        {
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
        namespace=namespace,
        api=api,
    )
    await claim.create()
    await wait_for(claim, lambda c: c.raw.get("status", {}).get("phase") == "Bound", timeout=60)
    assert claim.raw["spec"]["storageClassName"]  # the cluster's default class was applied
    assert claim.raw["spec"]["volumeName"]

    manifest = job_manifest("with-volume", {SIM + "run-for": "1s"})
    pod_spec = manifest["spec"]["template"]["spec"]
    pod_spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    pod_spec["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    job = await Job(manifest, namespace=namespace, api=api)
    await job.create()
    await wait_for(job, lambda j: condition(j, "Complete") or condition(j, "Failed"), timeout=90)
    assert condition(job, "Complete"), job.raw["status"]
