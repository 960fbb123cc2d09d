"""Job notifications (NOTIFY_START_URL / NOTIFY_STOP_URL), as the original operator-engine sent them.

The body is `signing.notification_payload`'s `{algoDID, jobId, secret, DID, signature}`, POSTed as JSON.
Unlike the original (requests, no timeout, no retry, whole payload logged at INFO), every attempt here
has a timeout, transient failures are retried with backoff, and logs name only the redacted URL and the
job id: never the secret, the signature or the payload.

Retry and delay rules:

- Delivered: any 2xx. Retried: transport errors (connect errors, timeouts...), HTTP 5xx, 408 and 429.
  Any other status (other 4xx, 1xx/3xx: redirects are the client's business) gives up at once.
- The delay before retry n (n = 1 for the first retry) is
  `min(backoff_seconds * 2 ** (n - 1), 30) * uniform(0.8, 1.2)`, then capped at 30 s: so it stays
  within +-20 % of the doubled delay, and never exceeds 30 s.
- On 429 and 503, a numeric `Retry-After` (delay-seconds: ASCII digits only) replaces that delay, capped
  at 30 s and *without* jitter: the server asked for at least that long, so it is honoured as given.
  An HTTP-date or malformed `Retry-After` is ignored (the computed backoff applies).
- Each attempt is bounded by `timeout_seconds` as a whole (httpx's per-operation timeouts, plus an
  overall deadline so a receiver that dribbles its answer cannot hold the attempt longer).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx

PACKAGE = "ocean-c2d"
MAX_DELAY_SECONDS = 30.0
JITTER = 0.2
RETRY_STATUSES = frozenset({408, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})

logger = logging.getLogger("ocean_c2d.notify")

_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Delivery:
    """The outcome of one notification: never carries the secret or the signature."""

    delivered: bool
    attempts: int
    message: str


@functools.cache
def user_agent() -> str:
    """`ocean-c2d/<installed version>`, or `ocean-c2d/unknown` when the package is not installed."""
    try:
        package_version = version(PACKAGE)
    except PackageNotFoundError:
        package_version = "unknown"
    return f"{PACKAGE}/{package_version}"


def redact_url(url: str) -> str:
    """scheme://host[:port]/path only: drops userinfo, query string and fragment (they may carry tokens)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if not parts.scheme and not netloc:
        # Not an absolute URL: keep the path only, still without query or fragment.
        return parts.path
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def backoff_delay(retry: int, backoff_seconds: float) -> float:
    """The jittered delay before retry `retry` (1-based); see the module docstring."""
    base = min(backoff_seconds * 2.0 ** (retry - 1), MAX_DELAY_SECONDS)
    return min(base * random.uniform(1 - JITTER, 1 + JITTER), MAX_DELAY_SECONDS)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """A numeric Retry-After on 429/503, capped at 30 s; None when absent, an HTTP-date or malformed."""
    if response.status_code not in RETRY_AFTER_STATUSES:
        return None
    value = response.headers.get("Retry-After", "").strip()
    if not _DIGITS.fullmatch(value):
        return None
    return min(float(int(value)), MAX_DELAY_SECONDS)


def _describe_error(error: Exception, sensitive: list[str]) -> str:
    """The exception's type and text, with anything sensitive (raw URL, secret, signature) removed."""
    text = str(error)
    for value in sensitive:
        if value:
            text = text.replace(value, "<redacted>")
    text = " ".join(text.split())[:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _plural(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


async def send_notification(
    client: httpx.AsyncClient,
    url: str,
    payload: dict[str, Any],
    *,
    max_attempts: int = 5,
    timeout_seconds: float = 10.0,
    backoff_seconds: float = 0.5,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Delivery:
    """POST `payload` as JSON to `url`, retrying transient failures; never raises for network/HTTP
    problems (the outcome is in the returned Delivery), but lets cancellation propagate."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    safe_url = redact_url(url)
    job_id = payload.get("jobId")
    sensitive = [url, str(payload.get("secret") or ""), str(payload.get("signature") or "")]
    headers = {"User-Agent": user_agent()}

    outcome = message = ""
    attempt = 0
    for attempt in range(1, max_attempts + 1):
        server_delay: float | None = None
        retryable = True
        try:
            async with asyncio.timeout(timeout_seconds):
                # Stream: only the status and headers matter, the body is never read.
                async with client.stream(
                    "POST", url, json=payload, headers=headers, timeout=timeout_seconds
                ) as response:
                    status = response.status_code
                    server_delay = retry_after_seconds(response)
        except TimeoutError:
            outcome = f"no answer within {timeout_seconds:g} s"
        except httpx.UnsupportedProtocol as error:
            outcome = _describe_error(error, sensitive)
            retryable = False
        except httpx.InvalidURL:
            outcome = "invalid URL"
            retryable = False
        except httpx.HTTPError as error:
            outcome = _describe_error(error, sensitive)
        else:
            outcome = f"HTTP {status}"
            if 200 <= status < 300:
                logger.debug("notify %s job %s: attempt %d: %s", safe_url, job_id, attempt, outcome)
                message = f"{outcome} after {_plural(attempt)}"
                logger.info("notify %s job %s: delivered, %s", safe_url, job_id, message)
                return Delivery(delivered=True, attempts=attempt, message=message)
            retryable = status >= 500 or status in RETRY_STATUSES

        logger.debug("notify %s job %s: attempt %d: %s", safe_url, job_id, attempt, outcome)
        if not retryable:
            message = f"not retried: {outcome} after {_plural(attempt)}"
            break
        if attempt == max_attempts:
            message = f"gave up after {_plural(attempt)}: {outcome}"
            break
        delay = server_delay if server_delay is not None else backoff_delay(attempt, backoff_seconds)
        logger.debug("notify %s job %s: retrying in %.2f s", safe_url, job_id, delay)
        await sleep(delay)

    logger.warning("notify %s job %s: not delivered, %s", safe_url, job_id, message)
    return Delivery(delivered=False, attempts=attempt, message=message)
