"""GET /environments against the answers operator-service gave the real clients (shared/ocean-compat),
compared under the README's normalisation (lastSeen -> <TS>), keys, order and types included."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from ocean_c2d.api.environments import environments_answer
from ocean_c2d.api.translate import epoch_text
from unit_tests.api.fixtures import COMPAT

FIXTURE_FILES = (
    "provider-v4.json",
    "oceanpy_provider-v4.json",
    "ocean-node-OPF_K8_9f2870dd.json",
    "probe.json",
)
# The recorded environment's address: the environment executor test key (README), lower case on purpose.
EXECUTOR = "0xa78deb2fa79463945c247991075e2a0e98ba7a09"
TS = re.compile(r"^\d+\.\d+$")

# The ComputeEnvironment the recorded engine announced: its env vars nCPU=1, ramGB=1, diskGB=1, maxJobs=10,
# maxJobDuration=60 (the engine's defaults for the rest), and no Workflow running.
RECORDED_ENVIRONMENT: dict[str, Any] = {
    "apiVersion": "oceanprotocol.com/v1alpha1",
    "kind": "ComputeEnvironment",
    "metadata": {"name": "ocean-compute", "namespace": "c2d"},
    "spec": {
        "nCPU": 1,
        "cpuType": "",
        "nGPU": 0,
        "gpuType": "",
        "ramGB": 1,
        "diskGB": 1,
        "priceMinute": 0,
        "description": "",
        "maxJobs": 10,
        "maxJobDuration": 60,
        "storageExpiry": 0,
    },
    "status": {"currentJobs": 0, "queuedJobs": 0, "jobs": "0/10"},
}


def exchanges(name: str) -> list[dict[str, Any]]:
    path = COMPAT / name
    assert path.is_file(), f"the recordings are missing: {path} (set OCEAN_COMPAT_DIR)"
    loaded: list[dict[str, Any]] = json.loads(path.read_text())
    return loaded


def environment_exchanges() -> list[Any]:
    return [
        pytest.param(e, id=f"{name.split('.')[0]}-{e['seq']}")
        for name in FIXTURE_FILES
        for e in exchanges(name)
        if e["request"]["path"] == "/api/v1/operator/environments"
    ]


def normalised(body: Any) -> Any:
    """The README's normalisation for this answer: a float-string lastSeen is <TS>."""
    assert isinstance(body, list)
    return [{k: "<TS>" if k == "lastSeen" and TS.match(v) else v for k, v in env.items()} for env in body]


def shape(body: list[dict[str, Any]]) -> list[list[tuple[str, type]]]:
    """Keys in order with their types: == on values alone would take 1.0 for 1."""
    return [[(key, type(value)) for key, value in env.items()] for env in body]


def test_the_recordings_hold_eighteen_environment_requests() -> None:
    assert len(environment_exchanges()) == 9 + 4 + 1 + 4


@pytest.mark.parametrize("exchange", environment_exchanges())
def test_every_recorded_request_gets_the_recorded_list(exchange: dict[str, Any]) -> None:
    """Whatever the request carries (chainId, chain_id, an empty JSON body, nothing), the answer is the
    list: the bare GET (probe seq 2) got 400 from the original, by design not from us."""
    recorded = exchange["response"]
    answer = environments_answer([RECORDED_ENVIRONMENT], EXECUTOR, datetime(2026, 12, 1, 8, 0, tzinfo=UTC))
    if recorded["status"] == 400:
        request = exchange["request"]
        assert (request["params"], request["body_raw"], request["transport"]) == ({}, "", "none")
        assert not [h for h in request["headers"] if h[0].lower() == "content-type"]
        assert recorded["body"] == {
            "error": "415 Unsupported Media Type: Did not attempt to load JSON data because the request "
            "Content-Type was not 'application/json'."
        }
        recorded = next(e["response"] for e in exchanges("probe.json") if e["seq"] == 3)  # the JSON-body one
    assert recorded["status"] == 200
    assert normalised(answer) == normalised(recorded["body"])
    assert shape(list(map(dict, answer))) == shape(recorded["body"])


def test_last_seen_is_the_originals_epoch_text() -> None:
    """str(extract(epoch from lastping)): six decimals, trailing zeros kept (provider-v4 seq 1 and 25)."""
    assert epoch_text(datetime(2026, 12, 1, 7, 54, 21, 573891, tzinfo=UTC)) == "1796111661.573891"
    assert epoch_text(datetime(2026, 12, 1, 7, 54, 24, 372540, tzinfo=UTC)) == "1796111664.372540"
    assert epoch_text(datetime(2026, 12, 1, 8, 54, 24, tzinfo=UTC)) == "1796115264.000000"
    recorded = {
        e["seq"]: e["response"]["body"][0]["lastSeen"]
        for e in exchanges("provider-v4.json")
        if e["seq"] in (1, 25)
    }
    assert recorded == {1: "1796111661.573891", 25: "1796111664.372540"}
    now = datetime(2026, 12, 1, 7, 54, 21, 573891, tzinfo=UTC)
    assert environments_answer([RECORDED_ENVIRONMENT], EXECUTOR, now)[0]["lastSeen"] == recorded[1]


def test_a_now_in_another_zone_is_the_same_moment() -> None:
    paris = datetime(2026, 12, 1, 8, 54, 21, 573891, tzinfo=timezone(timedelta(hours=1)))
    assert epoch_text(paris) == "1796111661.573891"
    with pytest.raises(ValueError, match="needs a time zone"):
        epoch_text(datetime(2026, 12, 1, 7, 54, 21))


def test_current_jobs_come_from_the_operators_status_and_sizes_keep_their_fractions() -> None:
    gpu = {
        "metadata": {"name": "gpu-large", "namespace": "c2d"},
        "spec": {
            "nCPU": 8,
            "cpuType": "AMD EPYC",
            "nGPU": 2,
            "gpuRam": 24,
            "gpuType": "NVIDIA A10",
            "ramGB": 0.5,
            "diskGB": 20.0,
            "priceMinute": 0.25,
            "description": "two GPUs",
            "maxJobs": 3,
            "maxJobDuration": 7200,
            "storageExpiry": 24,
        },
        "status": {"currentJobs": 2, "queuedJobs": 5, "jobs": "2/3"},
    }
    fresh = {"metadata": {"name": "a-fresh-one", "namespace": "c2d"}, "spec": {}}  # no status yet: none run
    now = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    answer = environments_answer([gpu, RECORDED_ENVIRONMENT, fresh], EXECUTOR, now)
    assert [env["id"] for env in answer] == ["a-fresh-one", "gpu-large", "ocean-compute"]
    assert dict(answer[1]) == {
        "cpuNumber": 8,
        "cpuType": "AMD EPYC",
        "gpuNumber": 2,
        "gpuType": "NVIDIA A10",
        "ramGB": 0.5,
        "diskGB": 20,
        "priceMin": 0.25,
        "desc": "two GPUs",
        "currentJobs": 2,
        "maxJobs": 3,
        "consumerAddress": "0xA78deb2Fa79463945C247991075E2a0e98Ba7A09",
        "storageExpiry": 24,
        "maxJobDuration": "7200",
        "lastSeen": "1796112000.000000",
        "id": "gpu-large",
    }
    assert type(answer[1]["diskGB"]) is int
    # The model's defaults, the same the operator runs the environment with.
    assert (answer[0]["currentJobs"], answer[0]["maxJobs"], answer[0]["maxJobDuration"]) == (0, 10, "3600")


def test_the_consumer_address_must_be_an_address() -> None:
    now = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    assert environments_answer([], EXECUTOR, now) == []
    with pytest.raises(ValueError, match="not a 0x-prefixed 40-hex-digit address"):
        environments_answer([RECORDED_ENVIRONMENT], "0xa78deb2f", now)
    with pytest.raises(ValueError, match="wrong EIP-55 checksum"):
        environments_answer([RECORDED_ENVIRONMENT], "0xA78DEB2Fa79463945C247991075E2a0e98Ba7A09", now)
