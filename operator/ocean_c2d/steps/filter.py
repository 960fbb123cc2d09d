"""The built-in filter, `ocean-c2d filter`: judges the algorithm's outputs before anything leaves.

It reads everything the algorithm wrote, under <VOLUME>/outputs and <VOLUME>/logs (recursively: the
algorithm's log is fed by its stdout, so it is an output too, named "logs/..."), and changes nothing.
The checks, from the
environment's policy (FILTER_POLICY, JSON {maxOutputBytes, forbiddenExtensions, blockCopiedInputs}):
- the outputs' total size is at most maxOutputBytes (null: no cap);
- no output's name ends in a forbidden extension (case-insensitive, given with or without the dot;
  "tar.gz" works too);
- with blockCopiedInputs, no output is a byte-for-byte copy of a file under <VOLUME>/inputs (SHA-256,
  streamed; only files of equal size are hashed, and empty files are never "copies").
Only regular files count, as only they are published: a symbolic link is neither followed nor uploaded.
Every judged file is hashed once (opened without following links, see steps.judged), and the filter
blocks when the algorithm's files exceed the environment's publish caps (PUBLISH_MAX_BYTES,
PUBLISH_MAX_FILES), counted on the bytes it reads: a sparse file is as large as what it reads.

What it judged is its manifest, <VOLUME>/filtering/manifest.json (name, size, SHA-256, device, inode
of each file); the manifest's SHA-256 is "manifestSha256" in the termination message, and publish uploads
exactly those files. With FILTER_MANIFEST_ONLY=true (an init container before a FILTERING_CONTAINER) it
records the manifest and applies the caps only.

Exit 0 with {"verdict": "Pass", "reasons": [], "manifestSha256": ...}, or 51 (EXIT_RESULTS_BLOCKED)
with {"verdict": "Block", "reasons": [...]} naming the files (paths relative to outputs/); the reasons
are cut to fit the 4096-byte termination message, ending with "... and N more". The whole list goes to
<VOLUME>/adminlogs/filter.log (published as "filteringLog"). When the filter cannot judge (a bad policy,
an unreadable file), it exits 1 with a plain-text message, and the operator withholds the results: the
filter fails closed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ocean_c2d.steps.contract import (
    EXIT_OK,
    EXIT_RESULTS_BLOCKED,
    TERMINATION_LOG,
    TERMINATION_MESSAGE_LIMIT,
    encode_message,
    write_termination_message,
)
from ocean_c2d.steps.judged import (
    MANIFEST,
    Budget,
    Entry,
    RefusedError,
    judge_file,
    list_regular,
    write_manifest,
)
from ocean_c2d.times import now_stamp

EXIT_FILTER_FAILED = 1
ALGORITHM_FOLDERS = ("outputs", "logs")  # what the algorithm can write
MAX_REASON_CHARS = 300  # one reason, in the termination message (the log has it whole)


@dataclass(frozen=True)
class FilterPolicy:
    max_output_bytes: int | None = None
    forbidden_extensions: tuple[str, ...] = ()  # lower case, without the leading dot
    block_copied_inputs: bool = True

    @classmethod
    def from_json(cls, text: str) -> FilterPolicy:
        """FILTER_POLICY as the filter Job gets it; ValueError when it is malformed."""
        document = json.loads(text or "{}")
        if not isinstance(document, dict):
            raise ValueError("FILTER_POLICY must be a JSON object")
        cap = document.get("maxOutputBytes")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise ValueError("FILTER_POLICY.maxOutputBytes must be a non-negative integer or null")
        extensions = document.get("forbiddenExtensions") or []
        if not isinstance(extensions, list) or not all(isinstance(e, str) for e in extensions):
            raise ValueError("FILTER_POLICY.forbiddenExtensions must be a list of strings")
        block_copies = document.get("blockCopiedInputs", True)
        if not isinstance(block_copies, bool):
            raise ValueError("FILTER_POLICY.blockCopiedInputs must be true or false")
        return cls(
            max_output_bytes=cap,
            forbidden_extensions=normalize_extensions(extensions),
            block_copied_inputs=block_copies,
        )


def normalize_extensions(extensions: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Lower case, without leading dots or blanks, no empties, no duplicates (order kept)."""
    seen: dict[str, None] = {}
    for extension in extensions:
        cleaned = extension.strip().lstrip(".").lower()
        if cleaned:
            seen.setdefault(cleaned, None)
    return tuple(seen)


@dataclass(frozen=True)
class Verdict:
    decision: Literal["Pass", "Block"]
    reasons: tuple[str, ...] = ()
    files: int = 0  # regular files judged under outputs/ and logs/
    total_bytes: int = 0
    entries: tuple[Entry, ...] = field(default=(), compare=False)  # the manifest: what was judged

    @property
    def blocked(self) -> bool:
        return self.decision == "Block"


@dataclass(frozen=True)
class _File:
    relative: str  # posix path relative to its folder
    path: Path
    size: int


def regular_files(folder: Path) -> list[_File]:
    """Every regular file under `folder`, recursively, sorted by path; symbolic links are skipped
    (neither followed nor listed). A missing folder has no files."""
    found: list[_File] = []
    if not folder.is_dir():
        return found

    def walk(directory: Path, prefix: str) -> Iterator[_File]:
        with os.scandir(directory) as entries:
            for entry in entries:
                relative = f"{prefix}{entry.name}"
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    yield from walk(Path(entry.path), relative + "/")
                elif stat.S_ISREG(info.st_mode):
                    yield _File(relative, Path(entry.path), info.st_size)

    found.extend(walk(folder, ""))
    found.sort(key=lambda f: f.relative.split("/"))
    return found


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def forbidden_extension(name: str, forbidden: tuple[str, ...]) -> str | None:
    """The (longest) forbidden extension `name` ends with, else None. The name is compared as a
    consumer's tools would read it: compatibility-normalised (fullwidth letters read as ASCII ones),
    case-folded, without trailing dots and spaces (Windows and many unpackers drop them: "x.csv." opens
    as "x.csv")."""
    base = name.rsplit("/", 1)[-1]
    lowered = unicodedata.normalize("NFKC", base).casefold().rstrip(". \t")
    matches = [ext for ext in forbidden if lowered.endswith("." + ext)]
    return max(matches, key=len) if matches else None


@dataclass(frozen=True)
class Caps:
    """The publish caps of the environment (PUBLISH_MAX_BYTES, PUBLISH_MAX_FILES; None: no cap): the
    filter blocks what publish would refuse, counting the bytes it reads while hashing."""

    max_bytes: int | None = None
    max_files: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Caps:
        return cls(_cap(env, "PUBLISH_MAX_BYTES"), _cap(env, "PUBLISH_MAX_FILES"))


def _cap(env: Mapping[str, str], key: str) -> int | None:
    raw = (env.get(key) or "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise ValueError(f"{key} must be a whole number >= 0, not {raw!r}")
    return int(raw)


def shown(name: str) -> str:
    """How a reason names a file: relative to outputs/, or "logs/..."."""
    return name.removeprefix("outputs/")


def judge(volume: Path, policy: FilterPolicy, caps: Caps = Caps()) -> Verdict:
    """The verdict on what the algorithm wrote (<volume>/outputs, and <volume>/logs as "logs/...")
    under `policy` and `caps`, with the manifest of what it judged. Reads files, writes nothing."""
    names = list_regular(volume, ALGORITHM_FOLDERS)
    reasons: list[str] = []
    entries, refused = _hash_all(volume, names, caps)
    if refused is not None:
        reasons.append(refused)
    total = sum(e.size for e in entries)
    if policy.max_output_bytes is not None and total > policy.max_output_bytes:
        reasons.append(
            f"the outputs total {total} bytes in {len(entries)} files, "
            f"over the limit of {policy.max_output_bytes} bytes"
        )
    for entry in entries:
        extension = forbidden_extension(entry.name, policy.forbidden_extensions)
        if extension is not None:
            reasons.append(f"{shown(entry.name)}: the extension .{extension} is not allowed")
    if policy.block_copied_inputs:
        reasons.extend(_copies(volume, entries))
    return Verdict(
        decision="Block" if reasons else "Pass",
        reasons=tuple(reasons),
        files=len(entries),
        total_bytes=total,
        entries=tuple(entries),
    )


def _hash_all(volume: Path, names: list[str], caps: Caps) -> tuple[list[Entry], str | None]:
    """The manifest entries of `names`, and the reason to block when one could not be judged (a cap
    reached, a file swapped for a link or FIFO since the listing): hashing stops there."""
    if caps.max_files is not None and len(names) > caps.max_files:
        return [], f"the algorithm wrote {len(names)} files, over the publish cap of {caps.max_files} files"
    budget = Budget(caps.max_bytes, caps.max_files)
    entries: list[Entry] = []
    for name in names:
        try:
            entries.append(judge_file(volume, name, budget))
        except FileNotFoundError:
            continue  # gone since the listing: not judged, and so never published
        except RefusedError as refusal:
            return entries, f"{shown(str(refusal))}; not judged, results withheld"
    return entries, None


def _copies(volume: Path, outputs: list[Entry]) -> list[str]:
    """Reasons for the outputs that are byte-for-byte copies of an input. Only inputs of a size that
    some output has are hashed, so large inputs with no same-sized output are never read."""
    candidates = [o for o in outputs if o.size > 0]
    if not candidates:
        return []
    output_sizes = {o.size for o in candidates}
    inputs = [i for i in regular_files(volume / "inputs") if i.size in output_sizes]
    known: dict[tuple[int, str], str] = {}
    for item in inputs:
        known.setdefault((item.size, sha256_of(item.path)), item.relative)
    reasons = []
    for output in candidates:
        source = known.get((output.size, output.sha256))
        if source is not None:
            reasons.append(f"{shown(output.name)}: a byte-for-byte copy of the input {source}")
    return reasons


def termination_document(verdict: Verdict, manifest_sha256: str | None = None) -> dict[str, Any]:
    """{"verdict", "reasons"[, "manifestSha256"]} that fits a termination message: each reason cut to
    MAX_REASON_CHARS, and as many reasons as fit, then "... and N more"."""
    reasons = [_shorten(r) for r in verdict.reasons]
    extra = {"manifestSha256": manifest_sha256} if manifest_sha256 else {}
    document: dict[str, Any] = {"verdict": verdict.decision, "reasons": reasons, **extra}
    if encode_message(document) is not None:
        return document

    def cut(kept: int) -> dict[str, Any]:
        return {
            "verdict": verdict.decision,
            "reasons": [*reasons[:kept], f"... and {len(reasons) - kept} more"],
            **extra,
        }

    low, high = 0, len(reasons) - 1  # cut(0) always fits; find the largest that does
    while low < high:
        middle = (low + high + 1) // 2
        if encode_message(cut(middle)) is not None:
            low = middle
        else:
            high = middle - 1
    return cut(low)


def _shorten(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 3] + "..."


def write_filter_log(volume: Path, lines: list[str]) -> None:
    """Append to <volume>/adminlogs/filter.log (created with its folder when missing). Best effort:
    the verdict stands even when the log cannot be written (it then goes to stderr only)."""
    stamp = now_stamp()
    text = "".join(f"{stamp} {line}\n" for line in lines)
    sys.stdout.write(text)
    try:
        folder = volume / "adminlogs"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "filter.log").open("a", encoding="utf-8", errors="backslashreplace") as log:
            log.write(text)
    except OSError as error:
        print(f"filter: cannot write adminlogs/filter.log: {error}", file=sys.stderr)


def run_filter(env: Mapping[str, str], termination_log: Path = TERMINATION_LOG) -> int:
    """The `ocean-c2d filter` program: judge, log, write the termination message, return the exit code."""
    volume = Path(env.get("VOLUME") or "/data")
    # Before a custom FILTERING_CONTAINER, the built-in step only records the manifest (and the caps).
    manifest_only = (env.get("FILTER_MANIFEST_ONLY") or "").strip().lower() == "true"
    try:
        policy = (
            FilterPolicy(block_copied_inputs=False)
            if manifest_only
            else FilterPolicy.from_json(env.get("FILTER_POLICY") or "{}")
        )
        verdict = judge(volume, policy, Caps.from_env(env))
        manifest_sha256 = write_manifest(volume, verdict.entries)
    except Exception as error:
        message = f"the filter could not judge the outputs: {type(error).__name__}: {error}"
        write_filter_log(volume, [f"filter: {message}", "filter: verdict: none (the results are withheld)"])
        termination_log.write_bytes(message.encode(errors="backslashreplace")[:TERMINATION_MESSAGE_LIMIT])
        return EXIT_FILTER_FAILED
    lines = [
        "filter: policy "
        + json.dumps(
            {
                "maxOutputBytes": policy.max_output_bytes,
                "forbiddenExtensions": list(policy.forbidden_extensions),
                "blockCopiedInputs": policy.block_copied_inputs,
            }
        ),
        f"filter: {verdict.files} output files, {verdict.total_bytes} bytes",
        f"filter: manifest {MANIFEST} (SHA-256 {manifest_sha256}): publish uploads these files only",
        f"filter: verdict: {verdict.decision}",
        *(f"filter: reason: {reason}" for reason in verdict.reasons),
    ]
    write_filter_log(volume, lines)
    write_termination_message(termination_document(verdict, manifest_sha256), termination_log)
    return EXIT_RESULTS_BLOCKED if verdict.blocked else EXIT_OK


def main() -> int:
    return run_filter(os.environ)
