"""Job notifications (NOTIFY_START_URL / NOTIFY_STOP_URL), as the original operator-engine sent them.

The body is `signing.notification_payload`'s `{algoDID, jobId, secret, DID, signature}`, POSTed as JSON.
Unlike the original (requests, no timeout, no retry, whole payload logged at INFO), every attempt here
has a timeout, transient failures are retried with backoff, and logs name only the redacted URL and the
job id: never the secret, the signature or the payload.

Retry and delay rules (resilience.py's, with a 0.5 s base):

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
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ocean_c2d.identity import user_agent
from ocean_c2d.resilience import (
    describe_error,
    is_transient_status,
    redact_url,
    retry_after_seconds,
    retry_delay,
)

logger = logging.getLogger("ocean_c2d.notify")


@dataclass(frozen=True)
class Delivery:
    """The outcome of one notification: never carries the secret or the signature."""

    delivered: bool
    attempts: int
    message: str


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
                    server_delay = retry_after_seconds(status, response.headers)
        except TimeoutError:
            outcome = f"no answer within {timeout_seconds:g} s"
        except httpx.UnsupportedProtocol as error:
            outcome = describe_error(error, sensitive, patterns=False)
            retryable = False
        except httpx.InvalidURL:
            outcome = "invalid URL"
            retryable = False
        except httpx.HTTPError as error:
            outcome = describe_error(error, sensitive, patterns=False)
        else:
            outcome = f"HTTP {status}"
            if 200 <= status < 300:
                logger.debug("notify %s job %s: attempt %d: %s", safe_url, job_id, attempt, outcome)
                message = f"{outcome} after {_plural(attempt)}"
                logger.info("notify %s job %s: delivered, %s", safe_url, job_id, message)
                return Delivery(delivered=True, attempts=attempt, message=message)
            retryable = is_transient_status(status)

        logger.debug("notify %s job %s: attempt %d: %s", safe_url, job_id, attempt, outcome)
        if not retryable:
            message = f"not retried: {outcome} after {_plural(attempt)}"
            break
        if attempt == max_attempts:
            message = f"gave up after {_plural(attempt)}: {outcome}"
            break
        delay = retry_delay(attempt, backoff_seconds, server_delay)
        logger.debug("notify %s job %s: retrying in %.2f s", safe_url, job_id, delay)
        await sleep(delay)

    logger.warning("notify %s job %s: not delivered, %s", safe_url, job_id, message)
    return Delivery(delivered=False, attempts=attempt, message=message)
