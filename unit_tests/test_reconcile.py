"""Every transition of the pure reconcile, driven through a small simulated world.

`World` applies a Plan the way the operator's I/O shell does (status written, children created, unwanted
children deleted) and lets a test finish stage pods the way the cluster would.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import timedelta
from typing import Any

import pytest

from ocean_c2d import retention
from ocean_c2d.changes import changes
from ocean_c2d.model import (
    Admission,
    Environment,
    FilterPolicy,
    InvalidWorkflow,
    JobState,
    Observed,
    Plan,
    PlanSettings,
    StageJob,
    Workflow,
)
from ocean_c2d.reconcile import invalid, plan
from ocean_c2d.render import Templates, spec_hash
from ocean_c2d.stages import STAGES, next_stage
from ocean_c2d.status import Outcome, Stage
from ocean_c2d.times import format_time
from unit_tests.factories import ADMIT, ENVIRONMENT, PLAN_SETTINGS, T0, TEMPLATES, workflow_object

SETTINGS = PLAN_SETTINGS


class World:
    def __init__(
        self,
        obj: dict[str, Any] | None = None,
        environment: Environment | None = ENVIRONMENT,
        settings: PlanSettings = SETTINGS,
    ) -> None:
        self.obj = obj or workflow_object()
        self.environment = environment
        self.settings = settings
        self.jobs: dict[str, StageJob] = {}
        self.others: dict[tuple[str, str], str] = {}
        self.created_jobs: list[str] = []
        self.running_pods: set[str] = set()  # stages whose pod may still run (deleting or not)
        self.now = T0

    @property
    def workflow(self) -> Workflow:
        return Workflow.from_object(self.obj)

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.obj.get("status") or {})

    def observed(self) -> Observed:
        return Observed(
            jobs=dict(self.jobs),
            others=frozenset(self.others),
            hashes=dict(self.others),
            running_pods=frozenset(self.running_pods),
            stage_pods=frozenset(j.name for j in self.jobs.values() if not j.deleting),
        )

    def plan(self, admission: Admission = ADMIT) -> Plan:
        return plan(
            self.workflow,
            self.environment,
            self.observed(),
            admission,
            self.settings,
            TEMPLATES,
            "job-secret",
            self.now,
        )

    def reconcile(self, admission: Admission = ADMIT) -> Plan:
        result = self.plan(admission)
        for manifest in result.desired:
            kind, name = manifest["kind"], manifest["metadata"]["name"]
            if kind == "Pod":
                stage = manifest["metadata"]["labels"]["component"]
                if stage not in self.jobs or self.jobs[stage].name != name:  # a replacement is new
                    self.created_jobs.append(name)
                    self.jobs[stage] = StageJob(name=name, state=JobState.PENDING, started=self.now)
                self.last_job_manifest = manifest
            else:
                self.others[(kind, name)] = spec_hash(manifest)
        for kind, name in result.unwanted:
            if kind == "Pod":
                self.jobs = {s: j for s, j in self.jobs.items() if j.name != name}
            else:
                self.others.pop((kind, name), None)
        if result.status is not None:
            self.obj["status"] = result.status
        return result

    def finish(self, stage: str, state: JobState = JobState.SUCCEEDED, **details: Any) -> None:
        if state is JobState.SUCCEEDED:
            details.setdefault("exit_code", 0)
        self.now += timedelta(seconds=30)
        self.jobs[stage] = dataclasses.replace(self.jobs[stage], state=state, finished=self.now, **details)

    def stop(self) -> None:
        self.obj["spec"]["stop"] = True
        self.obj["metadata"]["generation"] += 1

    def run_to_end(self, **outcomes: dict[str, Any]) -> None:
        """Reconcile, finishing each stage as `outcomes` says (default: success), until Finished."""
        for _ in range(10):
            self.reconcile()
            if self.status.get("stage") == Stage.FINISHED.value:
                return
            stage = next(s for s, j in self.jobs.items() if j.state is JobState.PENDING)
            self.finish(stage, **outcomes.get(stage, {}))
        raise AssertionError(f"did not finish: {self.status}")


def condition(status: Any, kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_queued_while_the_environment_is_full() -> None:
    world = World()
    result = world.reconcile(Admission(may_start=False, position=3))

    assert result.desired == ()
    assert world.status["stage"] == "Queued"
    assert (world.status["statusCode"], world.status["statusText"]) == (1, "Warming up")
    assert "queuePosition" not in world.status  # only the head's is written: see the next test
    assert "ocean-c2d queue" in world.status["message"]
    assert condition(world.status, "Admitted")["status"] == "False"
    assert result.notify == ()


def test_moving_up_the_queue_changes_nothing_in_status_until_the_head() -> None:
    world = World()
    world.reconcile(Admission(may_start=False, position=5))
    fifth = copy.deepcopy(world.status)
    # Moving up from 5 to 2 is no status write: the status is the same at every position but the head.
    assert world.reconcile(Admission(may_start=False, position=2)).status is None
    assert world.status == fifth
    head = world.reconcile(Admission(may_start=False, position=1))
    assert head.status is not None
    assert world.status["queuePosition"] == 1
    assert world.status["message"] == fifth["message"]


def test_admission_creates_the_base_children_and_the_configure_job() -> None:
    world = World()
    result = world.reconcile()

    kinds = sorted((m["kind"], m["metadata"]["name"]) for m in result.desired)
    assert kinds == [
        ("ConfigMap", "job1"),
        ("NetworkPolicy", "job1-isolation"),
        ("NetworkPolicy", "job1-stage-egress"),
        ("PersistentVolumeClaim", "job1-data"),
        ("Pod", "job1-configure"),
        ("Secret", "job1-secret"),
    ]
    for manifest in result.desired:
        [owner] = manifest["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("Workflow", "uid-1", True)
        assert manifest["metadata"]["labels"]["workflow"] == "job1"
    assert world.status["statusCode"] == 20
    assert world.status["stage"] == "Configuring"
    assert world.status["stages"]["configure"]["podName"] == "job1-configure"
    assert world.status["notifications"]["start"]["state"] == "Pending"
    assert result.notify == ("start",)
    assert condition(world.status, "Admitted")["status"] == "True"
    assert condition(world.status, "Succeeded")["status"] == "Unknown"


@pytest.mark.parametrize("stage_to_reach", ["configure", "algorithm", "publish"])
def test_reconciling_the_result_of_a_reconcile_plans_nothing(stage_to_reach: str) -> None:
    world = World()
    world.reconcile()
    for stage in ("configure", "algorithm"):
        if stage == stage_to_reach:
            break
        world.finish(stage)
        world.reconcile()

    again = world.plan()
    assert again.status is None
    assert again.events == ()
    assert again.unwanted == ()
    assert len(changes(again, world.observed())) == 0


def test_a_finished_stage_starts_the_next_one_in_the_same_reconcile() -> None:
    world = World()
    world.reconcile()
    world.finish("configure")
    result = world.reconcile()

    assert [m["metadata"]["name"] for m in result.desired if m["kind"] == "Pod"] == ["job1-algorithm"]
    assert (world.status["statusCode"], world.status["stage"]) == (40, "RunningAlgorithm")
    assert world.status["stages"]["configure"]["exitCode"] == 0
    assert world.status["stages"]["algorithm"]["podName"] == "job1-algorithm"


def test_happy_path_ends_job_finished_with_results() -> None:
    world = World()
    result = {"filename": "out.csv", "filesize": 12, "url": "s3://b/job1/out.csv", "type": "output"}
    results = json.dumps({"results": [result]})
    world.run_to_end(publish={"termination_message": results})

    status = world.status
    assert (status["statusCode"], status["statusText"], status["reason"]) == (70, "Job finished", "Succeeded")
    assert status["results"] == [
        {"filename": "out.csv", "filesize": 12, "url": "s3://b/job1/out.csv", "type": "output"}
    ]
    assert condition(status, "Succeeded")["status"] == "True"
    assert condition(status, "Finished")["status"] == "True"
    assert status["finishedAt"]
    assert status["duration"]
    assert status["notifications"]["stop"]["state"] == "Pending"
    assert world.created_jobs == ["job1-configure", "job1-algorithm", "job1-publish"]


@pytest.mark.parametrize(
    ("outcomes", "code", "reason", "jobs"),
    [
        pytest.param(
            {"configure": {"state": JobState.FAILED, "exit_code": 31}},
            31,
            "DataProvisioningFailed",
            ["configure", "publish"],
            id="data-provisioning",
        ),
        pytest.param(
            {"configure": {"state": JobState.FAILED, "exit_code": 32}},
            32,
            "AlgorithmProvisioningFailed",
            ["configure", "publish"],
            id="algorithm-provisioning",
        ),
        pytest.param(
            {"configure": {"state": JobState.FAILED, "failure_reason": "DeadlineExceeded"}},
            31,
            "DataProvisioningFailed",
            ["configure", "publish"],
            id="configure-timeout",
        ),
        pytest.param(
            {"algorithm": {"state": JobState.FAILED, "exit_code": 1}},
            41,
            "AlgorithmFailed",
            ["configure", "algorithm", "publish"],
            id="algorithm-exit-1",
        ),
        pytest.param(
            {"algorithm": {"state": JobState.FAILED, "exit_code": 137, "termination_reason": "OOMKilled"}},
            41,
            "AlgorithmFailed",
            ["configure", "algorithm", "publish"],
            id="oom",
        ),
        pytest.param(
            {"algorithm": {"state": JobState.FAILED, "failure_reason": "DeadlineExceeded"}},
            43,
            "AlgorithmTimedOut",
            ["configure", "algorithm", "publish"],
            id="algorithm-timeout",
        ),
        pytest.param(
            {
                "algorithm": {
                    "state": JobState.FAILED,
                    "failure_reason": "DeadlineExceeded",
                    "waiting_reason": "ImagePullBackOff",
                    "exit_code": None,
                }
            },
            22,
            "ContainerCreationFailed",
            ["configure", "algorithm", "publish"],
            id="image-pull",
        ),
        pytest.param(
            {"publish": {"state": JobState.FAILED, "exit_code": 62}},
            62,
            "ResultsUploadFailed",
            ["configure", "algorithm", "publish"],
            id="upload",
        ),
    ],
)
def test_failures_end_with_their_own_code_and_logs_are_still_published(
    outcomes: dict[str, dict[str, Any]], code: int, reason: str, jobs: list[str]
) -> None:
    world = World()
    world.run_to_end(**outcomes)

    status = world.status
    assert (status["statusCode"], status["reason"], status["stage"]) == (code, reason, "Finished")
    assert condition(status, "Succeeded")["status"] == "False"
    assert condition(status, "Succeeded")["reason"] == reason
    assert world.created_jobs == [f"job1-{stage}" for stage in jobs]
    assert status["message"]


def test_algorithm_failure_records_exit_code_and_reason() -> None:
    world = World()
    world.run_to_end(
        algorithm={"state": JobState.FAILED, "exit_code": 137, "termination_reason": "OOMKilled"}
    )

    record = world.status["stages"]["algorithm"]
    assert (record["exitCode"], record["reason"]) == (137, "OOMKilled")
    assert "exit code 137" in world.status["message"]
    assert "OOMKilled" in world.status["message"]


FILTERING = dataclasses.replace(ENVIRONMENT, filter=FilterPolicy(enabled=True))


def test_filter_runs_between_algorithm_and_publish_when_enabled() -> None:
    world = World(environment=FILTERING)
    world.run_to_end()

    assert world.created_jobs == [
        "job1-configure",
        "job1-algorithm",
        "job1-filter",
        "job1-publish",
    ]
    assert world.status["filter"] == {"verdict": "Pass", "reasons": []}
    assert world.status["statusCode"] == 70


def test_a_blocking_filter_withholds_outputs_and_ends_51() -> None:
    world = World(environment=FILTERING)
    block = '{"verdict": "Block", "reasons": ["outputs/copy.csv is a copy of an input"]}'
    world.run_to_end(filter={"state": JobState.FAILED, "exit_code": 51, "termination_message": block})

    assert world.status["filter"] == {
        "verdict": "Block",
        "reasons": ["outputs/copy.csv is a copy of an input"],
    }
    assert (world.status["statusCode"], world.status["reason"]) == (51, "ResultsBlocked")
    publish_env = {e["name"]: e.get("value") for e in world.last_job_manifest["spec"]["containers"][0]["env"]}
    assert publish_env["PUBLISH_OUTPUTS"] == "false"


def test_the_filters_manifest_hash_is_recorded_and_given_to_publish() -> None:
    world = World(environment=FILTERING)
    sha = "0123456789abcdef" * 4
    passed = json.dumps({"verdict": "Pass", "reasons": [], "manifestSha256": sha})
    world.run_to_end(filter={"termination_message": passed})

    assert world.status["filter"] == {"verdict": "Pass", "reasons": [], "manifestSha256": sha}
    publish_env = publish_env_of(world)
    assert (publish_env["PUBLISH_MANIFEST"], publish_env["PUBLISH_MANIFEST_SHA256"]) == ("required", sha)
    assert publish_env["PUBLISH_MAX_BYTES"] == str(FILTERING.publish_byte_cap)


def test_a_pass_without_a_hash_still_requires_the_manifest_file_and_no_filter_requires_none() -> None:
    custom = World(settings=dataclasses.replace(SETTINGS, filtering_container="filter:1"))
    custom.run_to_end(filter={"termination_message": "anything the custom filter says"})
    assert custom.status["filter"] == {"verdict": "Pass", "reasons": []}
    assert publish_env_of(custom)["PUBLISH_MANIFEST"] == "required"
    assert "PUBLISH_MANIFEST_SHA256" not in publish_env_of(custom)
    unfiltered = World()
    unfiltered.run_to_end()
    assert "PUBLISH_MANIFEST" not in publish_env_of(unfiltered)


def test_a_crashing_filter_fails_closed() -> None:
    world = World(environment=FILTERING)
    world.run_to_end(filter={"state": JobState.FAILED, "exit_code": 2})

    assert world.status["filter"]["verdict"] == "Block"
    assert world.status["statusCode"] == 51


def test_filtering_never_overwrites_an_earlier_failure() -> None:
    world = World(environment=FILTERING)
    world.run_to_end(
        algorithm={"state": JobState.FAILED, "exit_code": 3},
        filter={"state": JobState.FAILED, "exit_code": 51},
    )

    assert (world.status["statusCode"], world.status["reason"]) == (41, "AlgorithmFailed")
    assert world.status["filter"]["verdict"] == "Block"


def test_no_filter_when_configure_failed_there_is_no_algorithm_output() -> None:
    world = World(environment=FILTERING)
    world.run_to_end(configure={"state": JobState.FAILED, "exit_code": 31})

    assert world.created_jobs == ["job1-configure", "job1-publish"]


def test_unknown_environment_fails_with_a_reason() -> None:
    world = World(environment=None)
    result = world.reconcile()

    assert result.desired == ()
    assert (world.status["statusCode"], world.status["reason"]) == (90, "UnknownEnvironment")
    assert "'cpu'" in world.status["message"]
    assert condition(world.status, "Finished")["status"] == "True"
    assert result.notify == ()  # nothing started, so there is nothing to notify


def test_stop_while_queued_ends_without_children() -> None:
    world = World()
    world.reconcile(Admission(may_start=False, position=1))
    world.stop()
    result = world.reconcile(Admission(may_start=False, position=1))

    assert result.desired == ()
    assert (world.status["statusCode"], world.status["reason"]) == (72, "Stopped")


@pytest.mark.parametrize(
    ("stop_in", "expected_jobs"),
    [
        ("configure", ["configure", "publish"]),
        ("algorithm", ["configure", "algorithm", "publish"]),
        ("publish", ["configure", "algorithm", "publish"]),
    ],
)
def test_stop_ends_the_current_stage_and_still_publishes(stop_in: str, expected_jobs: list[str]) -> None:
    world = World()
    world.reconcile()
    for stage in ("configure", "algorithm", "publish"):
        if stage == stop_in:
            break
        world.finish(stage)
        world.reconcile()
    world.stop()
    result = world.reconcile()

    assert ("Pod", f"job1-{stop_in}") in result.unwanted
    assert world.status["stages"][stop_in]["reason"] == "Stopped"
    if stop_in != "publish":
        assert world.status["stage"] == "Publishing"
        world.finish("publish")
        world.reconcile()
    assert (world.status["statusCode"], world.status["reason"]) == (72, "Stopped")
    assert world.created_jobs == [f"job1-{stage}" for stage in expected_jobs]


@pytest.mark.parametrize("ending", ["stop", "timeout"])
def test_the_next_stage_waits_until_the_algorithm_pod_is_gone(ending: str) -> None:
    """A stopped or timed-out algorithm's pod is deleted, but its processes run until the kubelet has
    killed them: publish (which reads the same volume) must not start before."""
    world = World()
    world.reconcile()
    world.finish("configure")
    world.reconcile()
    world.running_pods = {"algorithm"}
    if ending == "stop":
        world.stop()
    else:
        world.finish("algorithm", JobState.FAILED, failure_reason="DeadlineExceeded")
    world.now += timedelta(seconds=3)
    result = world.reconcile()

    assert world.status["stage"] == "Publishing"
    assert "job1-publish" not in world.created_jobs
    assert not any(m["kind"] == "Pod" for m in result.desired)
    assert "endedAt" not in world.status["stages"]["algorithm"]
    assert world.reconcile().status is None  # waiting writes nothing

    world.running_pods = set()  # the pod is gone
    world.now += timedelta(seconds=7)
    world.reconcile()

    assert world.created_jobs[-1] == "job1-publish"
    assert world.status["stages"]["algorithm"]["endedAt"] == format_time(world.now)
    assert world.status["stages"]["publish"]["startedAt"] == format_time(world.now)


def test_an_algorithm_that_exited_by_itself_ended_when_its_job_finished() -> None:
    world = World()
    world.run_to_end()

    record = world.status["stages"]["algorithm"]
    assert record["endedAt"] == record["finishedAt"]


def test_an_isolation_check_that_never_saw_egress_blocked_fails_closed() -> None:
    world = World(environment=FILTERING)
    world.run_to_end(algorithm={"state": JobState.FAILED, "init_failure": "isolation-check"})

    status = world.status
    assert (status["statusCode"], status["reason"]) == (23, "NetworkNotIsolated")
    assert "NetworkPolicy" in status["message"]
    # The algorithm never ran: nothing to filter; publish still runs (the logs).
    assert world.created_jobs == ["job1-configure", "job1-algorithm", "job1-publish"]


def test_a_filter_pod_that_was_not_isolated_blocks_the_results() -> None:
    world = World(environment=FILTERING)
    world.run_to_end(filter={"state": JobState.FAILED, "init_failure": "isolation-check"})

    assert world.status["filter"]["verdict"] == "Block"
    assert "NetworkPolicy" in world.status["filter"]["reasons"][0]
    assert world.last_job_manifest["metadata"]["name"] == "job1-publish"
    publish_env = {e["name"]: e.get("value") for e in world.last_job_manifest["spec"]["containers"][0]["env"]}
    assert publish_env["PUBLISH_OUTPUTS"] == "false"


def test_a_deleted_running_algorithm_is_never_recreated() -> None:
    world = World()
    world.reconcile()
    world.finish("configure")
    world.reconcile()
    del world.jobs["algorithm"]  # someone deleted the Job
    world.reconcile()

    assert world.created_jobs.count("job1-algorithm") == 1
    assert world.status["reason"] == "AlgorithmFailed"
    assert "deleted" in world.status["message"]


def test_a_finished_workflow_never_moves_again_and_cleans_up() -> None:
    world = World()
    world.run_to_end()
    final = world.status
    assert world.jobs == {}
    assert world.others == {}

    world.jobs["algorithm"] = StageJob(name="job1-algorithm", state=JobState.FAILED)  # a stray change
    world.now += timedelta(hours=1)
    result = world.reconcile()
    assert world.status == final
    assert result.desired == ()
    assert result.status is None


def test_debug_no_cleanup_keeps_the_children() -> None:
    world = World(settings=dataclasses.replace(SETTINGS, cleanup=False))
    world.run_to_end()

    assert set(world.jobs) == {"configure", "algorithm", "publish"}
    assert ("PersistentVolumeClaim", "job1-data") in world.others


def test_finished_workflows_are_deleted_after_their_ttl() -> None:
    world = World(settings=dataclasses.replace(SETTINGS, workflow_ttl_seconds=300))
    world.run_to_end()

    world.now += timedelta(seconds=100)
    waiting = world.plan()
    assert not waiting.delete_workflow
    assert waiting.requeue_after == pytest.approx(200)
    world.now += timedelta(seconds=200)
    assert world.plan().delete_workflow


def test_algorithm_job_shape() -> None:
    gpu = dataclasses.replace(ENVIRONMENT, n_gpu=2, n_cpu=4, ram_gb=16, disk_gb=50, max_job_duration=600)
    world = World(workflow_object(maxDuration=9999), environment=gpu)
    world.reconcile()
    world.finish("configure")
    job = next(m for m in world.reconcile().desired if m["kind"] == "Pod")

    assert job["spec"]["activeDeadlineSeconds"] == 600  # maxDuration is capped by the environment
    pod = job["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["image"] == "python:3.11"
    assert container["resources"]["limits"] == {
        "cpu": "4",
        "memory": "16Gi",
        "ephemeral-storage": "50Gi",
        "nvidia.com/gpu": "2",
    }
    assert container["resources"]["requests"] == container["resources"]["limits"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    assert mounts["/data/inputs"] is True
    assert mounts["/data/transformations"] is True
    assert mounts["/data/outputs"] is False
    assert mounts["/data/logs"] is False
    assert "/data/adminlogs" not in mounts
    env = {e["name"]: e for e in container["env"]}
    assert env["DIDS"]["value"] == '["' + "b" * 64 + '"]'
    assert env["secret"]["valueFrom"]["secretKeyRef"] == {"name": "job1-secret", "key": "secret"}
    assert "value" not in env["secret"]


def test_a_checksum_pins_the_image_by_digest() -> None:
    digest = "sha256:" + "c" * 64
    obj = workflow_object()
    obj["spec"]["algorithm"]["container"]["checksum"] = digest
    world = World(obj)
    world.reconcile()
    world.finish("configure")
    job = next(m for m in world.reconcile().desired if m["kind"] == "Pod")
    assert job["spec"]["containers"][0]["image"] == f"python@{digest}"


def test_an_open_environment_still_gets_a_network_policy_with_public_egress_only() -> None:
    open_environment = dataclasses.replace(ENVIRONMENT, allow_network=True)
    desired = World(environment=open_environment).reconcile().desired
    policy = next(m for m in desired if m["metadata"]["name"] == "job1-isolation")
    assert policy["spec"]["ingress"] == []
    assert "169.254.0.0/16" in policy["spec"]["egress"][0]["to"][0]["ipBlock"]["except"]
    policy = next(m for m in World().reconcile().desired if m["metadata"]["name"] == "job1-isolation")
    assert policy["spec"]["egress"] == []
    assert policy["spec"]["ingress"] == []
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"workflow": "job1"},
        "matchExpressions": [{"key": "component", "operator": "In", "values": ["algorithm", "filter"]}],
    }


def test_condition_transition_times_move_only_when_their_status_changes() -> None:
    world = World()
    world.reconcile()
    admitted_at = condition(world.status, "Admitted")["lastTransitionTime"]
    world.now += timedelta(minutes=5)
    world.finish("configure")
    world.reconcile()
    assert condition(world.status, "Admitted")["lastTransitionTime"] == admitted_at


def test_drifted_config_map_is_patched_but_jobs_never_are() -> None:
    world = World()
    world.reconcile()
    world.others[("ConfigMap", "job1")] = "stale-hash"
    world.jobs["configure"] = dataclasses.replace(world.jobs["configure"])
    result = world.plan()
    assert len(changes(result, world.observed())) == 1


def test_no_notifications_are_due_when_no_url_is_configured() -> None:
    world = World(settings=dataclasses.replace(SETTINGS, notify_start=False, notify_stop=False))
    first = world.reconcile()
    world.run_to_end()

    assert first.notify == ()
    assert "notifications" not in world.status


def test_the_configure_step_saying_which_input_failed_reaches_the_status() -> None:
    said = {"status": "DataProvisioningFailed", "message": "input 1 (https://example.org/a.csv): HTTP 404"}
    world = World()
    world.run_to_end(
        configure={"state": JobState.FAILED, "exit_code": 31, "termination_message": json.dumps(said)}
    )

    assert world.status["statusCode"] == 31
    assert "input 1 (https://example.org/a.csv): HTTP 404" in world.status["message"]


def test_results_expire_by_their_record_once_the_last_of_them_is_due() -> None:
    world = World()
    expires = int((T0 + timedelta(hours=2)).timestamp())
    results = [
        {
            "filename": "out.csv",
            "filesize": 1,
            "url": "ipfs://cid1/out.csv",
            "type": "output",
            "expiresAt": expires,
        },
        {
            "filename": "algorithm.log",
            "filesize": 1,
            "url": "ipfs://cid2/algorithm.log",
            "type": "algorithmLog",
            "expiresAt": expires,
        },
    ]
    world.run_to_end(publish={"termination_message": json.dumps({"results": results})})
    assert world.status["results"][0]["expiresAt"] == expires

    # The Workflow plans no wake-up for them (it may be deleted first): its results record does.
    assert world.plan().requeue_after is None
    stores = retention.ResultStores(ipfs_prefix="ipfs://")
    finished = Workflow.from_object(world.obj)
    record = retention.wanted_record(finished, finished.status, stores)
    assert record is not None
    assert (record.state, record.expires_at, record.cids) == (
        retention.State.PUBLISHED,
        expires,
        ("cid1", "cid2"),
    )
    world.obj["status"]["resultsExpiredAt"] = "2026-01-01T15:00:00Z"
    ended = Workflow.from_object(world.obj)
    assert retention.wanted_record(ended, ended.status, stores) is None


# ---- permanent failures: InvalidSpec (code 90) ----------------------------------------------------------


def test_an_invalid_workflow_ends_invalid_spec_with_a_reason_and_an_event() -> None:
    world = World()
    world.reconcile()  # admitted: Configuring, holding a slot
    result = invalid(world.workflow, "ConfigMap job1: data too long", SETTINGS, world.now)

    assert result.status is not None
    assert (result.status["stage"], result.status["statusCode"]) == ("Finished", 90)
    assert result.status["reason"] == "InvalidSpec"
    assert "ConfigMap job1: data too long" in result.status["message"]
    assert [(e.type, e.reason) for e in result.events] == [
        ("Warning", "InvalidSpec"),
        ("Warning", "Finished"),
    ]
    assert condition(result.status, "Admitted")["status"] == "True"  # it was admitted; it is over now
    assert condition(result.status, "Succeeded")["status"] == "False"
    assert "stop" in result.notify  # it started, so the stop notification is due
    world.obj["status"] = result.status
    cleanup = world.plan()
    assert ("Pod", world.created_jobs[0]) in cleanup.unwanted  # the next reconcile cleans up
    assert cleanup.status is None


def test_a_queued_invalid_workflow_never_takes_a_slot() -> None:
    world = World()
    world.reconcile(Admission(may_start=False, position=1))
    result = invalid(world.workflow, "cannot read", SETTINGS, world.now)
    assert result.status is not None
    assert "admittedAt" not in result.status
    assert "queuePosition" not in result.status
    assert condition(result.status, "Admitted")["status"] == "False"
    assert result.notify == ()


def test_a_template_error_during_a_reconcile_is_an_invalid_workflow(tmp_path: Any) -> None:
    (tmp_path / "algorithm-pod.yaml.j2").write_text("{{ no_such_value | json }}\n")
    world = World()
    world.reconcile()
    world.finish("configure")
    with pytest.raises(InvalidWorkflow, match=r"algorithm-pod\.yaml\.j2.*no_such_value"):
        plan(
            world.workflow,
            ENVIRONMENT,
            world.observed(),
            ADMIT,
            SETTINGS,
            Templates(tmp_path),
            "s",
            world.now,
        )


def test_a_spec_that_cannot_be_read_is_an_invalid_workflow_with_a_readable_header() -> None:
    obj = workflow_object(inputs="not a list of inputs", maxDuration="soon")
    obj["status"] = {"stage": "Queued"}
    with pytest.raises(InvalidWorkflow, match="spec"):
        Workflow.from_object(obj)
    header = Workflow.header(obj)
    assert (header.name, header.spec.environment, header.stage) == ("job1", "cpu", Stage.QUEUED)


def test_a_character_beyond_the_bmp_in_the_entrypoint_survives_rendering() -> None:
    """The `json` filter escapes an emoji as a UTF-16 surrogate pair, which PyYAML decodes half by half:
    the Job could not be encoded as UTF-8. It renders as the character itself."""
    obj = workflow_object()
    obj["spec"]["algorithm"]["container"]["entrypoint"] = "python $ALGO --mood 😀"
    world = World(obj)
    world.reconcile()
    world.finish("configure")
    job = next(m for m in world.reconcile().desired if m["kind"] == "Pod")
    text = json.dumps(job, ensure_ascii=False)
    text.encode("utf-8")  # would raise on a lone surrogate
    assert "--mood 😀" in text


# ---- the stage table ------------------------------------------------------------------------------------


def test_every_stage_of_the_table_has_its_template_and_a_way_on() -> None:
    assert list(STAGES) == ["configure", "algorithm", "filter", "publish"]
    for definition in STAGES.values():
        assert definition.template in TEMPLATES._templates
        for nxt in (definition.after_success, definition.after_failure):
            assert nxt is None or nxt in STAGES
    plain, filtering = ENVIRONMENT, FILTERING
    assert next_stage(STAGES["configure"], Outcome.SUCCEEDED, plain, SETTINGS) is STAGES["algorithm"]
    assert next_stage(STAGES["configure"], Outcome.STOPPED, plain, SETTINGS) is STAGES["publish"]
    assert next_stage(STAGES["algorithm"], Outcome.SUCCEEDED, plain, SETTINGS) is STAGES["publish"]
    failed = Outcome.ALGORITHM_FAILED
    assert next_stage(STAGES["algorithm"], failed, filtering, SETTINGS) is STAGES["filter"]
    never_ran = Outcome.CONTAINER_CREATION_FAILED
    assert next_stage(STAGES["algorithm"], never_ran, filtering, SETTINGS) is STAGES["publish"]
    assert next_stage(STAGES["publish"], Outcome.SUCCEEDED, plain, SETTINGS) is None


def test_an_image_with_whitespace_is_an_invalid_workflow() -> None:
    """The API server takes a Job whose image has a space but refuses every pod of it, so the Job would
    wait out its deadline holding a slot: the Workflow ends InvalidSpec before anything is created."""
    for key, value in (("image", " python"), ("tag", "3.11 ")):
        obj = workflow_object()
        obj["spec"]["algorithm"]["container"][key] = value
        with pytest.raises(InvalidWorkflow, match=f"spec.algorithm.container.{key}"):
            Workflow.from_object(obj)


# ---- the trust boundary: nothing leaves without a Pass ----------------------------------------------


def publish_env_of(world: World) -> dict[str, Any]:
    [container] = world.last_job_manifest["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


@pytest.mark.parametrize("filtering", ["environment filter", "FILTERING_CONTAINER"])
def test_a_filter_stopped_before_its_verdict_blocks_the_outputs(filtering: str) -> None:
    if filtering == "FILTERING_CONTAINER":
        world = World(settings=dataclasses.replace(SETTINGS, filtering_container="filter:1"))
    else:
        world = World(environment=FILTERING)
    world.reconcile()
    for stage in ("configure", "algorithm"):
        world.finish(stage)
        world.reconcile()
    assert world.status["stage"] == "Filtering"
    world.stop()
    world.reconcile()

    assert world.status["filter"]["verdict"] == "Block"
    assert world.status["stage"] == "Publishing"
    assert publish_env_of(world)["PUBLISH_OUTPUTS"] == "false"
    world.finish("publish")
    world.reconcile()
    assert (world.status["statusCode"], world.status["reason"]) == (72, "Stopped")


@pytest.mark.parametrize(
    "ending",
    [
        {"state": JobState.FAILED, "failure_reason": "DeadlineExceeded"},  # timed out
        {"state": JobState.FAILED, "exit_code": 137, "termination_reason": "OOMKilled"},  # crashed
    ],
)
def test_a_filter_that_ended_without_a_pass_blocks_the_outputs(ending: dict[str, Any]) -> None:
    world = World(environment=FILTERING)
    world.run_to_end(filter=ending)
    assert world.status["filter"]["verdict"] == "Block"
    assert world.status["stages"]["publish"]["podName"] == "job1-publish"


def test_a_deleted_filter_job_blocks_the_outputs() -> None:
    world = World(environment=FILTERING)
    world.reconcile()
    for stage in ("configure", "algorithm"):
        world.finish(stage)
        world.reconcile()
    del world.jobs["filter"]
    world.reconcile()
    assert world.status["filter"]["verdict"] == "Block"
    assert publish_env_of(world)["PUBLISH_OUTPUTS"] == "false"


def test_the_algorithms_termination_message_never_reaches_status_or_events() -> None:
    """The algorithm writes /dev/termination-log itself (up to 4 KiB): copied into status.message or an
    Event it would carry input data around the filter. Its exit code and the kubelet's reason are enough."""
    world = World()
    secret_row = "patient-42,positive"
    failed = {
        "state": JobState.FAILED,
        "exit_code": 3,
        "termination_message": f'{{"message": "{secret_row}"}}',
    }
    events: list[Any] = []
    for _ in range(10):
        events += world.reconcile().events
        if world.status.get("stage") == "Finished":
            break
        stage = world.status["stage"]
        job = {"Configuring": "configure", "RunningAlgorithm": "algorithm", "Publishing": "publish"}[stage]
        ending: dict[str, Any] = failed if job == "algorithm" else {}
        world.finish(job, **ending)

    assert (world.status["statusCode"], world.status["reason"]) == (41, "AlgorithmFailed")
    assert "exit code 3" in world.status["message"]
    assert secret_row not in json.dumps(world.status)
    assert all(secret_row not in event.message for event in events)


def test_messages_in_status_and_events_are_one_printable_line_of_bounded_length() -> None:
    """What a step or a remote server said cannot forge lines, drive a terminal or fill the status."""
    forged = "HTTP 500\n2026-01-01 INFO ocean_c2d Workflow approved\x1b[2J\x85\u2028" + "x" * 5000
    said = {"status": "DataProvisioningFailed", "message": forged}
    world = World()
    events: list[Any] = []
    world.reconcile()
    world.finish("configure", JobState.FAILED, exit_code=31, termination_message=json.dumps(said))
    events += world.reconcile().events

    message = world.status["message"]
    assert "HTTP 500 2026-01-01 INFO" in message
    assert len(message) <= 1024
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in message)
    warning = next(e for e in events if e.type == "Warning")
    assert warning.message == message
