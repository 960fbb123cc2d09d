"""The real-node images (e2e/images) without building them.

The project image is built from e2e/images/recipe.json where no Docker engine is, and from the
Dockerfile where one is: these tests keep the two in step (entrypoint, command, user, environment,
copied folders, the user it adds, the lock it installs with), and check the OCI packer on a tiny root
filesystem and the apt-source reading on sample files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import tarfile
from pathlib import Path
from typing import Any

import pytest

from e2e.images import oci

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
# What the python base image sets and the recipe spells out (the Dockerfile inherits them).
BASE_IMAGE_ENV = {"PATH", "LANG"}

# --- the Dockerfile, parsed -----------------------------------------------------------------------


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions (keyword upper-cased, arguments), one list per FROM."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    result: list[list[tuple[str, str]]] = []
    for line in lines:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM" or not result:
            result.append([])
        result[-1].append((keyword, arguments.strip()))
    return result


def arguments(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in stage if kw == keyword]


def exec_form(stage: list[tuple[str, str]], keyword: str) -> Any:
    found = arguments(stage, keyword)
    return json.loads(found[-1]) if found else None


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in arguments(stage, "ENV"):
        for pair in shlex.split(args):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def copies(stage: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """COPY instructions from the build context (not --from another stage): (sources, destination)."""
    found = []
    for args in arguments(stage, "COPY"):
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        found.append((words[:-1], words[-1]))
    return found


def shell_commands(stage: list[tuple[str, str]]) -> list[list[str]]:
    """Every simple command of the stage's RUN instructions, split on && and ;."""
    commands = []
    for args in arguments(stage, "RUN"):
        words: list[str] = []
        for word in [*shlex.split(args), "&&"]:
            if word in ("&&", ";", "||"):
                if words:
                    commands.append(words)
                words = []
            else:
                words.append(word)
    return commands


def command(stage: list[tuple[str, str]], *prefix: str) -> list[str]:
    found = [c for c in shell_commands(stage) if c[: len(prefix)] == list(prefix)]
    assert len(found) == 1, f"one `{' '.join(prefix)}` command expected, found {found}"
    return found[0]


def last(found: list[str]) -> str | None:
    return found[-1] if found else None


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def mismatches(dockerfile: str, recipe: dict[str, Any]) -> list[str]:
    """Where the recipe's project image differs from the Dockerfile's final stage (empty: in step)."""
    build, final = stages(dockerfile)[0], stages(dockerfile)[-1]
    config = oci.image_config(recipe, "ocean-c2d")
    project = recipe["project"]
    problems = []

    def differ(what: str, dockerfile_value: Any, recipe_value: Any) -> None:
        if dockerfile_value != recipe_value:
            problems.append(f"{what}: Dockerfile {dockerfile_value!r}, recipe {recipe_value!r}")

    for stage in (build, final):
        base, _, digest = arguments(stage, "FROM")[0].split()[0].partition("@")
        differ("FROM", base, f"python:{recipe['base']['python']}-slim")
        differ("FROM pinned by digest", bool(re.fullmatch("sha256:[0-9a-f]{64}", digest)), True)
    differ("ENTRYPOINT", exec_form(final, "ENTRYPOINT"), config.get("Entrypoint"))
    differ("CMD", exec_form(final, "CMD"), config.get("Cmd"))
    differ("USER", last(arguments(final, "USER")), config.get("User"))
    differ("WORKDIR", last(arguments(final, "WORKDIR")), config.get("WorkingDir"))
    recipe_env = dict(item.split("=", 1) for item in config.get("Env", []))
    dockerfile_env = env_of(final)
    differ("ENV", dockerfile_env, {k: v for k, v in recipe_env.items() if k not in BASE_IMAGE_ENV})
    differ("PATH (the venv first)", recipe_env.get("PATH", "").split(":")[0], project["venv"] + "/bin")
    differ("COPY into the final stage", {s[0]: d for s, d in copies(final)}, project["copy"])
    differ(
        "COPY into the build stage",
        sorted(s for srcs, _ in copies(build) for s in srcs),
        sorted(project["sources"]),
    )
    differ("useradd", command(final, "useradd")[1:], project["useradd"])
    differ(
        "the image runs as the added user", config["User"].split(":")[0], option(project["useradd"], "--uid")
    )
    dependencies = command(build, "pip", "wheel", "--no-cache-dir", "--require-hashes")
    differ("pip wheel --requirement", option(dependencies, "--requirement"), project["constraint"])
    differ("pip wheel --no-deps of the dependencies", "--no-deps" in dependencies, True)
    project_wheel = [c for c in shell_commands(build) if c[:2] == ["pip", "wheel"] and c != dependencies]
    differ("pip wheel of the project", [c[-1] for c in project_wheel], ["."])
    differ(
        "pip wheel of the project without dependencies", all("--no-deps" in c for c in project_wheel), True
    )
    pins = [w for w in command(build, "pip", "install") if w.startswith("pip==")]
    differ("the build stage's pip", pins, [f"pip=={project['pip']}"])
    installs = command(final, "pip", "install")
    differ("pip install offline", "--no-index" in installs, True)
    return problems


def test_the_recipe_builds_the_dockerfiles_image() -> None:
    assert mismatches(DOCKERFILE.read_text(), oci.load_recipe()) == []


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("USER 10001:10001", "USER 10002:10002", "USER"),
        ('CMD ["run"]', 'CMD ["serve"]', "CMD"),
        ('ENTRYPOINT ["ocean-c2d"]', 'ENTRYPOINT ["ocean"]', "ENTRYPOINT"),
        ("PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=1 \\\n    TZ=UTC", "ENV"),
        ("COPY crds /opt/ocean-c2d/crds", "COPY crds /opt/crds", "COPY into the final stage"),
        ("useradd --uid 10001", "useradd --uid 10005", "useradd"),
        ("--requirement requirements.lock", "--requirement other.lock", "pip wheel --requirement"),
        ("FROM python:3.11-slim@", "FROM python:3.12-slim@", "FROM"),
        (
            "-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7\n",
            "-slim\n",
            "FROM pinned",
        ),
        ("--no-deps --wheel-dir /wheels .", "--wheel-dir /wheels .", "pip wheel of the project without"),
        (
            "COPY operator ./operator",
            "COPY operator ./operator\nCOPY samples ./samples",
            "COPY into the build",
        ),
        ("pip==25.3", "pip==26.0", "the build stage's pip"),
    ],
)
def test_a_dockerfile_change_breaks_the_check(old: str, new: str, field: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text, f"the Dockerfile no longer has {old!r}: update this test"
    problems = mismatches(text.replace(old, new, 1), oci.load_recipe())
    assert any(p.startswith(field) for p in problems), problems


def test_a_recipe_change_breaks_the_check() -> None:
    recipe = oci.load_recipe()
    recipe["images"]["ocean-c2d"]["config"]["Env"].append("EXTRA=1")
    assert any(p.startswith("ENV") for p in mismatches(DOCKERFILE.read_text(), recipe))


def test_the_image_names_are_the_contract() -> None:
    recipe = oci.load_recipe()
    assert oci.image_ref(recipe, "pause", "k") == "ocean.local/pause:3.10"
    assert oci.image_ref(recipe, "python", "k") == "ocean.local/python:3.11-k"
    assert oci.image_ref(recipe, "algo-root", "k") == "ocean.local/algo-root:k"
    assert oci.image_ref(recipe, "ocean-c2d", "k") == "ocean.local/ocean-c2d:k"
    algo = oci.image_config(recipe, "algo-root")
    assert (algo["User"], algo["WorkingDir"]) == ("root", "/root")
    assert "HOME=/root" in algo["Env"]
    assert oci.image_config(recipe, "pause") == {"Entrypoint": ["/pause"], "User": "65535:65535"}
    assert "python-is-python3" in recipe["base"]["include"]  # Ocean algorithms call `python $ALGO`


# --- the packer -------------------------------------------------------------------------------------


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    tool = root / "bin" / "tool"
    tool.write_bytes(b"#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    secret = root / "etc" / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    (root / "bin" / "alias").symlink_to("tool")
    os.link(tool, root / "bin" / "hardlink")
    for runtime_dir in ("dev", "proc"):
        (root / runtime_dir).mkdir()
        (root / runtime_dir / "leftover").write_text("the runtime mounts its own here\n")
    return root


def read_archive(path: Path) -> tuple[dict[str, bytes], list[str]]:
    with tarfile.open(path) as tar:
        names = tar.getnames()
        blobs = {}
        for member in tar.getmembers():
            if member.isreg():
                extracted = tar.extractfile(member)
                assert extracted is not None
                blobs[member.name] = extracted.read()
    return blobs, names


def blob(files: dict[str, bytes], descriptor: dict[str, Any]) -> bytes:
    algorithm, _, digest = descriptor["digest"].partition(":")
    data = files[f"blobs/{algorithm}/{digest}"]
    assert hashlib.sha256(data).hexdigest() == digest
    assert len(data) == descriptor["size"]
    return data


def test_pack_writes_an_importable_oci_layout(rootfs: Path, tmp_path: Path) -> None:
    config = {"Entrypoint": ["/bin/tool"], "User": "10001:10001", "Env": ["PATH=/bin"]}
    archive = tmp_path / "image.tar"
    oci.pack(rootfs, "ocean.local/tiny:abc123", config, archive)

    files, names = read_archive(archive)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == oci.MEDIA_INDEX
    [entry] = index["manifests"]
    assert entry["annotations"] == {
        "io.containerd.image.name": "ocean.local/tiny:abc123",
        "org.opencontainers.image.ref.name": "abc123",
    }
    assert entry["platform"] == {"architecture": oci.architecture(), "os": "linux"}
    manifest = json.loads(blob(files, entry))
    assert manifest["mediaType"] == entry["mediaType"] == oci.MEDIA_MANIFEST
    assert manifest["config"]["mediaType"] == oci.MEDIA_CONFIG
    image_config = json.loads(blob(files, manifest["config"]))
    assert image_config["config"] == config
    assert (image_config["os"], image_config["architecture"]) == ("linux", oci.architecture())
    [layer_desc] = manifest["layers"]
    assert layer_desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    layer = blob(files, layer_desc)
    # Uncompressed: the diff_id is the layer's own digest.
    assert image_config["rootfs"] == {"type": "layers", "diff_ids": [layer_desc["digest"]]}
    assert not (set(names) - {"oci-layout", "index.json", "blobs", "blobs/sha256"} - set(files))

    layer_path = tmp_path / "layer.tar"
    layer_path.write_bytes(layer)
    with tarfile.open(layer_path) as tar:
        members = {m.name.rstrip("/"): m for m in tar.getmembers()}
        order = [m.name.rstrip("/") for m in tar.getmembers()]
    assert order == sorted(order), "a deterministic, parents-first order"
    assert set(members) == {
        "bin",
        "bin/alias",
        "bin/hardlink",
        "bin/tool",
        "dev",
        "etc",
        "etc/secret",
        "proc",
    }, "/dev and /proc are packed empty"
    assert members["bin/alias"].issym()
    assert members["bin/alias"].linkname == "tool"
    # A hardlink: the first name in tar order holds the data, the other links to it.
    assert members["bin/hardlink"].isreg()
    assert members["bin/hardlink"].mode == 0o755
    assert members["bin/tool"].islnk()
    assert members["bin/tool"].linkname == "bin/hardlink"
    assert members["bin/tool"].mode == 0o755
    assert members["etc/secret"].mode == 0o600
    assert all(m.uname == "" and m.gname == "" for m in members.values()), "numeric owners only"
    assert members["etc/secret"].uid == os.getuid()
    assert not any(p.name.endswith(".layer") for p in tmp_path.iterdir()), "the layer's temp file is gone"


def test_pack_is_deterministic(rootfs: Path, tmp_path: Path) -> None:
    first = oci.pack(rootfs, "ocean.local/tiny:1", {}, tmp_path / "a.tar")
    second = oci.pack(rootfs, "ocean.local/tiny:1", {}, tmp_path / "b.tar")
    assert first["digest"] == second["digest"]
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


# --- keys and the apt mirror --------------------------------------------------------------------------


def test_cache_key_follows_contents_not_bytecode(tmp_path: Path) -> None:
    package = tmp_path / "operator" / "pkg"
    package.mkdir(parents=True)
    (package / "mod.py").write_text("x = 1\n")
    key = oci.cache_key(["recipe"], tmp_path, ["operator"])
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "operator" / "pkg.egg-info").mkdir()
    (tmp_path / "operator" / "pkg.egg-info" / "PKG-INFO").write_text("Name: pkg\n")
    assert oci.cache_key(["recipe"], tmp_path, ["operator"]) == key
    assert oci.cache_key(["other recipe"], tmp_path, ["operator"]) != key
    (package / "mod.py").write_text("x = 2\n")
    assert oci.cache_key(["recipe"], tmp_path, ["operator"]) != key
    assert len(key) == 12


def test_apt_mirror_reads_deb822_before_sources_list(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n"
        "URIs: http://mirror.invalid/debian-security\n"
        "Suites: bookworm-security\n"
        "Components: main\n"
        "\n"
        "Types: deb-src deb\n"
        "# a comment\n"
        "URIs: http://mirror.invalid/debian/\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main contrib\n"
        "Signed-By: /nonexistent/but/a/path.gpg\n"
    )
    (tmp_path / "sources.list").write_text("deb http://other.invalid/debian bookworm main\n")
    assert oci.apt_mirror("bookworm", tmp_path) == (
        "http://mirror.invalid/debian",
        "/nonexistent/but/a/path.gpg",
    )


def test_apt_mirror_reads_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.invalid/debian bookworm main\n"
        "deb http://updates.invalid/debian bookworm-updates main\n"
        "deb-src http://src.invalid/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian bookworm main contrib\n"
    )
    assert oci.apt_mirror("bookworm", tmp_path) == ("http://mirror.invalid/debian", "/k.gpg")
    with pytest.raises(LookupError):
        oci.apt_mirror("trixie", tmp_path)
