"""Time as the API server and the status fields write it (pure): RFC 3339 in UTC with a Z."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """Second precision, what the API server stores for date-time fields: 2026-01-01T12:00:00Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_precise_time(moment: datetime) -> str:
    """Microsecond precision, for log lines: 2026-01-01T12:00:00.123456Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_stamp() -> str:
    """The current time as `format_time` writes it."""
    return format_time(utc_now())


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 time as Kubernetes writes it (a Z or an offset); None for an absent or empty one."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def format_duration(seconds: float) -> str:
    """A short human duration for the Duration column: 45s, 3m12s, 2h5m."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
