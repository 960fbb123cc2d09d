"""The publish step, `ocean-c2d publish`: uploads a job's results and reports the result list.

What goes up, in this order (the original's, with its gaps closed):
1. every regular file under <VOLUME>/outputs, recursively, subfolders kept (the original dropped them),
   unless PUBLISH_OUTPUTS is "false" (the filter blocked them);
2. every regular file under <VOLUME>/logs (algorithm.log ...), unless PUBLISH_OUTPUTS is "false": the
   algorithm writes there too (its stdout, and any file), so logs are outputs, judged and withheld alike;
3. every regular file under <VOLUME>/adminlogs (configure.log, filter.log ...), and last of all
   adminlogs/publish.log, written out complete before it is uploaded (the original uploaded it while
   still writing it). Symbolic links are never followed: an algorithm cannot publish an input by
   linking to it.

Exactly what the filter judged: after a Pass (PUBLISH_MANIFEST=required) the algorithm's files are the
filter's manifest (steps.judged), checked against its SHA-256 when the built-in filter reported one
(PUBLISH_MANIFEST_SHA256); files on the volume that it does not list are never uploaded (publish.log
names them). Every file is opened once, without following links on any part of its path and without
blocking on a FIFO; only a regular file goes up, from that open file (never by path again), and an
algorithm file must be the judged inode with the judged size and SHA-256 (hashed while read), unchanged
until its upload ends. The algorithm's files are capped (PUBLISH_MAX_BYTES on the bytes read, so a sparse
file counts as what it reads; PUBLISH_MAX_FILES). Any refusal stops publish (62) with a message naming the
file, and what this run already uploaded is deleted where the destination can (S3).

Where: IPFS when IPFS_OUTPUT is set (the original's priority), else S3 when AWS_BUCKET_OUTPUT is set,
else nothing goes up and the step fails (62). See storage.ipfs and storage.s3 for URLs and expiry.

The result list is the original's `outputsURL`: [{"filename", "filesize", "url", "type"}], its order
being the result index; "filename" is the path relative to the file's folder ("plots/a.png"), "type" is
"output", "algorithmLog" (logs/algorithm.log), "configrationLog" [sic] (adminlogs/configure.log),
"filteringLog" (adminlogs/filter.log), "publishLog" (adminlogs/publish.log) or "log" (any other log).
An entry has "expiresAt" (Unix seconds) when the destination expires or is to expire it.

Each upload is tried up to RetryPolicy.attempts times with exponential backoff while its errors are
transient; then the step stops with exit 62 and a message naming the file and the destination (never
credentials, never a signed URL). On success the termination message is {"results": [...]} when it fits
4096 bytes, else the list is uploaded as "results.json" ("<RESULTS_PREFIX>/results.json" on S3) and the
message is {"manifest": "<its URL>", "count": N}.

Everything that decides (what, in which order, types, names, the message) is a pure function below;
the uploads go through the `storage.Destination` protocol, so tests use an in-memory destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ocean_c2d.resilience import backoff_delay
from ocean_c2d.steps.contract import (
    EXIT_OK,
    EXIT_RESULTS_UPLOAD_FAILED,
    TERMINATION_LOG,
    TERMINATION_MESSAGE_LIMIT,
    StepError,
    encode_message,
    write_termination_message,
)
from ocean_c2d.steps.judged import (
    Budget,
    Entry,
    RefusedError,
    digest,
    list_regular,
    open_regular,
    read_manifest,
    same_file,
)
from ocean_c2d.storage import Destination, UploadError
from ocean_c2d.times import now_stamp

FOLDERS = ("outputs", "logs", "adminlogs")
ALGORITHM_FOLDERS = ("outputs", "logs")  # what the algorithm can write: withheld unless the filter passed
PUBLISH_LOG = "adminlogs/publish.log"
MANIFEST_NAME = "results.json"
TYPES = {
    "logs/algorithm.log": "algorithmLog",
    "adminlogs/configure.log": "configrationLog",  # [sic]: the name clients know
    "adminlogs/filter.log": "filteringLog",
    PUBLISH_LOG: "publishLog",
}

DestinationFactory = Callable[[Mapping[str, str]], Destination]
Sleep = Callable[[float], Awaitable[None]]


# --- the plan: pure --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedUpload:
    name: str  # path relative to the volume, "/"-separated: "outputs/plots/a.png"
    filename: str  # relative to its folder: "plots/a.png"
    type: str


def result_type(name: str) -> str:
    """The result type of the file `name` (relative to the volume)."""
    if name in TYPES:
        return TYPES[name]
    return "output" if name.startswith("outputs/") else "log"


def result_filename(name: str) -> str:
    """`name` relative to its folder: "outputs/plots/a.png" -> "plots/a.png"."""
    return name.split("/", 1)[1] if "/" in name else name


def plan_uploads(names: Iterable[str], publish_outputs: bool) -> list[PlannedUpload]:
    """What to upload, in order: outputs and logs (unless withheld), adminlogs, each sorted by path; then
    adminlogs/publish.log, always last (the step writes it, so it is there whether listed or not).
    Names outside the three folders are ignored."""
    order = {folder: index for index, folder in enumerate(FOLDERS)}
    chosen = {
        name
        for name in names
        if name.split("/", 1)[0] in order
        and "/" in name
        and name != PUBLISH_LOG
        and (publish_outputs or name.split("/", 1)[0] not in ALGORITHM_FOLDERS)
    }
    ordered = sorted(chosen, key=lambda n: (order[n.split("/", 1)[0]], n.split("/")))
    return [PlannedUpload(n, result_filename(n), result_type(n)) for n in [*ordered, PUBLISH_LOG]]


def result_entry(item: PlannedUpload, size: int, url: str, expires_at: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"filename": item.filename, "filesize": size, "url": url, "type": item.type}
    if expires_at is not None:
        entry["expiresAt"] = expires_at
    return entry


def results_message(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """{"results": [...]} when it fits a termination message, else None (use a manifest)."""
    document = {"results": results}
    return document if encode_message(document) is not None else None


def manifest_message(url: str, count: int) -> dict[str, Any]:
    return {"manifest": url, "count": count}


def publish_outputs_from(value: str | None) -> bool:
    """PUBLISH_OUTPUTS: outputs go up when it is "true" (or unset); anything else withholds them."""
    return (value or "true").strip().lower() == "true"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 20.0

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1-based): base, 2x base, 4x ... capped;
        without jitter."""
        return backoff_delay(attempt, self.base_delay, cap=self.max_delay, jitter=0.0)


def failure_message(name: str, destination: str, attempts: int, error: str) -> str:
    """The message of exit 62: the file first (the operator shows the first 200 characters)."""
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    message = f"{name}: upload to {destination} failed after {tries}: {error}"
    return message.encode()[:TERMINATION_MESSAGE_LIMIT].decode(errors="ignore")


# --- the step: I/O ---------------------------------------------------------------------------------


def list_volume(volume: Path) -> list[str]:
    """The regular files under the three published folders, as names relative to the volume; symbolic
    links are skipped (neither followed nor listed)."""
    return list_regular(volume, FOLDERS)


@dataclass(frozen=True)
class Selection:
    """What may go up: the algorithm's files (each with what the filter recorded of it, or None when
    there is no manifest) and the names on the volume left out because the filter never judged them."""

    algorithm: dict[str, Entry | None]
    left_out: list[str]


def select_algorithm_files(volume: Path, publish_outputs: bool, manifest: ManifestSource) -> Selection:
    """The algorithm's files to publish: none when withheld; exactly the manifest's when the filter
    recorded one (files added since are left out); else the regular files listed now."""
    if not publish_outputs:
        return Selection({}, [])
    on_volume = list_regular(volume, ALGORITHM_FOLDERS)
    if not manifest.required:
        return Selection(dict.fromkeys(on_volume), [])
    entries = read_manifest(volume, manifest.sha256)
    judged = {e.name: e for e in entries if e.name.split("/", 1)[0] in ALGORITHM_FOLDERS and "/" in e.name}
    return Selection(dict(judged), [n for n in on_volume if n not in judged])


@dataclass(frozen=True)
class ManifestSource:
    """PUBLISH_MANIFEST=required: a filter judged the outputs, so only its manifest's files go up;
    PUBLISH_MANIFEST_SHA256: the manifest's hash as the built-in filter reported it (verified)."""

    required: bool = False
    sha256: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ManifestSource:
        sha = (env.get("PUBLISH_MANIFEST_SHA256") or "").strip().lower() or None
        required = (env.get("PUBLISH_MANIFEST") or "").strip().lower() == "required"
        return cls(required or sha is not None, sha)


def caps_from_env(env: Mapping[str, str]) -> Budget:
    """PUBLISH_MAX_BYTES and PUBLISH_MAX_FILES (unset: no cap) on the algorithm's files."""
    return Budget(_optional_cap(env, "PUBLISH_MAX_BYTES"), _optional_cap(env, "PUBLISH_MAX_FILES"))


def _optional_cap(env: Mapping[str, str], key: str) -> int | None:
    return _non_negative(env, key) if (env.get(key) or "").strip() else None


def _changed(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )


def check_identity(volume: Path, name: str, info: os.stat_result, expected: Entry | None) -> None:
    """Refused unless the opened file is the one the filter judged (device, inode, size)."""
    if expected is None:
        return
    if not same_file(volume, info, expected):
        raise RefusedError(f"{name}: not the file the filter judged (replaced since: another inode)")
    if info.st_size != expected.size:
        raise RefusedError(f"{name}: {info.st_size} bytes, the filter judged {expected.size}")


def check_content(name: str, sha256: str, read: int, expected: Entry | None) -> None:
    if expected is not None and (read != expected.size or sha256 != expected.sha256):
        raise RefusedError(f"{name}: its content changed since the filter judged it (SHA-256 differs)")


class PublishLog:
    """adminlogs/publish.log, appended line by line (and echoed to stderr); `close` before it is
    uploaded, so what goes up is complete."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: TextIO | None = path.open("a", encoding="utf-8", errors="backslashreplace")

    def line(self, text: str) -> None:
        stamp = now_stamp()
        print(f"publish: {text}", file=sys.stderr)
        if self._file is not None:
            self._file.write(f"{stamp} {text}\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def upload_with_retries(
    destination: Destination,
    path: Path,
    name: str,
    retry: RetryPolicy,
    sleep: Sleep = asyncio.sleep,
) -> str:
    """Upload, trying again after transient errors; StepError(62) naming the file once they run out
    (or at once on a permanent error)."""
    error = UploadError("not tried", transient=False)
    attempt = 0
    while attempt < retry.attempts:
        attempt += 1
        try:
            return await destination.upload(path, name)
        except UploadError as failure:
            error = failure
        except Exception as failure:  # a library error a destination did not classify
            error = UploadError(type(failure).__name__, transient=True)
        if not error.transient:
            break
        if attempt < retry.attempts:
            await sleep(retry.delay(attempt))
    raise StepError(
        EXIT_RESULTS_UPLOAD_FAILED, failure_message(name, destination.description, attempt, error.message)
    )


def destination_from_env(env: Mapping[str, str]) -> Destination:
    """The destination the publish Job's env names: IPFS_OUTPUT first, then AWS_BUCKET_OUTPUT."""
    import time

    now = time.time()
    if env.get("IPFS_OUTPUT"):
        from ocean_c2d.storage.ipfs import CLIENT, CLUSTER, IpfsDestination

        kind = (env.get("IPFS_TYPE") or CLIENT).strip().upper()
        if kind not in (CLIENT, CLUSTER):
            raise StepError(EXIT_RESULTS_UPLOAD_FAILED, f"IPFS_TYPE must be CLIENT or CLUSTER, not {kind!r}")
        return IpfsDestination(
            env["IPFS_OUTPUT"],
            kind=kind,
            prefix=env.get("IPFS_OUTPUT_PREFIX") or None,
            api_key=env.get("IPFS_API_KEY") or None,
            client_id=env.get("IPFS_API_CLIENT") or None,
            expiry_seconds=_non_negative(env, "IPFS_EXPIRY_TIME"),
            now=now,
        )
    if env.get("AWS_BUCKET_OUTPUT"):
        from ocean_c2d.storage.s3 import S3Destination

        return S3Destination(
            bucket=env["AWS_BUCKET_OUTPUT"],
            # RESULTS_PREFIX (<namespace>/<name>/<uid>): same-named Workflows of two namespaces, or a
            # Workflow re-created under an old name, never overwrite (or later expire) each other's objects.
            workflow_id=env.get("RESULTS_PREFIX") or env.get("WORKFLOWID") or "unknown",
            region=env.get("AWS_REGION") or None,
            endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            expiry_hours=_non_negative(env, "STORAGE_EXPIRY"),
            now=now,
        )
    raise StepError(
        EXIT_RESULTS_UPLOAD_FAILED, "no destination configured: set IPFS_OUTPUT or AWS_BUCKET_OUTPUT"
    )


def _non_negative(env: Mapping[str, str], key: str) -> int:
    raw = (env.get(key) or "0").strip()
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise StepError(EXIT_RESULTS_UPLOAD_FAILED, f"{key} must be a whole number >= 0, not {raw!r}")
    return value


async def run_publish(
    env: Mapping[str, str],
    termination_log: Path = TERMINATION_LOG,
    uploader_factory: DestinationFactory = destination_from_env,
    *,
    retry: RetryPolicy | None = None,
    sleep: Sleep = asyncio.sleep,
    concurrency: int = 4,
) -> int:
    """The `ocean-c2d publish` program; returns the exit code (0, or 62 with a plain-text message)."""
    volume = Path(env.get("VOLUME") or "/data")
    publish_outputs = publish_outputs_from(env.get("PUBLISH_OUTPUTS"))
    policy = retry or RetryPolicy()
    log: PublishLog | None = None
    destination: Destination | None = None
    try:
        log = PublishLog(volume / PUBLISH_LOG)
        log.line(f"job {env.get('WORKFLOWID', '')}: publishing from {volume}")
        if not publish_outputs:
            log.line("outputs withheld (PUBLISH_OUTPUTS=false: the filter blocked them); admin logs only")
        destination = uploader_factory(env)
        document = await _publish(
            volume,
            publish_outputs,
            ManifestSource.from_env(env),
            caps_from_env(env),
            destination,
            log,
            policy,
            sleep,
            concurrency,
        )
    except StepError as error:
        return _fail(error, log, termination_log)
    except OSError as error:
        failure = StepError(EXIT_RESULTS_UPLOAD_FAILED, f"cannot read or write the volume: {error}")
        return _fail(failure, log, termination_log)
    finally:
        if log is not None:
            log.close()
        if destination is not None:
            with contextlib.suppress(Exception):
                await destination.close()
    write_termination_message(document, termination_log)
    return EXIT_OK


async def _publish(
    volume: Path,
    publish_outputs: bool,
    source: ManifestSource,
    budget: Budget,
    destination: Destination,
    log: PublishLog,
    policy: RetryPolicy,
    sleep: Sleep,
    concurrency: int,
) -> dict[str, Any]:
    try:
        selection = select_algorithm_files(volume, publish_outputs, source)
    except RefusedError as refusal:
        why = f"{refusal}; nothing of the algorithm's is uploaded"
        raise StepError(EXIT_RESULTS_UPLOAD_FAILED, why) from None
    if source.required and publish_outputs:
        log.line(f"uploading exactly the {len(selection.algorithm)} files of the filter's manifest")
    if selection.left_out:
        shown = ", ".join(selection.left_out[:20]) + (" ..." if len(selection.left_out) > 20 else "")
        log.line(f"not in the filter's manifest, never uploaded: {len(selection.left_out)} files: {shown}")
    admin = list_regular(volume, ("adminlogs",))
    plan = plan_uploads([*selection.algorithm, *admin], publish_outputs)
    body, last = plan[:-1], plan[-1]
    log.line(f"{len(plan)} files to {destination.description}")
    results: list[dict[str, Any] | None] = [None] * len(body)
    failures: dict[int, StepError] = {}
    uploaded: list[str] = []
    pending = iter(enumerate(body))

    async def worker() -> None:
        for index, item in pending:
            if failures:
                return
            algorithm = item.name in selection.algorithm
            try:
                size, url = await _upload_one(
                    volume,
                    item.name,
                    selection.algorithm.get(item.name),
                    budget if algorithm else None,
                    destination,
                    uploaded,
                    policy,
                    sleep,
                )
            except RefusedError as refusal:
                failures[index] = StepError(EXIT_RESULTS_UPLOAD_FAILED, f"{refusal}; publish stopped")
                return
            except OSError as error:  # gone since the filter, unreadable: stop here too, and clean up
                message = f"{item.name}: cannot read it ({error.strerror}); publish stopped"
                failures[index] = StepError(EXIT_RESULTS_UPLOAD_FAILED, message)
                return
            except StepError as error:
                failures[index] = error
                return
            log.line(f"uploaded {item.name} ({size} bytes): {url}")
            results[index] = result_entry(item, size, url, destination.expires_at)

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    if failures:
        await _remove_uploaded(destination, uploaded, log)
        raise failures[min(failures)]
    done = [entry for entry in results if entry is not None]
    log.line(f"{len(done)} files uploaded; {last.name} goes last")
    log.close()  # complete before it goes up
    size, url = await _upload_one(volume, last.name, None, None, destination, uploaded, policy, sleep)
    done.append(result_entry(last, size, url, destination.expires_at))
    print(f"publish: uploaded {last.name} ({size} bytes): {url}", file=sys.stderr)

    message = results_message(done)
    if message is not None:
        return message
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / MANIFEST_NAME
        manifest.write_text(json.dumps(done, indent=1))
        manifest_url = await upload_with_retries(destination, manifest, MANIFEST_NAME, policy, sleep)
    print(
        f"publish: {len(done)} results, too many for the termination message: {manifest_url}", file=sys.stderr
    )
    document = manifest_message(manifest_url, len(done))
    if encode_message(document) is None:
        raise StepError(EXIT_RESULTS_UPLOAD_FAILED, "the manifest URL does not fit a termination message")
    return document


async def _upload_one(
    volume: Path,
    name: str,
    expected: Entry | None,
    budget: Budget | None,
    destination: Destination,
    uploaded: list[str],
    policy: RetryPolicy,
    sleep: Sleep,
) -> tuple[int, str]:
    """Upload `name` from an fd opened without following links, never by its path again: refused unless
    it is a regular file, the one the filter judged (`expected`: inode, size, SHA-256 of what is read),
    within `budget` (algorithm files), and unchanged until its upload is done. Returns (size, URL)."""
    fd, info = open_regular(volume, name)
    try:
        check_identity(volume, name, info, expected)
        if budget is not None:
            budget.open_one(name)
            sha256, read = await asyncio.to_thread(digest, fd, name, budget)
            check_content(name, sha256, read, expected)
        # The destination opens the file itself: through /proc/self/fd it gets this inode, whatever
        # the path holds by now.
        url = await upload_with_retries(destination, Path(f"/proc/self/fd/{fd}"), name, policy, sleep)
        uploaded.append(name)
        if _changed(info, os.fstat(fd)):
            raise RefusedError(f"{name}: changed while it was uploaded")
    finally:
        os.close(fd)
    return info.st_size, url


async def _remove_uploaded(destination: Destination, names: list[str], log: PublishLog) -> None:
    """Best effort: take back what this run uploaded before it failed, where the destination can."""
    delete = getattr(destination, "delete", None)
    if delete is None or not names:
        if names:
            log.line(f"{len(names)} files uploaded before the failure stay (this destination cannot delete)")
        return
    for name in names:
        try:
            await delete(name)
        except Exception as error:
            log.line(f"could not delete {name} after the failure: {type(error).__name__}")
    log.line(f"deleted the {len(names)} files this run uploaded before the failure")


def _fail(error: StepError, log: PublishLog | None, termination_log: Path) -> int:
    if log is not None:
        log.line(f"failed: {error.message}")  # stderr only, once the file is closed
    else:
        print(f"publish: failed: {error.message}", file=sys.stderr)
    termination_log.write_bytes(error.message.encode()[:TERMINATION_MESSAGE_LIMIT])
    return error.exit_code


def main() -> int:
    return asyncio.run(run_publish(os.environ))
