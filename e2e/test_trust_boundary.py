"""The trust boundary on the cluster: nothing the algorithm wrote leaves without a recorded Pass.

kwok plays the pods (the filter is made to run long with a sim annotation); what would leave is read off
the publish pod the operator created: PUBLISH_OUTPUTS=false makes the publish step upload no output (its
own tests, unit_tests/test_publish.py, hold it to that against a real S3 server).
"""

from __future__ import annotations

import kr8s.asyncio
import pytest
from kr8s.asyncio.objects import PersistentVolumeClaim, Pod, Secret

from e2e.operator_fixtures import create_environment, create_workflow, status, wait_finished
from e2e.operator_handle import StartOperator
from e2e.waiting import wait_for

pytestmark = pytest.mark.simulated


@pytest.mark.parametrize("filtering", ["environment filter", "FILTERING_CONTAINER"])
async def test_a_stop_during_filtering_publishes_no_output(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator, filtering: str
) -> None:
    if filtering == "FILTERING_CONTAINER":
        await create_environment(api, namespace)
        operator = await start_operator(DEBUG_NO_CLEANUP="1", FILTERING_CONTAINER="registry.example/filter:1")
    else:
        await create_environment(api, namespace, filter={"enabled": True})
        operator = await start_operator(DEBUG_NO_CLEANUP="1")
    workflow = await create_workflow(api, namespace, "judged", sim={"filter.run-for": "300s"})
    await wait_for(workflow, lambda w: status(w).get("stage") == "Filtering", timeout=60)

    await workflow.patch({"spec": {"stop": True}})
    final = await wait_finished(workflow, operator, timeout=60)

    assert (final["statusCode"], final["reason"]) == (72, "Stopped")
    assert final["filter"]["verdict"] == "Block"
    assert final["stages"]["filter"]["reason"] == "Stopped"
    publish = await Pod.get("judged-publish", namespace=namespace, api=api)
    [container] = publish.raw["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}["PUBLISH_OUTPUTS"] == "false"


async def test_a_name_taken_by_someone_elses_objects_ends_invalid_spec_and_leaves_them_untouched(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    """A Workflow named like existing objects (x-secret, x-data) must not adopt, mount, patch or delete
    them: the confused deputy. The Secret even carries the labels the operator's watches select on."""
    look_alike = {"app.kubernetes.io/managed-by": "ocean-c2d", "workflow": "x"}
    secret = await Secret(
        {"metadata": {"name": "x-secret", "labels": look_alike}, "stringData": {"password": "hunter2"}},
        namespace=namespace,
        api=api,
    )
    await secret.create()
    claim = await PersistentVolumeClaim(
        {
            "metadata": {"name": "x-data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
        namespace=namespace,
        api=api,
    )
    await claim.create()
    await create_environment(api, namespace)
    operator = await start_operator()

    final = await wait_finished(await create_workflow(api, namespace, "x"), operator, timeout=60)

    assert (final["statusCode"], final["reason"]) == (90, "InvalidSpec")
    assert "is not this Workflow's" in final["message"]
    assert "stages" not in final  # no configure pod ever mounted anything
    kept = await Secret.get("x-secret", namespace=namespace, api=api)
    assert kept.metadata.resourceVersion == secret.metadata.resourceVersion  # never patched
    assert kept.raw["data"]["password"] == "aHVudGVyMg=="  # base64 of hunter2
    kept_claim = await PersistentVolumeClaim.get("x-data", namespace=namespace, api=api)
    assert not kept_claim.metadata.get("ownerReferences")  # never adopted (so never garbage-collected)
    assert not kept_claim.metadata.get("deletionTimestamp")
    assert kept_claim.raw["spec"]["resources"] == claim.raw["spec"]["resources"]
    assert [p async for p in api.async_get("pods", namespace=namespace)] == []
