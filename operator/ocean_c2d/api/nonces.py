"""The NonceStore of the running API: one ConfigMap per provider address, kept in the cluster.

`ocean-c2d-api-nonce-<address, lower case>` holds the provider's replay window (api/replay.py). Deciding is
a compare-and-swap on the API server: take the ConfigMap, decide the nonces against its window, write the
new window with the taken resourceVersion as a precondition; a 409 (another replica wrote in between) means
read and decide again. A missing ConfigMap is created; a 409 on the create means another writer created it
first: read and decide again. So a restarted API, or a second replica, refuses a nonce any replica has
accepted: no two can both accept the same one.

Requests of one provider that arrive while a decision is on its way wait for the next one, which decides
them all in one write: 200 concurrent polls cost a few writes, not 200 (and do not conflict with each other,
which a write per request would, 199 times). The ConfigMap a replica last wrote is kept as its guess of the
current one, so a decision usually costs one PATCH and no GET; the precondition checks the guess. A refusal
needs no write: a guess older than the stored window refuses only what the stored one refuses too (both
the floor and the accepted nonces only grow).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ocean_c2d.api.cluster_store import MERGE_PATCH, ApiError, Kube
from ocean_c2d.api.replay import WINDOW, NonceWindow

log = logging.getLogger("ocean_c2d.api")

PREFIX = "ocean-c2d-api-nonce-"
LABEL = "ocean-c2d.oceanprotocol.com/api-nonce"
# Conflicts come from other replicas deciding for the same provider; more than a few in a row means
# something else keeps writing the object.
ATTEMPTS = 8


class NonceConflictError(Exception):
    """The ConfigMap kept changing under us: ATTEMPTS conflicts in a row."""


def configmap_name(address: str) -> str:
    return PREFIX + address.lower()


class ConfigMapNonceStore:
    def __init__(self, kube: Kube, namespace: str, window: int = WINDOW) -> None:
        self.kube = kube
        self.namespace = namespace
        self.window = window
        self._waiting: dict[str, list[tuple[int, asyncio.Future[bool]]]] = {}
        self._deciding: dict[str, asyncio.Task[None]] = {}
        self._guess: dict[str, dict[str, Any]] = {}  # the ConfigMap this replica last read or wrote

    async def advance(self, address: str, nonce: int) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(address, []).append((nonce, future))
        if address not in self._deciding:
            self._deciding[address] = asyncio.create_task(self._decide_waiting(address))
        # Shielded: a caller that goes away (its client hung up) leaves the batch to be decided.
        return await asyncio.shield(future)

    async def _decide_waiting(self, address: str) -> None:
        try:
            while batch := self._waiting.pop(address, None):
                try:
                    verdicts = await self._decide(address, [nonce for nonce, _ in batch])
                except Exception as error:  # each waiting request gets the failure
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), verdict in zip(batch, verdicts, strict=True):
                    if not future.done():
                        future.set_result(verdict)
        finally:
            # No await between the last empty pop and this: a request arriving now starts a new task.
            del self._deciding[address]

    async def _get(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube.request("GET", "v1", "configmaps", self.namespace, name)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def _decide(self, address: str, nonces: list[int]) -> list[bool]:
        name = configmap_name(address)
        for _ in range(ATTEMPTS):
            current = self._guess.pop(name, None) or await self._get(name)
            data = (current or {}).get("data") or {}
            window = NonceWindow.from_data(data, self.window)
            if window is None:
                log.error("ConfigMap %s holds no readable nonce window: refusing %s", name, address)
                return [False] * len(nonces)
            decided, verdicts = window.accept(nonces)
            if not any(verdicts):
                if current is not None:
                    self._guess[name] = current
                return verdicts
            try:
                self._guess[name] = await self._write(name, current, decided)
                return verdicts
            except ApiError as error:
                if error.status != 409:
                    raise
                # 409 on create: it exists now; on patch: it changed since it was read. Decide again.
        raise NonceConflictError(f"ConfigMap {name} changed {ATTEMPTS} times while deciding its nonces")

    async def _write(self, name: str, current: dict[str, Any] | None, window: NonceWindow) -> dict[str, Any]:
        if current is None:
            return await self.kube.request(
                "POST",
                "v1",
                "configmaps",
                self.namespace,
                body={
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": name, "labels": {LABEL: "true"}},
                    "data": window.to_data(),
                },
            )
        data: dict[str, str | None] = {key: None for key in (current.get("data") or {})}  # merge: delete
        data.update(window.to_data())
        return await self.kube.request(
            "PATCH",
            "v1",
            "configmaps",
            self.namespace,
            name,
            body={"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]}, "data": data},
            headers=MERGE_PATCH,
        )
