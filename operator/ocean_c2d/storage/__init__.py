"""Where the publish step puts results: small destination classes behind one protocol.

A destination uploads one local file under a name (its path relative to the job's volume, e.g.
"outputs/plots/a.png", or "results.json" for an overflow manifest) and returns the URL a consumer
fetches it from. It raises `UploadError` with a message that is safe to show anyone (no credentials,
no signed URLs) and says whether trying again may help; the caller owns retries.

- `storage.s3.S3Destination`: an S3 bucket (AWS, or any S3 API such as versitygw).
- `storage.ipfs.IpfsDestination`: a kubo node (IPFS_TYPE=CLIENT) or an ipfs-cluster API (CLUSTER).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol


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


_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")
_QUERY = re.compile(r"\?[^\s\"'<>]*")


def redact(text: str) -> str:
    """`text` without what can carry a secret in a URL: user:password@ and query strings (signatures)."""
    return _QUERY.sub("", _USERINFO.sub("", text))
