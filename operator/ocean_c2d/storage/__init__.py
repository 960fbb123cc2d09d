"""Where the publish step puts results: small destination classes behind one protocol.

A destination uploads one local file under a name (its path relative to the job's volume, e.g.
"outputs/plots/a.png", or "results.json" for an overflow manifest) and returns the URL a consumer
fetches it from. It raises `UploadError` with a message that is safe to show anyone (no credentials,
no signed URLs) and says whether trying again may help; the caller owns retries.

- `storage.s3.S3Destination`: an S3 bucket (AWS, or any S3 API such as versitygw).
- `storage.ipfs.IpfsDestination`: a kubo node (IPFS_TYPE=CLIENT) or an ipfs-cluster API (CLUSTER).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ocean_c2d.resilience import DETAIL_LIMIT, redact


class UploadError(Exception):
    """An upload failed. `str(error)` is safe to log and to show the consumer; `transient` says
    whether the same upload may succeed if tried again (a timeout, a 5xx) or not (access denied)."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient


class Destination(Protocol):
    """One upload destination for a job's results."""

    @property
    def description(self) -> str:
        """Where uploads go, for messages: never credentials (e.g. "s3://bucket at http://host:7070")."""
        ...

    @property
    def expires_at(self) -> int | None:
        """The Unix time this job's uploads expire at, when the destination expires them; else None."""
        ...

    async def upload(self, path: Path, name: str) -> str:
        """Upload the file at `path` as `name` (relative to the job's volume); return its URL."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def describe_failure(error: BaseException) -> str:
    """`Type: text` of a storage library's error for an UploadError, its text `redact`ed and cut short."""
    return f"{type(error).__name__}: {redact(str(error))[:DETAIL_LIMIT]}"
