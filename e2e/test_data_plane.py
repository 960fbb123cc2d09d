"""The data plane end to end around a real (small) algorithm: a Workflow object in the cluster, the
workflow document built from it as the operator builds it, then configure -> the algorithm as a real
process (the algorithm pod's own shell script and env) -> filter -> publish to the real S3 server.

This one needs the Kubernetes cluster (to create and read back the Workflow), and the S3 server.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import kr8s.asyncio
import pytest

from e2e.operator_fixtures import OPERATOR_KEY, Workflow, workflow_manifest
from e2e.services import new_bucket
from ocean_c2d.model import Environment, TemplateInputs
from ocean_c2d.model import Workflow as WorkflowModel
from ocean_c2d.render import Templates
from ocean_c2d.settings import load_settings
from ocean_c2d.steps.configure import run_configure
from ocean_c2d.steps.filter import run_filter
from ocean_c2d.steps.publish import RetryPolicy, run_publish
from unit_tests.steps.providers import FileServer

if TYPE_CHECKING:
    from e2e.services import S3Server

# The operator's own mapping from its settings to what the templates get, as it runs in production.
PLAN_SETTINGS = load_settings(
    {"OPERATOR_PRIVATE_KEY": OPERATOR_KEY, "OCEAN_C2D_IMAGE": "ocean-c2d:test"}
).plan_settings()
DATA = b"".join(f"row {n},{n * n}\n".encode() for n in range(1, 1001))  # 1000 lines
RAW_CODE = """\
import os, pathlib
inputs = pathlib.Path(os.environ["INPUTS"])
source = inputs / "0" / "data.csv"
lines = source.read_bytes().count(b"\\n")
print(f"counted {lines} lines in {source.name}")
pathlib.Path(os.environ["OUTPUTS"], "result.txt").write_text(f"{lines}\\n")
"""


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer({"data.csv": DATA})
    yield server
    server.close()


def algorithm_script(pod: dict[str, Any], volume: Path, fifo: Path) -> tuple[str, dict[str, str]]:
    """The algorithm container's `sh -c` script and plain env values, from the rendered pod, with the
    pod's mount points (/data/..., /tmp/.c2d-log) moved to the test's volume."""
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    script: str = container["args"][0]
    script = script.replace("/tmp/.c2d-log", str(fifo)).replace("/data/", f"{volume}/")
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env = {k: v.replace("/data", str(volume)) if v.startswith("/data") else v for k, v in env.items()}
    return script, env


async def test_configure_algorithm_filter_publish(
    api: kr8s.asyncio.Api,
    namespace: str,
    ocean_crds: list[str],
    s3_server: S3Server,
    files: FileServer,
    tmp_path: Path,
) -> None:
    # 1. A real Workflow in the cluster: a URL input and a rawCode algorithm; read it back.
    name = f"wf-{uuid.uuid4().hex[:8]}"
    manifest = workflow_manifest(
        name,
        inputs=[{"url": files.url_of("data.csv")}],
        algorithm={
            "rawCode": RAW_CODE,
            "container": {"image": "python", "tag": "3.11", "entrypoint": "python $ALGO"},
        },
    )
    created = await Workflow(manifest, namespace=namespace, api=api)
    await created.create()
    fetched = await Workflow.get(name, namespace=namespace, api=api)
    workflow = WorkflowModel.from_object(fetched.raw)
    assert workflow.uid == created.metadata.uid

    environment = Environment(name="cpu", max_job_duration=600, storage_expiry=3600)
    templates = Templates()
    inputs = TemplateInputs(
        workflow, environment, PLAN_SETTINGS.template_values, PLAN_SETTINGS.filtering_container, "secret"
    )
    document = templates.context(inputs)["workflow_document"]
    assert document["stages"][0]["algorithm"]["rawCode"] == RAW_CODE
    workflow_json = tmp_path / "workflow.json"
    workflow_json.write_text(json.dumps(document))
    volume = tmp_path / "data"
    volume.mkdir()

    # 2. configure, with the env templates/configure-pod.yaml.j2 sets (paths moved to the volume).
    configure_env = {
        "WORKFLOW": str(workflow_json),
        "WORKFLOWID": name,
        "VOLUME": str(volume),
        "INPUTS": str(volume / "inputs"),
        "TRANSFORMATIONS": str(volume / "transformations"),
        "DISK_LIMIT_BYTES": str(int(environment.disk_gb * 1024**3)),
    }
    termination = tmp_path / "configure-termination"
    async with httpx.AsyncClient(timeout=30) as http:
        code = await run_configure(configure_env, http, termination_log=termination)
    assert code == 0, termination.read_text()
    assert json.loads(termination.read_text())["status"] == "Provisioned"
    assert (volume / "inputs" / "0" / "data.csv").read_bytes() == DATA
    assert (volume / "transformations" / "algorithm").read_text() == RAW_CODE

    # 3. The algorithm, as its pod runs it: the rendered pod's script and env, python = this interpreter.
    pod = templates.render_pod("algorithm", inputs, 600)
    script, pod_env = algorithm_script(pod, volume, tmp_path / "c2d-log")
    assert json.loads(pod_env["DIDS"]) == []
    assert pod_env["TRANSFORMATION_DID"] == ""
    assert pod_env["C2D_ENTRYPOINT"] == "python $ALGO"
    pod_env["C2D_ENTRYPOINT"] = f"{shlex.quote(sys.executable)} $ALGO"
    process = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        script,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **pod_env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, output.decode()
    assert (volume / "outputs" / "result.txt").read_text() == "1000\n"
    algorithm_log = (volume / "logs" / "algorithm.log").read_text()
    assert "counted 1000 lines in data.csv" in algorithm_log

    # 4. The filter, with a policy the result passes.
    policy = {"maxOutputBytes": 1024, "forbiddenExtensions": [".exe"], "blockCopiedInputs": True}
    filter_termination = tmp_path / "filter-termination"
    assert run_filter({"VOLUME": str(volume), "FILTER_POLICY": json.dumps(policy)}, filter_termination) == 0
    verdict = json.loads(filter_termination.read_text())
    assert (verdict["verdict"], verdict["reasons"]) == ("Pass", [])

    # 5. publish to the real S3 server.
    s3 = s3_server.client()
    bucket = new_bucket(s3, "results")
    publish_env = {
        "WORKFLOW": str(workflow_json),
        "WORKFLOWID": name,
        "VOLUME": str(volume),
        "STORAGE_EXPIRY": "0",
        "PUBLISH_OUTPUTS": "true",
        # As the operator passes a Pass on: publish uploads exactly the filter's manifest.
        "PUBLISH_MANIFEST": "required",
        "PUBLISH_MANIFEST_SHA256": verdict["manifestSha256"],
        "AWS_BUCKET_OUTPUT": bucket,
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_REGION": s3_server.region,
    }
    publish_termination = tmp_path / "publish-termination"
    retry = RetryPolicy(attempts=2, base_delay=0.01)
    assert await run_publish(publish_env, publish_termination, retry=retry) == 0, (
        publish_termination.read_text()
    )
    results = json.loads(publish_termination.read_text())["results"]
    assert [(r["filename"], r["type"]) for r in results] == [
        ("result.txt", "output"),
        ("algorithm.log", "algorithmLog"),
        ("configure.log", "configrationLog"),
        ("filter.log", "filteringLog"),
        ("publish.log", "publishLog"),
    ]
    result = results[0]
    assert result["url"] == f"{s3_server.endpoint_url}/{bucket}/{name}/outputs/result.txt"
    assert result["filesize"] == len("1000\n")
    assert "expiresAt" not in result
    body = s3.get_object(Bucket=bucket, Key=f"{name}/outputs/result.txt")["Body"].read()
    assert body == b"1000\n"
    uploaded_log = s3.get_object(Bucket=bucket, Key=f"{name}/logs/algorithm.log")["Body"].read()
    assert b"counted 1000 lines" in uploaded_log
    # The input itself never leaves.
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{name}/")
    assert not [o["Key"] for o in listed["Contents"] if "inputs" in o["Key"]]
