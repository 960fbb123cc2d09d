"""The trust boundary on the cluster: nothing the algorithm wrote leaves without a recorded Pass.

kwok plays the pods (the filter is made to run long with a sim annotation); what would leave is read off
the publish Job the operator created: PUBLISH_OUTPUTS=false makes the publish step upload no output (its
own tests, unit_tests/test_publish.py, hold it to that against a real S3 server).
"""

from __future__ import annotations

import kr8s.asyncio
import pytest
from kr8s.asyncio.objects import Job

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
    publish = await Job.get("judged-publish-job", namespace=namespace, api=api)
    [container] = publish.raw["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}["PUBLISH_OUTPUTS"] == "false"
