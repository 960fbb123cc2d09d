"""How a stage step reports back to the operator: its exit code, and a JSON termination message.

The operator reads both from the step's pod (reconcile.py); this module is the one definition of them.
A termination message is at most 4096 bytes (the kubelet cuts the file there), so anything larger is
stored elsewhere and the message points at it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EXIT_OK = 0
# The isolation check (an init container of algorithm and filter pods) saw egress still open at its deadline.
EXIT_NOT_ISOLATED = 23
# The init container that runs it; the operator reads its outcome by this name.
ISOLATION_CHECK_CONTAINER = "isolation-check"
EXIT_DATA_PROVISIONING_FAILED = 31
EXIT_ALGORITHM_PROVISIONING_FAILED = 32
EXIT_RESULTS_BLOCKED = 51
EXIT_RESULTS_UPLOAD_FAILED = 62

TERMINATION_LOG = Path("/dev/termination-log")
TERMINATION_MESSAGE_LIMIT = 4096


def split_host_port(address: str) -> tuple[str, int]:
    """`host:port` (an IPv6 host in brackets) as (host without brackets, port); ValueError otherwise."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in address):
        raise ValueError(f"expected host:port, got {address!r}")
    return host.strip("[]"), int(port)


class StepError(Exception):
    """A classified failure of a step: its exit code and a message safe to show the consumer."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


def encode_message(document: dict[str, Any]) -> str | None:
    """The document as compact JSON, or None when it does not fit a termination message."""
    text = json.dumps(document, separators=(",", ":"), sort_keys=True)
    return text if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT else None


def write_termination_message(document: dict[str, Any], path: Path = TERMINATION_LOG) -> None:
    """Write `document` as the pod's termination message; the caller must make sure it fits."""
    text = encode_message(document)
    if text is None:
        raise ValueError("a termination message is at most 4096 bytes; store the document and point at it")
    path.write_text(text)


def load_workflow(path: Path) -> dict[str, Any]:
    """The workflow document the operator mounts for the steps (the ConfigMap's workflow.json)."""
    document: dict[str, Any] = json.loads(path.read_text())
    return document
