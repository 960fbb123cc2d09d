"""Workflows whose every stage runs for real on the local cluster's real node (kubelet + containerd +
kube-router): configure fetches real inputs, the algorithm is a real process in a locally built image,
publish uploads to a real S3 server. Each test asserts from the cluster and from the published bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kr8s.asyncio
from kr8s.asyncio.objects import Pod

from e2e.operator_fixtures import (
    OPERATOR_ADDRESS,
    Workflow,
    events_of,
    status,
    wait_finished,
    wait_for_event,
)
from e2e.operator_handle import StartOperator, run_command
from e2e.real_node import (
    FileServer,
    RealNode,
    RealStack,
    chart_credentials,
    chart_settings,
    create_real_environment,
    moment,
    published,
    python_algorithm,
    start_real_stack,
    tcp_canary,
    unique,
)
from e2e.services import S3Server, new_bucket
from e2e.waiting import wait_for
from ocean_c2d.times import format_time
from unit_tests.built_tools import built

CHART = Path(__file__).resolve().parent.parent / "helm" / "ocean-c2d"

REAL_TIMEOUT = 240  # a real Workflow takes 10-15 s on an idle machine; CI's may be busy


def real_workflow(name: str, algorithm: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "environment": "real",
            "owner": OPERATOR_ADDRESS,
            "inputs": spec.pop("inputs", []),
            "algorithm": algorithm,
            **spec,
        },
    }


async def run_real(
    api: kr8s.asyncio.Api, namespace: str, stack: RealStack, manifest: dict[str, Any]
) -> dict[str, Any]:
    workflow = await Workflow(manifest, namespace=namespace, api=api)
    await workflow.create()
    return await wait_finished(workflow, stack.operator, timeout=REAL_TIMEOUT)


def results_by_name(stack: RealStack, final: dict[str, Any]) -> dict[str, bytes]:
    return {r["filename"]: stack.object(r["url"]) for r in final.get("results") or []}


PIPELINE = """
import hashlib, os, pathlib
inputs = sorted(p for p in pathlib.Path(os.environ["INPUTS"]).rglob("*") if p.is_file())
root = os.environ["INPUTS"]
lines = [f"{p.relative_to(root)} {hashlib.sha256(p.read_bytes()).hexdigest()}" for p in inputs]
pathlib.Path(os.environ["OUTPUTS"], "digests.txt").write_text("\\n".join(lines) + "\\n")
print(f"hashed {len(inputs)} inputs")
"""


async def test_the_whole_pipeline_runs_for_real(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    real_node: RealNode,
    node_s3: S3Server,
    node_http: FileServer,
) -> None:
    http_bytes = b"city,visits\nLisbon,3\nPorto,5\n"
    s3_bytes = b"\x00binary input\xff" * 64
    node_http.files["/sets/visits.csv"] = http_bytes
    inputs_bucket = await asyncio.to_thread(new_bucket, node_s3.client(), "inputs")
    await asyncio.to_thread(
        node_s3.client().put_object, Bucket=inputs_bucket, Key="raw/blob.bin", Body=s3_bytes
    )
    stack = await start_real_stack(api, namespace, start_operator, real_node, node_s3)
    await create_real_environment(api, namespace, real_node, filter={"enabled": True})
    name = unique("pipeline")

    final = await run_real(
        api,
        namespace,
        stack,
        real_workflow(
            name,
            python_algorithm(real_node, PIPELINE),
            inputs=[
                {"url": f"{node_http.url}/sets/visits.csv"},
                {"url": f"s3://{inputs_bucket}/raw/blob.bin"},
            ],
        ),
    )

    assert (final["statusCode"], final["reason"]) == (70, "Succeeded"), final
    assert final["filter"]["verdict"] == "Pass"
    published = results_by_name(stack, final)
    digests = {"0/visits.csv": http_bytes, "1/blob.bin": s3_bytes}
    expected = "".join(f"{path} {hashlib.sha256(data).hexdigest()}\n" for path, data in digests.items())
    assert published["digests.txt"].decode() == expected
    assert b"hashed 2 inputs" in published["algorithm.log"]
    assert node_http.requests.count("/sets/visits.csv") == 1
    await wait_for_event(api, namespace, name, "Finished")  # Events follow the status
    reasons = await events_of(api, namespace, name)
    assert {"Configuring", "RunningAlgorithm", "Filtering", "Publishing", "Finished"} <= set(reasons), reasons


async def test_an_algorithm_that_exits_3_ends_41_with_its_log_published(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    real_node: RealNode,
    node_s3: S3Server,
) -> None:
    stack = await start_real_stack(api, namespace, start_operator, real_node, node_s3)
    await create_real_environment(api, namespace, real_node)
    code = "import sys\nprint('giving up on purpose', flush=True)\nsys.exit(3)\n"

    final = await run_real(
        api, namespace, stack, real_workflow(unique("exits"), python_algorithm(real_node, code))
    )

    assert (final["statusCode"], final["reason"]) == (41, "AlgorithmFailed"), final
    assert final["stages"]["algorithm"]["exitCode"] == 3
    assert "exit code 3" in final["message"]
    assert b"giving up on purpose" in results_by_name(stack, final)["algorithm.log"]


LEAKER = """
import os, pathlib, sys
data = next(p for p in pathlib.Path(os.environ["INPUTS"]).rglob("*") if p.is_file()).read_bytes()
sys.stdout.buffer.write(data)  # into its algorithm.log
sys.stdout.flush()
pathlib.Path(os.environ["LOGS"], "x.bin").write_bytes(data)
pathlib.Path(os.environ["OUTPUTS"], "innocent.txt").write_text("mean 42\\n")
"""


async def test_an_input_copied_into_the_logs_is_blocked_and_nothing_of_it_leaves(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    real_node: RealNode,
    node_s3: S3Server,
    node_http: FileServer,
) -> None:
    """Logs are outputs: the algorithm writes them (its stdout, and any file under $LOGS)."""
    secret = b"patient,diagnosis\nP-1047,positive\nP-2093,negative\n"
    node_http.files["/private/records.csv"] = secret
    stack = await start_real_stack(api, namespace, start_operator, real_node, node_s3)
    await create_real_environment(api, namespace, real_node, filter={"enabled": True})
    manifest = real_workflow(
        unique("leaker"),
        python_algorithm(real_node, LEAKER),
        inputs=[{"url": f"{node_http.url}/private/records.csv"}],
    )

    final = await run_real(api, namespace, stack, manifest)

    assert (final["statusCode"], final["reason"]) == (51, "ResultsBlocked"), final
    assert final["filter"]["verdict"] == "Block"
    assert any("logs/x.bin" in reason for reason in final["filter"]["reasons"]), final["filter"]
    published = results_by_name(stack, final)
    assert "x.bin" not in published
    assert "algorithm.log" not in published
    assert "innocent.txt" not in published
    assert all(b"P-1047" not in body for body in published.values()), sorted(published)
    assert {r["type"] for r in final["results"]} <= {"configrationLog", "filteringLog", "publishLog"}


# A sparse file reads as 48 GiB of zeros and costs nothing on the volume: the built-in filter, which
# reads every byte it judges, is still at work on it when the stop arrives.
SLOW_TO_JUDGE = """
import os, pathlib
pathlib.Path(os.environ["OUTPUTS"], "answer.txt").write_text("mean 42\\n")
with open(pathlib.Path(os.environ["OUTPUTS"], "zeros.bin"), "wb") as big:
    big.truncate(48 * 1024**3)
print("wrote the answer", flush=True)
"""


async def wait_container_running(
    api: kr8s.asyncio.Api, namespace: str, name: str, component: str, timeout: float = 120
) -> None:
    """Until the main container of `name`'s `component` pod runs (a watch on its pods)."""
    selector = {"workflow": name, "component": component}
    async with asyncio.timeout(timeout):
        while True:
            async for _event, pod in api.async_watch("pods", namespace=namespace, label_selector=selector):
                statuses = pod.raw.get("status", {}).get("containerStatuses") or []
                if any((s.get("state") or {}).get("running") for s in statuses):
                    return


async def test_a_stop_while_the_filter_judges_publishes_nothing_the_algorithm_wrote(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    real_node: RealNode,
    node_s3: S3Server,
) -> None:
    """A filter stage that ends without a Pass (here: stopped while it reads) is a Block, for real:
    the filter pod is killed, and publish uploads none of the outputs or logs."""
    stack = await start_real_stack(api, namespace, start_operator, real_node, node_s3)
    await create_real_environment(
        api, namespace, real_node, filter={"enabled": True}, publish={"maxBytes": 64 * 1024**3}
    )
    name = unique("judged")
    workflow = await Workflow(
        real_workflow(name, python_algorithm(real_node, SLOW_TO_JUDGE)), namespace=namespace, api=api
    )
    await workflow.create()
    await wait_container_running(api, namespace, name, "filter")

    await workflow.patch({"spec": {"stop": True}})
    final = await wait_finished(workflow, stack.operator, timeout=REAL_TIMEOUT)

    assert (final["statusCode"], final["reason"]) == (72, "Stopped"), final
    assert final["filter"]["verdict"] == "Block", final
    assert final["stages"]["filter"]["reason"] == "Stopped", final["stages"]
    published = results_by_name(stack, final)
    assert set(published) <= {"configure.log", "publish.log", "filter.log"}, sorted(published)
    keys = await asyncio.to_thread(
        lambda: [o["Key"] for o in stack.s3.client().list_objects_v2(Bucket=stack.bucket).get("Contents", [])]
    )
    assert not [key for key in keys if key.endswith(("answer.txt", "zeros.bin", "algorithm.log"))], keys


# Writes a heartbeat (its wall clock) every 100 ms and ignores SIGTERM: only the kubelet's SIGKILL, after
# the pod's grace period, ends it. Whatever publish uploads shows when it last wrote.
HEARTBEAT = """
import os, pathlib, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
beat = pathlib.Path(os.environ["OUTPUTS"], "heartbeat.txt")
print("beating", flush=True)
while True:
    beat.write_text(f"{time.time():.3f}\\n")
    time.sleep(0.1)
"""


async def pod_created_at(api: kr8s.asyncio.Api, namespace: str, name: str) -> float:
    pod = await Pod.get(name, namespace=namespace, api=api)
    return moment(pod.raw["metadata"]["creationTimestamp"])


async def assert_dead_before_publish(
    api: kr8s.asyncio.Api, namespace: str, stack: RealStack, name: str, final: dict[str, Any], killed_at: str
) -> None:
    """The algorithm's processes were dead before publish started: the heartbeat publish uploaded is
    older than the publish pod (creationTimestamp has whole seconds: hence the 1 s of slack), and the
    recorded end of the algorithm comes before the publish stage's start."""
    last_beat = float(results_by_name(stack, final)["heartbeat.txt"])
    publish_created = await pod_created_at(api, namespace, f"{name}-publish")
    assert last_beat < publish_created + 1, (last_beat, publish_created)
    stages = final["stages"]
    assert "endedAt" in stages["algorithm"], stages
    assert moment(stages["algorithm"]["endedAt"]) <= moment(stages["publish"]["startedAt"])
    # SIGTERM was ignored: the kubelet killed it at the end of the 10 s grace period, not at once (and
    # publish waited for that).
    assert moment(stages["algorithm"]["endedAt"]) - moment(killed_at) >= 5, (killed_at, stages)


async def test_an_algorithm_past_its_max_duration_is_gone_before_publish_starts(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    real_node: RealNode,
    node_s3: S3Server,
) -> None:
    stack = await start_real_stack(api, namespace, start_operator, real_node, node_s3, DEBUG_NO_CLEANUP="1")
    await create_real_environment(api, namespace, real_node)
    name = unique("timeout")

    final = await run_real(
        api, namespace, stack, real_workflow(name, python_algorithm(real_node, HEARTBEAT), maxDuration=5)
    )

    assert (final["statusCode"], final["reason"]) == (43, "AlgorithmTimedOut"), final
    # The pod's deadline counts from when the kubelet took it (a little after its creation, startedAt);
    # the kubelet then kills it.
    deadline = datetime.fromtimestamp(moment(final["stages"]["algorithm"]["startedAt"]) + 5, UTC)
    await assert_dead_before_publish(api, namespace, stack, name, final, format_time(deadline))


async def test_a_stop_while_the_algorithm_runs_kills_it_before_publish_starts(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    real_node: RealNode,
    node_s3: S3Server,
) -> None:
    stack = await start_real_stack(api, namespace, start_operator, real_node, node_s3, DEBUG_NO_CLEANUP="1")
    await create_real_environment(api, namespace, real_node)
    name = unique("stop")
    workflow = await Workflow(
        real_workflow(name, python_algorithm(real_node, HEARTBEAT)), namespace=namespace, api=api
    )
    await workflow.create()
    await wait_algorithm_running(api, namespace, name)

    await workflow.patch({"spec": {"stop": True}})
    final = await wait_finished(workflow, stack.operator, timeout=REAL_TIMEOUT)

    assert (final["statusCode"], final["reason"]) == (72, "Stopped"), final
    await assert_dead_before_publish(api, namespace, stack, name, final, final["stoppedAt"])


async def wait_algorithm_running(
    api: kr8s.asyncio.Api, namespace: str, name: str, timeout: float = 120
) -> None:
    """Until the algorithm container of `name` runs (a watch on its pods)."""
    await wait_container_running(api, namespace, name, "algorithm", timeout)


CONNECT_FIRST = """
import os, pathlib, socket
try:
    socket.create_connection(({host!r}, {port}), timeout=3).close()
    outcome = "CONNECTED"
except OSError as error:
    outcome = f"BLOCKED {{error}}"
pathlib.Path(os.environ["OUTPUTS"], "network.txt").write_text(outcome)
print(outcome, flush=True)
"""


async def test_the_algorithm_never_reaches_the_network_unless_allowed(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    real_node: RealNode,
    node_s3: S3Server,
) -> None:
    stack = await start_real_stack(api, namespace, start_operator, real_node, node_s3)
    await create_real_environment(api, namespace, real_node)
    await create_real_environment(
        api, namespace, real_node, name="open", allowNetwork=True, access={"namespaces": [namespace]}
    )
    async with tcp_canary(real_node.host_ip) as canary:
        code = CONNECT_FIRST.format(host=canary.host, port=canary.port)
        isolated = [
            real_workflow(unique(f"isolated-{n}"), python_algorithm(real_node, code)) for n in range(5)
        ]
        finals = await asyncio.gather(*(run_real(api, namespace, stack, m) for m in isolated))
        for final in finals:
            assert (final["statusCode"], final["reason"]) == (70, "Succeeded"), final
            assert results_by_name(stack, final)["network.txt"].startswith(b"BLOCKED"), final
        assert canary.connections == 0  # not one packet of five algorithms' first instruction got through

        opened = await run_real(
            api,
            namespace,
            stack,
            real_workflow(unique("open"), python_algorithm(real_node, code), environment="open"),
        )
        # allowNetwork means the public internet (issue 11, C14): the canary is on a private address.
        assert (opened["statusCode"], opened["reason"]) == (70, "Succeeded"), opened
        assert results_by_name(stack, opened)["network.txt"].startswith(b"BLOCKED")
        assert canary.connections == 0


INSPECT = """
import json, os, pathlib
def attempt(action):
    try:
        action()
        return "allowed"
    except OSError as error:
        return type(error).__name__
lines = pathlib.Path("/proc/self/status").read_text().splitlines()
status = dict(line.split(":\\t", 1) for line in lines if ":\\t" in line)
home = pathlib.Path(os.environ["HOME"])
report = {
    "uid": os.getuid(),
    "gid": os.getgid(),
    "cap_eff": status["CapEff"].strip(),
    "cap_bnd": status["CapBnd"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "root_write": attempt(lambda: open("/c2d-probe", "w")),
    "inputs_write": attempt(lambda: open(os.environ["INPUTS"] + "/0/new.txt", "w")),
    "token": os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount"),
    "home_write": attempt(lambda: (home / ".cache").mkdir(parents=True, exist_ok=True)),
    "tmp_write": attempt(lambda: open("/tmp/scratch", "w").write("x")),
    "secret_set": bool(os.environ.get("secret")),
    "env": {
        k: os.environ.get(k)
        for k in ["DIDS", "TRANSFORMATION_DID", "VOLUME", "LOGS", "INPUTS", "OUTPUTS", "ALGO"]
    },
    "algorithm_file": os.path.exists(os.environ["ALGO"]),
}
pathlib.Path(os.environ["OUTPUTS"], "inside.json").write_text(json.dumps(report))
"""


async def test_inside_the_algorithm_pod(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    real_node: RealNode,
    node_s3: S3Server,
    node_http: FileServer,
) -> None:
    node_http.files["/inside/input.txt"] = b"read me, do not write me\n"
    stack = await start_real_stack(api, namespace, start_operator, real_node, node_s3)
    await create_real_environment(api, namespace, real_node)
    # The image of most published Ocean algorithms: made to run as root, writing to its home.
    algorithm = python_algorithm(real_node, INSPECT, image=real_node.root_algorithm_image)

    final = await run_real(
        api,
        namespace,
        stack,
        real_workflow(unique("inside"), algorithm, inputs=[{"url": f"{node_http.url}/inside/input.txt"}]),
    )

    assert (final["statusCode"], final["reason"]) == (70, "Succeeded"), final
    report = json.loads(results_by_name(stack, final)["inside.json"])
    assert (report["uid"], report["gid"]) == (1000, 1000)
    assert report["cap_eff"] == "0000000000000000"
    assert report["cap_bnd"] == "0000000000000000"
    assert report["no_new_privs"] == "1"
    assert report["root_write"] == "OSError"  # EROFS: the root filesystem is read-only
    assert report["inputs_write"] in ("OSError", "PermissionError")
    assert report["token"] is False
    assert (report["home_write"], report["tmp_write"]) == ("allowed", "allowed")
    assert report["secret_set"] is True
    assert report["env"] == {
        "DIDS": "[]",
        "TRANSFORMATION_DID": "",
        "VOLUME": "/data",
        "LOGS": "/data/logs",
        "INPUTS": "/data/inputs",
        "OUTPUTS": "/data/outputs",
        "ALGO": "/data/transformations/algorithm",
    }
    assert report["algorithm_file"] is True


async def test_with_the_policy_engine_stopped_the_algorithm_never_starts(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    real_node: RealNode,
    node_s3: S3Server,
    policy_engine_stopped: None,
) -> None:
    stack = await start_real_stack(
        api, namespace, start_operator, real_node, node_s3, ISOLATION_TIMEOUT_SECONDS="8"
    )
    await create_real_environment(api, namespace, real_node)
    async with tcp_canary(real_node.host_ip) as canary:
        code = CONNECT_FIRST.format(host=canary.host, port=canary.port)
        started = time.monotonic()
        final = await run_real(
            api, namespace, stack, real_workflow(unique("unpoliced"), python_algorithm(real_node, code))
        )

    assert (final["statusCode"], final["reason"]) == (23, "NetworkNotIsolated"), final
    assert "NetworkPolicy" in final["message"]
    assert canary.connections == 0  # the algorithm never ran
    assert "network.txt" not in results_by_name(stack, final)
    assert time.monotonic() - started >= 8


async def test_the_charts_operator_pod_completes_a_workflow_on_the_real_node(
    api: kr8s.asyncio.Api,
    namespace: str,
    kubeconfig: str,
    ocean_crds: list[str],
    real_node: RealNode,
    node_s3: S3Server,
) -> None:
    """`helm install` with the locally built image: the operator runs as a pod on the real node, logs in
    with its ServiceAccount at KUBERNETES_SERVICE_HOST (no cluster DNS here) and runs a Workflow whose
    stage pods run there too."""
    tools = built("helm", "kubernetes")
    bucket = await asyncio.to_thread(new_bucket, node_s3.client(), "chart")
    await chart_credentials(api, namespace, node_s3)
    await run_command(
        "helm",
        "install",
        "c2d",
        str(CHART),
        "-n",
        namespace,
        "--skip-crds",
        "--wait",
        "--timeout=180s",
        *chart_settings(real_node, node_s3, bucket),
        kubeconfig=kubeconfig,
        tools=tools,
    )
    try:
        pods = [
            p
            async for p in api.async_get(
                "pods", namespace=namespace, label_selector={"app.kubernetes.io/instance": "c2d"}
            )
        ]
        # The chart's two replicas (leader election: one acts), both on the real node, the only one their
        # tolerations and selector allow.
        assert len(pods) == 2, [p.name for p in pods]  # type: ignore[union-attr]
        assert {p.raw["spec"]["nodeName"] for p in pods} == {real_node.name}  # type: ignore[union-attr]
        await create_real_environment(api, namespace, real_node)
        workflow = await Workflow(
            real_workflow(unique("chart"), python_algorithm(real_node, "print('from a pod-run operator')")),
            namespace=namespace,
            api=api,
        )
        await workflow.create()
        try:
            await wait_for(workflow, lambda w: status(w).get("stage") == "Finished", timeout=REAL_TIMEOUT)
        except TimeoutError as error:
            log = await run_command(
                "kubectl",
                "-n",
                namespace,
                "logs",
                "deploy/c2d-ocean-c2d",
                "--tail=40",
                kubeconfig=kubeconfig,
                tools=tools,
                check=False,
            )
            raise AssertionError(f"{error}\n--- operator pod log ---\n{log}") from None
        final = status(workflow)
        assert (final["statusCode"], final["reason"]) == (70, "Succeeded"), final
        [log] = [r for r in final["results"] if r["filename"] == "algorithm.log"]
        assert b"from a pod-run operator" in published(node_s3, bucket, log["url"])
    finally:
        await run_command(
            "helm",
            "uninstall",
            "c2d",
            "-n",
            namespace,
            "--wait",
            kubeconfig=kubeconfig,
            tools=tools,
            check=False,
        )
