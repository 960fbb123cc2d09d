"""`ocean-c2d api`: the operator-service-compatible API as a service.

build_service wires app.build_app to a Store (ClusterStore in the service), the Authenticator over a
NonceStore (ConfigMapNonceStore), GET /environments' full answer (api/environments.py) with the operator's
address, the result fetcher (api/results.py, over the operator's own publish settings: IPFS_OUTPUT,
AWS_BUCKET_OUTPUT, ...) for GET /getResult and for result lists kept only in a job's manifest, and adds
what a Deployment needs: /readyz (200 once the watch caches have synced, else 503) and /healthz (200 while
the process serves). /metrics is another Application (build_metrics_app) on its own port
(API_METRICS_PORT), so that a scraper needs no right to call the API. run_api makes the Kubernetes client
(counting its requests: KUBE_REQUESTS), starts the watches and serves both until cancelled; the fetcher's
clients are closed with the Application.

A create the API server refuses (400, 422: the CRD schema's bounds, an admission policy) is the client's
request failing validation, not the API's fault: RefusingStore turns it into app.CreateRefusedError, which
app.py answers 400 with the API server's words.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import kr8s.asyncio
from aiohttp import web
from prometheus_client import Counter

from ocean_c2d.api import metrics
from ocean_c2d.api.app import ApiConfig, CreateRefusedError, build_app
from ocean_c2d.api.auth import Authenticator, NonceStore
from ocean_c2d.api.cluster_store import ApiError, ClusterStore, Kr8sKube
from ocean_c2d.api.environments import environments_answer
from ocean_c2d.api.nonces import ConfigMapNonceStore
from ocean_c2d.api.params import Params, accept_all
from ocean_c2d.api.results import ResultFetcher, fetcher_from_settings
from ocean_c2d.api.settings import ApiSettings
from ocean_c2d.api.store import Store

# The operator's own parser of the publish variables, so both processes read them alike.
from ocean_c2d.settings import PublishSettings, SettingsError, load_publish_settings
from ocean_c2d.times import utc_now

log = logging.getLogger("ocean_c2d.api")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# The API server's codes for an object it will not store as sent: 400 (malformed), 422 (the schema, a
# validating admission policy). Others (403, 409, 5xx, no answer) are the API's or the cluster's problem.
REFUSALS = frozenset({400, 422})


KUBE_REQUESTS = Counter(
    "ocean_c2d_api_kube_requests",
    "Requests the API sent to the Kubernetes API server, by verb (WATCH: a watch opened) and resource",
    ["verb", "resource"],
    registry=metrics.REGISTRY,
)


def count_kube_request(verb: str, resource: str) -> None:
    """Kr8sKube's `count`: what each API call costs the API server, which the design keeps small (reads
    come from the watch caches)."""
    KUBE_REQUESTS.labels(verb, resource).inc()


class RefusingStore:
    """A Store whose create_workflow raises CreateRefusedError for the API server's refusals (REFUSALS);
    everything else is `inner`'s."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    async def create_workflow(self, obj: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.inner.create_workflow(obj)
        except ApiError as error:
            if error.status in REFUSALS:
                raise CreateRefusedError(error.message) from error
            raise

    async def get_workflow(self, name: str) -> dict[str, Any] | None:
        return await self.inner.get_workflow(name)

    async def list_workflows(
        self, *, owner: str | None = None, job_id: str | None = None, agreement_id: str | None = None
    ) -> list[dict[str, Any]]:
        return await self.inner.list_workflows(owner=owner, job_id=job_id, agreement_id=agreement_id)

    async def set_stop(self, name: str) -> dict[str, Any] | None:
        return await self.inner.set_stop(name)

    async def list_environments(self) -> list[dict[str, Any]]:
        return await self.inner.list_environments()


def build_service(
    settings: ApiSettings,
    store: Store,
    nonces: NonceStore,
    ready: Callable[[], bool],
    clock: Callable[[], datetime] = utc_now,
    fetcher: ResultFetcher | None = None,
) -> web.Application:
    """The API's Application: the compatible routes plus /readyz and /healthz (/metrics is
    build_metrics_app's). `fetcher` (None: no result storage configured, getResult answers 503) is closed
    when the Application is."""

    async def environments(params: Params) -> list[dict[str, Any]]:
        answer = environments_answer(await store.list_environments(), settings.operator_address, clock())
        return cast(list[dict[str, Any]], answer)

    authenticate = (
        Authenticator(settings.allowed_providers, nonces, observe=metrics.observe_authentication)
        if settings.auth
        else accept_all
    )
    app = build_app(
        ApiConfig(
            store=RefusingStore(store),
            authenticate=authenticate,
            environments=environments,
            fetch_result=fetcher.fetch_result if fetcher is not None else None,
            read_manifest=fetcher.read_manifest if fetcher is not None else None,
            operator_address=settings.operator_address,
            algo_time_limit=settings.algo_time_limit,
            clock=clock,
        )
    )
    app.middlewares.append(metrics.observe_requests)
    if fetcher is not None:

        async def close_fetcher(app: web.Application) -> None:
            await fetcher.close()

        app.on_cleanup.append(close_fetcher)

    async def readyz(request: web.Request) -> web.Response:
        # Before the first LIST the cache is empty: answering from it would say "no such job".
        if ready():
            return web.json_response({"ready": True})
        return web.json_response({"ready": False}, status=503)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", healthz)
    return app


def build_metrics_app() -> web.Application:
    """/metrics alone (api/metrics.py's registry: the API's requests, authentications and KUBE_REQUESTS),
    for the metrics port. Scrapes are not counted as API requests."""
    app = web.Application()
    app.router.add_get("/metrics", metrics.serve_metrics)
    return app


async def namespace_of(settings: ApiSettings, api: kr8s.asyncio.Api) -> str:
    if settings.namespace is not None:
        return settings.namespace
    if await asyncio.to_thread(SERVICE_ACCOUNT_NAMESPACE.exists):
        return (await asyncio.to_thread(SERVICE_ACCOUNT_NAMESPACE.read_text)).strip()
    return str(api.namespace or "default")


async def run_api(settings: ApiSettings, publish: PublishSettings | None = None) -> None:
    if not settings.auth:
        log.warning("API_AUTH=off: every request is accepted unsigned; only for a closed test setup")
    api = await kr8s.asyncio.api()
    namespace = await namespace_of(settings, api)
    kube = Kr8sKube(api, count=count_kube_request)
    store = ClusterStore(kube, namespace)
    fetcher = fetcher_from_settings(publish) if publish is not None else None
    app = build_service(
        settings, store, ConfigMapNonceStore(kube, namespace), lambda: store.synced, fetcher=fetcher
    )
    runner = web.AppRunner(app, access_log=None)
    metrics_runner = web.AppRunner(build_metrics_app(), access_log=None)
    await runner.setup()
    await metrics_runner.setup()
    try:
        await web.TCPSite(metrics_runner, settings.host, settings.metrics_port).start()
        await web.TCPSite(runner, settings.host, settings.port).start()
        log.info(
            "Serving the operator-service API on %s:%s (/metrics on port %s) for namespace %s "
            "(operator address %s, %s, %s)",
            settings.host,
            settings.port,
            settings.metrics_port,
            namespace,
            settings.operator_address,
            f"{len(settings.allowed_providers)} allowed providers" if settings.auth else "no authentication",
            "result downloads from the publish storage" if fetcher is not None else "no result storage",
        )
        await store.run()
    finally:
        await runner.cleanup()
        await metrics_runner.cleanup()


def main(environ: dict[str, str]) -> int:
    import sys

    from ocean_c2d.api.settings import load_api_settings

    try:
        settings = load_api_settings(environ)
        publish = load_publish_settings(environ)
    except SettingsError as error:
        print(f"ocean-c2d api: invalid settings:\n{error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=environ.get("LOG_LEVEL") or "INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(run_api(settings, publish))
    return 0
