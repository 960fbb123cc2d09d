"""`make run`'s demo (samples/run-demo.sh) on the test cluster: the operator a pod on the real node, the
sample algorithms real processes there, their outputs published to the demo's local S3 server. Asserted
from the cluster and from the published bytes, not from what the script says about itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kr8s.asyncio
import pytest
from samples.demo import client as s3_client

from e2e.operator_handle import run_command
from e2e.real_node import CACHE, RealNode, moment, read_env_file
from unit_tests.built_tools import built

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "samples" / "run-demo.sh"
DATA = REPO / "samples" / "data"
CREDENTIALS = CACHE / "demo" / "s3.env"
S3_PID = CACHE / "demo" / "s3.pid"
NAMESPACE = "ocean-c2d-demo"
RELEASE = "ocean-c2d"
DEMO_TIMEOUT = 600  # a warm demo takes about a minute; a first one also builds versitygw

# What the sample algorithms of samples/workflow.yaml compute from samples/data/, worked out by hand.
SPECIES_MEANS = """\
species,flowers,mean_sepal_length,mean_sepal_width,mean_petal_length,mean_petal_width
setosa,5,4.86,3.28,1.40,0.20
versicolor,5,6.46,2.92,4.54,1.44
virginica,5,6.40,2.98,5.68,2.10
"""
WINE_REPORT = """\
wines: 20
mean alcohol: 9.61%
mean quality: 5.35
quality = -0.813 + 0.642 * alcohol (r = 0.376)
"""


def inventory() -> str:
    """sample-3's output: its two inputs, as configure laid them out, with their rows and digests."""
    lines = []
    for index, name in enumerate(["iris.csv", "wine.csv"]):
        data = (DATA / name).read_bytes()
        rows = len(data.splitlines()) - 1
        lines.append(f"{index}/{name} rows={rows} sha256={hashlib.sha256(data).hexdigest()}")
    return "\n".join(lines) + "\n"


EXPECTED = {
    "sample": ("species-means.csv", SPECIES_MEANS, "summarised 15 flowers of 3 species"),
    "sample-2": ("report.txt", WINE_REPORT, "quality = -0.813 + 0.642 * alcohol"),
    "sample-3": ("inventory.txt", inventory(), "listed 2 inputs"),
}


async def run_demo(kubeconfig: str) -> str:
    """samples/run-demo.sh, its output (stdout and stderr) as it printed it; killed at the timeout."""
    process = await asyncio.create_subprocess_exec(
        str(DEMO),
        env={**os.environ, "KUBECONFIG": kubeconfig},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its process group, to stop it (the S3 server it starts has its own)
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(DEMO_TIMEOUT):
            async for line in process.stdout:
                lines.append(line.decode(errors="replace"))
            await process.wait()
    except TimeoutError:
        os.killpg(process.pid, signal.SIGTERM)
        await process.wait()
        raise AssertionError(f"run-demo.sh ran over {DEMO_TIMEOUT} s:\n{''.join(lines)}") from None
    output = "".join(lines)
    assert process.returncode == 0, f"run-demo.sh exited {process.returncode}:\n{output}"
    return output


def published(values: dict[str, str], url: str) -> tuple[bytes, float]:
    """The bytes of a published result (by its status URL) and when the object was written."""
    prefix = f"{values['AWS_ENDPOINT_URL']}/{values['OUTPUT_BUCKET']}/"
    assert url.startswith(prefix), (url, prefix)
    response = s3_client(values).get_object(Bucket=values["OUTPUT_BUCKET"], Key=url.removeprefix(prefix))
    body: bytes = response["Body"].read()
    return body, response["LastModified"].timestamp()


async def listed(
    api: kr8s.asyncio.Api, kind: str, label_selector: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The objects of `kind` in the demo's namespace, as dicts."""
    found = api.async_get(kind, namespace=NAMESPACE, label_selector=label_selector or {})
    return [o.raw async for o in found]  # type: ignore[union-attr]


def demo_state() -> tuple[dict[str, str], int, bytes]:
    """The demo's S3 credentials file, its mode, and the command line of the S3 server (its PID file)."""
    values = read_env_file(CREDENTIALS)
    pid = S3_PID.read_text().strip()
    return values, stat.S_IMODE(CREDENTIALS.stat().st_mode), Path(f"/proc/{pid}/cmdline").read_bytes()


def s3_server() -> int | None:
    """The PID of the demo's S3 server when it runs."""
    try:
        pid = int(S3_PID.read_text().strip())
        running = Path(f"/proc/{pid}/exe").resolve().name == "versitygw"
    except (OSError, ValueError):
        return None
    return pid if running else None


@pytest.fixture
async def left_as_found(kubeconfig: str) -> AsyncIterator[None]:
    """What the demo leaves running (its release and namespace, its S3 server) is removed after the test,
    unless it was there before (a developer's `make run`): later tests get the real node's CPUs back."""
    tools = built("helm", "kubernetes")
    releases = await run_command(
        "helm", "-n", NAMESPACE, "list", "-q", "--filter", f"^{RELEASE}$", kubeconfig=kubeconfig, tools=tools
    )
    had_release = bool(releases.strip())
    had_server = await asyncio.to_thread(s3_server) is not None
    yield
    if not had_release:
        for argv in (
            ["helm", "-n", NAMESPACE, "uninstall", RELEASE, "--wait"],
            ["kubectl", "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false"],
        ):
            await run_command(*argv, kubeconfig=kubeconfig, tools=tools, check=False)
    pid = await asyncio.to_thread(s3_server)
    if not had_server and pid is not None:
        os.kill(pid, signal.SIGTERM)


@pytest.mark.timeout(DEMO_TIMEOUT + 120)
@pytest.mark.usefixtures("left_as_found")
async def test_make_run_runs_the_samples_for_real_and_says_where_their_results_are(
    api: kr8s.asyncio.Api, kubeconfig: str, real_node: RealNode
) -> None:
    started = time.time() - 2  # creationTimestamp and LastModified have whole seconds

    output = await run_demo(kubeconfig)

    workflows = {w["metadata"]["name"]: w for w in await listed(api, "workflows.oceanprotocol.com")}
    assert set(workflows) == set(EXPECTED), output
    values, mode, server_command_line = await asyncio.to_thread(demo_state)
    assert mode == 0o600
    for name, (filename, content, logged) in EXPECTED.items():
        workflow = workflows[name]
        final = workflow["status"]
        assert (final["statusCode"], final["reason"]) == (70, "Succeeded"), final
        assert moment(workflow["metadata"]["creationTimestamp"]) >= started  # this run's, not an old one
        results = {r["filename"]: r for r in final["results"]}
        body, written = await asyncio.to_thread(published, values, results[filename]["url"])
        assert body.decode() == content, name
        assert written >= started
        log, _ = await asyncio.to_thread(published, values, results["algorithm.log"]["url"])
        assert logged in log.decode(), log
        assert results[filename]["url"] in output  # the demo printed where it is ...
        assert content.splitlines()[1] in output  # ... and its first lines

    # The operator ran as a pod of the chart on the real node, publishing to this S3 server.
    operator = {"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "operator"}
    pods = [p for p in await listed(api, "pods", operator) if not p["metadata"].get("deletionTimestamp")]
    assert [p["spec"]["nodeName"] for p in pods] == [real_node.name], pods
    assert pods[0]["spec"]["containers"][0]["image"] == real_node.project_image.reference
    chart_values = json.loads(
        await run_command(
            "helm", "-n", NAMESPACE, "get", "values", RELEASE, "-o", "json",
            kubeconfig=kubeconfig, tools=built("helm"),
        )
    )  # fmt: skip
    assert chart_values["operator"]["publish"]["s3"] == {
        "bucket": values["OUTPUT_BUCKET"],
        "region": values["AWS_REGION"],
        "endpointUrl": values["AWS_ENDPOINT_URL"],
    }

    # Where: the endpoint, the bucket and the credentials file; the server's keys on no command line.
    assert f"S3 endpoint {values['AWS_ENDPOINT_URL']}, bucket {values['OUTPUT_BUCKET']}" in output
    assert str(CREDENTIALS) in output
    assert values["AWS_ENDPOINT_URL"].startswith(f"http://{real_node.host_ip}:")
    assert b"versitygw" in server_command_line
    assert values["AWS_SECRET_ACCESS_KEY"].encode() not in server_command_line
    assert values["AWS_SECRET_ACCESS_KEY"] not in output
