"""The API's Prometheus metrics, served on the API's own /metrics.

A registry of its own (not ocean_c2d.metrics'): the API is another process, and the operator's metrics
(reconciles, stages) would read zero here. The route label is the route's path pattern, or "unmatched":
never the raw path, which a client chooses (unbounded label values would grow the registry for ever).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from ocean_c2d.api.auth import Call, Outcome, Refused

REGISTRY = CollectorRegistry()

REQUESTS = Counter(
    "ocean_c2d_api_requests",
    "API requests answered, by route (its path pattern) and HTTP status code",
    ["route", "code"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "ocean_c2d_api_request_duration_seconds",
    "Time to answer an API request (to its first byte for a streamed download), by route",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
AUTHENTICATIONS = Counter(
    "ocean_c2d_api_authentications",
    "Signed requests checked, by call and outcome (accepted, malformed, not-allowed, replay)",
    ["call", "outcome"],
    registry=REGISTRY,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = route_of(request)
    started = time.perf_counter()
    code = 500
    try:
        response = await handler(request)
        code = response.status
        return response
    except web.HTTPException as answer:
        code = answer.status
        raise
    finally:
        REQUESTS.labels(route, str(code)).inc()
        LATENCY.labels(route).observe(time.perf_counter() - started)


def observe_authentication(call: Call, outcome: Outcome) -> None:
    label = outcome.reason.value if isinstance(outcome, Refused) else "accepted"
    AUTHENTICATIONS.labels(call.value, label).inc()


async def serve_metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest(REGISTRY))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
