"""`ocean-c2d run`: settings, logging, the API clients, then kopf with our handlers.

Works in a cluster (service-account token) and outside one (the current kubeconfig).
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
from pathlib import Path

import httpx
import kopf
import kr8s.asyncio
import yaml

from ocean_c2d import (
    handlers,  # noqa: F401  (registers the kopf handlers)
    metrics,
    signer,
)
from ocean_c2d.controller import Controller
from ocean_c2d.environments import default_environment_object
from ocean_c2d.k8s import Cluster
from ocean_c2d.render import BUILTIN_DIR, Templates
from ocean_c2d.settings import Settings

log = logging.getLogger("ocean_c2d")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Objects per page of kopf's initial listing of each watched kind: at most this many Workflows are parsed
# at once on start (e2e/test_operator_memory.py).
LIST_CHUNK_SIZE = 8


def setup_logging(settings: Settings) -> None:
    """LOG_LEVEL wins; else LOG_CFG (a YAML dictConfig file); else INFO, as the original did."""
    if settings.log_level is None and settings.log_cfg:
        logging.config.dictConfig(yaml.safe_load(Path(settings.log_cfg).read_text()))
    else:
        logging.basicConfig(
            level=settings.log_level or "INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
    # httpx logs every request URL at INFO; URLs of notification receivers may carry tokens.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    if settings.log_level != "DEBUG":
        # kopf says "Handler ... succeeded" for every watch event; our own log lines tell the story.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def builtin_templates() -> Path:
    """The templates shipped with the operator: the repository's templates/ or the image's copy."""
    for candidate in (BUILTIN_DIR, Path("/opt/ocean-c2d/templates")):
        if (candidate / "algorithm-job.yaml.j2").exists():
            return candidate
    raise SystemExit("ocean-c2d: no built-in templates found; set TEMPLATES_DIR")


async def watched_namespace(settings: Settings, api: kr8s.asyncio.Api) -> str | None:
    """The namespace to watch; None means all namespaces."""
    if settings.watch_namespace == "*":
        return None
    if settings.watch_namespace:
        return settings.watch_namespace
    in_cluster = await asyncio.to_thread(SERVICE_ACCOUNT_NAMESPACE.exists)
    if in_cluster:
        return (await asyncio.to_thread(SERVICE_ACCOUNT_NAMESPACE.read_text)).strip()
    return str(api.namespace or "default")


async def run(settings: Settings) -> None:
    if settings.operator_key_generated:
        log.warning(
            "OCEAN_C2D_DEV_MODE: using a throwaway operator key (address %s); signatures made now "
            "verify against nobody's published address",
            settings.operator_key.address,
        )
    templates = Templates(
        Path(settings.templates_dir) if settings.templates_dir else None, builtin=builtin_templates()
    )
    api = await kr8s.asyncio.api()
    namespace = await watched_namespace(settings, api)
    metrics_server = await metrics.serve(settings.metrics_port)
    async with httpx.AsyncClient() as http:
        cluster = Cluster(api)
        controller = Controller(settings, templates, cluster, http)
        # The only place provider downloads are signed: configure pods ask here (no pod holds the key).
        signer_server = await signer.serve(
            signer.DownloadSigner(settings.operator_key, controller.view.workflow),
            settings.signer_host,
            settings.signer_port,
        )
        if settings.signer_url is None:
            log.warning("SIGNER_URL is not set: configure pods cannot download inputs by DID")
        metrics.collect_cluster_state(controller.view.levels)
        metrics.WORK_QUEUE_DEPTH.set_function(lambda: controller.queue.depth)
        if namespace is not None and settings.default_environment is not None:
            await ensure_default_environment(cluster, settings, namespace)
        kopf_settings = kopf.OperatorSettings()
        kopf_settings.posting.enabled = False  # we post the Events we mean, not every log line
        # No watching of namespaces or CRDs: the watched namespace is fixed and the CRDs are installed
        # before the operator (helm's crds/). Scanning would need cluster-wide list/watch on namespaces and
        # CustomResourceDefinitions, which the chart's least-privilege RBAC does not grant.
        kopf_settings.scanning.disabled = True
        # The initial listing in chunks: in one answer, every Workflow would be parsed at once (a Workflow
        # of the API server's largest size costs ~25 MiB as Python objects), before any is compacted.
        kopf_settings.watching.chunk_size = LIST_CHUNK_SIZE
        queue = asyncio.create_task(controller.queue.run())
        resync = asyncio.create_task(_resync(controller, settings.resync_seconds))
        log.info(
            "Starting ocean-c2d (operator address %s) watching %s",
            settings.operator_key.address,
            f"namespace {namespace}" if namespace else "all namespaces",
        )
        try:
            await kopf.operator(
                standalone=True,
                clusterwide=namespace is None,
                namespaces=[namespace] if namespace else [],
                settings=kopf_settings,
                memo=kopf.Memo(controller=controller),
                liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
            )
        finally:
            queue.cancel()
            resync.cancel()
            await metrics_server.cleanup()
            await signer_server.cleanup()


async def _resync(controller: Controller, every_seconds: int) -> None:
    """The slow safety timer: reconcile everything once per period, in case an event was missed."""
    while True:
        await asyncio.sleep(every_seconds)
        controller.resync()


async def ensure_default_environment(cluster: Cluster, settings: Settings, namespace: str) -> None:
    """The ComputeEnvironment the original's environment variables (nCPU, ramGB, ...) describe, created
    unless it exists (an operator's edits to it are kept)."""
    assert settings.default_environment is not None
    name = settings.default_environment_name
    manifest = default_environment_object(name, namespace, settings.default_environment)
    if await cluster.ensure(manifest):
        log.info(
            "Created ComputeEnvironment %s/%s from the operator's environment variables", namespace, name
        )
