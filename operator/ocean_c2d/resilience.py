"""How the operator and its steps retry HTTP and keep secrets out of messages, in one place (pure).

Retries (notify.py, steps/streaming.py, steps/publish.py, the S3 / IPFS destinations):

- Transient: HTTP 5xx, 408 and 429 (`is_transient_status`); any other status is final.
- The delay before retry n (n = 1 for the first) is `min(base * 2 ** (n - 1), cap) * uniform(1 - jitter,
  1 + jitter)`, capped again (`backoff_delay`): within +-jitter of the doubled delay, never above `cap`.
  The defaults are 30 s and +-20 %; the publish step backs off without jitter under its own cap.
- On 429 and 503 a numeric Retry-After (delay-seconds: ASCII digits only) is the server's wish
  (`retry_after_seconds`); `retry_delay` honours it instead of the backoff, capped and *without* jitter.
  An HTTP-date or malformed Retry-After is ignored (the backoff applies).

Redaction: URLs may carry credentials (userinfo), tokens and signatures (query strings, fragments), so
messages and log lines name a URL by `redact_url` / `safe_url`, and put library error text through
`scrub` or `redact` first. Each of those keeps the rules its callers have always had.
"""

from __future__ import annotations

import random
import re
import urllib.parse
from collections.abc import Iterable, Mapping

MAX_DELAY_SECONDS = 30.0
JITTER = 0.2
RETRY_STATUSES = frozenset({408, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})
DETAIL_LIMIT = 200
REDACTED = "<redacted>"
UNPARSEABLE_URL = "<unparseable URL>"

_DIGITS = re.compile(r"[0-9]+")
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")
_QUERY_IN_URL = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#'\"<>]*)[?#][^\s'\"<>]*")
_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")
_QUERY = re.compile(r"\?[^\s\"'<>]*")


# --- retries ---------------------------------------------------------------------------------------


def is_transient_status(status: int) -> bool:
    """Whether an HTTP answer with this status may succeed when tried again: 5xx, 408 or 429."""
    return status >= 500 or status in RETRY_STATUSES


def backoff_delay(
    retry: int, base_seconds: float, *, cap: float = MAX_DELAY_SECONDS, jitter: float = JITTER
) -> float:
    """The delay before retry `retry` (1-based): `base_seconds` doubled per retry, at most `cap`, then
    spread by +-`jitter` (so clients that failed together do not retry together) and capped again."""
    delay = min(base_seconds * 2.0 ** (retry - 1), cap)
    if jitter:
        delay = min(delay * random.uniform(1 - jitter, 1 + jitter), cap)
    return float(delay)


def retry_after_seconds(status_code: int, headers: Mapping[str, str]) -> float | None:
    """A numeric Retry-After of a 429 or 503 answer, as given (`retry_delay` caps it); None when absent,
    an HTTP-date or malformed. `headers` should look names up case-insensitively (httpx.Headers does)."""
    if status_code not in RETRY_AFTER_STATUSES:
        return None
    value = headers.get("Retry-After", "").strip()
    return float(int(value)) if _DIGITS.fullmatch(value) else None


def retry_delay(
    retry: int,
    base_seconds: float,
    retry_after: float | None = None,
    *,
    cap: float = MAX_DELAY_SECONDS,
    jitter: float = JITTER,
) -> float:
    """The pause before retry `retry`: the server's Retry-After when it gave one (capped, not jittered:
    it asked for at least that long), else `backoff_delay`."""
    if retry_after is not None:
        return min(retry_after, cap)
    return backoff_delay(retry, base_seconds, cap=cap, jitter=jitter)


# --- redaction -------------------------------------------------------------------------------------


def redact_url(url: str, *, verbatim_host: bool = False) -> str:
    """scheme://host[:port]/path only: drops userinfo, query string and fragment (they may carry tokens);
    `UNPARSEABLE_URL` when it does not parse.

    The host is normalised (lower case, a port that must be a number, IPv6 in brackets) unless
    `verbatim_host` keeps it as written (`safe_url`)."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2] if verbatim_host else _normalised_netloc(parts)
    except ValueError:
        return UNPARSEABLE_URL
    if not parts.scheme and not netloc:
        # Not an absolute URL: keep the path only, still without query or fragment.
        return parts.path
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _normalised_netloc(parts: urllib.parse.SplitResult) -> str:
    """host[:port] of a split URL, without userinfo; ValueError for a port that is not a number."""
    host = parts.hostname or ""
    port = parts.port
    if ":" in host:
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def safe_url(url: str) -> str:
    """`redact_url` with the host as written: an IPFS CID in the host is case-sensitive."""
    return redact_url(url, verbatim_host=True)


def scrub(text: str, secrets: Iterable[str] = (), *, patterns: bool = True) -> str:
    """`text` on one line, with each of `secrets` (non-empty) replaced by `REDACTED`; with `patterns`
    (the default), also without the query strings and fragments of URLs, and with anything that looks
    like a signature (0x and 130 hex digits) replaced by <signature>."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    if patterns:
        text = _QUERY_IN_URL.sub(r"\1", text)
        text = _SIGNATURE.sub("<signature>", text)
    return " ".join(text.split())


def describe_error(error: BaseException, secrets: Iterable[str] = (), *, patterns: bool = True) -> str:
    """`Type: text` of an exception for a message or a log line, its text `scrub`bed and cut short."""
    text = scrub(str(error), secrets, patterns=patterns)[:DETAIL_LIMIT]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def redact(text: str) -> str:
    """`text` without what can carry a secret in a URL: user:password@ and query strings (signatures).
    For a storage library's error text, which may quote a URL anywhere in it."""
    return _QUERY.sub("", _USERINFO.sub("", text))
