"""`ocean-c2d api`: the operator-service-compatible API as a service.

build_service wires app.build_app to a Store (ClusterStore in the service), the Authenticator over a
NonceStore (ConfigMapNonceStore), GET /environments' full answer (api/environments.py) with the operator's
address, and adds what a Deployment needs: /readyz (200 once the watch caches have synced, else 503),
/healthz (200 while the process serves) and /metrics. run_api makes the Kubernetes client, starts the
watches and serves until cancelled.
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

from ocean_c2d.api import metrics
from ocean_c2d.api.app import ApiConfig, build_app
from ocean_c2d.api.auth import Authenticator, NonceStore
from ocean_c2d.api.cluster_store import ClusterStore, Kr8sKube
from ocean_c2d.api.environments import environments_answer
from ocean_c2d.api.nonces import ConfigMapNonceStore
from ocean_c2d.api.params import Params, accept_all
from ocean_c2d.api.settings import ApiSettings
from ocean_c2d.api.store import Store
from ocean_c2d.times import utc_now

log = logging.getLogger("ocean_c2d.api")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def build_service(
    settings: ApiSettings,
    store: Store,
    nonces: NonceStore,
    ready: Callable[[], bool],
    clock: Callable[[], datetime] = utc_now,
) -> web.Application:
    """The API's Application: the compatible routes plus /readyz, /healthz and /metrics."""

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
            store=store,
            authenticate=authenticate,
            environments=environments,
            operator_address=settings.operator_address,
            algo_time_limit=settings.algo_time_limit,
            clock=clock,
        )
    )
    app.middlewares.append(metrics.observe_requests)

    async def readyz(request: web.Request) -> web.Response:
        # Before the first LIST the cache is empty: answering from it would say "no such job".
        if ready():
            return web.json_response({"ready": True})
        return web.json_response({"ready": False}, status=503)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics.serve_metrics)
    return app


async def namespace_of(settings: ApiSettings, api: kr8s.asyncio.Api) -> str:
    if settings.namespace is not None:
        return settings.namespace
    if await asyncio.to_thread(SERVICE_ACCOUNT_NAMESPACE.exists):
        return (await asyncio.to_thread(SERVICE_ACCOUNT_NAMESPACE.read_text)).strip()
    return str(api.namespace or "default")


async def run_api(settings: ApiSettings) -> None:
    if not settings.auth:
        log.warning("API_AUTH=off: every request is accepted unsigned; only for a closed test setup")
    api = await kr8s.asyncio.api()
    namespace = await namespace_of(settings, api)
    kube = Kr8sKube(api)
    store = ClusterStore(kube, namespace)
    app = build_service(settings, store, ConfigMapNonceStore(kube, namespace), lambda: store.synced)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    log.info(
        "Serving the operator-service API on %s:%s for namespace %s (operator address %s, %s)",
        settings.host,
        settings.port,
        namespace,
        settings.operator_address,
        f"{len(settings.allowed_providers)} allowed providers" if settings.auth else "no authentication",
    )
    try:
        await store.run()
    finally:
        await runner.cleanup()


def main(environ: dict[str, str]) -> int:
    import sys

    from ocean_c2d.api.settings import load_api_settings
    from ocean_c2d.settings import SettingsError

    try:
        settings = load_api_settings(environ)
    except SettingsError as error:
        print(f"ocean-c2d api: invalid settings:\n{error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=environ.get("LOG_LEVEL") or "INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(run_api(settings))
    return 0
