"""Workflows whose children the API server refuses end InvalidSpec (code 90) at once, and free their slot.

Both get past the CRD schemas; what the operator renders from them does not:
- a rawCode whose ConfigMap is too large (the workflow document holds it JSON-escaped, six bytes for
  each "é", twice: over the API server's 3 MiB request limit, 413, as well as the 1 MiB ConfigMap limit);
- an environment whose ramGB (0.00001) renders as a memory quantity the API server cannot decode (400):
  the algorithm pod cannot be created, while configure (fixed resources) ran.
Before, each was retried forever with backoff, holding the environment's slot: the Workflow queued behind
never ran. Names sort in creation order (a-, b-): the queue breaks creation-time ties by name.
"""

from __future__ import annotations

import kr8s.asyncio
import pytest

from e2e.operator_fixtures import create_environment, create_workflow, status, wait_finished, wait_for_event
from e2e.operator_handle import StartOperator
from e2e.waiting import wait_for

pytestmark = pytest.mark.simulated

CONTAINER = {"image": "python", "tag": "3.11", "entrypoint": "python $ALGO"}


async def ends_invalid(api: kr8s.asyncio.Api, namespace: str, final: dict[str, object], refused: str) -> None:
    assert (final["statusCode"], final["reason"]) == (90, "InvalidSpec")
    assert final["statusText"] == "Invalid workflow"
    assert refused in str(final["message"])
    await wait_for_event(api, namespace, "a-poison", "InvalidSpec")


async def test_a_config_map_too_large_ends_invalid_spec_and_the_next_in_the_queue_runs(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    await create_environment(api, namespace, maxJobs=1)
    large = {"rawCode": "é" * 262144, "container": CONTAINER}  # the CRD's maxLength
    poison = await create_workflow(api, namespace, "a-poison", algorithm=large)
    behind = await create_workflow(api, namespace, "b-behind")
    operator = await start_operator()

    final = await wait_finished(poison, operator, timeout=60)

    await ends_invalid(api, namespace, final, "ConfigMap a-poison (413)")
    assert "stages" not in final  # nothing ran
    assert (await wait_finished(behind, operator, timeout=90))["statusCode"] == 70
    assert f"Reconcile of {namespace}/a-poison failed" not in await operator.log_text()  # never retried


async def test_an_algorithm_pod_that_cannot_be_created_ends_invalid_spec_and_frees_the_slot(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    await create_environment(api, namespace, maxJobs=1, ramGB=0.00001)
    poison = await create_workflow(api, namespace, "a-poison")
    behind = await create_workflow(api, namespace, "b-behind")
    operator = await start_operator()

    final = await wait_finished(poison, operator, timeout=60)

    await ends_invalid(api, namespace, final, "Pod a-poison-algorithm (400)")
    assert "quantities must match" in str(final["message"])  # the API server's own words
    assert final["stages"]["configure"]["podName"] == "a-poison-configure"  # configure ran
    assert "algorithm" not in final["stages"]  # the status never names a pod that was not created
    # The slot is free: the Workflow behind starts (and meets the same environment's problem).
    await wait_for(behind, lambda obj: status(obj).get("stage") not in (None, "Queued"), timeout=60)
    assert (await wait_finished(behind, operator, timeout=60))["reason"] == "InvalidSpec"
    assert f"Reconcile of {namespace}/a-poison failed" not in await operator.log_text()
