"""Where the API reads and writes: Workflow and ComputeEnvironment objects (dicts, as the API server
holds them), behind a protocol so the app never knows whether a watch cache or a dict serves them.

The API keeps no state of its own: a restarted or second replica answers the same. The kr8s-backed store
(watch cache for reads, the API server for writes) is a separate module; InMemoryStore serves the tests.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from ocean_c2d.times import format_time, utc_now


class Store(Protocol):
    async def create_workflow(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create the Workflow; answer it as stored (metadata filled in)."""

    async def get_workflow(self, name: str) -> dict[str, Any] | None: ...

    async def list_workflows(
        self, *, owner: str | None = None, job_id: str | None = None, agreement_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The Workflows matching every given filter exactly (owner is case-sensitive, as the
        original's SQL was), oldest first."""

    async def set_stop(self, name: str) -> dict[str, Any] | None:
        """Patch spec.stop to true; the Workflow afterwards, or None when it is gone."""

    async def list_environments(self) -> list[dict[str, Any]]:
        """The ComputeEnvironment objects the API offers."""


def matches(obj: dict[str, Any], owner: str | None, job_id: str | None, agreement_id: str | None) -> bool:
    spec = obj.get("spec") or {}
    return (
        (job_id is None or obj["metadata"]["name"] == job_id)
        and (owner is None or spec.get("owner") == owner)
        and (agreement_id is None or spec.get("agreementId") == agreement_id)
    )


class InMemoryStore:
    """A Store of plain dicts, for tests: it fills in what the API server would (namespace, uid,
    creationTimestamp, generation) and hands out copies, so callers cannot change what it holds."""

    def __init__(
        self, namespace: str = "default", environments: Iterable[dict[str, Any]] = (), clock: Any = utc_now
    ) -> None:
        self.namespace = namespace
        self.workflows: dict[str, dict[str, Any]] = {}
        self.environments = [copy.deepcopy(e) for e in environments]
        self._clock = clock
        self._uids = itertools.count(1)

    async def create_workflow(self, obj: dict[str, Any]) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        if name in self.workflows:
            raise KeyError(f"Workflow {name} already exists")
        stored = copy.deepcopy(obj)
        now: datetime = self._clock()
        stored["metadata"].update(
            namespace=self.namespace,
            uid=f"uid-{next(self._uids)}",
            generation=1,
            creationTimestamp=format_time(now),
        )
        self.workflows[name] = stored
        return copy.deepcopy(stored)

    async def get_workflow(self, name: str) -> dict[str, Any] | None:
        found = self.workflows.get(name)
        return copy.deepcopy(found) if found is not None else None

    async def list_workflows(
        self, *, owner: str | None = None, job_id: str | None = None, agreement_id: str | None = None
    ) -> list[dict[str, Any]]:
        # Insertion order is creation order.
        return [copy.deepcopy(w) for w in self.workflows.values() if matches(w, owner, job_id, agreement_id)]

    async def set_stop(self, name: str) -> dict[str, Any] | None:
        found = self.workflows.get(name)
        if found is None:
            return None
        if not found["spec"].get("stop"):
            found["spec"]["stop"] = True
            found["metadata"]["generation"] += 1
        return copy.deepcopy(found)

    async def list_environments(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self.environments)

    def set_status(self, name: str, status: dict[str, Any]) -> None:
        """What the operator would write to the status subresource (tests drive the timeline)."""
        self.workflows[name]["status"] = copy.deepcopy(status)
