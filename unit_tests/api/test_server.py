"""`ocean-c2d api`: its settings, and the service build_service makes from them, served on loopback over
ClusterStore and ConfigMapNonceStore on test_cluster_store's in-process FakeKube (not a real API server:
that is the next slice's e2e test), with /metrics on its own Application (build_metrics_app)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from eth_keys.datatypes import PrivateKey
from eth_utils.crypto import keccak
from prometheus_client import CONTENT_TYPE_LATEST

from ocean_c2d.api import metrics
from ocean_c2d.api.cluster_store import ClusterStore
from ocean_c2d.api.nonces import ConfigMapNonceStore, configmap_name
from ocean_c2d.api.server import build_metrics_app, build_service, count_kube_request
from ocean_c2d.api.settings import DEFAULT_METRICS_PORT, DEFAULT_PORT, ApiSettings, load_api_settings
from ocean_c2d.settings import SettingsError
from ocean_c2d.signing import personal_message_hash
from unit_tests.api.test_cluster_store import NS, FakeKube, environment, workflow

PREFIX = "/api/v1/operator"
KEY_ONE = "00" * 31 + "01"
KEY_ONE_ADDRESS = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"  # the address of private key 1
PROVIDER_KEY = PrivateKey(bytes.fromhex("00" * 31 + "02"))
PROVIDER = PROVIDER_KEY.public_key.to_checksum_address()
OWNER = "0x" + "a1" * 20
NOW = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_the_defaults_and_an_allowlist() -> None:
    settings = load_api_settings(
        {"API_ALLOWED_PROVIDERS": PROVIDER.lower(), "OPERATOR_ADDRESS": KEY_ONE_ADDRESS.lower()}
    )
    assert settings == ApiSettings(
        host="0.0.0.0",
        port=DEFAULT_PORT,
        metrics_port=DEFAULT_METRICS_PORT,
        allowed_providers=frozenset({PROVIDER}),
        auth=True,
        operator_address=KEY_ONE_ADDRESS,
        namespace=None,
        algo_time_limit=None,
    )
    assert (DEFAULT_PORT, DEFAULT_METRICS_PORT) == (8050, 9050)


def test_the_metrics_port_is_a_port_and_not_the_apis() -> None:
    base = {"API_AUTH": "off", "OPERATOR_ADDRESS": KEY_ONE_ADDRESS}
    settings = load_api_settings({**base, "API_PORT": "9050", "API_METRICS_PORT": "8050"})
    assert (settings.port, settings.metrics_port) == (9050, 8050)
    with pytest.raises(SettingsError) as same:
        load_api_settings({**base, "API_PORT": "8100", "API_METRICS_PORT": "8100"})
    assert same.value.problems == ("API_METRICS_PORT: must differ from API_PORT (both are 8100)",)
    with pytest.raises(SettingsError) as default_clash:
        load_api_settings({**base, "API_PORT": "9050"})
    assert default_clash.value.problems == ("API_METRICS_PORT: must differ from API_PORT (both are 9050)",)
    for bad in ("0", "65536", "nine", "-1"):
        with pytest.raises(SettingsError) as invalid:
            load_api_settings({**base, "API_METRICS_PORT": bad})
        assert invalid.value.problems == (
            f"API_METRICS_PORT: expected a port number 1..65535, got {bad!r}",
        ), bad
    # An invalid port is reported as invalid, not also as a clash with the other's default.
    with pytest.raises(SettingsError) as one:
        load_api_settings({**base, "API_PORT": "x", "API_METRICS_PORT": "8050"})
    assert one.value.problems == ("API_PORT: expected a port number 1..65535, got 'x'",)


def test_no_allowlist_refuses_to_start_unless_auth_is_switched_off_explicitly() -> None:
    with pytest.raises(SettingsError, match="API_ALLOWED_PROVIDERS: required"):
        load_api_settings({"OPERATOR_ADDRESS": KEY_ONE_ADDRESS})
    # The operator's ALLOWED_PROVIDERS (provider base URLs) is not the API's allowlist.
    with pytest.raises(SettingsError, match="API_ALLOWED_PROVIDERS: required"):
        load_api_settings({"OPERATOR_ADDRESS": KEY_ONE_ADDRESS, "ALLOWED_PROVIDERS": PROVIDER})
    off = load_api_settings({"OPERATOR_ADDRESS": KEY_ONE_ADDRESS, "API_AUTH": "off"})
    assert off.auth is False
    assert off.allowed_providers == frozenset()
    with pytest.raises(SettingsError, match="API_AUTH: off, but API_ALLOWED_PROVIDERS names providers"):
        load_api_settings(
            {"OPERATOR_ADDRESS": KEY_ONE_ADDRESS, "API_AUTH": "off", "API_ALLOWED_PROVIDERS": PROVIDER}
        )


def test_the_operator_address_given_or_derived_from_the_key() -> None:
    base = {"API_AUTH": "off"}
    assert load_api_settings({**base, "OPERATOR_PRIVATE_KEY": KEY_ONE}).operator_address == KEY_ONE_ADDRESS
    both = {**base, "OPERATOR_PRIVATE_KEY": KEY_ONE, "OPERATOR_ADDRESS": PROVIDER}
    with pytest.raises(SettingsError, match="is not OPERATOR_PRIVATE_KEY's address"):
        load_api_settings(both)
    with pytest.raises(SettingsError, match="OPERATOR_ADDRESS: required") as missing:
        load_api_settings(base)
    with pytest.raises(SettingsError) as bad_key:
        load_api_settings({**base, "OPERATOR_PRIVATE_KEY": "ff" * 32})
    assert "ff" * 8 not in str(bad_key.value)  # the value is never echoed
    assert len(missing.value.problems) == 1


def test_every_invalid_variable_is_named_once() -> None:
    with pytest.raises(SettingsError) as error:
        load_api_settings(
            {
                "API_PORT": "0",
                "API_METRICS_PORT": "1e3",
                "API_NAMESPACE": "*",
                "API_ALLOWED_PROVIDERS": "0x12",
            }
        )
    assert [p.split(":")[0] for p in error.value.problems] == [
        "API_ALLOWED_PROVIDERS",
        "API_PORT",
        "API_METRICS_PORT",
        "OPERATOR_ADDRESS",
        "API_NAMESPACE",
    ]


@pytest.fixture
async def scraped() -> AsyncIterator[TestClient[Any, Any]]:
    """The metrics port's Application."""
    async with TestClient(TestServer(build_metrics_app(), host="127.0.0.1")) as client:
        yield client


async def scrape(client: TestClient[Any, Any]) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return await response.text()


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient[Any, Any], FakeKube, ClusterStore]]:
    kube = FakeKube()
    kube.put("computeenvironments", environment("small"))
    store = ClusterStore(kube, NS)
    settings = load_api_settings({"API_ALLOWED_PROVIDERS": PROVIDER, "OPERATOR_ADDRESS": KEY_ONE_ADDRESS})
    app = build_service(
        settings, store, ConfigMapNonceStore(kube, NS), lambda: store.synced, clock=lambda: NOW
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, kube, store


async def test_readiness_waits_for_the_watch_caches(
    served: tuple[TestClient[Any, Any], FakeKube, ClusterStore],
) -> None:
    client, _, store = served
    before = await client.get("/readyz")
    assert before.status == 503
    assert await before.json() == {"ready": False}
    task = asyncio.create_task(store.run())
    await asyncio.wait_for(store.workflows.synced.wait(), 2)
    await asyncio.wait_for(store.environments.synced.wait(), 2)
    after = await client.get("/readyz")
    assert after.status == 200
    assert (await client.get("/healthz")).status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_bare_get_environments_answers_the_list_and_is_counted(
    served: tuple[TestClient[Any, Any], FakeKube, ClusterStore], scraped: TestClient[Any, Any]
) -> None:
    client, _, store = served
    task = asyncio.create_task(store.run())
    await asyncio.wait_for(store.environments.synced.wait(), 2)
    labels = {"route": f"{PREFIX}/environments", "code": "200"}
    before = metrics.REGISTRY.get_sample_value("ocean_c2d_api_requests_total", labels) or 0
    response = await client.get(f"{PREFIX}/environments")
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    body = await response.json(content_type=None)
    assert [(e["id"], e["consumerAddress"], e["lastSeen"]) for e in body] == [
        ("small", KEY_ONE_ADDRESS, "1796126400.123456")
    ]
    await client.get("/no/such/path")
    # /metrics is the metrics port's alone: on the API's port it is a path like any unknown one.
    unmatched = {"route": "unmatched", "code": "404"}
    unmatched_before = metrics.REGISTRY.get_sample_value("ocean_c2d_api_requests_total", unmatched) or 0
    assert (await client.get("/metrics")).status == 404
    text = await scrape(scraped)
    assert metrics.REGISTRY.get_sample_value("ocean_c2d_api_requests_total", labels) == before + 1
    assert (
        metrics.REGISTRY.get_sample_value("ocean_c2d_api_requests_total", unmatched) == unmatched_before + 1
    )
    assert 'ocean_c2d_api_requests_total{code="200",route="/api/v1/operator/environments"}' in text
    assert 'ocean_c2d_api_requests_total{code="404",route="unmatched"}' in text
    assert 'ocean_c2d_api_request_duration_seconds_count{route="/api/v1/operator/environments"}' in text
    assert 'route="/metrics"' not in text  # scrapes are not API requests
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def provider_signature(message: str) -> str:
    signature = PROVIDER_KEY.sign_msg_hash(personal_message_hash(keccak(message.encode())))
    return "0x" + signature.to_bytes().hex()


async def test_a_signed_status_request_spends_its_nonce_in_the_cluster(
    served: tuple[TestClient[Any, Any], FakeKube, ClusterStore], scraped: TestClient[Any, Any]
) -> None:
    client, kube, store = served
    kube.put("workflows", workflow("job1", owner=OWNER))
    task = asyncio.create_task(store.run())
    await asyncio.wait_for(store.workflows.synced.wait(), 2)
    nonce = "1733000000000000001"
    query = {"owner": OWNER, "nonce": nonce, "providerSignature": provider_signature(OWNER + nonce)}
    first = await client.get(f"{PREFIX}/compute", params=query)
    assert first.status == 200
    assert [job["jobId"] for job in await first.json(content_type=None)] == ["job1"]
    assert kube.objects[("configmaps", NS, configmap_name(PROVIDER))]["data"] == {"recent": nonce}
    replay = await client.get(f"{PREFIX}/compute", params=query)
    assert replay.status == 401
    assert "a replay" in (await replay.json(content_type=None))["error"]
    text = await scrape(scraped)
    assert 'ocean_c2d_api_authentications_total{call="GET /compute",outcome="replay"}' in text
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_kube_requests_counted_are_on_the_metrics_port(scraped: TestClient[Any, Any]) -> None:
    """The name and labels e2e/test_api.py and test_api_load.py read (the counting itself: Kr8sKube's
    test in test_cluster_store.py)."""
    labels = {"verb": "WATCH", "resource": "workflows"}
    before = metrics.REGISTRY.get_sample_value("ocean_c2d_api_kube_requests_total", labels) or 0
    count_kube_request("WATCH", "workflows")
    text = await scrape(scraped)
    assert f'ocean_c2d_api_kube_requests_total{{resource="workflows",verb="WATCH"}} {before + 1}' in text
