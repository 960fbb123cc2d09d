"""`ocean-c2d run`: settings, logging, the API clients, then kopf with our handlers.

Works in a cluster (service-account token) and outside one (the current kubeconfig).
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
import socket
import uuid
from pathlib import Path

import httpx
import kopf
import kr8s.asyncio
import yaml

from ocean_c2d import (
    handlers,  # (importing it registers the kopf handlers)
    metrics,
    signer,
)
from ocean_c2d.controller import Controller
from ocean_c2d.environments import default_environment_object
from ocean_c2d.k8s import Cluster
from ocean_c2d.lease import Elector, LeaseClient, SignerEndpoint
from ocean_c2d.render import BUILTIN_DIR, Templates
from ocean_c2d.settings import Settings
from ocean_c2d.telemetry import ClusterLevels

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
        if (candidate / "algorithm-pod.yaml.j2").exists():
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
        elector = leader_elector(settings, api, namespace, cluster)
        # The only place provider downloads are signed: configure pods ask here (no pod holds the key).
        signer_server = await signer.serve(
            signer.DownloadSigner(settings.operator_key, signer_view(controller, elector)),
            settings.signer_host,
            settings.signer_port,
        )
        if settings.signer_url is None:
            log.warning("SIGNER_URL is not set: configure pods cannot download inputs by DID")
        metrics.collect_cluster_state(
            controller.view.levels if elector is None else lambda: leader_levels(controller, elector)
        )
        # A standby's queue fills from its watches until it leads: it reports 0, as its levels.
        metrics.WORK_QUEUE_DEPTH.set_function(
            lambda: controller.queue.depth if elector is None or elector.leading else 0
        )
        if elector is None and namespace is not None and settings.default_environment is not None:
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
        # kopf lists no results record (they are the records' informer's: handlers.py).
        kopf_settings.watching.label_selectors["configmaps"] = handlers.KOPF_CONFIGMAP_SELECTOR
        if elector is None:
            acting = [
                asyncio.create_task(controller.queue.run()),
                asyncio.create_task(_resync(controller, settings.resync_seconds)),
            ]
        else:  # the watches run on a standby too (its view stays warm); the workers only on the leader
            acting = [asyncio.create_task(_lead(elector, controller, cluster, settings, namespace))]
        # The kinds that grow with history (Workflows, results records): informers, not kopf (handlers.py).
        acting += controller.start_watches(handlers.informers(api, namespace, controller))
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
            for task in acting:
                task.cancel()
            if elector is not None:  # once the workers are stopped: hand the Lease over at once
                await asyncio.gather(*acting, return_exceptions=True)
                await elector.release()
            await metrics_server.cleanup()
            await signer_server.cleanup()


def leader_elector(
    settings: Settings, api: kr8s.asyncio.Api, namespace: str | None, cluster: Cluster
) -> Elector | None:
    """The Lease's elector when LEADER_ELECTION is on (else None: act at once, as one replica must). Every
    write of the cluster adapter then passes its guard."""
    election = settings.leader_election
    if election is None:
        metrics.LEADER.set(1)  # it acts, as the holder would: OceanC2DNoLeader stays silent
        return None
    lease_namespace = election.lease_namespace or namespace or str(api.namespace or "default")
    # client-go's advice: the host name (the pod's name) and something unique to this process.
    identity = election.identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    elector = Elector(LeaseClient(api, lease_namespace, election.lease_name), identity, election)
    cluster.write_guard = elector.check
    return elector


def signer_view(controller: Controller, elector: Elector | None) -> signer.WorkflowLookup:
    """The signer reads the leader's view only: a standby answers 503 (retried by the configure pod), so
    no two replicas sign for one address (the nonces of an address must keep increasing)."""
    if elector is None:
        return controller.view.workflow
    return lambda namespace, name: controller.view.workflow(namespace, name) if elector.leading else None


def leader_levels(controller: Controller, elector: Elector) -> ClusterLevels:
    """The cluster-state gauges from the leader only: both replicas are scraped, and sums must not double."""
    return controller.view.levels() if elector.leading else ClusterLevels({}, [])


async def _lead(
    elector: Elector, controller: Controller, cluster: Cluster, settings: Settings, namespace: str | None
) -> None:
    """With leader election: wait for the Lease, then act (workers, resync, the default environment) while
    holding it. On losing it, stop the workers first (no write starts after that; the cluster's guard
    refuses any that would) and exit non-zero so the pod restarts as a standby (client-go's
    OnStoppedLeading)."""
    try:
        await elector.acquire()
        workers = asyncio.create_task(controller.queue.run())
        resync = asyncio.create_task(_resync(controller, settings.resync_seconds))
        signer_route = asyncio.create_task(_route_signer(elector, settings))
        try:
            controller.resync()  # everything once: the view was built while standing by
            if namespace is not None and settings.default_environment is not None:
                await ensure_default_environment(cluster, settings, namespace)
            reason = await elector.hold()
        finally:
            workers.cancel()
            resync.cancel()
            signer_route.cancel()
    except Exception as error:  # a replica that cannot act must not keep standing in the way
        log.exception("Leader election: the leader's loop failed")
        reason = type(error).__name__
    log.error("Leader election: stopped acting (%s); exiting to restart as a standby", reason)
    logging.shutdown()
    os._exit(1)  # at once, as client-go's OnStoppedLeading: no clean-up that could write


async def _route_signer(elector: Elector, settings: Settings) -> None:
    """SIGNER_ENDPOINT_SLICE (the chart): the signer's Service to this replica, now that it leads."""
    election = settings.leader_election
    if election is None or election.signer_endpoint_slice is None or election.pod_ip is None:
        return
    client = elector.client
    route = SignerEndpoint(
        client.api, client.namespace, election.signer_endpoint_slice, election.pod_ip, settings.signer_port
    )
    await route.keep_trying(elector)


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
