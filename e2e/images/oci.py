"""A small OCI image packer for the real-node tests (stdlib only), and the recipe's data as a CLI.

`e2e/images/build.sh` builds root filesystems without Docker; this module turns one into a single-layer
OCI image-layout tar that `ctr images import` names by its index.json annotations. It also answers
build.sh's questions about `recipe.json` (the images' configs, which `unit_tests/test_image_recipe.py`
compares with the Dockerfile) and computes the cache keys.

    oci.py get <dotted.key>                  a recipe value (lists one item a line)
    oci.py ref <image> <key>                 the image's full name, e.g. ocean.local/python:3.11-<key>
    oci.py key [--text S]... [--root R] [PATH...]
                                             a 12-hex hash of the texts and the files (a directory's
                                             git-tracked and untracked-but-not-ignored files, or its
                                             tree outside git; never __pycache__ or *.egg-info)
    oci.py files [--root R] PATH...          those input files, NUL-terminated (to stage them)
    oci.py mirror <suite>                    the URI and keyring of the first apt source of <suite>
    oci.py pack --rootfs DIR --image <image> --key <key> --out FILE
                                             write the archive (the caller renames it into place)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

HERE = Path(__file__).resolve().parent
RECIPE = HERE / "recipe.json"

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
# Directories whose contents a container runtime provides: packed empty.
RUNTIME_DIRS = ("dev", "proc", "sys")
SKIPPED_NAMES = ("__pycache__",)
SKIPPED_SUFFIXES = (".egg-info", ".pyc")
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}
CHUNK = 1 << 20


def load_recipe(path: Path = RECIPE) -> dict[str, Any]:
    recipe: dict[str, Any] = json.loads(path.read_text())
    return recipe


def lookup(recipe: dict[str, Any], dotted: str) -> Any:
    value: Any = recipe
    for part in dotted.split("."):
        value = value[part]
    return value


def image_config(recipe: dict[str, Any], image: str) -> dict[str, Any]:
    """The `config` object of the image's OCI config (Entrypoint, Cmd, User, Env, WorkingDir)."""
    config: dict[str, Any] = recipe["images"][image]["config"]
    return config


def image_ref(recipe: dict[str, Any], image: str, key: str) -> str:
    entry = recipe["images"][image]
    return f"{entry['name']}:{entry['tag'].format(key=key)}"


# --- cache keys -----------------------------------------------------------------------------------


def _skipped(rel: str) -> bool:
    parts = rel.split("/")
    return any(p in SKIPPED_NAMES or p.endswith(SKIPPED_SUFFIXES) for p in parts)


def _git_files(root: Path, rel: str) -> list[str] | None:
    """The files under `rel` git would commit (tracked or untracked, not ignored); None outside git."""
    try:
        result = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
                "--",
                rel,
            ],
            capture_output=True,
            check=False,
        )
    except FileNotFoundError:
        return None
    if result.returncode != 0:
        return None
    names = {n for n in result.stdout.decode().split("\0") if n}
    # A tracked file deleted from the work tree is not an input any more.
    return sorted(n for n in names if os.path.lexists(root / n))


def _walk_files(root: Path, rel: str) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root / rel):
        dirnames[:] = [d for d in dirnames if not _skipped(d)]
        for name in filenames:
            found.append(str((Path(dirpath) / name).relative_to(root)))
    return sorted(found)


def input_files(root: Path, rel: str) -> list[str]:
    if not (root / rel).is_dir() or (root / rel).is_symlink():
        return [rel]
    files = _git_files(root, rel)
    if files is None:
        files = _walk_files(root, rel)
    return [f for f in files if not _skipped(f)]


def _file_digest(path: Path) -> str:
    if path.is_symlink():
        return "link:" + os.readlink(path)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(texts: list[str], root: Path, paths: list[str], length: int = 12) -> str:
    """A hash of the texts and of every input file's path, executable bit and contents."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(b"text\0" + text.encode() + b"\n")
    for rel in paths:
        for name in input_files(root, rel):
            path = root / name
            executable = "x" if not path.is_symlink() and os.access(path, os.X_OK) else "-"
            digest.update(f"file\0{name}\0{executable}\0{_file_digest(path)}\n".encode())
    return digest.hexdigest()[:length]


# --- the Debian mirror ----------------------------------------------------------------------------

DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
APT_ETC = Path("/etc/apt")


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    stanza: dict[str, str] = {}
    field = ""
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, field = {}, ""
        elif line[0] in " \t":
            if field:
                stanza[field] += "\n" + line.strip()
        else:
            field, _, value = line.partition(":")
            field = field.strip().lower()
            stanza[field] = value.strip()


def _one_line_sources(text: str) -> Iterator[dict[str, str]]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        options = ""
        if "[" in line:
            head, _, rest = line.partition("[")
            options, _, tail = rest.partition("]")
            line = head + tail
        words = line.split()
        if len(words) < 3:
            continue
        source = {"types": words[0], "uris": words[1], "suites": words[2], "components": " ".join(words[3:])}
        for option in options.split():
            name, _, value = option.partition("=")
            if name == "signed-by":
                source["signed-by"] = value
        yield source


def apt_mirror(suite: str, etc: Path = APT_ETC) -> tuple[str, str]:
    """The URI of the first enabled `deb` source of `suite` with component main, and its keyring.

    deb822 files (sources.list.d/*.sources) first, then sources.list and sources.list.d/*.list. The
    keyring is the source's Signed-By when that names a file, else the Debian archive keyring.
    """
    sources: list[dict[str, str]] = []
    for path in sorted(etc.glob("sources.list.d/*.sources")):
        sources.extend(_deb822_stanzas(path.read_text()))
    for path in [etc / "sources.list", *sorted(etc.glob("sources.list.d/*.list"))]:
        if path.is_file():
            sources.extend(_one_line_sources(path.read_text()))
    for source in sources:
        if (
            "deb" in source.get("types", "").split()
            and suite in source.get("suites", "").split()
            and "main" in source.get("components", "").split()
            and source.get("enabled", "yes").lower() != "no"
        ):
            for uri in source.get("uris", "").split():
                if uri.startswith(("http://", "https://", "file:/")):
                    signed_by = source.get("signed-by", "")
                    keyring = (
                        signed_by if signed_by.startswith("/") and "\n" not in signed_by else DEFAULT_KEYRING
                    )
                    return uri.rstrip("/"), keyring
    raise LookupError(f"no apt source for suite {suite!r} (component main) under {etc}")


# --- the layer --------------------------------------------------------------------------------------


class HashingWriter(io.RawIOBase):
    """Counts and hashes what passes through to `out` (a layer's digest is the sha256 of its tar)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.out.write(view)
        self.sha.update(view)
        self.size += len(view)
        return len(view)


def walk_rootfs(rootfs: Path) -> Iterator[tuple[Path, str]]:
    """Every path below rootfs, parents first, names sorted (a deterministic tar order).

    The contents of /dev, /proc and /sys are left out: the runtime mounts its own there.
    """

    def walk(directory: Path, prefix: str) -> Iterator[tuple[Path, str]]:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            path = Path(entry.path)
            yield path, rel
            if entry.is_dir(follow_symlinks=False) and not (prefix == "" and entry.name in RUNTIME_DIRS):
                yield from walk(path, rel + "/")

    yield from walk(rootfs, "")


def write_layer(rootfs: Path, out: BinaryIO) -> tuple[str, int]:
    """Write rootfs as an uncompressed layer tar to out; return its digest and size.

    Numeric owners only, modes (set-id bits too), symlinks and hardlinks as they are, whole-second
    mtimes; sockets are skipped.
    """
    writer = HashingWriter(out)
    stream = io.BufferedWriter(writer, buffer_size=CHUNK)
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path, rel in walk_rootfs(rootfs):
            info = tar.gettarinfo(str(path), arcname=rel)
            if info is None:  # a socket: nothing a tar can hold
                continue
            info.uname = info.gname = ""
            info.mtime = int(info.mtime)
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    stream.flush()
    return "sha256:" + writer.sha.hexdigest(), writer.size


# --- the archive ------------------------------------------------------------------------------------


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
    }


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def architecture() -> str:
    machine = platform.machine()
    return ARCHITECTURES.get(machine, machine)


def pack(rootfs: Path, ref: str, config: dict[str, Any], out: Path, created_by: str = "") -> dict[str, Any]:
    """Write an OCI image-layout tar of rootfs named `ref` to out; return its manifest descriptor."""
    layer_path = out.with_name(out.name + ".layer")
    try:
        with layer_path.open("wb") as layer:
            layer_digest, layer_size = write_layer(rootfs, layer)
        image_config = {
            "architecture": architecture(),
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": created_by or "e2e/images/oci.py"}],
        }
        config_blob = _json(image_config)
        config_desc = _descriptor(MEDIA_CONFIG, config_blob)
        layer_desc = {"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer_size}
        manifest_blob = _json(
            {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config_desc, "layers": [layer_desc]}
        )
        manifest_desc = _descriptor(MEDIA_MANIFEST, manifest_blob)
        manifest_desc["platform"] = {"architecture": image_config["architecture"], "os": "linux"}
        manifest_desc["annotations"] = {
            "io.containerd.image.name": ref,
            "org.opencontainers.image.ref.name": ref.rpartition(":")[2],
        }
        index_blob = _json({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [manifest_desc]})
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
            _add_bytes(tar, "index.json", index_blob)
            _add_dir(tar, "blobs")
            _add_dir(tar, "blobs/sha256")
            for blob in (config_blob, manifest_blob):
                _add_bytes(tar, "blobs/sha256/" + hashlib.sha256(blob).hexdigest(), blob)
            info = tarfile.TarInfo("blobs/sha256/" + layer_digest.removeprefix("sha256:"))
            info.size = layer_size
            info.mode = 0o644
            with layer_path.open("rb") as layer:
                tar.addfile(info, layer)
    finally:
        layer_path.unlink(missing_ok=True)
    return manifest_desc


# --- CLI --------------------------------------------------------------------------------------------


def _print_value(value: Any) -> None:
    if isinstance(value, list):
        for item in value:
            print(item)
    elif isinstance(value, dict):
        print(json.dumps(value, sort_keys=True))
    else:
        print(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("get", help="print a recipe value")
    get.add_argument("dotted")
    ref = sub.add_parser("ref", help="print an image's full name")
    ref.add_argument("image")
    ref.add_argument("key")
    key = sub.add_parser("key", help="hash texts and files into a cache key")
    key.add_argument("--text", action="append", default=[])
    key.add_argument("--root", type=Path, default=Path.cwd())
    key.add_argument("paths", nargs="*")
    files = sub.add_parser("files", help="list the input files of paths (NUL-terminated)")
    files.add_argument("--root", type=Path, default=Path.cwd())
    files.add_argument("paths", nargs="+")
    mirror = sub.add_parser("mirror", help="print the apt mirror URI and keyring of a suite")
    mirror.add_argument("suite")
    pk = sub.add_parser("pack", help="write an image archive")
    pk.add_argument("--rootfs", type=Path, required=True)
    pk.add_argument("--image", required=True)
    pk.add_argument("--key", required=True)
    pk.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    recipe = load_recipe()
    if args.command == "get":
        _print_value(lookup(recipe, args.dotted))
    elif args.command == "ref":
        print(image_ref(recipe, args.image, args.key))
    elif args.command == "key":
        print(cache_key(args.text, args.root.resolve(), args.paths))
    elif args.command == "files":
        for rel in args.paths:
            for name in input_files(args.root.resolve(), rel):
                sys.stdout.write(name + "\0")
    elif args.command == "mirror":
        try:
            uri, keyring = apt_mirror(args.suite)
        except LookupError as e:
            print(f"oci.py: {e}", file=sys.stderr)
            return 1
        print(uri)
        print(keyring)
    else:
        if not stat.S_ISDIR(os.lstat(args.rootfs).st_mode):
            parser.error(f"{args.rootfs} is not a directory")
        name = image_ref(recipe, args.image, args.key)
        desc = pack(
            args.rootfs, name, image_config(recipe, args.image), args.out, f"e2e/images ({args.image})"
        )
        print(f"{name} {desc['digest']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
