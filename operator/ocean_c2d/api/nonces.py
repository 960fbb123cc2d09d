"""The NonceStore of the running API: one ConfigMap per provider address, kept in the cluster.

`ocean-c2d-api-nonce-<address, lower case>` holds {"nonce": "<decimal>"}. `advance` is a compare-and-swap
on the API server: read the ConfigMap, refuse when the stored nonce is not below the new one, else write
the new one with the read resourceVersion as a precondition; a 409 (another replica, or another request
of this one, wrote in between) means read and decide again. A missing ConfigMap is created; a 409 on the
create means another writer created it first: read and decide again. So a restarted API, or a second
replica, refuses a nonce any replica has accepted: no two can both accept the same one.

Every call reads the API server (no cache): a cached nonce could be stale under two replicas, and only
requests an allowed provider signed get here (auth.authenticate checks the signature first).
"""

from __future__ import annotations

import logging
from typing import Any

from ocean_c2d.api.cluster_store import MERGE_PATCH, ApiError, Kube

log = logging.getLogger("ocean_c2d.api")

PREFIX = "ocean-c2d-api-nonce-"
LABEL = "ocean-c2d.oceanprotocol.com/api-nonce"
# Conflicts come from concurrent requests of one provider; more than a few in a row means something
# else keeps writing the object.
ATTEMPTS = 8


class NonceConflictError(Exception):
    """The ConfigMap kept changing under us: ATTEMPTS conflicts in a row."""


def configmap_name(address: str) -> str:
    return PREFIX + address.lower()


def stored_nonce(configmap: dict[str, Any]) -> int | None:
    """The nonce the ConfigMap holds; None when it holds none (created empty, or edited by hand)."""
    text = (configmap.get("data") or {}).get("nonce")
    if isinstance(text, str) and text.isdigit():
        return int(text)
    return None


class ConfigMapNonceStore:
    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace

    async def _get(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube.request("GET", "v1", "configmaps", self.namespace, name)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def advance(self, address: str, nonce: int) -> bool:
        name = configmap_name(address)
        for _ in range(ATTEMPTS):
            current = await self._get(name)
            try:
                if current is None:
                    await self.kube.request(
                        "POST",
                        "v1",
                        "configmaps",
                        self.namespace,
                        body={
                            "apiVersion": "v1",
                            "kind": "ConfigMap",
                            "metadata": {"name": name, "labels": {LABEL: "true"}},
                            "data": {"nonce": str(nonce)},
                        },
                    )
                    return True
                last = stored_nonce(current)
                if last is None and (current.get("data") or {}).get("nonce") is not None:
                    # Unreadable: refuse rather than guess (deleting the ConfigMap resets the provider).
                    log.error("ConfigMap %s holds no decimal nonce: refusing %s's requests", name, address)
                    return False
                if last is not None and nonce <= last:
                    return False
                await self.kube.request(
                    "PATCH",
                    "v1",
                    "configmaps",
                    self.namespace,
                    name,
                    body={
                        "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                        "data": {"nonce": str(nonce)},
                    },
                    headers=MERGE_PATCH,
                )
                return True
            except ApiError as error:
                if error.status != 409:
                    raise
                # 409 on create: it exists now; on patch: it changed since we read it. Decide again.
        raise NonceConflictError(f"ConfigMap {name} changed {ATTEMPTS} times while advancing its nonce")
