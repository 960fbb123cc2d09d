"""How a stage step reports back to the operator: its exit code, and a JSON termination message.

The operator reads both from the step's pod (reconcile.py, through the readers at the end of this module);
this module is the one definition of them, for the step that writes and the operator that reads.
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


# ---- reading them back (the operator's side) ------------------------------------------------------------


def read_step_message(text: str | None) -> str | None:
    """What a step said about its failure: the `message` of its JSON termination message, or the text."""
    if not text or not text.strip():
        return None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return text.strip()
    message = document.get("message") if isinstance(document, dict) else None
    return str(message) if message else None


def read_results(text: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """The publish step's termination message: ({"results": [...]} entries, {"manifest": "<url>"})."""
    if not text:
        return [], None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return [], None
    if not isinstance(document, dict):
        return [], None
    results = [r for r in document.get("results", []) if isinstance(r, dict)]
    manifest = document.get("manifest")
    return results, manifest if isinstance(manifest, str) else None


def read_filter_reasons(text: str | None) -> list[str]:
    """The filter step's termination message: {"verdict": "Block", "reasons": [...]}."""
    if not text:
        return []
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return [text.strip()[:500]]
    reasons = document.get("reasons", []) if isinstance(document, dict) else []
    return [str(r) for r in reasons]


def read_filter_manifest(text: str | None) -> str | None:
    """The built-in filter's manifest hash ({"manifestSha256": "<64 hex>"}), else None."""
    try:
        document = json.loads(text or "")
    except json.JSONDecodeError:
        return None
    value = document.get("manifestSha256") if isinstance(document, dict) else None
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value
    return None
