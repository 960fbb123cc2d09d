"""The operator notices a lost Kubernetes API and says when it is back (k8s.ApiHealth): from its own
requests' failures (its informers' LISTs and WATCHes among them), and from kopf's retry log lines (kopf
retries its watches by itself but says nothing when they are back); a probe of /version finds the way
back even when nothing is due."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ocean_c2d import handlers, k8s
from ocean_c2d.controller import Controller
from ocean_c2d.informer import WatchFailed
from ocean_c2d.k8s import ApiHealth, Cluster, observe_kopf
from ocean_c2d.metrics import API_ERRORS, API_RECONNECTS, API_UP
from ocean_c2d.render import Templates
from ocean_c2d.settings import load_settings
from unit_tests.factories import settings_environ


class FlakyApi:
    """A kr8s Api stand-in: its first `failures` requests (and /version probes) fail to connect."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.timeout: float | None = None
        self.probes = 0

    def _fail(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise httpx.ConnectError("All connection attempts failed")

    async def version(self) -> dict[str, str]:
        self.probes += 1
        self._fail()
        return {"gitVersion": "v1.35.4"}

    @contextlib.asynccontextmanager
    async def call_api(self, verb: str, **_: Any) -> AsyncIterator[httpx.Response]:
        self._fail()
        yield httpx.Response(200, json={"kind": "Pod"})


def value(metric: Any, *labels: str) -> float:
    sample = metric.labels(*labels) if labels else metric
    return float(sample._value.get())


async def test_a_lost_api_is_logged_once_and_its_return_counted(caplog: pytest.LogCaptureFixture) -> None:
    health = ApiHealth(None)  # no probe: the next answered request tells
    errors, reconnects = value(API_ERRORS, "operator"), value(API_RECONNECTS)
    with caplog.at_level(logging.INFO, "ocean_c2d"):
        health.failed("operator", "GET jobs: ConnectError")
        health.failed("operator", "GET jobs: ConnectError")
        assert value(API_UP) == 0
        health.answered()
        health.answered()
    messages = [r.getMessage() for r in caplog.records if r.name == "ocean_c2d"]
    assert [m.split(" (")[0].split(" after")[0] for m in messages] == [
        "Lost the Kubernetes API",
        "Reconnected to the Kubernetes API",
    ]
    assert "2 failed requests" in messages[1]
    assert value(API_ERRORS, "operator") == errors + 2
    assert value(API_RECONNECTS) == reconnects + 1
    assert value(API_UP) == 1


async def test_kopfs_failed_attempts_count_and_the_probe_finds_the_api_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(k8s, "PROBE_FIRST_SECONDS", 0.01)
    api = FlakyApi(failures=2)
    health = ApiHealth(api)  # type: ignore[arg-type]
    observe_kopf(health)
    observe_kopf(health)  # installed twice: still one handler
    kopf_errors = value(API_ERRORS, "kopf")
    logging.getLogger("kopf._cogs.clients.api").error(
        "Request attempt #1 failed; will retry: GET /apis/batch/v1/jobs -> ClientConnectorError()"
    )
    assert value(API_ERRORS, "kopf") == kopf_errors + 1
    assert health.down_since is not None
    reconnects = value(API_RECONNECTS)
    probe = health._probe
    assert probe is not None
    async with asyncio.timeout(10):
        await probe  # it ends once the API answered
    assert health.down_since is None
    assert api.probes == 3  # two refused, the third answered
    assert value(API_RECONNECTS) == reconnects + 1


async def test_the_clusters_requests_feed_the_health_and_have_a_timeout() -> None:
    api = FlakyApi(failures=1)
    cluster = Cluster(api)  # type: ignore[arg-type]
    cluster.health.api = None  # no probe: the second request is the way back
    assert api.timeout == k8s.REQUEST_TIMEOUT_SECONDS
    with pytest.raises(httpx.ConnectError):
        await cluster.get("Pod", "c2d", "job1-configure")
    assert cluster.health.down_since is not None
    assert await cluster.get("Pod", "c2d", "job1-configure") == {"kind": "Pod"}
    assert cluster.health.down_since is None


async def test_the_operators_informers_feed_the_clusters_health() -> None:
    api = FlakyApi(failures=1)
    cluster = Cluster(api)  # type: ignore[arg-type]
    cluster.health.api = None  # no probe: the next LIST is the way back
    async with httpx.AsyncClient() as http:
        controller = Controller(load_settings(settings_environ()), Templates(), cluster, http)
        workflows, records = handlers.informers(api, "c2d", controller)  # type: ignore[arg-type]
        errors = value(API_ERRORS, "informer")
        with pytest.raises(WatchFailed):
            await workflows.list()
        assert cluster.health.down_since is not None
        assert value(API_ERRORS, "informer") == errors + 1
        await records.list()
        assert cluster.health.down_since is None
