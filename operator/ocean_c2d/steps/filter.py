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

Exit 0 with {"verdict": "Pass", "reasons": []}, or 51 (EXIT_RESULTS_BLOCKED) with {"verdict": "Block",
"reasons": [...]} naming the files (paths relative to outputs/); the reasons are cut to fit the 4096-byte
termination message, ending with "... and N more". The whole list goes to <VOLUME>/adminlogs/filter.log
(published as "filteringLog"). When the filter cannot judge (a bad policy, an unreadable file), it exits
1 with a plain-text message, and the operator withholds the results: the filter fails closed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import sys
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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
from ocean_c2d.times import now_stamp

EXIT_FILTER_FAILED = 1
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
    files: int = 0  # regular files judged under outputs/
    total_bytes: int = 0

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


def judge(volume: Path, policy: FilterPolicy) -> Verdict:
    """The verdict on what the algorithm wrote (<volume>/outputs, and <volume>/logs as "logs/...")
    under `policy`. Reads files, writes nothing."""
    logs = [dataclasses.replace(f, relative=f"logs/{f.relative}") for f in regular_files(volume / "logs")]
    outputs = [*regular_files(volume / "outputs"), *logs]
    total = sum(f.size for f in outputs)
    reasons: list[str] = []
    if policy.max_output_bytes is not None and total > policy.max_output_bytes:
        reasons.append(
            f"the outputs total {total} bytes in {len(outputs)} files, "
            f"over the limit of {policy.max_output_bytes} bytes"
        )
    for output in outputs:
        extension = forbidden_extension(output.relative, policy.forbidden_extensions)
        if extension is not None:
            reasons.append(f"{output.relative}: the extension .{extension} is not allowed")
    if policy.block_copied_inputs:
        reasons.extend(_copies(volume, outputs))
    return Verdict(
        decision="Block" if reasons else "Pass",
        reasons=tuple(reasons),
        files=len(outputs),
        total_bytes=total,
    )


def _copies(volume: Path, outputs: list[_File]) -> list[str]:
    """Reasons for the outputs that are byte-for-byte copies of an input. Only sizes that occur on
    both sides are hashed, so large inputs with no same-sized output are never read."""
    candidates = [o for o in outputs if o.size > 0]
    if not candidates:
        return []
    output_sizes = {o.size for o in candidates}
    inputs = [i for i in regular_files(volume / "inputs") if i.size in output_sizes]
    known: dict[tuple[int, str], str] = {}
    for item in inputs:
        known.setdefault((item.size, sha256_of(item.path)), item.relative)
    input_sizes = {size for size, _ in known}
    reasons = []
    for output in candidates:
        if output.size not in input_sizes:
            continue
        source = known.get((output.size, sha256_of(output.path)))
        if source is not None:
            reasons.append(f"{output.relative}: a byte-for-byte copy of the input {source}")
    return reasons


def termination_document(verdict: Verdict) -> dict[str, Any]:
    """{"verdict", "reasons"} that fits a termination message: each reason cut to MAX_REASON_CHARS,
    and as many reasons as fit, then "... and N more"."""
    reasons = [_shorten(r) for r in verdict.reasons]
    document: dict[str, Any] = {"verdict": verdict.decision, "reasons": reasons}
    if encode_message(document) is not None:
        return document

    def cut(kept: int) -> dict[str, Any]:
        return {
            "verdict": verdict.decision,
            "reasons": [*reasons[:kept], f"... and {len(reasons) - kept} more"],
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
    try:
        policy = FilterPolicy.from_json(env.get("FILTER_POLICY") or "{}")
        verdict = judge(volume, policy)
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
        f"filter: verdict: {verdict.decision}",
        *(f"filter: reason: {reason}" for reason in verdict.reasons),
    ]
    write_filter_log(volume, lines)
    write_termination_message(termination_document(verdict), termination_log)
    return EXIT_RESULTS_BLOCKED if verdict.blocked else EXIT_OK


def main() -> int:
    return run_filter(os.environ)
