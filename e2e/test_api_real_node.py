"""The chart's API on the local cluster's real node, driven as provider v4 drives operator-service.

`helm install` with api.enabled and the locally built image: the operator pod and the API pod run on the
real node (kubelet + containerd + kube-router), the API pod Ready by its own readiness probe (/readyz).
The test then plays provider v4, in the order of the recorded run (unit_tests/api/fixtures/ocean-compat/
provider-v4.json): a signed POST /compute of the recorded body (its algorithm made a raw Python algorithm
of a locally built image, its input a URL of the node's file server), signed GET /compute polls on every
watch event of the Workflow until dateFinished, GET /getResult of indexes 0 and 1 (whole and ranged), one
past the end, and a signed PUT /compute. What getResult answers is compared with the objects publish put
in the real S3 server.

Where the provider stands: the chart's NetworkPolicy admits the release namespace's pods to the API, or
the peers api.allowedClients lists (namespace and pod selectors only: the schema refuses ipBlocks). This
test process, on the host, is neither: kube-router refuses it, and the test asserts that it does. So the
provider's requests, signed here, go through a relay pod in the release namespace on the real node (a
stdlib HTTP forwarder in the locally built python image), where an in-cluster provider would be.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import kr8s.asyncio
from kr8s.asyncio.objects import APIObject, Pod

from e2e.api_client import (
    OWNER,
    PREFIX,
    PROVIDER,
    codes_on_watch_events,
    job_query,
    polled_until,
    result_query,
    start_body,
)
from e2e.operator_fixtures import OPERATOR_ADDRESS, Workflow, status
from e2e.operator_handle import run_command
from e2e.real_node import (
    FileServer,
    RealNode,
    chart_credentials,
    chart_settings,
    create_real_environment,
    published,
    unique,
)
from e2e.services import S3Server, new_bucket
from e2e.waiting import wait_for
from unit_tests.built_tools import built

CHART = Path(__file__).resolve().parent.parent / "helm" / "ocean-c2d"
RELEASE = "c2d"
OPERATOR_DEPLOYMENT = f"{RELEASE}-ocean-c2d"
API_DEPLOYMENT = f"{RELEASE}-ocean-c2d-api"
API_PORT = 8050  # the chart's api.port
API_METRICS_PORT = 9050  # the chart's api.metricsPort: /metrics, open to any client (api.metricsClients)
REAL_TIMEOUT = 240  # a real Workflow takes 10-15 s on an idle machine; a busy one more

RELAY_PORT = 8080
RELAY_UPSTREAM = "/relay-upstream"  # a PUT of the API's base URL here points the relay at it
# provider's side of the connection: every request as it came (method, path and query, body, headers but
# the hop-by-hop ones), every answer as it went (status, headers, bytes). No third-party module. It runs
# before the chart is installed (so the network policy engine knows it before the API's policy exists),
# and so learns where the API is afterwards, from the test.
RELAY = f"""
import http.server, os, urllib.error, urllib.request
HOP = {{"connection", "content-length", "date", "host", "server", "transfer-encoding"}}
upstream = []
class Relay(http.server.BaseHTTPRequestHandler):
    def relay(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.path == {RELAY_UPSTREAM!r}:
            upstream[:] = [body.decode()]
            self.send_response(204)
            self.end_headers()
            return
        headers = {{k: v for k, v in self.headers.items() if k.lower() not in HOP}}
        request = urllib.request.Request(upstream[0] + self.path, body, headers, method=self.command)
        try:
            answer = urllib.request.urlopen(request, timeout=30)
        except urllib.error.HTTPError as refused:
            answer = refused
        data = answer.read()
        self.send_response(answer.getcode())
        for k, v in answer.headers.items():
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    do_GET = do_POST = do_PUT = do_DELETE = relay
http.server.ThreadingHTTPServer(("", {RELAY_PORT}), Relay).serve_forever()
"""


LOG_LINE = "answered by a job the API started"
# Hashes every input configure fetched into one answer: the published answer.txt proves the input went
# through configure, and its text is known in advance.
ANSWER = f"""
import hashlib, os, pathlib
root = pathlib.Path(os.environ["INPUTS"])
files = sorted(p for p in root.rglob("*") if p.is_file())
lines = [f"{{p.relative_to(root)}} {{hashlib.sha256(p.read_bytes()).hexdigest()}}" for p in files]
pathlib.Path(os.environ["OUTPUTS"], "answer.txt").write_text("\\n".join(lines) + "\\n")
print({LOG_LINE!r}, flush=True)
"""


class ProviderSide:
    """The API as the provider calls it (OPERATOR_SERVICE_URL), here through the relay pod."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.AsyncClient(base_url=url, timeout=10, trust_env=False)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, f"{PREFIX}{path}", **kwargs)

    async def status_of(self, job_id: str) -> dict[str, Any]:
        response = await self.request("GET", "/compute", params=job_query(job_id))
        assert response.status_code == 200, response.text
        [job] = response.json()
        return dict(job)

    async def result(self, job_id: str, index: int, **headers: str) -> httpx.Response:
        return await self.request("GET", "/getResult", params=result_query(job_id, index), headers=headers)


def provider_body(node: RealNode, environment: str, input_url: str) -> dict[str, Any]:
    """provider v4's recorded POST /compute body, re-signed, made to run here: the real environment, a
    raw Python algorithm in a locally built image (the recorded checksum pins an image that is not
    here), and one URL input (the recorded inputs are DIDs whose provider is not here)."""
    body = start_body()
    body["environment"] = environment
    stage = copy.deepcopy(body["workflow"]["stages"][0])
    stage["input"] = [{"index": 0, "url": [input_url]}]
    stage["algorithm"]["rawcode"] = ANSWER
    stage["algorithm"]["container"] = {
        "entrypoint": "python $ALGO",
        "image": node.python_image.name,
        "tag": node.python_image.tag,
    }
    body["workflow"] = {"stages": [stage]}
    return body


async def start_relay(api: kr8s.asyncio.Api, namespace: str, node: RealNode) -> APIObject:
    """The relay pod on the real node, Ready (it listens): a pod of the release namespace, which the
    API's NetworkPolicy admits, with no NetworkPolicy of its own (the host reaches it)."""
    placement = node.placement()
    pod = await Pod(
        {
            "metadata": {"name": "provider-relay", "labels": {"app.kubernetes.io/name": "provider-relay"}},
            "spec": {
                "nodeSelector": placement["nodeSelector"],
                "tolerations": placement["tolerations"],
                "automountServiceAccountToken": False,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 1000,
                    "runAsGroup": 1000,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "relay",
                        "image": node.python_image.reference,
                        "imagePullPolicy": "Never",
                        "command": ["python", "-c", RELAY],
                        "ports": [{"containerPort": RELAY_PORT}],
                        "readinessProbe": {"tcpSocket": {"port": RELAY_PORT}, "periodSeconds": 1},
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
            },
        },
        namespace=namespace,
        api=api,
    )
    await pod.create()
    return await wait_for(pod, lambda p: pod_ready(p.raw), timeout=120)


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


async def kubectl_logs(namespace: str, kubeconfig: str, tools: str) -> str:
    parts = []
    for what in (f"deploy/{API_DEPLOYMENT}", f"deploy/{OPERATOR_DEPLOYMENT}", "pod/provider-relay"):
        log = await run_command(
            "kubectl", "-n", namespace, "logs", what, "--all-containers", "--tail=60",
            kubeconfig=kubeconfig, tools=tools, check=False,
        )  # fmt: skip
        parts.append(f"--- {what} log ---\n{log}")
    pods = await run_command(
        "kubectl", "-n", namespace, "get", "pods", "-o", "wide",
        kubeconfig=kubeconfig, tools=tools, check=False,
    )  # fmt: skip
    parts.append(f"--- pods ---\n{pods}")
    return "\n".join(parts)


async def release_pods(api: kr8s.asyncio.Api, namespace: str) -> dict[str, APIObject]:
    """The release's pods by component label ("api"; the operator's has none)."""
    pods = {}
    async for pod in api.async_get(
        "pods", namespace=namespace, label_selector={"app.kubernetes.io/instance": RELEASE}
    ):
        assert isinstance(pod, APIObject)
        pods[pod.raw["metadata"]["labels"].get("app.kubernetes.io/component", "operator")] = pod
    return pods


async def test_the_charts_api_runs_a_provider_job_on_the_real_node_and_serves_its_results(
    api: kr8s.asyncio.Api,
    namespace: str,
    kubeconfig: str,
    ocean_crds: list[str],
    real_node: RealNode,
    node_s3: S3Server,
    node_http: FileServer,
) -> None:
    tools = built("helm", "kubernetes")
    input_bytes = b"station,rain_mm\nFaro,2\nBraga,31\n"
    node_http.files["/api-input/rain.csv"] = input_bytes
    bucket = await asyncio.to_thread(new_bucket, node_s3.client(), "api")
    await chart_credentials(api, namespace, node_s3)
    provider: ProviderSide | None = None
    try:
        relay = await start_relay(api, namespace, real_node)
        await run_command(
            "helm", "install", RELEASE, str(CHART), "-n", namespace, "--skip-crds", "--wait",
            "--timeout=180s",
            *chart_settings(real_node, node_s3, bucket),
            # The input's file server is on the node's host address too: configure may fetch from it.
            "--set-json=operator.egress.allowCidrs=" + json.dumps([f"{real_node.host_ip}/32"]),
            "--set=api.enabled=true",
            "--set=api.replicas=1",
            f"--set-json=api.allowedProviders={json.dumps([PROVIDER])}",
            f"--set=api.operatorAddress={OPERATOR_ADDRESS}",
            kubeconfig=kubeconfig,
            tools=tools,
        )  # fmt: skip
        pods = await release_pods(api, namespace)
        assert sorted(pods) == ["api", "operator"], sorted(pods)
        for pod in pods.values():
            assert pod.raw["spec"]["nodeName"] == real_node.name, pod.raw["spec"]
        api_pod = pods["api"].raw
        ready = {c["type"]: c["status"] for c in api_pod["status"]["conditions"]}
        assert ready["Ready"] == "True", api_pod["status"]
        probe = api_pod["spec"]["containers"][0]["readinessProbe"]
        assert probe["httpGet"]["path"] == "/readyz", probe
        api_url = f"http://{api_pod['status']['podIP']}:{API_PORT}"
        # The host is no client the NetworkPolicy admits: refused (the readiness probe, from the node
        # itself, passes). The relay on the same node, which no policy selects, the host reaches.
        async with httpx.AsyncClient(timeout=5, trust_env=False) as direct:
            try:
                answer = await direct.get(f"{api_url}/readyz")
            except httpx.TransportError as refused:
                print(f"\nfrom the host, {api_url}: {type(refused).__name__} (the NetworkPolicy)")
            else:
                raise AssertionError(f"the host reached the API past its NetworkPolicy: {answer.status_code}")
            # The metrics port is the policy's other rule, open to anyone: the same host scrapes it.
            scraped = await direct.get(f"http://{api_pod['status']['podIP']}:{API_METRICS_PORT}/metrics")
        assert scraped.status_code == 200, scraped.text
        assert 'ocean_c2d_api_kube_requests_total{resource="workflows",verb="WATCH"}' in scraped.text
        assert relay.raw["spec"]["nodeName"] == real_node.name
        provider = ProviderSide(f"http://{relay.raw['status']['podIP']}:{RELAY_PORT}")
        pointed = await provider.client.put(RELAY_UPSTREAM, content=api_url)
        assert pointed.status_code == 204, pointed.text
        print(
            f"API pod {pods['api'].name} at {api_url}, Ready on {real_node.name}; provider at {provider.url}"
        )

        environment = await create_real_environment(api, namespace, real_node, name=unique("real"))
        # 1. start (POST /compute): one Workflow, named by the jobId.
        body = provider_body(real_node, environment.name, f"{node_http.url}/api-input/rain.csv")
        started = await provider.request("POST", "/compute", json=body)
        assert started.status_code == 200, started.text
        [job] = started.json()
        job_id = job["jobId"]
        assert (job["status"], job["statusText"], job["dateFinished"]) == (1, "Warming up", None), job
        workflow = await Workflow.get(job_id, namespace=namespace, api=api)
        assert workflow.raw["spec"]["owner"] == OWNER
        assert workflow.raw["spec"]["algorithm"]["container"]["image"] == real_node.python_image.name

        # 2. poll (GET /compute) on each watch event until dateFinished.
        try:
            seen = await codes_on_watch_events(
                workflow, lambda: provider.status_of(job_id), job["status"], REAL_TIMEOUT
            )
        except TimeoutError:
            raise AssertionError(f"not finished in {REAL_TIMEOUT} s: {status(workflow)}") from None
        final_status = status(workflow)
        assert (final_status["statusCode"], final_status["reason"]) == (70, "Succeeded"), final_status
        final = await polled_until(
            lambda: provider.status_of(job_id), lambda j: j["dateFinished"] is not None
        )
        seen += [final["status"]] if final["status"] != seen[-1] else []
        print(f"status codes seen while polling: {seen}")
        assert seen[0] == 1
        assert seen[-1] == 70
        assert seen == sorted(seen), seen  # the original's codes only grow on the way to 70
        assert (final["status"], final["statusText"]) == (70, "Job finished"), final
        assert float(final["dateFinished"]) >= float(final["dateCreated"])

        # What publish uploaded, from the bucket itself, in the status's (the result index's) order.
        urls = [r["url"] for r in final_status["results"]]
        stored = [await asyncio.to_thread(published, node_s3, bucket, url) for url in urls]
        names = [url.rsplit("/", 1)[-1] for url in urls]
        print(f"published: {list(zip(names, map(len, stored), strict=True))}")
        assert [(r["filename"], r["filesize"]) for r in final["results"]] == [
            (r["filename"], r["filesize"]) for r in final_status["results"]
        ]
        assert names[:2] == ["answer.txt", "algorithm.log"], names
        assert stored[0] == f"0/rain.csv {hashlib.sha256(input_bytes).hexdigest()}\n".encode()
        assert LOG_LINE.encode() in stored[1]

        # 3. results 0 and 1 (GET /getResult), as publish uploaded them.
        for index in (0, 1):
            answer = await provider.result(job_id, index)
            assert answer.status_code == 200, answer.text
            assert answer.content == stored[index], index
            assert answer.headers["Content-Disposition"] == f"attachment;filename={names[index]}"
            assert answer.headers["Access-Control-Expose-Headers"] == "Content-Disposition"
        ranged = await provider.result(job_id, 0, Range="bytes=2-5")
        assert ranged.status_code == 206, ranged.text
        assert ranged.headers["Content-Range"] == f"bytes 2-5/{len(stored[0])}"
        assert ranged.content == stored[0][2:6]
        # One past the end (publish also lists configure.log and publish.log: 0..n-1 exist).
        past = len(urls)
        beyond = await provider.result(job_id, past)
        assert beyond.status_code == 404, beyond.text
        assert beyond.json() == {"error": f"No such index {past} in this compute job"}

        # 4. stop (PUT /compute) on the finished job: answered, the job stays finished.
        stopped = await provider.request("PUT", "/compute", params=job_query(job_id))
        assert stopped.status_code == 200, stopped.text
        [after] = stopped.json()
        assert (after["jobId"], after["status"], after["stopreq"]) == (job_id, 70, 1), after
        await workflow.refresh()
        assert workflow.raw["spec"]["stop"] is True
        assert (status(workflow)["statusCode"], status(workflow)["reason"]) == (70, "Succeeded")
        print(f"PUT /compute on the finished job: {after['status']} {after['statusText']!r}, stopreq 1")
    except BaseException:
        print(await kubectl_logs(namespace, kubeconfig, tools))
        raise
    finally:
        if provider is not None:
            await provider.client.aclose()
        await run_command(
            "helm", "uninstall", RELEASE, "-n", namespace, "--wait",
            kubeconfig=kubeconfig, tools=tools, check=False,
        )  # fmt: skip
