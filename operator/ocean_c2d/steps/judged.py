"""What the filter judged, and how publish reads exactly that back (the filter's manifest).

The built-in filter hashes every regular file the algorithm wrote (outputs/, logs/) and records, for
each, its name (relative to the volume), size, SHA-256 and (device, inode) in <VOLUME>/filtering/
manifest.json; the SHA-256 of the manifest itself goes into its termination message, the operator keeps
it in `status.filter.manifestSha256` and gives it to the publish Job. Why filtering/: it is a subPath of
the data volume that only the filter and publish pods mount; the algorithm's pod (and a custom filter's)
mount outputs/ and logs/ only, so nothing the consumer runs can write the manifest, and publish never
uploads that folder. The hash in the status covers whatever else could.

Every file is opened component by component relative to the volume with O_NOFOLLOW (a symbolic link
anywhere on the path is refused, not followed), O_NONBLOCK (a FIFO cannot hang the step) and then
`fstat`ed: only a regular file is read. Reads count the bytes actually read against a `Budget`, so a
sparse file (a few blocks on disk, terabytes of zeros to read) hits the cap when it is read, not after.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MANIFEST_FOLDER = "filtering"
MANIFEST = f"{MANIFEST_FOLDER}/manifest.json"
MANIFEST_VERSION = 1
MANIFEST_LIMIT = 64 * 1024 * 1024  # a manifest of 10,000 files is about 2 MB; anything near this is not ours
CHUNK = 1024 * 1024
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
DIRECTORY_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class RefusedError(Exception):
    """A file is not what may be read or published: a link, a FIFO, a device, changed, or over a cap."""


@dataclass(frozen=True)
class Entry:
    name: str  # relative to the volume, "/"-separated: "outputs/plots/a.png", "logs/algorithm.log"
    size: int
    sha256: str
    # 0: the device of its top folder (outputs/, logs/), that is the volume's. Pods number the devices
    # of their mounts themselves (an NFS volume has another st_dev in each pod): compare it there.
    dev: int
    inode: int


class Budget:
    """Caps on the bytes read and files opened, shared by the readers of one step (thread-safe)."""

    def __init__(self, max_bytes: int | None, max_files: int | None) -> None:
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.bytes = 0
        self.files = 0
        self._lock = threading.Lock()

    def open_one(self, name: str) -> None:
        with self._lock:
            self.files += 1
            if self.max_files is not None and self.files > self.max_files:
                raise RefusedError(f"{name}: over the cap of {self.max_files} files")

    def read(self, name: str, count: int) -> None:
        with self._lock:
            self.bytes += count
            if self.max_bytes is not None and self.bytes > self.max_bytes:
                raise RefusedError(f"{name}: over the cap of {self.max_bytes} bytes read")


def list_regular(volume: Path, folders: Iterable[str]) -> list[str]:
    """The names (relative to the volume) of the regular files under `folders`, recursively, sorted by
    path. Links are neither followed nor listed. This is a candidate list only: `open_regular` is what
    checks a file when it is read."""
    names: list[str] = []

    def walk(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    walk(Path(entry.path), f"{prefix}{entry.name}/")
                elif stat.S_ISREG(info.st_mode):
                    names.append(f"{prefix}{entry.name}")

    for folder in folders:
        path = volume / folder
        if path.is_dir() and not path.is_symlink():
            walk(path, f"{folder}/")
    names.sort(key=lambda n: n.split("/"))
    return names


def open_regular(volume: Path, name: str) -> tuple[int, os.stat_result]:
    """An fd on the regular file `name` (relative to `volume`) and its fstat; RefusedError when any part of
    the path is a link, or the file is not a regular file (FIFO, device, socket, directory)."""
    parts = name.split("/")
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise RefusedError(f"{name}: not a plain relative path")
    directory = os.open(volume, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            parent = directory
            directory = _open_at(part, DIRECTORY_FLAGS, parent, name)
            os.close(parent)
        fd = _open_at(parts[-1], FILE_FLAGS, directory, name)
    finally:
        os.close(directory)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise RefusedError(f"{name}: not a regular file (mode {stat.filemode(info.st_mode)})")
    return fd, info


def _open_at(part: str, flags: int, directory: int, name: str) -> int:
    try:
        return os.open(part, flags, dir_fd=directory)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise RefusedError(f"{name}: a symbolic link (or not a folder) on its path") from error
        raise


def digest(fd: int, name: str, budget: Budget | None) -> tuple[str, int]:
    """SHA-256 and length of what `fd` reads from its start, each chunk counted against `budget` as it
    is read (so reading stops at the cap)."""
    hasher = hashlib.sha256()
    total = 0
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        offset += len(chunk)
        total += len(chunk)
        if budget is not None:
            budget.read(name, len(chunk))
        hasher.update(chunk)
    return hasher.hexdigest(), total


def judge_file(volume: Path, name: str, budget: Budget | None) -> Entry:
    """Open `name` safely, hash it within `budget`: its manifest entry."""
    if budget is not None:
        budget.open_one(name)
    fd, info = open_regular(volume, name)
    try:
        sha, read = digest(fd, name, budget)
    finally:
        os.close(fd)
    if read != info.st_size:
        raise RefusedError(f"{name}: changed while it was read ({info.st_size} bytes listed, {read} read)")
    dev = 0 if info.st_dev == folder_device(volume, name) else info.st_dev
    return Entry(name, info.st_size, sha, dev, info.st_ino)


def folder_device(volume: Path, name: str) -> int:
    """The device of the top folder `name` is under (outputs/, logs/), as this pod sees it."""
    return os.lstat(volume / name.split("/", 1)[0]).st_dev


def same_file(volume: Path, info: os.stat_result, expected: Entry) -> bool:
    """Whether `info` is the file `expected` describes: same inode, on the device it was on."""
    device = expected.dev or folder_device(volume, expected.name)
    return (info.st_dev, info.st_ino) == (device, expected.inode)


def encode_manifest(entries: Iterable[Entry]) -> bytes:
    document = {"version": MANIFEST_VERSION, "files": [asdict(e) for e in entries]}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def write_manifest(volume: Path, entries: Iterable[Entry]) -> str:
    """Write <volume>/filtering/manifest.json (replacing it, never through a link); its SHA-256."""
    data = encode_manifest(entries)
    folder = volume / MANIFEST_FOLDER
    folder.mkdir(exist_ok=True)
    temporary = folder / ".manifest.json.tmp"
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, volume / MANIFEST)
    return hashlib.sha256(data).hexdigest()


def read_manifest(volume: Path, expected_sha256: str | None) -> list[Entry]:
    """The manifest's entries; RefusedError when it is missing, not a regular file, too large, its SHA-256 is
    not `expected_sha256` (when given) or it is malformed."""
    try:
        fd, info = open_regular(volume, MANIFEST)
    except FileNotFoundError as error:
        raise RefusedError(f"{MANIFEST}: the filter's manifest is missing") from error
    try:
        if info.st_size > MANIFEST_LIMIT:
            raise RefusedError(f"{MANIFEST}: {info.st_size} bytes, too large to be the filter's manifest")
        data = os.pread(fd, MANIFEST_LIMIT + 1, 0)
    finally:
        os.close(fd)
    actual = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        raise RefusedError(f"{MANIFEST}: SHA-256 {actual} is not the {expected_sha256} the filter recorded")
    try:
        return list(_entries(json.loads(data)))
    except (ValueError, TypeError, KeyError) as error:
        raise RefusedError(f"{MANIFEST}: malformed ({type(error).__name__})") from error


def _entries(document: Any) -> Iterator[Entry]:
    if not isinstance(document, dict) or document.get("version") != MANIFEST_VERSION:
        raise ValueError("not a version 1 manifest")
    for item in document["files"]:
        yield Entry(
            str(item["name"]), int(item["size"]), str(item["sha256"]), int(item["dev"]), int(item["inode"])
        )
