"""GET /environments: the ComputeEnvironments as operator-service listed them (pure).

operator-service answered every row of its `envs` table: the JSON the engine announced (the keys below, in
this order, with the engine's types: `maxJobDuration` a string, the sizes integers when whole) plus `id`
and `lastSeen` (the epoch of the last announce, a string with six decimals). Here a row is a
ComputeEnvironment object as the API's watch holds it: its spec (read by model.Environment, the same
defaults as the operator), its status' `currentJobs` (which the operator counts from the Workflows'
status, environments.occupancy), the operator's address, and `now` as `lastSeen`: the API sees the object
now, and no announce loop exists to be late.

Parameters change nothing: `chainId`/`chain_id` never filtered (the original's filter needed an
`allowedChainId` no engine announced), and a bare GET (no query, no JSON Content-Type) answers the list
where the original answered 400 with Flask's 415 text, which broke OPF_K8 after ocean-node #705.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TypedDict

from ocean_c2d.api.auth import checksum_address
from ocean_c2d.api.translate import epoch_text
from ocean_c2d.model import Environment


class EnvironmentAnswer(TypedDict):
    """One environment as the clients read it; the keys in the order operator-service wrote them."""

    cpuNumber: int
    cpuType: str
    gpuNumber: int
    gpuType: str
    ramGB: int | float
    diskGB: int | float
    priceMin: int | float
    desc: str
    currentJobs: int
    maxJobs: int
    consumerAddress: str
    storageExpiry: int
    maxJobDuration: str
    lastSeen: str
    id: str


def environments_answer(
    environment_objects: Iterable[Mapping[str, Any]], consumer_address: str, now: datetime
) -> list[EnvironmentAnswer]:
    """The body of GET /environments: every ComputeEnvironment, by name. `consumer_address` is the
    operator key's address (checksummed here: provider compares it with the address that downloads the
    assets, and refuses the job otherwise); ValueError if it is not an address."""
    consumer = checksum_address(consumer_address)
    last_seen = epoch_text(now)
    answers = [_answer(obj, consumer, last_seen) for obj in environment_objects]
    return sorted(answers, key=lambda answer: answer["id"])


def _answer(obj: Mapping[str, Any], consumer: str, last_seen: str) -> EnvironmentAnswer:
    environment = Environment.from_object(dict(obj))
    current = (obj.get("status") or {}).get("currentJobs", 0)
    return {
        "cpuNumber": environment.n_cpu,
        "cpuType": environment.cpu_type,
        "gpuNumber": environment.n_gpu,
        "gpuType": environment.gpu_type,
        "ramGB": _number(environment.ram_gb),
        "diskGB": _number(environment.disk_gb),
        "priceMin": _number(environment.price_minute),
        "desc": environment.description,
        "currentJobs": int(current),
        "maxJobs": environment.max_jobs,
        "consumerAddress": consumer,
        "storageExpiry": environment.storage_expiry,
        # The engine announced its env var as it read it: a string of seconds.
        "maxJobDuration": str(environment.max_job_duration),
        "lastSeen": last_seen,
        "id": environment.name,
    }


def _number(value: float) -> int | float:
    """A whole number as an integer (the engine's defaults were ints: `"ramGB": 1`, not `1.0`)."""
    return int(value) if float(value).is_integer() else value
