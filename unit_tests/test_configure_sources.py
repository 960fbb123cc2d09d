"""The configure step's ipfs:// and s3:// inputs against the real kubo node and versitygw server of
e2e/services.py. These need no Kubernetes cluster, only `toolchain/build.sh kubo versitygw` (`make unit`
runs it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from e2e.services import new_bucket
from ocean_c2d.steps.configure import run_configure
from unit_tests.factories import JOB_ID, OPERATOR_ADDRESS

if TYPE_CHECKING:
    from e2e.services import IPFSNode, S3Server

RAW_CODE = "print('hello')\n"


class NoSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_job(root: Path, inputs: list[dict[str, Any]], ipfs: IPFSNode, s3: S3Server) -> dict[str, str]:
    document = {
        "jobId": JOB_ID,
        "owner": OPERATOR_ADDRESS,
        "chainId": 8996,
        "stages": [
            {
                "index": 0,
                "input": [dict(spec, index=n) for n, spec in enumerate(inputs)],
                "algorithm": {"rawCode": RAW_CODE, "container": {"entrypoint": "python $ALGO"}},
                "output": {},
                "compute": {"maxtime": 300},
            }
        ],
    }
    (root / "workflow.json").write_text(json.dumps(document))
    (root / "data").mkdir()
    return {
        "WORKFLOW": str(root / "workflow.json"),
        "WORKFLOWID": JOB_ID,
        "VOLUME": str(root / "data"),
        "INPUTS": str(root / "data" / "inputs"),
        "TRANSFORMATIONS": str(root / "data" / "transformations"),
        "IPFS_API": ipfs.api_url,
        "AWS_ENDPOINT_URL": s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_REGION": s3.region,
    }


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as client:
        yield client


async def ipfs_add(http: httpx.AsyncClient, node: IPFSNode, name: str, data: bytes, wrap: bool) -> str:
    params = {"cid-version": "1", "wrap-with-directory": "true" if wrap else "false"}
    response = await http.post(f"{node.api_url}/api/v0/add", params=params, files={"file": (name, data)})
    entries = [json.loads(line) for line in response.raise_for_status().text.splitlines() if line.strip()]
    wanted = "" if wrap else name
    return next(str(e["Hash"]) for e in entries if e["Name"] == wanted)


async def test_ipfs_and_s3_inputs_land_in_the_volume(
    ipfs_api: IPFSNode, s3_server: S3Server, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    plain = b"plain ipfs input " + os.urandom(1500)
    wrapped = b"a,b\n" + os.urandom(300_000)  # more than one chunk
    in_s3 = b"s3 input " + os.urandom(5000)
    plain_cid = await ipfs_add(http, ipfs_api, "plain.bin", plain, wrap=False)
    dir_cid = await ipfs_add(http, ipfs_api, "table.csv", wrapped, wrap=True)
    client = s3_server.client()
    bucket = new_bucket(client, "inputs")
    client.put_object(Bucket=bucket, Key="sets/2024/data.csv", Body=in_s3)

    inputs = [
        {"url": f"ipfs://{plain_cid}"},
        {"url": f"s3://{bucket}/sets/2024/data.csv"},
        {"url": f"ipfs://{dir_cid}/table.csv"},
    ]
    env = make_job(tmp_path, inputs, ipfs_api, s3_server)
    termination = tmp_path / "termination-log"
    code = await run_configure(env, http, termination_log=termination, sleep=NoSleep())
    message = json.loads(termination.read_text())
    assert code == 0, message
    assert message["status"] == "Provisioned"
    assert message["inputs"] == 3

    volume = tmp_path / "data"
    # An ipfs://<cid> URL has no path: its file is named "0", as any URL without a last segment.
    assert (volume / "inputs" / "0" / "0").read_bytes() == plain
    assert (volume / "inputs" / "1" / "data.csv").read_bytes() == in_s3
    assert (volume / "inputs" / "2" / "table.csv").read_bytes() == wrapped
    assert (volume / "transformations" / "algorithm").read_text() == RAW_CODE
    assert message["bytes"] == len(plain) + len(in_s3) + len(wrapped) + len(RAW_CODE)

    log = (volume / "adminlogs" / "configure.log").read_text()
    assert hashlib.sha256(in_s3).hexdigest() in log
    assert s3_server.secret_key not in log


async def test_missing_s3_key_fails_with_31_naming_the_input(
    ipfs_api: IPFSNode, s3_server: S3Server, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    client = s3_server.client()
    bucket = new_bucket(client, "inputs")
    first = b"present"
    client.put_object(Bucket=bucket, Key="present.txt", Body=first)
    inputs = [{"url": f"s3://{bucket}/present.txt"}, {"url": f"s3://{bucket}/absent/missing.csv"}]
    env = make_job(tmp_path, inputs, ipfs_api, s3_server)
    termination = tmp_path / "termination-log"
    sleep = NoSleep()

    code = await run_configure(env, http, termination_log=termination, sleep=sleep)

    assert code == 31
    message = json.loads(termination.read_text())
    assert message["status"] == "DataProvisioningFailed"
    text = message["message"]
    assert text.startswith(f"input 1 (s3://{bucket}/absent/missing.csv)"), text
    assert "NoSuchKey" in text, text
    assert sleep.delays == []  # a missing key is not retried
    assert s3_server.secret_key not in text
    # The algorithm is not fetched after a failed input.
    assert not (tmp_path / "data" / "transformations" / "algorithm").exists()
    assert (tmp_path / "data" / "inputs" / "0" / "present.txt").read_bytes() == first
