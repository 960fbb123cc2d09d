"""The built-in filter on real files in a temporary volume: its checks, its verdict, its exit codes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from ocean_c2d.steps.contract import EXIT_OK, EXIT_RESULTS_BLOCKED, TERMINATION_MESSAGE_LIMIT
from ocean_c2d.steps.filter import (
    EXIT_FILTER_FAILED,
    FilterPolicy,
    Verdict,
    forbidden_extension,
    judge,
    run_filter,
    termination_document,
)
from ocean_c2d.steps.judged import RefusedError, read_manifest

OPEN = FilterPolicy(max_output_bytes=None, forbidden_extensions=(), block_copied_inputs=False)


def write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    write(tmp_path / "inputs" / "did1" / "0", b"name,salary\nalice,100\nbob,200\n")
    write(tmp_path / "inputs" / "did1" / "1", b"x" * 5000)
    write(tmp_path / "inputs" / "algoCustomData.json", b'{"a": 1}')
    write(tmp_path / "outputs" / "result.csv", b"mean,150\n")
    write(tmp_path / "outputs" / "plots" / "a.png", b"\x89PNG fake")
    (tmp_path / "logs").mkdir()
    return tmp_path


def test_clean_outputs_pass(volume: Path) -> None:
    verdict = judge(volume, FilterPolicy(max_output_bytes=1000, forbidden_extensions=("exe",)))
    assert verdict == Verdict("Pass", (), files=2, total_bytes=9 + 9)
    assert not verdict.blocked


def test_missing_outputs_folder_passes(tmp_path: Path) -> None:
    assert judge(tmp_path, FilterPolicy()).decision == "Pass"


def test_total_size_over_the_cap_blocks(volume: Path) -> None:
    write(volume / "outputs" / "deep" / "big.bin", b"0" * 100)
    verdict = judge(volume, FilterPolicy(max_output_bytes=117, block_copied_inputs=False))
    assert verdict.blocked
    assert verdict.reasons == ("the outputs total 118 bytes in 3 files, over the limit of 117 bytes",)
    assert judge(volume, FilterPolicy(max_output_bytes=118)).decision == "Pass"


def test_forbidden_extensions_any_case_with_or_without_the_dot(volume: Path) -> None:
    write(volume / "outputs" / "bin" / "Tool.EXE", b"MZ")
    write(volume / "outputs" / "dump.tar.gz", b"gz")
    write(volume / "outputs" / "notes.txt", b"ok")
    policy = FilterPolicy.from_json(json.dumps({"forbiddenExtensions": [".exe", "TAR.GZ", " ", "sh"]}))
    assert policy.forbidden_extensions == ("exe", "tar.gz", "sh")
    verdict = judge(volume, policy)
    assert verdict.reasons == (
        "bin/Tool.EXE: the extension .exe is not allowed",
        "dump.tar.gz: the extension .tar.gz is not allowed",
    )


def test_extension_matching_is_on_the_name_end_only() -> None:
    assert forbidden_extension("exe/readme.txt", ("exe",)) is None
    assert forbidden_extension("archive.exe.txt", ("exe",)) is None
    assert forbidden_extension("x.tar.gz", ("gz", "tar.gz")) == "tar.gz"


def test_a_copied_input_in_a_nested_output_folder_blocks(volume: Path) -> None:
    source = (volume / "inputs" / "did1" / "0").read_bytes()
    write(volume / "outputs" / "nested" / "deeper" / "leak.csv", source)
    write(volume / "outputs" / "almost.csv", source + b"\n")  # same start, not a copy
    verdict = judge(volume, FilterPolicy())
    assert verdict.reasons == ("nested/deeper/leak.csv: a byte-for-byte copy of the input did1/0",)
    assert judge(volume, FilterPolicy(block_copied_inputs=False)).decision == "Pass"


def test_empty_files_are_never_copies(volume: Path) -> None:
    write(volume / "inputs" / "did1" / "empty", b"")
    write(volume / "outputs" / "empty.txt", b"")
    assert judge(volume, FilterPolicy()).decision == "Pass"


def test_symbolic_links_are_not_judged(volume: Path) -> None:
    (volume / "outputs" / "link.exe").symlink_to(volume / "inputs" / "did1" / "0")
    verdict = judge(volume, FilterPolicy(forbidden_extensions=("exe",)))
    assert verdict.decision == "Pass"
    assert verdict.files == 2


def test_reasons_are_cut_to_fit_the_termination_message() -> None:
    reasons = tuple(f"{'d' * 40}/file{i:04}.exe: the extension .exe is not allowed" for i in range(500))
    document = termination_document(Verdict("Block", reasons))
    text = json.dumps(document, separators=(",", ":"), sort_keys=True)
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    kept = document["reasons"][:-1]
    assert kept == list(reasons[: len(kept)])
    assert document["reasons"][-1] == f"... and {500 - len(kept)} more"
    assert len(kept) > 30  # as many as fit, not a fixed few
    # One more reason would not have fitted.
    longer = {"verdict": "Block", "reasons": [*reasons[: len(kept) + 1], f"... and {499 - len(kept)} more"]}
    assert len(json.dumps(longer, separators=(",", ":"), sort_keys=True).encode()) > TERMINATION_MESSAGE_LIMIT


def test_a_single_huge_reason_is_shortened() -> None:
    document = termination_document(Verdict("Block", ("x" * 10_000,)))
    assert len(document["reasons"]) == 1
    assert document["reasons"][0].endswith("...")
    assert len(document["reasons"][0]) == 300


def test_small_reason_lists_are_kept_whole() -> None:
    verdict = Verdict("Block", ("a: the extension .exe is not allowed",))
    assert termination_document(verdict) == {"verdict": "Block", "reasons": list(verdict.reasons)}


def test_run_filter_passes_with_exit_0(volume: Path, tmp_path: Path) -> None:
    termination = tmp_path / "termination-log"
    env = {"VOLUME": str(volume), "FILTER_POLICY": json.dumps({"maxOutputBytes": None})}
    assert run_filter(env, termination) == EXIT_OK
    manifest = (volume / "filtering" / "manifest.json").read_bytes()
    assert json.loads(termination.read_text()) == {
        "verdict": "Pass",
        "reasons": [],
        "manifestSha256": hashlib.sha256(manifest).hexdigest(),
    }
    log = (volume / "adminlogs" / "filter.log").read_text()
    assert "verdict: Pass" in log
    assert "2 output files, 18 bytes" in log


def test_run_filter_blocks_with_exit_51_and_logs_every_reason(volume: Path, tmp_path: Path) -> None:
    for i in range(300):
        write(volume / "outputs" / "many" / f"{'n' * 60}{i:03}.exe", b"MZ")
    termination = tmp_path / "termination-log"
    env = {"VOLUME": str(volume), "FILTER_POLICY": json.dumps({"forbiddenExtensions": ["exe"]})}
    assert run_filter(env, termination) == EXIT_RESULTS_BLOCKED
    message = termination.read_text()
    assert len(message.encode()) <= TERMINATION_MESSAGE_LIMIT
    document = json.loads(message)
    assert document["verdict"] == "Block"
    assert document["reasons"][0] == f"many/{'n' * 60}000.exe: the extension .exe is not allowed"
    assert document["reasons"][-1].startswith("... and ")
    log = (volume / "adminlogs" / "filter.log").read_text()
    assert log.count("filter: reason: ") == 300
    assert "verdict: Block" in log


def test_run_filter_appends_to_an_existing_log(volume: Path, tmp_path: Path) -> None:
    write(volume / "adminlogs" / "filter.log", "earlier line\n")
    assert run_filter({"VOLUME": str(volume)}, tmp_path / "t") == EXIT_OK
    assert (volume / "adminlogs" / "filter.log").read_text().startswith("earlier line\n")


@pytest.mark.parametrize(
    "policy",
    [
        "not json",
        "[]",
        '{"maxOutputBytes": -1}',
        '{"maxOutputBytes": true}',
        '{"forbiddenExtensions": "exe"}',
        '{"blockCopiedInputs": "yes"}',
    ],
)
def test_a_bad_policy_fails_closed(volume: Path, tmp_path: Path, policy: str) -> None:
    termination = tmp_path / "termination-log"
    assert run_filter({"VOLUME": str(volume), "FILTER_POLICY": policy}, termination) == EXIT_FILTER_FAILED
    message = termination.read_text()
    assert message.startswith("the filter could not judge the outputs")
    assert not message.startswith("{")  # plain text: the operator shows it as the failure's detail
    assert "results are withheld" in (volume / "adminlogs" / "filter.log").read_text()


def test_the_defaults_match_the_environment_model() -> None:
    assert FilterPolicy.from_json("") == FilterPolicy(None, (), True)
    golden: dict[str, object] = {"maxOutputBytes": None, "forbiddenExtensions": [], "blockCopiedInputs": True}
    assert FilterPolicy.from_json(json.dumps(golden)) == FilterPolicy()


def test_the_trivial_evasions_of_a_forbidden_extension_are_caught() -> None:
    for name in ("x.csv.", "x.csv. . ", "X.CSV", "x.\uff23\uff33\uff36", "dir/x.Csv.\t"):
        assert forbidden_extension(name, ("csv",)) == "csv", name
    assert forbidden_extension("x.csv.txt", ("csv",)) is None  # the last extension decides, as before


def test_what_the_algorithm_wrote_to_its_logs_is_judged_like_an_output(volume: Path) -> None:
    """An algorithm that copies an input to stdout (its algorithm.log) and to $LOGS/x.bin is blocked."""
    source = (volume / "inputs" / "did1" / "0").read_bytes()
    write(volume / "logs" / "algorithm.log", source)
    write(volume / "logs" / "x.bin", source)
    verdict = judge(volume, FilterPolicy())
    assert verdict.decision == "Block"
    assert {r.split(":")[0] for r in verdict.reasons} == {"logs/algorithm.log", "logs/x.bin"}
    capped = judge(volume, FilterPolicy(max_output_bytes=len(source), block_copied_inputs=False))
    assert capped.decision == "Block"  # logs count toward the size cap


# ---- the manifest of what was judged, and the publish caps --------------------------------------------


def run_and_read(volume: Path, tmp_path: Path, **env: str) -> tuple[int, dict[str, Any]]:
    termination = tmp_path / "termination-log"
    code = run_filter({"VOLUME": str(volume), **env}, termination)
    document: dict[str, Any] = json.loads(termination.read_text())
    return code, document


def test_the_manifest_records_each_judged_file_and_its_hash_is_in_the_message(
    volume: Path, tmp_path: Path
) -> None:
    write(volume / "logs" / "algorithm.log", b"done\n")
    (volume / "outputs" / "link").symlink_to(volume / "inputs" / "did1" / "0")
    os.mkfifo(volume / "outputs" / "pipe")  # not read (it would hang), not listed

    code, document = run_and_read(volume, tmp_path)

    assert code == EXIT_OK, document
    data = (volume / "filtering" / "manifest.json").read_bytes()
    assert document["manifestSha256"] == hashlib.sha256(data).hexdigest()
    entries = read_manifest(volume, document["manifestSha256"])
    assert [e.name for e in entries] == ["logs/algorithm.log", "outputs/plots/a.png", "outputs/result.csv"]
    for entry in entries:
        info = (volume / entry.name).stat()
        content = (volume / entry.name).read_bytes()
        # dev 0: on the volume's device (as each pod numbers it), the same as its top folder's.
        assert (entry.dev, entry.inode, entry.size) == (0, info.st_ino, len(content))
        assert info.st_dev == (volume / entry.name.split("/")[0]).stat().st_dev
        assert entry.sha256 == hashlib.sha256(content).hexdigest()
    with pytest.raises(RefusedError, match="is not the"):
        read_manifest(volume, "0" * 64)


def test_the_filter_blocks_a_sparse_file_over_the_publish_byte_cap(volume: Path, tmp_path: Path) -> None:
    sparse = volume / "outputs" / "zeros.bin"
    with sparse.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    assert sparse.stat().st_blocks * 512 < 1024 * 1024  # next to nothing on disk

    code, document = run_and_read(volume, tmp_path, PUBLISH_MAX_BYTES=str(4 * 1024 * 1024))

    assert code == EXIT_RESULTS_BLOCKED
    assert document["reasons"] == [
        "zeros.bin: over the cap of 4194304 bytes read; not judged, results withheld"
    ]
    code, _ = run_and_read(volume, tmp_path, PUBLISH_MAX_BYTES=str(65 * 1024 * 1024))
    assert code == EXIT_OK


def test_the_filter_blocks_more_files_than_the_publish_file_cap(volume: Path, tmp_path: Path) -> None:
    code, document = run_and_read(volume, tmp_path, PUBLISH_MAX_FILES="1")
    assert code == EXIT_RESULTS_BLOCKED
    assert document["reasons"] == ["the algorithm wrote 2 files, over the publish cap of 1 files"]
    assert run_and_read(volume, tmp_path, PUBLISH_MAX_FILES="2")[0] == EXIT_OK


def test_manifest_only_mode_records_the_manifest_and_applies_only_the_caps(
    volume: Path, tmp_path: Path
) -> None:
    write(volume / "outputs" / "copy.csv", (volume / "inputs" / "did1" / "0").read_bytes())
    code, document = run_and_read(volume, tmp_path, FILTER_MANIFEST_ONLY="true")
    assert code == EXIT_OK, document  # the copy is the custom filter's to judge
    assert [e.name for e in read_manifest(volume, document["manifestSha256"])] == [
        "outputs/copy.csv",
        "outputs/plots/a.png",
        "outputs/result.csv",
    ]
    code, _ = run_and_read(volume, tmp_path, FILTER_MANIFEST_ONLY="true", PUBLISH_MAX_FILES="2")
    assert code == EXIT_RESULTS_BLOCKED
