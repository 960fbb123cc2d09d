"""The operator, running as a process, drives real Workflows on the test cluster (kwok plays the pods).

Stage outcomes are chosen per test with sim.ocean-c2d/<stage>.<knob> annotations on the Workflow, which
the e2e templates (e2e/templates/) copy onto that stage's pod for kwok.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import kr8s.asyncio
import pytest
from kr8s.asyncio.objects import APIObject, Pod

from e2e.api_client import source_tree_env
from e2e.operator_fixtures import (
    OPERATOR_ADDRESS,
    create_environment,
    create_workflow,
    status,
    wait_finished,
)
from e2e.operator_handle import Operator, StartOperator
from e2e.services import IPFSNode, S3Server
from e2e.waiting import wait_for, wait_for_deletion, wait_for_object

pytestmark = pytest.mark.simulated

RESULTS = [{"filename": "result.csv", "filesize": 42, "url": "s3://bucket/job/result.csv", "type": "output"}]


CHILD_KINDS = ("pods", "configmaps", "secrets", "persistentvolumeclaims", "networkpolicies")


async def child_objects(api: kr8s.asyncio.Api, namespace: str, workflow: str) -> list[APIObject]:
    return [
        obj
        for kind in CHILD_KINDS
        async for obj in api.async_get(kind, namespace=namespace, label_selector={"workflow": workflow})
        if isinstance(obj, APIObject)
    ]


async def children(api: kr8s.asyncio.Api, namespace: str, workflow: str) -> dict[str, list[dict[str, Any]]]:
    """Every object labelled as this Workflow's child, by kind."""
    found: dict[str, list[dict[str, Any]]] = {}
    for obj in await child_objects(api, namespace, workflow):
        found.setdefault(obj.kind, []).append(obj.raw)
    return found


async def wait_children_gone(api: kr8s.asyncio.Api, namespace: str, workflow: str) -> None:
    for obj in await child_objects(api, namespace, workflow):
        await wait_for_deletion(obj, timeout=60)


async def test_happy_path_ends_70_with_every_child_owned(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    await create_environment(api, namespace)
    operator = await start_operator(DEBUG_NO_CLEANUP="1")
    sim = {"publish.message": json.dumps({"results": RESULTS})}
    workflow = await create_workflow(api, namespace, "happy", sim=sim)

    final = await wait_finished(workflow, operator)

    assert (final["statusCode"], final["statusText"], final["reason"]) == (70, "Job finished", "Succeeded")
    assert final["results"] == RESULTS
    assert [final["stages"][s]["exitCode"] for s in ("configure", "algorithm", "publish")] == [0, 0, 0]
    owned = await children(api, namespace, "happy")
    assert sorted(owned) == ["ConfigMap", "NetworkPolicy", "PersistentVolumeClaim", "Pod", "Secret"]
    assert sorted(j["metadata"]["name"] for j in owned["Pod"]) == [
        "happy-algorithm",
        "happy-configure",
        "happy-publish",
    ]
    for objects in owned.values():
        for obj in objects:
            [owner] = obj["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["name"], owner["uid"]) == (
                "Workflow",
                "happy",
                workflow.metadata.uid,
            )
    conditions = {c["type"]: c["status"] for c in final["conditions"]}
    assert conditions == {"Admitted": "True", "Finished": "True", "Succeeded": "True"}


async def test_children_are_cleaned_up_after_the_end(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    await create_environment(api, namespace)
    operator = await start_operator()
    workflow = await create_workflow(api, namespace, "tidy")

    final = await wait_finished(workflow, operator)

    assert final["statusCode"] == 70
    await wait_children_gone(api, namespace, "tidy")
    assert await children(api, namespace, "tidy") == {}


@pytest.mark.parametrize(
    ("sim", "code", "reason", "pods"),
    [
        pytest.param({"algorithm.exit-code": "1"}, 41, "AlgorithmFailed", 3, id="algorithm-exit-1"),
        pytest.param({"configure.exit-code": "31"}, 31, "DataProvisioningFailed", 2, id="data-provisioning"),
        pytest.param(
            {"configure.exit-code": "32"}, 32, "AlgorithmProvisioningFailed", 2, id="algorithm-provisioning"
        ),
    ],
)
async def test_failures_end_with_their_code_and_logs_are_still_published(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    sim: dict[str, str],
    code: int,
    reason: str,
    pods: int,
) -> None:
    await create_environment(api, namespace)
    operator = await start_operator(DEBUG_NO_CLEANUP="1")
    workflow = await create_workflow(api, namespace, "fails", sim=sim)

    final = await wait_finished(workflow, operator)

    assert (final["statusCode"], final["reason"]) == (code, reason)
    assert final["stages"]["publish"]["exitCode"] == 0  # the publish stage ran: logs are published
    assert len((await children(api, namespace, "fails"))["Pod"]) == pods
    conditions = {c["type"]: (c["status"], c["reason"]) for c in final["conditions"]}
    assert conditions["Succeeded"] == ("False", reason)


async def test_algorithm_past_its_time_limit_times_out(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    await create_environment(api, namespace)
    operator = await start_operator()
    workflow = await create_workflow(api, namespace, "slow", sim={"algorithm.run-for": "120s"}, maxDuration=3)

    final = await wait_finished(workflow, operator)

    assert (final["statusCode"], final["reason"]) == (43, "AlgorithmTimedOut")
    assert final["stages"]["algorithm"]["reason"] == "DeadlineExceeded"
    assert final["stages"]["publish"]["exitCode"] == 0


async def test_stop_mid_algorithm_ends_stopped_and_still_publishes(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    await create_environment(api, namespace)
    operator = await start_operator()
    workflow = await create_workflow(api, namespace, "halt", sim={"algorithm.run-for": "300s"})
    await wait_for(workflow, lambda w: status(w).get("stage") == "RunningAlgorithm", timeout=60)

    await workflow.patch({"spec": {"stop": True}})
    final = await wait_finished(workflow, operator, timeout=60)

    assert (final["statusCode"], final["statusText"], final["reason"]) == (72, "Job stopped", "Stopped")
    assert final["stages"]["algorithm"]["reason"] == "Stopped"
    assert final["stages"]["publish"]["exitCode"] == 0


async def test_unknown_environment_fails_with_the_reason(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    operator = await start_operator()
    workflow = await create_workflow(api, namespace, "lost", environment="nowhere")

    final = await wait_finished(workflow, operator)

    assert (final["statusCode"], final["reason"]) == (90, "UnknownEnvironment")
    assert "nowhere" in final["message"]
    assert await children(api, namespace, "lost") == {}


async def test_environment_runs_at_most_max_jobs_first_come_first_served(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    await create_environment(api, namespace, maxJobs=2)
    names = [f"burst-{i}" for i in range(6)]
    workflows = []
    for name in names:  # created one after the other: this is the queue order
        workflows.append(await create_workflow(api, namespace, name, sim={"algorithm.run-for": "3s"}))
    running_at_most = 0

    async def watch_concurrency() -> None:
        nonlocal running_at_most
        running: set[str] = set()
        async for _event, obj in api.async_watch("workflows.oceanprotocol.com", namespace=namespace):
            current = status(obj)
            if current.get("stage") not in (None, "Queued", "Finished"):
                running.add(obj.name)
            else:
                running.discard(obj.name)
            running_at_most = max(running_at_most, len(running))

    watcher = asyncio.create_task(watch_concurrency())
    operator = await start_operator()
    finals = [await wait_finished(w, operator, timeout=180) for w in workflows]
    watcher.cancel()

    assert running_at_most == 2
    assert all(f["statusCode"] == 70 for f in finals)
    # First come, first served: each Workflow started only once all but one of those created ahead of it
    # had finished, so none overtook another (two that are both entitled to a free slot may start in
    # either order; times have one-second resolution, so ties count).
    admitted_at = [f["admittedAt"] for f in finals]
    finished_at = [f["finishedAt"] for f in finals]
    assert admitted_at[0] < admitted_at[2] < admitted_at[4]
    assert all(admitted_at[i] >= admitted_at[i - 2] for i in range(2, len(names)))
    for i in range(2, len(names)):
        finished_ahead = sum(1 for j in range(i) if finished_at[j] <= admitted_at[i])
        assert finished_ahead >= i - 1, f"{names[i]} started while {i - finished_ahead} ahead of it still ran"


async def test_operator_killed_mid_algorithm_resumes_without_a_second_pod(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    await create_environment(api, namespace)
    algorithm_pods: set[str] = set()

    async def record_algorithm_pods() -> None:
        async for event, pod in api.async_watch("pods", namespace=namespace):
            if event == "ADDED" and pod.labels.get("component") == "algorithm":
                algorithm_pods.add(pod.metadata.uid)

    watcher = asyncio.create_task(record_algorithm_pods())
    first = await start_operator()
    workflow = await create_workflow(api, namespace, "phoenix", sim={"algorithm.run-for": "8s"})
    await wait_for(workflow, lambda w: status(w).get("stage") == "RunningAlgorithm", timeout=60)

    await first.kill()
    second = await start_operator()
    final = await wait_finished(workflow, second)
    watcher.cancel()

    assert final["statusCode"] == 70
    assert len(algorithm_pods) == 1
    assert final["stages"]["algorithm"]["exitCode"] == 0


class Receiver:
    """A real HTTP server on loopback that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.arrived = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode()
        headers = {}
        while (line := (await reader.readline()).decode().strip()) != "":
            key, _, value = line.partition(":")
            headers[key.lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.bodies.append((request_line.split()[1], json.loads(body)))
        self.arrived.set()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    receiver.server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    yield receiver
    receiver.server.close()


@pytest.mark.local_only  # the operator reaches servers on this machine's loopback
async def test_notifications_reach_a_real_receiver_signed_by_the_operator(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator, receiver: Receiver
) -> None:
    from ocean_c2d.signing import notification_message, recover_personal

    await create_environment(api, namespace)
    operator = await start_operator(
        NOTIFY_START_URL=f"{receiver.url}/start", NOTIFY_STOP_URL=f"{receiver.url}/stop"
    )
    workflow = await create_workflow(api, namespace, "loud")

    await wait_finished(workflow, operator)
    await wait_for(
        workflow,
        lambda w: status(w).get("notifications", {}).get("stop", {}).get("state") == "Sent",
        timeout=30,
    )

    assert [path for path, _ in receiver.bodies] == ["/start", "/stop"]
    for _, body in receiver.bodies:
        assert body["jobId"] == "loud"
        assert body["DID"] == [workflow.spec["inputs"][0]["did"]]
        assert body["algoDID"] == workflow.spec["algorithm"]["did"]
        message = notification_message(body["secret"], body["DID"], body["jobId"], body["algoDID"])
        assert recover_personal(message.encode(), body["signature"]) == OPERATOR_ADDRESS
    notifications = status(workflow)["notifications"]
    assert notifications["start"]["state"] == "Sent"
    assert notifications["start"]["attempts"] == 1


async def test_deleting_a_workflow_removes_its_children(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    await create_environment(api, namespace)
    await start_operator()
    workflow = await create_workflow(api, namespace, "doomed", sim={"algorithm.run-for": "300s"})
    await wait_for(workflow, lambda w: status(w).get("stage") == "RunningAlgorithm", timeout=60)
    algorithm = await Pod.get("doomed-algorithm", namespace=namespace, api=api)

    await workflow.delete()

    await wait_for_deletion(algorithm, timeout=60)
    await wait_for_deletion(workflow, timeout=60)
    await wait_children_gone(api, namespace, "doomed")
    assert await children(api, namespace, "doomed") == {}


async def wait_for_metric(operator: Operator, name: str, at_least: float, timeout: float = 30) -> None:
    """Metrics cannot be watched: read them until `name` reaches `at_least` (bounded in time)."""
    async with asyncio.timeout(timeout):
        # An idle reconcile leaves nothing in the cluster to watch (that is the point): read /metrics.
        while await operator.total(name) < at_least:  # noqa: ASYNC110
            await asyncio.sleep(0.2)


async def test_reconciles_with_nothing_to_change_send_no_writes(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    environment = await create_environment(api, namespace)
    operator = await start_operator()
    workflow = await create_workflow(api, namespace, "quiet")
    await wait_finished(workflow, operator)
    await wait_children_gone(api, namespace, "quiet")
    # The environment's counts are written at most every few seconds (controller.ENVIRONMENT_STATUS_
    # SECONDS): the last one, nothing running, may still be on its way.
    await wait_for(environment, lambda e: (e.raw.get("status") or {}).get("jobs") == "0/10", timeout=30)
    await wait_for_metric(operator, "ocean_c2d_reconciles_total", 1)
    writes = await operator.total("ocean_c2d_kubernetes_requests_total") - await operator.total(
        "ocean_c2d_kubernetes_requests_total", verb="GET"
    )
    reconciles = await operator.total("ocean_c2d_reconciles_total")
    print(f"\nAPI writes for one Workflow, from creation to cleaned up: {writes:.0f}")

    for touch in range(3):  # each is a watch event, so a reconcile, with nothing to change
        await workflow.annotate({"e2e/touch": str(touch)})
    await wait_for_metric(operator, "ocean_c2d_reconciles_total", reconciles + 3)

    writes_after = await operator.total("ocean_c2d_kubernetes_requests_total") - await operator.total(
        "ocean_c2d_kubernetes_requests_total", verb="GET"
    )
    assert writes_after == writes
    assert await operator.total("ocean_c2d_reconciles_total", result="idle") >= 3
    assert writes <= 30  # a regression guard: today one Workflow takes about two dozen writes


async def test_the_original_environment_variables_define_a_default_environment(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    seed = {
        "nCPU": "3",
        "ramGB": "2",
        "diskGB": "5",
        "maxJobs": "4",
        "maxJobDuration": "120",
        "priceMinute": "0.5",
        "description": "from env",
        "STORAGE_EXPIRY": "24",
    }
    operator = await start_operator(**seed)

    environment = await wait_for_object(api, "computeenvironments", "default", namespace=namespace)
    spec = environment.raw["spec"]
    assert (spec["nCPU"], spec["ramGB"], spec["diskGB"], spec["maxJobs"]) == (3, 2, 5, 4)
    assert (spec["maxJobDuration"], spec["priceMinute"], spec["storageExpiry"]) == (120, 0.5, 24)
    assert spec["description"] == "from env"
    workflow = await create_workflow(api, namespace, "legacy", environment="default")
    final = await wait_finished(workflow, operator)
    assert final["statusCode"] == 70


async def test_finished_workflows_are_deleted_after_their_ttl(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    await create_environment(api, namespace)
    operator = await start_operator(WORKFLOW_TTL_SECONDS="2")
    workflow = await create_workflow(api, namespace, "ephemeral")

    final = await wait_finished(workflow, operator)

    assert final["statusCode"] == 70
    await wait_for_deletion(workflow, timeout=30)
    assert not await workflow.exists()


async def test_a_filter_that_blocks_withholds_the_outputs(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    await create_environment(api, namespace, filter={"enabled": True, "blockCopiedInputs": True})
    operator = await start_operator(DEBUG_NO_CLEANUP="1")
    verdict = {"verdict": "Block", "reasons": ["outputs/copy.csv is a copy of inputs/0"]}
    sim = {"filter.exit-code": "51", "filter.message": json.dumps(verdict)}
    workflow = await create_workflow(api, namespace, "leaky", sim=sim)

    final = await wait_finished(workflow, operator)

    assert (final["statusCode"], final["reason"]) == (51, "ResultsBlocked")
    assert final["filter"] == verdict
    publish = await Pod.get("leaky-publish", namespace=namespace, api=api)
    env = {e["name"]: e.get("value") for e in publish.raw["spec"]["containers"][0]["env"]}
    assert env["PUBLISH_OUTPUTS"] == "false"
    assert await operator.total("ocean_c2d_filter_verdicts_total", verdict="Block") == 1
    assert await operator.total("ocean_c2d_workflows_finished_total", outcome="ResultsBlocked") == 1


@pytest.mark.local_only  # the operator reaches servers on this machine's loopback
async def test_results_past_their_expiry_are_unpinned_and_deleted(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    ipfs_api: IPFSNode,
    s3_server: S3Server,
) -> None:

    from ocean_c2d.storage.s3 import object_url

    async with httpx.AsyncClient() as client:
        added = await client.post(f"{ipfs_api.api_url}/api/v0/add", files={"file": ("out.csv", b"1,2,3\n")})
        cid = added.json()["Hash"]
        pins = await client.post(f"{ipfs_api.api_url}/api/v0/pin/ls", params={"arg": cid})
        assert cid in pins.json()["Keys"]
    bucket, key = f"expiry-{namespace[-6:]}", "expiring/outputs/out.csv"
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=b"1,2,3\n")
    past = int(datetime.now(UTC).timestamp()) - 10
    results = [
        {
            "filename": "out.csv",
            "filesize": 6,
            "url": f"ipfs://{cid}/out.csv",
            "type": "output",
            "expiresAt": past,
        },
        {
            "filename": "copy.csv",
            "filesize": 6,
            "url": object_url(bucket, key, s3_server.endpoint_url, s3_server.region),
            "type": "output",
            "expiresAt": past,
        },
    ]
    await create_environment(api, namespace)
    operator = await start_operator(
        IPFS_OUTPUT=ipfs_api.api_url,
        AWS_BUCKET_OUTPUT=bucket,
        AWS_ENDPOINT_URL=s3_server.endpoint_url,
        AWS_REGION=s3_server.region,
        AWS_ACCESS_KEY_ID=s3_server.access_key,
        AWS_SECRET_ACCESS_KEY=s3_server.secret_key,
    )
    workflow = await create_workflow(
        api,
        namespace,
        "expiring",
        sim={"algorithm.run-for": "3s", "publish.message": json.dumps({"results": results})},
    )
    # What publish uploads goes under the Workflow's own prefix: expiry deletes that, and only that.
    own = f"{namespace}/expiring/{workflow.metadata['uid']}/outputs/out.csv"
    s3.put_object(Bucket=bucket, Key=own, Body=b"1,2,3\n")

    final = await wait_finished(workflow, operator)
    assert [r["expiresAt"] for r in final["results"]] == [past, past]
    await wait_for(workflow, lambda w: "resultsExpiredAt" in status(w), timeout=30)

    async with httpx.AsyncClient() as client:
        pins = await client.post(f"{ipfs_api.api_url}/api/v0/pin/ls", params={"arg": cid})
    assert cid not in (pins.json().get("Keys") or {})
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])] == [key]


async def test_a_custom_filtering_container_runs_with_the_algorithm_contract(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    await create_environment(api, namespace)
    operator = await start_operator(DEBUG_NO_CLEANUP="1", FILTERING_CONTAINER="registry.example/c2d-filter:2")
    workflow = await create_workflow(api, namespace, "screened")

    final = await wait_finished(workflow, operator)

    assert (final["statusCode"], final["filter"]) == (70, {"verdict": "Pass", "reasons": []})
    pod = await Pod.get("screened-filter", namespace=namespace, api=api)
    [container] = pod.raw["spec"]["containers"]
    assert container["image"] == "registry.example/c2d-filter:2"
    assert "args" not in container  # the image's own entrypoint runs, as in the original
    env = {e["name"] for e in container["env"]}
    assert {"DIDS", "TRANSFORMATION_DID", "VOLUME", "LOGS", "INPUTS", "OUTPUTS", "secret"} <= env
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/data/adminlogs" not in mounts  # a third-party image never sees the admin logs
    assert pod.raw["spec"]["activeDeadlineSeconds"] == 1800


async def test_only_the_head_of_the_queue_carries_its_position_and_ocean_c2d_queue_answers_any(
    api: kr8s.asyncio.Api, namespace: str, kubeconfig: str, start_operator: StartOperator
) -> None:
    environment = await create_environment(api, namespace, maxJobs=1)
    names = [f"line-{i}" for i in range(5)]
    workflows = [
        await create_workflow(api, namespace, name, sim={"algorithm.run-for": "120s"}) for name in names
    ]
    await start_operator(**source_tree_env())
    await wait_for(workflows[0], lambda w: status(w).get("stage") == "RunningAlgorithm", timeout=60)
    await wait_for(workflows[1], lambda w: status(w).get("queuePosition") == 1, timeout=30)
    await wait_for(
        environment, lambda e: (e.raw.get("status") or {}).get("queueHead") == "line-1", timeout=30
    )
    for workflow in workflows[2:]:
        await wait_for(workflow, lambda w: status(w).get("stage") == "Queued", timeout=30)
        assert "queuePosition" not in status(workflow)
        assert "ocean-c2d queue" in status(workflow)["message"]

    async def queue(*args: str) -> str:
        command = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ocean_c2d.cli",
            "queue",
            "-n",
            namespace,
            *args,
            env={**os.environ, **source_tree_env(), "KUBECONFIG": kubeconfig},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await command.communicate()
        assert command.returncode == 0, err.decode()
        return out.decode()

    assert (await queue("line-3")).strip() == (
        "line-3: position 3 of 4 waiting for environment cpu (1/1 running); next to start: line-1"
    )
    listed = (await queue("-e", "cpu")).splitlines()
    assert listed[0] == "ComputeEnvironment cpu: 1/1 running, 4 waiting"
    assert [line.split()[:2] for line in listed[1:]] == [[str(n), f"line-{n}"] for n in range(1, 5)]
    assert (await queue("line-0")).startswith("line-0: running")
