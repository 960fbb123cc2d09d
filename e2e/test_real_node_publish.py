"""Publish uploads exactly what the filter judged, within the environment's caps, for real: an algorithm
on the real node writes a normal output next to a symbolic link to /proc/self/environ (which, opened by
the publish pod, would be the publish pod's environment, credentials included), a link to an input, a
FIFO and, in some cases, a sparse file that weighs nothing on the volume but reads larger than the
environment's publish.maxBytes. The assertions read the bucket itself, not only the status."""

from __future__ import annotations

import re
from typing import Any

import kr8s.asyncio
import pytest

from e2e.operator_fixtures import OPERATOR_ADDRESS, Workflow, wait_finished
from e2e.operator_handle import StartOperator
from e2e.real_node import (
    FileServer,
    RealNode,
    RealStack,
    create_real_environment,
    python_algorithm,
    start_real_stack,
    unique,
)
from e2e.services import S3Server

REAL_TIMEOUT = 240
SECRET_INPUT = b"patient,diagnosis\nP-1047,positive\nP-2093,negative\n"
CAP = 16 * 1024 * 1024

HOSTILE = """
import os, pathlib
out = pathlib.Path(os.environ["OUTPUTS"])
(out / "result.txt").write_text("mean 42\\n")
os.symlink("/proc/self/environ", out / "environ")
os.symlink(pathlib.Path(os.environ["INPUTS"], "0", "records.csv"), out / "input.csv")
os.mkfifo(out / "pipe")
if os.environ.get("C2D_SPARSE"):
    with open(out / "zeros.bin", "wb") as big:
        big.truncate(64 * 1024 * 1024)  # 64 MiB to read, next to nothing on disk
print("wrote the outputs", flush=True)
"""

ADMIN_TYPES = {"configrationLog", "filteringLog", "publishLog"}


def hostile(node: RealNode, sparse: bool) -> dict[str, Any]:
    code = HOSTILE.replace('os.environ.get("C2D_SPARSE")', "True" if sparse else "False")
    return python_algorithm(node, code)


def bucket_objects(stack: RealStack, prefix: str) -> dict[str, bytes]:
    """Every object under the Workflow's prefix, by its name relative to the volume."""
    client = stack.s3.client()
    listed = client.list_objects_v2(Bucket=stack.bucket, Prefix=prefix)
    return {
        o["Key"].removeprefix(prefix): client.get_object(Bucket=stack.bucket, Key=o["Key"])["Body"].read()
        for o in listed.get("Contents", [])
    }


@pytest.mark.parametrize(
    ("case", "filtered", "sparse"),
    [
        ("links and a FIFO, filtered", True, False),
        ("a sparse file over the cap, filtered", True, True),
        ("a sparse file over the cap, unfiltered", False, True),
    ],
)
async def test_publish_uploads_only_the_judged_regular_files_within_the_caps(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    real_node: RealNode,
    node_s3: S3Server,
    node_http: FileServer,
    case: str,
    filtered: bool,
    sparse: bool,
) -> None:
    node_http.files["/private/records.csv"] = SECRET_INPUT
    stack = await start_real_stack(api, namespace, start_operator, real_node, node_s3)
    await create_real_environment(
        api,
        namespace,
        real_node,
        filter={"enabled": filtered, "blockCopiedInputs": True},
        publish={"maxBytes": CAP},
    )
    name = unique("hostile")
    workflow = await Workflow(
        {
            "metadata": {"name": name},
            "spec": {
                "environment": "real",
                "owner": OPERATOR_ADDRESS,
                "inputs": [{"url": f"{node_http.url}/private/records.csv"}],
                "algorithm": hostile(real_node, sparse),
            },
        },
        namespace=namespace,
        api=api,
    )
    await workflow.create()
    final = await wait_finished(workflow, stack.operator, timeout=REAL_TIMEOUT)
    objects = bucket_objects(stack, f"{namespace}/{name}/{workflow.metadata.uid}/")
    algorithm_objects = sorted(n for n in objects if n.startswith(("outputs/", "logs/")))
    # Whatever the case: neither the publish pod's environment nor the input ever left.
    for body in objects.values():
        assert node_s3.secret_key.encode() not in body, case
        assert b"P-1047" not in body, case

    if not sparse:
        assert (final["statusCode"], final["reason"]) == (70, "Succeeded"), final
        assert final["filter"]["verdict"] == "Pass"
        assert re.fullmatch("[0-9a-f]{64}", final["filter"]["manifestSha256"]), final["filter"]
        assert algorithm_objects == ["logs/algorithm.log", "outputs/result.txt"], sorted(objects)
        assert objects["outputs/result.txt"] == b"mean 42\n"
        assert "filtering/manifest.json" not in objects
        log = objects["adminlogs/publish.log"].decode()
        assert "uploading exactly the 2 files of the filter's manifest" in log, log
    elif filtered:
        assert (final["statusCode"], final["reason"]) == (51, "ResultsBlocked"), final
        assert final["filter"]["verdict"] == "Block"
        assert final["filter"]["reasons"] == [
            f"zeros.bin: over the cap of {CAP} bytes read; not judged, results withheld"
        ], final["filter"]
        assert algorithm_objects == [], sorted(objects)
        assert {r["type"] for r in final["results"]} <= ADMIN_TYPES
    else:
        # No filter: publish's own cap, on the bytes it reads, stops it; what went up before is taken back.
        assert (final["statusCode"], final["reason"]) == (62, "ResultsUploadFailed"), final
        assert "filter" not in final
        assert f"outputs/zeros.bin: over the cap of {CAP} bytes read" in final["message"], final["message"]
        assert algorithm_objects == [], sorted(objects)
