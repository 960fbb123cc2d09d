"""Where a Workflow's pods may connect (issue 11, C11 and the network part of C14), on the real node.

The node's pods reach one address of this machine, the host end of its veth (10.250.0.1): a private
address, so with EGRESS_ALLOW_CIDRS unset it stands for "the cluster, the node, the metadata service".
Only the S3 server's port on it is listed as an operator endpoint (STAGE_EGRESS_ENDPOINTS), so that
publish can work. Then:
- a configure pod asked for a URL on that address refuses it itself (its egress guard: the server
  counts no request) and the Workflow ends 31 with the operator's words;
- the stage egress NetworkPolicy blocks it too: a pod with the configure labels, next to the Workflow,
  reaches the S3 endpoint but not a TCP canary on the same address;
- an allowNetwork environment's algorithm does not reach the canary either (public internet only).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import kr8s.asyncio
import pytest
from kr8s.asyncio.objects import NetworkPolicy, Pod

from e2e.operator_fixtures import OPERATOR_ADDRESS, Workflow, wait_finished
from e2e.operator_handle import StartOperator
from e2e.real_node import (
    FileServer,
    RealNode,
    RealStack,
    create_real_environment,
    python_algorithm,
    start_real_stack,
    tcp_canary,
    unique,
)
from e2e.services import S3Server
from e2e.waiting import wait_for

pytestmark = pytest.mark.local_only  # the pods reach servers on this machine

REAL_TIMEOUT = 240

CONNECT = """
import os, pathlib, socket
try:
    socket.create_connection(({host!r}, {port}), timeout=3).close()
    outcome = "CONNECTED"
except OSError as error:
    outcome = f"BLOCKED {{error}}"
pathlib.Path(os.environ["OUTPUTS"], "network.txt").write_text(outcome)
"""

# A pod with the configure labels. The policy engine programs a new pod's rules a moment after it
# starts, so it first waits until the sentinel (a listening port on the same address, which the policy
# must block) stops answering; then the operator's endpoint must answer and the canary must not.
PROBE = """
import socket, sys, time
def dial(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False
deadline = time.monotonic() + 60
while dial({host!r}, {sentinel_port}):
    if time.monotonic() > deadline:
        sys.exit(5)
    time.sleep(0.2)
if not dial({host!r}, {endpoint_port}):
    sys.exit(4)
sys.exit(3 if any(dial({host!r}, {canary_port}) for _ in range(3)) else 0)
"""


async def start_private_stack(
    api: kr8s.asyncio.Api, namespace: str, start_operator: StartOperator, node: RealNode, s3: S3Server
) -> RealStack:
    """No non-public address allowed; the S3 server's port listed as the stages' endpoint."""
    s3_port = urllib.parse.urlsplit(s3.endpoint_url).port
    return await start_real_stack(
        api,
        namespace,
        start_operator,
        node,
        s3,
        EGRESS_ALLOW_CIDRS="",
        STAGE_EGRESS_ENDPOINTS=f"{node.host_ip}/32:{s3_port}",
        DEBUG_NO_CLEANUP="1",  # keep the Workflow's NetworkPolicies for the probe
    )


def workflow(name: str, algorithm: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "environment": "real",
            "owner": OPERATOR_ADDRESS,
            "inputs": [],
            "algorithm": algorithm,
            **spec,
        },
    }


def probe_pod(name: str, node: RealNode, workflow_name: str, code: str) -> dict[str, Any]:
    placement = node.placement()
    image = node.python_image
    return {
        "metadata": {"name": name, "labels": {"workflow": workflow_name, "component": "configure"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "nodeSelector": placement["nodeSelector"],
            "tolerations": placement["tolerations"],
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "probe",
                    "image": image.reference,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", code],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def exit_code(pod: Pod) -> int | None:
    for status in pod.raw.get("status", {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            return int(terminated["exitCode"])
    return None


async def test_a_configure_pod_cannot_fetch_from_a_private_address_nor_reach_it(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    real_node: RealNode,
    node_s3: S3Server,
    node_http: FileServer,
) -> None:
    stack = await start_private_stack(api, namespace, start_operator, real_node, node_s3)
    await create_real_environment(api, namespace, real_node)
    path = f"/{unique('internal')}/credentials.json"
    node_http.files[path] = b'{"AccessKeyId": "node identity"}'
    name = unique("ssrf")
    manifest = workflow(
        name, python_algorithm(real_node, "print('never runs')"), inputs=[{"url": node_http.url + path}]
    )
    created = await Workflow(manifest, namespace=namespace, api=api)
    await created.create()
    final = await wait_finished(created, stack.operator, timeout=REAL_TIMEOUT)

    assert (final["statusCode"], final["reason"]) == (31, "DataProvisioningFailed"), final
    assert "refused by the egress rule: the server's address is private" in final["message"], final
    assert path not in node_http.requests  # the guard refused before connecting
    assert "node identity" not in str(final)

    # The NetworkPolicy holds on its own: a pod with the configure labels reaches the listed S3 port of
    # the same address, and not the canary.
    policy = await NetworkPolicy.get(f"{name}-stage-egress", namespace=namespace, api=api)
    assert policy.raw["spec"]["policyTypes"] == ["Egress"]
    s3_port = urllib.parse.urlsplit(node_s3.endpoint_url).port
    async with tcp_canary(real_node.host_ip) as sentinel, tcp_canary(real_node.host_ip) as canary:
        code = PROBE.format(
            host=real_node.host_ip,
            sentinel_port=sentinel.port,
            endpoint_port=s3_port,
            canary_port=canary.port,
        )
        pod = await Pod(probe_pod(unique("probe"), real_node, name, code), namespace=namespace, api=api)
        await pod.create()
        await wait_for(pod, lambda p: exit_code(p) is not None, timeout=120)
        # 5: never isolated, 4: the S3 endpoint blocked, 3: the canary reached
        assert exit_code(pod) == 0, pod.raw.get("status")
        assert canary.connections == 0


async def test_an_allow_network_environment_still_reaches_no_private_address(
    api: kr8s.asyncio.Api,
    namespace: str,
    start_operator: StartOperator,
    real_node: RealNode,
    node_s3: S3Server,
) -> None:
    stack = await start_private_stack(api, namespace, start_operator, real_node, node_s3)
    # A network-allowed environment admits only whom its access names (issue 11, C14's other half).
    await create_real_environment(
        api, namespace, real_node, allowNetwork=True, access={"namespaces": [namespace]}
    )
    async with tcp_canary(real_node.host_ip) as canary:
        code = CONNECT.format(host=canary.host, port=canary.port)
        created = await Workflow(
            workflow(unique("open"), python_algorithm(real_node, code)), namespace=namespace, api=api
        )
        await created.create()
        final = await wait_finished(created, stack.operator, timeout=REAL_TIMEOUT)
        assert (final["statusCode"], final["reason"]) == (70, "Succeeded"), final
        results = {r["filename"]: stack.object(r["url"]) for r in final.get("results") or []}
        assert results["network.txt"].startswith(b"BLOCKED"), results
        assert canary.connections == 0
