"""Results records (retention.py) and the expiry they drive (effects.ResultExpiry, expiry.py): what a
Workflow's status calls for, and what the operator removes from a real S3 server and a real kubo node
when a record is due, whether or not its Workflow still exists."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from typing import Any

import httpx
import pytest

from e2e.services import IPFSNode, S3Server
from ocean_c2d import retention
from ocean_c2d.effects import Effects, ResultExpiry
from ocean_c2d.expiry import delete_prefix
from ocean_c2d.model import Workflow
from ocean_c2d.retention import ResultRecord, ResultStores, State
from ocean_c2d.settings import load_settings
from ocean_c2d.status import WorkflowStatus
from ocean_c2d.view import INDEXES, RECORD_INDEX, WORKFLOW_INDEX, View
from unit_tests.factories import settings_environ, workflow_object

S3 = ResultStores(s3_bucket="results")
BOTH = ResultStores(s3_bucket="results", ipfs_prefix="ipfs://")
PUBLISHING: WorkflowStatus = {"stage": "Publishing", "stages": {"publish": {"jobName": "job1-publish-job"}}}
PUBLISHED_AT = "2026-01-01T12:00:00Z"
PUBLISHED_TS = 1767268800  # PUBLISHED_AT in Unix seconds


def finished(**fields: Any) -> WorkflowStatus:
    status: dict[str, Any] = {
        "stage": "Finished",
        "finishedAt": PUBLISHED_AT,
        "stages": {"publish": {"jobName": "job1-publish-job", "finishedAt": PUBLISHED_AT}},
        **fields,
    }
    return status  # type: ignore[return-value]


def result(url: str, expires: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"filename": "out.csv", "filesize": 1, "url": url, "type": "output"}
    if expires is not None:
        entry["expiresAt"] = expires
    return entry


WORKFLOW = Workflow.from_object(workflow_object())  # job1 in c2d, uid uid-1
KEY = b"the operator's record key"


# ---- what a Workflow's status calls for (pure) ------------------------------------------------------------


def test_a_publish_under_way_is_recorded_with_the_workflows_own_prefix() -> None:
    record = retention.wanted_record(WORKFLOW, PUBLISHING, S3)
    assert record == ResultRecord(
        "c2d", "job1", "uid-1", State.PUBLISHING, None, "results", "c2d/job1/uid-1/", ()
    )
    assert retention.due_in(record, workflow_alive=True, now=0) is None  # an event decides, not a timer
    assert retention.due_in(record, workflow_alive=False, now=0) == 0  # cut short: clean now


def test_published_results_are_due_when_the_last_of_them_expires() -> None:
    results = [
        result("ipfs://cidA/out.csv", PUBLISHED_TS + 60),
        result("ipfs://cidB/log", PUBLISHED_TS + 120),
        result("ipfs://cidA/other", PUBLISHED_TS + 90),
    ]
    record = retention.wanted_record(WORKFLOW, finished(results=results), BOTH)
    assert record is not None
    assert (record.state, record.expires_at, record.cids) == (
        State.PUBLISHED,
        PUBLISHED_TS + 120,
        ("cidA", "cidB"),
    )
    assert retention.due_in(record, True, PUBLISHED_TS) == 120
    assert retention.due_in(record, False, PUBLISHED_TS + 500) == 0


def test_a_publish_that_ended_without_a_result_list_is_cleaned_up_at_once() -> None:
    record = retention.wanted_record(WORKFLOW, finished(reason="ResultsUploadFailed"), S3)
    assert record is not None
    assert (record.state, record.expires_at, record.s3_prefix) == (
        State.FAILED,
        PUBLISHED_TS,
        "c2d/job1/uid-1/",
    )
    assert retention.due_in(record, workflow_alive=True, now=PUBLISHED_TS) == 0


@pytest.mark.parametrize(
    ("status", "stores"),
    [
        (finished(results=[result("https://s3/x", None)]), S3),  # kept for ever
        (finished(results=[result("https://s3/x", 5)], resultsExpiredAt=PUBLISHED_AT), S3),  # done
        ({"stage": "Finished", "reason": "InvalidSpec"}, S3),  # publish never ran: nothing uploaded
        ({"stage": "RunningAlgorithm"}, S3),
        (PUBLISHING, ResultStores()),  # the operator expires nothing itself
    ],
)
def test_nothing_to_expire_needs_no_record(status: WorkflowStatus, stores: ResultStores) -> None:
    assert retention.wanted_record(WORKFLOW, status, stores) is None


def test_a_result_manifest_expires_by_the_environments_storage_expiry() -> None:
    status = finished(results=[], resultsManifest="https://s3/results/c2d/job1/uid-1/results.json")
    record = retention.wanted_record(WORKFLOW, status, S3, storage_expiry_hours=2)
    assert record is not None
    assert record.expires_at == PUBLISHED_TS + 7200


def test_a_record_round_trips_and_a_forged_one_is_refused() -> None:
    record = retention.wanted_record(WORKFLOW, finished(results=[result("ipfs://c1/a", 9)]), BOTH)
    assert record is not None
    manifest = retention.build_record(record, KEY)
    assert manifest["metadata"] == {
        "name": "ocean-c2d-results-uid-1",
        "namespace": "c2d",
        "labels": {"app.kubernetes.io/managed-by": "ocean-c2d", "ocean-c2d/record": "results"},
    }
    assert "ownerReferences" not in manifest["metadata"]  # it must outlive the Workflow
    assert retention.parse_record(manifest, KEY) == record
    assert retention.parse_record(manifest, b"another operator") is None
    renamed = copy.deepcopy(manifest)
    renamed["metadata"]["name"] = "ocean-c2d-results-someone-else"
    assert retention.parse_record(renamed, KEY) is None


def test_a_record_written_by_anyone_but_the_operator_is_ignored() -> None:
    victim = ResultRecord("c2d", "job1", "uid-1", State.FAILED, 0, "results", "c2d/job1/uid-1/", ("cid",))
    manifest = retention.build_record(victim, KEY)
    for field, value in [
        ("cids", '["someone-elses-cid"]'),
        ("s3Prefix", "c2d/other/uid-2/"),
        ("state", "Failed"),
    ]:
        forged = copy.deepcopy(manifest)
        forged["data"][field] = value
        forged["data"]["expiresAt"] = "1"  # and due at once
        assert retention.parse_record(forged, KEY) is None, field
    unsealed = copy.deepcopy(manifest)
    del unsealed["data"]["seal"]
    assert retention.parse_record(unsealed, KEY) is None
    # Even sealed, a prefix that is not the record's own Workflow's is refused.
    odd = dataclasses.replace(victim, s3_prefix="victims/")
    assert retention.parse_record(retention.build_record(odd, KEY), KEY) is None


def test_a_cid_another_live_record_names_stays_pinned() -> None:
    mine = ResultRecord("c2d", "a", "u1", State.PUBLISHED, 1, cids=("shared", "own"))
    other = ResultRecord("c2d2", "b", "u2", State.PUBLISHED, 10**10, cids=("shared",))
    assert retention.unpinnable(mine, [other, mine]) == ("own",)
    assert retention.unpinnable(mine, []) == ("shared", "own")


# ---- S3: list and delete by prefix (a real server) --------------------------------------------------------


def test_deleting_a_prefix_takes_every_key_under_it_and_nothing_else(s3_server: S3Server) -> None:
    s3 = s3_server.client()
    s3.create_bucket(Bucket="prefixes")
    mine = [f"c2d/job1/uid-1/outputs/{n}.csv" for n in range(5)] + ["c2d/job1/uid-1/results.json"]
    others = ["c2d/job1/uid-10/outputs/a.csv", "c2d/job1/uid-1x", "c2d/job1/other.csv"]
    for key in mine + others:
        s3.put_object(Bucket="prefixes", Key=key, Body=b"x")

    assert delete_prefix(s3, "prefixes", "c2d/job1/uid-1/") == len(mine)

    left = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="prefixes").get("Contents", []))
    assert left == sorted(others)
    with pytest.raises(ValueError, match="ends with"):
        delete_prefix(s3, "prefixes", "c2d/job1/uid-1")


# ---- the expiry, run from the records (a fake API, real stores) -------------------------------------------


class RecordingCluster:
    """The few calls ResultExpiry makes, on a store the test can read (its watch: `view` indexes)."""

    def __init__(self, indexes: dict[str, dict[Any, list[Any]]]) -> None:
        self.indexes = indexes
        self.calls: list[tuple[str, str]] = []
        self.statuses: list[dict[str, Any]] = []

    def _show(self, manifest: dict[str, Any]) -> None:
        metadata = manifest["metadata"]
        self.indexes[RECORD_INDEX][(metadata["namespace"], metadata["name"])] = [copy.deepcopy(manifest)]

    async def ensure(self, manifest: dict[str, Any]) -> bool:
        self.calls.append(("create", manifest["metadata"]["name"]))
        self._show(manifest)
        return True

    async def merge_patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.calls.append(("patch", name))
        [body] = self.indexes[RECORD_INDEX][(namespace, name)]
        self._show({**body, "data": patch["data"]})

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        self.calls.append(("delete", name))
        self.indexes[RECORD_INDEX].pop((namespace, name), None)

    async def write_status_fields(
        self,
        kind: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any] | None:
        self.statuses.append(status)
        [body] = self.indexes[WORKFLOW_INDEX][(namespace, name)]
        return {**body, "status": {**(body.get("status") or {}), **status}}


def expiry_with(**environ: str) -> tuple[ResultExpiry, RecordingCluster, dict[str, dict[Any, list[Any]]]]:
    indexes: dict[str, dict[Any, list[Any]]] = {name: {} for name in INDEXES}
    cluster = RecordingCluster(indexes)
    view = View()
    view.bind(indexes)
    settings = load_settings(settings_environ(**environ))
    effects = Effects(settings, cluster, httpx.AsyncClient(), view)  # type: ignore[arg-type]
    return ResultExpiry(settings, cluster, view, effects), cluster, indexes  # type: ignore[arg-type]


def s3_environ(s3_server: S3Server, bucket: str) -> dict[str, str]:
    return {
        "AWS_BUCKET_OUTPUT": bucket,
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_REGION": s3_server.region,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }


async def test_the_record_follows_the_workflow_from_publishing_to_published_to_gone() -> None:
    expiry, cluster, indexes = expiry_with(AWS_BUCKET_OUTPUT="results")
    name = "ocean-c2d-results-uid-1"
    await expiry.keep(WORKFLOW, PUBLISHING, 0)
    await expiry.keep(WORKFLOW, PUBLISHING, 0)  # the same again: no write
    assert cluster.calls == [("create", name)]
    expiring = finished(results=[result("https://x", int(time.time()) + 3600)])
    await expiry.keep(WORKFLOW, expiring, 0)
    [body] = indexes[RECORD_INDEX][("c2d", name)]
    assert body["data"]["state"] == "Published"
    await expiry.keep(WORKFLOW, {**expiring, "resultsExpiredAt": PUBLISHED_AT}, 0)
    assert cluster.calls == [("create", name), ("patch", name), ("delete", name)]
    assert (("c2d", name)) not in indexes[RECORD_INDEX]


async def test_a_publishing_record_without_expiry_goes_when_publish_succeeds() -> None:
    expiry, cluster, indexes = expiry_with(AWS_BUCKET_OUTPUT="results")
    await expiry.keep(WORKFLOW, PUBLISHING, 0)
    await expiry.keep(WORKFLOW, finished(results=[result("https://x", None)]), 0)
    assert [call for call, _ in cluster.calls] == ["create", "delete"]
    assert not indexes[RECORD_INDEX]


async def test_results_of_a_deleted_workflow_are_deleted_when_due(
    s3_server: S3Server, ipfs_api: IPFSNode
) -> None:
    bucket = "gone-workflow"
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket)
    for key in ("c2d/job1/uid-1/outputs/out.csv", "c2d/job1/uid-1/adminlogs/publish.log", "c2d/job2/uid-2/x"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"1,2,3\n")
    async with httpx.AsyncClient() as client:
        own = (await client.post(f"{ipfs_api.api_url}/api/v0/add", files={"file": ("a", b"own")})).json()[
            "Hash"
        ]
        shared = (
            await client.post(f"{ipfs_api.api_url}/api/v0/add", files={"file": ("b", b"shared")})
        ).json()["Hash"]
    expiry, cluster, indexes = expiry_with(IPFS_OUTPUT=ipfs_api.api_url, **s3_environ(s3_server, bucket))
    due = int(time.time()) + 2
    results = [result(f"ipfs://{own}/a", due), result(f"ipfs://{shared}/b", due)]
    await expiry.keep(WORKFLOW, finished(results=results), 0)
    other = Workflow.from_object(workflow_object(metadata={"name": "job2", "uid": "uid-2"}))
    later = [result(f"ipfs://{shared}/b", due + 3600)]
    await expiry.keep(other, finished(results=later), 0)
    # Neither Workflow exists (any more): their records alone remember what must go.
    assert indexes[WORKFLOW_INDEX] == {}

    delay = await expiry.run("c2d", "ocean-c2d-results-uid-1")
    assert delay is not None
    assert 0 < delay <= 2
    assert ("delete", "ocean-c2d-results-uid-1") not in cluster.calls
    await asyncio.sleep(delay)  # the test waits for the due time; the operator's queue has a timer for it

    assert await expiry.run("c2d", "ocean-c2d-results-uid-1") is None

    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
    assert keys == ["c2d/job2/uid-2/x"]  # job1's objects gone, job2's untouched
    async with httpx.AsyncClient() as client:
        pins = (await client.post(f"{ipfs_api.api_url}/api/v0/pin/ls", params={"type": "recursive"})).json()
    assert own not in pins["Keys"]
    assert shared in pins["Keys"]  # job2's record still names it
    assert ("c2d", "ocean-c2d-results-uid-1") not in indexes[RECORD_INDEX]
    assert ("c2d", "ocean-c2d-results-uid-2") in indexes[RECORD_INDEX]
    assert cluster.statuses == []  # no Workflow to tell


async def test_a_failed_publish_is_cleaned_up_and_its_workflow_told(s3_server: S3Server) -> None:
    bucket = "failed-publish"
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="c2d/job1/uid-1/outputs/partial.bin", Body=b"half")
    expiry, cluster, indexes = expiry_with(**s3_environ(s3_server, bucket))
    body = workflow_object(status=dict(finished(reason="ResultsUploadFailed")))
    body["metadata"]["resourceVersion"] = "7"
    indexes[WORKFLOW_INDEX][("c2d", "job1")] = [body]
    await expiry.keep(Workflow.from_object(body), body["status"], 0)

    assert await expiry.run("c2d", "ocean-c2d-results-uid-1") is None

    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert [set(s) for s in cluster.statuses] == [{"resultsExpiredAt"}]
    assert cluster.calls[-1] == ("delete", "ocean-c2d-results-uid-1")


async def test_a_publish_cut_short_by_the_workflows_deletion_is_cleaned_up(s3_server: S3Server) -> None:
    bucket = "cut-short"
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="c2d/job1/uid-1/outputs/a", Body=b"a")
    expiry, _, indexes = expiry_with(**s3_environ(s3_server, bucket))
    body = workflow_object(status=dict(PUBLISHING))
    indexes[WORKFLOW_INDEX][("c2d", "job1")] = [body]
    await expiry.keep(Workflow.from_object(body), PUBLISHING, 0)
    assert await expiry.run("c2d", "ocean-c2d-results-uid-1") is None  # still publishing: wait
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 1

    del indexes[WORKFLOW_INDEX][("c2d", "job1")]  # deleted mid-publish
    assert await expiry.run("c2d", "ocean-c2d-results-uid-1") is None
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert not indexes[RECORD_INDEX]
