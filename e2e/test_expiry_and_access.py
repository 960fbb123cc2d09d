"""Results expire whatever happens to the Workflow (issue 11 B10), and an environment admits only the
Workflows its spec.access names (C14). The operator runs as a process; kwok plays the pods; the S3 server
is the real one of e2e/services.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import kr8s.asyncio
import pytest
from kr8s.asyncio.objects import APIObject, ConfigMap

from e2e.operator_fixtures import create_environment, create_workflow, status, wait_finished
from e2e.operator_handle import StartOperator
from e2e.services import S3Server
from e2e.waiting import wait_for, wait_for_deletion, wait_for_object

pytestmark = pytest.mark.simulated


def s3_env(s3_server: S3Server, bucket: str) -> dict[str, str]:
    return {
        "AWS_BUCKET_OUTPUT": bucket,
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_REGION": s3_server.region,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }


def keys(s3_server: S3Server, bucket: str) -> list[str]:
    listing = s3_server.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents") or [])


async def upload_as_publish_would(s3_server: S3Server, bucket: str, workflow: APIObject) -> str:
    """Objects under the Workflow's RESULTS_PREFIX (kwok's publish pod uploads nothing itself)."""
    prefix = f"{workflow.namespace}/{workflow.name}/{workflow.metadata['uid']}/"
    s3 = s3_server.client()
    for name in ("outputs/out.csv", "logs/algorithm.log", "adminlogs/publish.log"):
        s3.put_object(Bucket=bucket, Key=prefix + name, Body=b"1,2,3\n")
    return prefix


async def test_a_workflow_of_a_namespace_not_listed_ends_environment_denied(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    await create_environment(api, namespace, access={"namespaces": ["some-other-namespace"]})
    operator = await start_operator()
    workflow = await create_workflow(api, namespace, "outsider")

    final = await wait_finished(workflow, operator)

    assert (final["statusCode"], final["reason"]) == (90, "EnvironmentDenied")
    assert f"namespace {namespace!r}" in final["message"]
    assert "admittedAt" not in final
    pods = [
        pod
        async for pod in api.async_get("pods", namespace=namespace, label_selector={"workflow": "outsider"})
    ]
    assert pods == []  # nothing of it ever ran


async def test_a_network_allowed_environment_without_access_admits_nobody(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator
) -> None:
    await create_environment(api, namespace, allowNetwork=True)
    operator = await start_operator()
    workflow = await create_workflow(api, namespace, "wants-network")

    final = await wait_finished(workflow, operator)

    assert final["reason"] == "EnvironmentDenied"
    assert "names none" in final["message"]


@pytest.mark.local_only  # the operator reaches the S3 server on this machine's loopback
async def test_results_of_a_workflow_deleted_before_they_expire_are_deleted_at_expiry(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator, s3_server: S3Server
) -> None:
    bucket = f"gone-{namespace[-6:]}"
    s3_server.client().create_bucket(Bucket=bucket)
    s3_server.client().put_object(Bucket=bucket, Key=f"{namespace}/neighbour/uid/out.csv", Body=b"theirs")
    await create_environment(api, namespace)
    operator = await start_operator(**s3_env(s3_server, bucket))
    expires = int(time.time()) + 25
    results = [
        {"filename": "out.csv", "filesize": 6, "url": "s3://x", "type": "output", "expiresAt": expires}
    ]
    workflow = await create_workflow(
        api,
        namespace,
        "short-lived",
        sim={"algorithm.run-for": "3s", "publish.message": json.dumps({"results": results})},
    )
    prefix = await upload_as_publish_would(s3_server, bucket, workflow)
    await wait_finished(workflow, operator)
    record_name = f"ocean-c2d-results-{workflow.metadata['uid']}"
    record = await wait_for_object(api, "configmaps", record_name, namespace, timeout=30)
    assert record.raw["data"]["s3Prefix"] == prefix
    assert "ownerReferences" not in record.raw["metadata"]  # the garbage collector leaves it

    await workflow.delete()  # as its TTL, or a user, would: long before the results expire
    await wait_for_deletion(workflow)
    assert time.time() < expires
    assert [k for k in keys(s3_server, bucket) if k.startswith(prefix)] != []

    await wait_for_deletion(ConfigMap(record.raw, namespace=namespace, api=api), timeout=90)

    assert time.time() >= expires
    assert keys(s3_server, bucket) == [f"{namespace}/neighbour/uid/out.csv"]  # only its own prefix went
    assert "Removed the results of Workflow" in await operator.log_text()


@pytest.mark.local_only
async def test_a_failed_publish_leaves_nothing_behind(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator, s3_server: S3Server
) -> None:
    bucket = f"failed-{namespace[-6:]}"
    s3_server.client().create_bucket(Bucket=bucket)
    await create_environment(api, namespace)
    operator = await start_operator(**s3_env(s3_server, bucket))
    workflow = await create_workflow(
        api,
        namespace,
        "half-uploaded",
        sim={"algorithm.run-for": "3s", "publish.exit-code": "62", "publish.message": "HTTP 503"},
    )
    prefix = await upload_as_publish_would(s3_server, bucket, workflow)

    final = await wait_finished(workflow, operator)
    assert final["reason"] == "ResultsUploadFailed"

    def expired(obj: APIObject) -> bool:
        fields: dict[str, Any] = status(obj)
        return "resultsExpiredAt" in fields

    await wait_for(workflow, expired, timeout=30)
    assert [k for k in keys(s3_server, bucket) if k.startswith(prefix)] == []


@pytest.mark.local_only
async def test_a_publish_cut_short_by_deleting_the_workflow_is_cleaned_up(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator, s3_server: S3Server
) -> None:
    bucket = f"cut-{namespace[-6:]}"
    s3_server.client().create_bucket(Bucket=bucket)
    await create_environment(api, namespace)
    operator = await start_operator(**s3_env(s3_server, bucket))
    workflow = await create_workflow(api, namespace, "interrupted", sim={"publish.run-for": "120s"})
    await wait_for(workflow, lambda w: status(w).get("stage") == "Publishing", timeout=60)
    record = await wait_for_object(
        api, "configmaps", f"ocean-c2d-results-{workflow.metadata['uid']}", namespace, timeout=30
    )
    assert record.raw["data"]["state"] == "Publishing"
    prefix = await upload_as_publish_would(s3_server, bucket, workflow)  # half-way through its uploads

    await workflow.delete()

    await wait_for_deletion(ConfigMap(record.raw, namespace=namespace, api=api), timeout=60)
    assert [k for k in keys(s3_server, bucket) if k.startswith(prefix)] == []
    assert "publish did not finish" in await operator.log_text()
