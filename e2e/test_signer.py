"""No pod of a Workflow holds the operator key (issue 11, C13), on the real node.

A Workflow whose input and algorithm are Ocean assets (by DID) runs for real: its configure pod asks the
operator's signer (the operator process, listening on the real node's host address) for each download
signature, and a provider that checks signatures like the real one serves the files. The namespace's
credentials Secret does not even hold the key; the configure pod's spec mounts no key and has no key
variable, and the operator's log names the Workflow and the DIDs it signed for, never a signature.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import kr8s.asyncio
import pytest
from kr8s.asyncio.objects import Pod, Secret

from e2e.operator_fixtures import OPERATOR_ADDRESS, OPERATOR_KEY, Workflow, wait_finished
from e2e.operator_handle import StartOperator
from e2e.real_node import RealNode, create_real_environment, published, start_real_stack, unique
from e2e.services import S3Server, free_port_on
from unit_tests.steps.providers import Asset, OceanStack

pytestmark = pytest.mark.local_only  # the pods reach the operator process on this machine

REAL_TIMEOUT = 240
DATA_DID = "did:op:" + "5a" * 32
ALGO_DID = "did:op:" + "a5" * 32
DATA = [b"city,visits\nLisbon,3\n", b"Porto,5\n"]
ALGORITHM = b"""
import hashlib, os, pathlib
root = pathlib.Path(os.environ["INPUTS"])
lines = [f"{p.relative_to(root)} {hashlib.sha256(p.read_bytes()).hexdigest()}"
         for p in sorted(root.rglob("*")) if p.is_file()]
pathlib.Path(os.environ["OUTPUTS"], "digests.txt").write_text("\\n".join(lines) + "\\n")
"""


@pytest.fixture
async def node_ocean(real_node: RealNode) -> AsyncIterator[OceanStack]:
    """A metadata cache and a provider where the real node's pods reach them."""
    stack = await asyncio.to_thread(OceanStack, OPERATOR_ADDRESS, None, real_node.host_ip)
    try:
        yield stack
    finally:
        await asyncio.to_thread(stack.close)


def asset_input(asset: Asset) -> dict[str, Any]:
    return {"did": asset.did, "serviceId": asset.service_id, "transferTxId": asset.transfer_tx_id}


async def test_a_did_download_is_signed_by_the_operator_and_no_pod_holds_the_key(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    real_node: RealNode,
    node_s3: S3Server,
    node_ocean: OceanStack,
) -> None:
    data = node_ocean.add_asset(Asset(DATA_DID, DATA))
    algorithm = node_ocean.add_asset(Asset(ALGO_DID, [ALGORITHM]))
    # The Workflow's namespace keeps no operator key: nothing there needs it any more.
    credentials = await Secret.get("ocean-c2d-credentials", namespace=namespace, api=api)
    await credentials.patch({"data": {"operator-private-key": None}})
    port = free_port_on(real_node.host_ip)
    stack = await start_real_stack(
        api,
        namespace,
        start_operator,
        real_node,
        node_s3,
        DEBUG_NO_CLEANUP="1",  # keep the configure pod to read its spec
        SIGNER_HOST=real_node.host_ip,
        SIGNER_PORT=str(port),
        SIGNER_URL=f"http://{real_node.host_ip}:{port}",
        ALLOWED_METADATA_CACHES=node_ocean.metadata.url,
        ALLOWED_PROVIDERS=node_ocean.provider.url,
        EGRESS_ALLOW_CIDRS=f"{real_node.host_ip}/32",
    )
    await create_real_environment(api, namespace, real_node)
    name = unique("signed")
    image = real_node.python_image
    workflow = await Workflow(
        {
            "metadata": {"name": name},
            "spec": {
                "environment": "real",
                "owner": OPERATOR_ADDRESS,
                "inputs": [asset_input(data)],
                "algorithm": {
                    **asset_input(algorithm),
                    "container": {"image": image.name, "tag": image.tag, "entrypoint": "python $ALGO"},
                },
                "output": {"metadataUri": node_ocean.metadata.url},
            },
        },
        namespace=namespace,
        api=api,
    )
    await workflow.create()
    final = await wait_finished(workflow, stack.operator, timeout=REAL_TIMEOUT)

    assert (final["statusCode"], final["reason"]) == (70, "Succeeded"), final
    # The provider verified every download: signed by the operator's address, nonces rising.
    provider = node_ocean.provider
    assert provider.refusals == []
    assert [(r.query["documentId"], r.query["fileIndex"]) for r in provider.downloads] == [
        (DATA_DID, "0"),
        (DATA_DID, "1"),
        (ALGO_DID, "0"),
    ]
    assert {r.query["consumerAddress"] for r in provider.downloads} == {OPERATOR_ADDRESS}
    nonces = [int(r.query["nonce"]) for r in provider.downloads]
    assert nonces == sorted(set(nonces))
    results = {r["filename"]: published(stack.s3, stack.bucket, r["url"]) for r in final["results"]}
    stripped = DATA_DID.removeprefix("did:op:")
    expected = "".join(f"{stripped}/{i} {hashlib.sha256(d).hexdigest()}\n" for i, d in enumerate(DATA))
    assert results["digests.txt"].decode() == expected

    # The configure pod holds no key: no Secret volume, no key variable, nothing naming the key.
    configure = await Pod.get(f"{name}-configure", namespace=namespace, api=api)
    pod = configure.raw["spec"]
    assert not [v for v in pod.get("volumes", []) if "secret" in v or "projected" in v]
    [container] = pod["containers"]
    variables = {e["name"]: e for e in container["env"]}
    assert "PRIVATE_KEY_FILE" not in variables
    assert "OPERATOR_PRIVATE_KEY" not in variables
    references = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e]
    assert {r["key"] for r in references} <= {
        "signer-token",
        "INPUTS_AWS_ACCESS_KEY_ID",
        "INPUTS_AWS_SECRET_ACCESS_KEY",
    }
    assert OPERATOR_KEY.removeprefix("0x") not in str(configure.raw)
    assert "envFrom" not in container

    # The operator says whom it signed for, and never the signature or the token.
    log = await stack.operator.log_text()
    for did in (DATA_DID, ALGO_DID):
        assert f"Signed a download of {did} for Workflow {namespace}/{name}" in log
    for request in provider.downloads:
        assert request.query["signature"] not in log
    secret = await Secret.get(f"{name}-secret", namespace=namespace, api=api)
    token = base64.b64decode(secret.raw["data"]["signer-token"]).decode()
    assert len(token) == 64
    assert token not in log
