"""The local API server's audit log (e2e/cluster/audit-policy.yaml): one JSON line per request, at
Metadata level. Tests and benchmarks read only what was logged after their own `mark()`, so a long CI run's
log is never read from the start.

Who made a request is told by its user (a ServiceAccount, or the kubeconfig's admin) and its user agent
(kube-controller-manager, kube-scheduler, kwok, kopf, kr8s, ...).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

CLUSTER_SCRIPT = Path(__file__).resolve().parent / "cluster" / "cluster.sh"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclasses.dataclass(frozen=True)
class Request:
    """One logged request (its ResponseComplete line)."""

    verb: str
    resource: str  # e.g. "jobs", "workflows/status", "leases"
    namespace: str
    name: str
    user: str
    user_agent: str
    code: int
    received: str  # RFC 3339 with microseconds (the API server's clock)
    source_ips: tuple[str, ...]

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS

    @property
    def client(self) -> str:
        """The program behind the request: the user agent's first word without its version
        ("kube-controller-manager", "kwok", "kr8s", "kopf", "python-httpx", ...)."""
        return self.user_agent.split("/", 1)[0].split(" ", 1)[0] or "unknown"

    @classmethod
    def from_line(cls, event: dict[str, Any]) -> Request:
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "")
        if ref.get("subresource"):
            resource = f"{resource}/{ref['subresource']}"
        return cls(
            verb=event.get("verb", ""),
            resource=resource,
            namespace=ref.get("namespace", ""),
            name=ref.get("name", ""),
            user=(event.get("user") or {}).get("username", ""),
            user_agent=event.get("userAgent", ""),
            code=int((event.get("responseStatus") or {}).get("code", 0)),
            received=event.get("requestReceivedTimestamp", ""),
            source_ips=tuple(event.get("sourceIPs") or ()),
        )


def log_path() -> Path:
    """The audit log of the cluster KUBECONFIG names: OCEAN_C2D_AUDIT_LOG, else the local cluster's."""
    configured = os.environ.get("OCEAN_C2D_AUDIT_LOG")
    if configured:
        return Path(configured)
    out = subprocess.run([str(CLUSTER_SCRIPT), "audit-log"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


class Mark(NamedTuple):
    """A place in the audit log: the file (by inode, which a rotation keeps) and an offset in it."""

    inode: int
    offset: int


class AuditLog:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or log_path()

    def available(self) -> bool:
        return self.path.exists()

    def mark(self) -> Mark:
        """Where the log ends now: `since(mark)` reads only what is logged after this call."""
        if not self.path.exists():
            return Mark(0, 0)
        stat = self.path.stat()
        return Mark(stat.st_ino, stat.st_size)

    def since(self, mark: Mark, where: Callable[[Request], bool] | None = None) -> Iterator[Request]:
        """The requests logged after `mark`, across the API server's rotations (--audit-log-maxsize: a
        full log is renamed audit-<time>.log and a new one started): the rotated file that holds the
        mark's inode from its offset, every later rotated file, then the current log."""
        inode, offset = mark
        if self.path.exists() and self.path.stat().st_ino != inode:
            rotated = sorted(
                self.path.parent.glob(f"{self.path.stem}-*{self.path.suffix}"), key=os.path.getmtime
            )
            start = next((i for i, file in enumerate(rotated) if file.stat().st_ino == inode), None)
            for index, older in enumerate(rotated[start:] if start is not None else rotated):
                yield from self._read(older, offset if index == 0 and start is not None else 0, where)
            offset = 0
        yield from self._read(self.path, offset, where)

    @staticmethod
    def _read(path: Path, offset: int, where: Callable[[Request], bool] | None) -> Iterator[Request]:
        """One file's requests from `offset` (a partial last line, still being written, is skipped)."""
        with path.open("rb") as log:
            log.seek(offset)
            for raw in log:
                if not raw.endswith(b"\n"):
                    break
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if event.get("stage") != "ResponseComplete":
                    continue
                request = Request.from_line(event)
                if where is None or where(request):
                    yield request


def in_namespace(namespace: str) -> Callable[[Request], bool]:
    return lambda request: request.namespace == namespace


def count_by(requests: Iterable[Request], key: Callable[[Request], Any]) -> Counter[Any]:
    return Counter(key(request) for request in requests)
