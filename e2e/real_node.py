"""The real node of the local cluster (e2e/cluster/node.sh), for tests whose claim needs containers that
really run: real pods from locally built images, a real PVC shared between stage pods, NetworkPolicy
enforced by kube-router. Tests using it are marked `real`; they fail (never skip) when it is missing.

What the node gives the tests (e2e/cluster/node.sh writes it to <cache>/cluster/node.env):
- its name, label and taint: a ComputeEnvironment selects it and tolerates the taint, so every stage pod
  of a Workflow lands there and nothing of kwok's does;
- the host address of its veth pair (REAL_NODE_HOST_IP): the only address of this machine its pods
  reach, so the test servers (HTTP, S3, a TCP canary) listen there;
- the StorageClass whose volumes its uid-1000 pods can write, and the locally built images.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import kr8s.asyncio
import pytest
from aiohttp import web
from kr8s.asyncio.objects import APIObject, Secret

from e2e.operator_fixtures import OPERATOR_KEY, ComputeEnvironment
from e2e.operator_handle import Operator, StartOperator
from e2e.services import S3Server, free_port_on, new_bucket, start_s3_server

CACHE = Path(os.environ.get("OCEAN_C2D_CACHE") or Path.home() / ".cache" / "ocean-c2d")
NODE_ENV = CACHE / "cluster" / "node.env"


def moment(text: str) -> float:
    """An API server timestamp (RFC 3339, Z) as seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_env_file(path: Path) -> dict[str, str]:
    """A sourceable KEY=value file (values may be shell-quoted)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        words = shlex.split(value)
        values[key.removeprefix("export ").strip()] = words[0] if words else ""
    return values


@dataclass(frozen=True)
class Image:
    """A locally built image, as a Workflow's container names it (image without tag, tag)."""

    reference: str

    @property
    def name(self) -> str:
        return self.reference.rpartition(":")[0]

    @property
    def tag(self) -> str:
        return self.reference.rpartition(":")[2]


@dataclass(frozen=True)
class RealNode:
    name: str
    label: tuple[str, str]
    taint: tuple[str, str, str]  # key, value, effect
    host_ip: str
    storage_class: str
    project_image: Image
    python_image: Image
    root_algorithm_image: Image
    values: dict[str, str] = field(default_factory=dict)

    def placement(self) -> dict[str, Any]:
        """The ComputeEnvironment fields that put every stage pod on this node."""
        key, value, effect = self.taint
        return {
            "nodeSelector": {self.label[0]: self.label[1]},
            "tolerations": [{"key": key, "operator": "Equal", "value": value, "effect": effect}],
            "storageClassName": self.storage_class,
        }


def load_real_node(path: Path = NODE_ENV) -> RealNode:
    if not path.exists():
        pytest.fail(
            f"the real node is not up ({path} is missing): `e2e/cluster/cluster.sh up` starts it; it needs"
            " root and a Debian-family system (OCEAN_C2D_REAL_NODE=0 starts the cluster without it, and"
            " then the tests marked `real` fail)",
            pytrace=False,
        )
    values = read_env_file(path)
    label_key, _, label_value = values["REAL_NODE_LABEL"].partition("=")
    taint, _, effect = values["REAL_NODE_TAINT"].rpartition(":")
    taint_key, _, taint_value = taint.partition("=")
    return RealNode(
        name=values["REAL_NODE_NAME"],
        label=(label_key, label_value),
        taint=(taint_key, taint_value, effect),
        host_ip=values["REAL_NODE_HOST_IP"],
        storage_class=values["REAL_NODE_STORAGE_CLASS"],
        project_image=Image(values["OCEAN_C2D_IMAGE"]),
        python_image=Image(values["PYTHON_IMAGE"]),
        root_algorithm_image=Image(values["ROOT_ALGO_IMAGE"]),
        values=values,
    )


@pytest.fixture(scope="session")
async def real_node(kubeconfig: str, api: kr8s.asyncio.Api) -> RealNode:
    """The real node, Ready (the session's cluster started it)."""
    node = load_real_node()
    body = await _node(api, node.name)
    conditions = {c["type"]: c["status"] for c in body.raw["status"].get("conditions", [])}
    assert conditions.get("Ready") == "True", f"node {node.name} is not Ready: {conditions}"
    return node


async def _node(api: kr8s.asyncio.Api, name: str) -> APIObject:
    nodes = [n async for n in api.async_get("nodes", field_selector=f"metadata.name={name}")]
    assert nodes, f"node {name} is not registered with the API server"
    node = nodes[0]
    assert isinstance(node, APIObject)
    return node


NODE_SCRIPT = Path(__file__).resolve().parent / "cluster" / "node.sh"


async def node_script(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        str(NODE_SCRIPT), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, (
        f"node.sh {' '.join(args)} exited {process.returncode}:\n{output.decode()}"
    )


@pytest.fixture
async def policy_engine_stopped(real_node: RealNode) -> AsyncIterator[None]:
    """kube-router stopped and its rules removed, as on a cluster whose CNI ignores NetworkPolicy;
    started again afterwards (other tests need it)."""
    await node_script("policy-stop")
    try:
        yield
    finally:
        await node_script("policy-start")


@pytest.fixture(scope="session")
async def node_s3(
    real_node: RealNode, toolchain_path: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[S3Server]:
    """versitygw where the real node's pods reach it (its veth's host address)."""
    async with start_s3_server(
        toolchain_path, tmp_path_factory.mktemp("node-s3"), real_node.host_ip
    ) as server:
        yield server


@dataclass
class FileServer:
    """A plain HTTP server of in-memory files, on the real node's host address."""

    url: str
    files: dict[str, bytes]
    requests: list[str]


@pytest.fixture(scope="session")
async def node_http(real_node: RealNode) -> AsyncIterator[FileServer]:
    files: dict[str, bytes] = {}
    requests: list[str] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        requests.append(request.path)
        body = files.get(request.path)
        return web.Response(body=body) if body is not None else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port_on(real_node.host_ip)
    site = web.TCPSite(runner, real_node.host_ip, port)
    await site.start()
    try:
        yield FileServer(f"http://{real_node.host_ip}:{port}", files, requests)
    finally:
        await runner.cleanup()


@dataclass
class Canary:
    """A TCP server that counts who reached it: the isolation tests' witness."""

    host: str
    port: int
    connections: int = 0


@asynccontextmanager
async def tcp_canary(host: str) -> AsyncIterator[Canary]:
    canary = Canary(host, free_port_on(host))

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        canary.connections += 1
        writer.write(b"reached\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(accepted, host, canary.port)
    try:
        yield canary
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class RealStack:
    """An operator whose stage pods run on the real node and publish to the node's S3 server."""

    operator: Operator
    bucket: str
    s3: S3Server
    node: RealNode

    def object(self, url: str) -> bytes:
        return published(self.s3, self.bucket, url)


def published(s3: S3Server, bucket: str, url: str) -> bytes:
    """The bytes of a published result, by its status URL ({endpoint}/{bucket}/{key})."""
    key = url.removeprefix(f"{s3.endpoint_url}/{bucket}/")
    body: bytes = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


async def start_real_stack(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    node: RealNode,
    s3: S3Server,
    **extra_env: str,
) -> RealStack:
    bucket = await asyncio.to_thread(new_bucket, s3.client(), "real")
    secret = await Secret.get("ocean-c2d-credentials", namespace=namespace, api=api)
    # The publish step writes with these; the configure step reads s3:// inputs with the INPUTS_ ones.
    await secret.patch(
        {
            "stringData": {
                "AWS_ACCESS_KEY_ID": s3.access_key,
                "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                "INPUTS_AWS_ACCESS_KEY_ID": s3.access_key,
                "INPUTS_AWS_SECRET_ACCESS_KEY": s3.secret_key,
            }
        }
    )
    operator = await start_operator(
        OCEAN_C2D_IMAGE=node.project_image.reference,
        PULL_POLICY="Never",
        AWS_ENDPOINT_URL=s3.endpoint_url,
        AWS_REGION=s3.region,
        AWS_BUCKET_OUTPUT=bucket,
        # The test servers listen on the node's host address, a private one: configure's egress guard and
        # the pods' egress policies allow exactly it (issue 11). A test may narrow or drop it ("").
        **{"EGRESS_ALLOW_CIDRS": f"{node.host_ip}/32", **extra_env},
    )
    return RealStack(operator, bucket, s3, node)


async def create_real_environment(
    api: kr8s.asyncio.Api, namespace: str, node: RealNode, name: str = "real", **spec: Any
) -> APIObject:
    environment: APIObject = await ComputeEnvironment(
        {
            "metadata": {"name": name},
            "spec": {"nCPU": 1, "ramGB": 0.5, "diskGB": 1, "maxJobs": 5, **node.placement(), **spec},
        },
        namespace=namespace,
        api=api,
    )
    await environment.create()
    return environment


def python_algorithm(node: RealNode, code: str, image: Image | None = None) -> dict[str, Any]:
    """A Workflow's algorithm: `code` as rawCode, run by `python $ALGO` in a locally built image."""
    image = image or node.python_image
    return {
        "rawCode": code,
        "container": {"image": image.name, "tag": image.tag, "entrypoint": "python $ALGO"},
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def chart_credentials(api: kr8s.asyncio.Api, namespace: str, s3_server: S3Server) -> None:
    """The chart's credentials Secret for a release on the real node: the operator's key and the S3
    server's keys (the publish storage, which the API's pod reads results from too)."""
    secret = await Secret(
        {
            "metadata": {"name": "ocean-c2d-credentials"},
            "stringData": {
                "operator-private-key": OPERATOR_KEY,
                "AWS_ACCESS_KEY_ID": s3_server.access_key,
                "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
            },
        },
        namespace=namespace,
        api=api,
    )
    await secret.create()


def chart_settings(node: RealNode, s3_server: S3Server, bucket: str) -> list[str]:
    """`helm install` arguments for a release of the chart on the real node: the locally built image
    (never pulled), publish to the S3 server's `bucket`, that server as the stage pods' endpoint (it is on
    the node's private host address: issue 11), no environment from the chart, the real node's placement."""
    image, placement = node.project_image, node.placement()
    s3_port = urllib.parse.urlsplit(s3_server.endpoint_url).port
    return [
        f"--set=image.repository={image.name}",
        f"--set=image.tag={image.tag}",
        "--set=image.pullPolicy=Never",
        "--set=operator.pullPolicyForJobs=Never",
        f"--set=operator.publish.s3.bucket={bucket}",
        f"--set=operator.publish.s3.region={s3_server.region}",
        f"--set=operator.publish.s3.endpointUrl={s3_server.endpoint_url}",
        "--set-json=operator.egress.stageEndpoints=" + json.dumps([f"{node.host_ip}/32:{s3_port}"]),
        "--set-json=computeEnvironments=[]",
        f"--set-json=nodeSelector={json.dumps(placement['nodeSelector'])}",
        f"--set-json=tolerations={json.dumps(placement['tolerations'])}",
    ]
