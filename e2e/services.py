"""Real S3 and IPFS servers on loopback for the data-plane tests, one of each per pytest session.

Both are Go programs that `toolchain/build.sh` builds from the versions pinned in
`toolchain/versions.env` into the version-keyed cache (kubo's `ipfs`, and versitygw, an Apache-2.0 S3
gateway). The fixtures take them from the PATH fragment `toolchain/build.sh --path kubo versitygw`
prints, and fail (they do not skip) when that fails: run `toolchain/build.sh kubo versitygw` first.

- `ipfs_api`: a kubo node in a temporary IPFS_PATH, run `--offline`: no swarm listener, no routing,
  no gateway, no bootstrap peers, so no traffic beyond its RPC API on 127.0.0.1:<free port>.
- `s3_server`: versitygw with its posix backend on a temporary directory (a bucket is a directory, an
  object a file, its metadata in extended attributes), one root account, on 127.0.0.1:<free port>.

A fixture returns once its server answers a request, and stops the server (SIGTERM, then SIGKILL) at
the end of the session. Each server's output is in `<its temporary directory>/server.log`.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import httpx
import pytest
from botocore.config import Config  # type: ignore[import-untyped]

from unit_tests.built_tools import built

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("kubo", "versitygw")  # only these: the data-plane tests need none of the cluster's tools
# A cold start of either server takes well under a second; this bounds a stuck or busy machine.
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class IPFSNode:
    api_url: str  # http://127.0.0.1:<port>, the kubo RPC API (POST /api/v0/...)
    repo: Path  # the node's IPFS_PATH
    log: Path
    ready_seconds: float  # from the daemon's start to its first answer


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str  # http://127.0.0.1:<port>, path-style addressing
    access_key: str
    secret_key: str
    region: str
    root: Path  # the posix backend's top directory: one subdirectory per bucket
    log: Path
    ready_seconds: float

    def client(self, secret_key: str | None = None) -> Any:
        """A boto3 S3 client of this server (path-style, no retries); `secret_key` overrides the real one."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )


def new_bucket(client: Any, prefix: str = "test") -> str:
    """A bucket with a fresh name, created."""
    bucket = f"{prefix}-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return bucket


def free_port() -> int:
    return free_port_on("127.0.0.1")


@pytest.fixture(scope="session")
def toolchain_path() -> str:
    """The PATH fragment holding the built servers (`toolchain/build.sh --path kubo versitygw`)."""
    return built(*TOOLS)


def _binary(toolchain_path: str, name: str) -> str:
    """The built `name`, looked up on the toolchain's PATH only (not whatever else is installed)."""
    found = shutil.which(name, path=toolchain_path)
    if found is None:
        pytest.fail(f"no {name} on the toolchain PATH {toolchain_path}", pytrace=False)
    return found


def _log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    try:
        async with asyncio.timeout(STOP_TIMEOUT):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()


async def _wait_until_answering(
    process: asyncio.subprocess.Process, method: str, url: str, log: Path, started: float
) -> float:
    """Retry `method url` (1 s timeout each) until it returns 200; the seconds since `started`."""
    last = "no answer yet"
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            if process.returncode is not None:
                pytest.fail(
                    f"{url}: the server exited {process.returncode} before answering\n{_log_tail(log)}",
                    pytrace=False,
                )
            try:
                response = await client.request(method, url)
            except httpx.TransportError as error:
                last = repr(error)
            else:
                if response.status_code == 200:
                    return time.monotonic() - started
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            if time.monotonic() - started > READY_TIMEOUT:
                pytest.fail(
                    f"{url} did not answer within {READY_TIMEOUT}s (last: {last})\n{_log_tail(log)}",
                    pytrace=False,
                )
            await asyncio.sleep(0.05)


@asynccontextmanager
async def background_server(
    argv: Sequence[str], env: Mapping[str, str], log: Path, method: str, ready_url: str
) -> AsyncIterator[float]:
    """Run `argv` with its output in `log`; yield the seconds it took to answer `ready_url`."""
    started = time.monotonic()
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        yield await _wait_until_answering(process, method, ready_url, log, started)
    finally:
        await _stop(process)


async def _run(argv: Sequence[str], env: Mapping[str, str]) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {process.returncode}:\n{output.decode()}", pytrace=False)


@pytest.fixture(scope="session")
async def ipfs_api(toolchain_path: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[IPFSNode]:
    """A kubo node, offline, with its RPC API on a free loopback port."""
    ipfs = _binary(toolchain_path, "ipfs")
    home = tmp_path_factory.mktemp("ipfs")
    repo = home / "repo"
    # IPFS_TELEMETRY=off: kubo ships no collector and skips telemetry offline; this only makes it explicit.
    env = {**os.environ, "IPFS_PATH": str(repo), "IPFS_TELEMETRY": "off"}
    # The `test` profile: loopback-only addresses, no bootstrap peers, no mDNS, no autoconf fetch.
    await _run([ipfs, "init", "--profile=test"], env)
    port = free_port()
    config_file = repo / "config"
    config = json.loads(config_file.read_text())
    config["Addresses"]["API"] = f"/ip4/127.0.0.1/tcp/{port}"
    config["Addresses"]["Gateway"] = []  # no HTTP gateway
    config["Addresses"]["Swarm"] = []  # no libp2p listener
    config["Routing"]["Type"] = "none"
    config["Bootstrap"] = []
    config_file.write_text(json.dumps(config, indent=2))

    api_url = f"http://127.0.0.1:{port}"
    log = home / "server.log"
    argv = [ipfs, "daemon", "--offline"]
    async with background_server(argv, env, log, "POST", f"{api_url}/api/v0/id") as ready_seconds:
        yield IPFSNode(api_url=api_url, repo=repo, log=log, ready_seconds=ready_seconds)


def _xattrs_supported(directory: Path) -> bool:
    try:
        os.setxattr(directory, "user.ocean-c2d-probe", b"1")
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    os.removexattr(directory, "user.ocean-c2d-probe")
    return True


@pytest.fixture(scope="session")
async def s3_server(toolchain_path: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[S3Server]:
    """versitygw (posix backend on a temporary directory) on a free loopback port."""
    async with start_s3_server(toolchain_path, tmp_path_factory.mktemp("s3"), "127.0.0.1") as server:
        yield server


def free_port_on(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def start_s3_server(toolchain_path: str, home: Path, host: str) -> AsyncIterator[S3Server]:
    """versitygw on a free port of `host`: loopback, or the real node's veth address (its pods reach
    this machine only there)."""
    versitygw = _binary(toolchain_path, "versitygw")
    root = home / "root"
    root.mkdir()
    access_key = "ocean-c2d-test"
    secret_key = secrets.token_urlsafe(30)
    region = "us-east-1"
    port = free_port_on(host)
    # The root credentials go in the environment (versitygw's ROOT_* variables), not on the command
    # line; the caller's own VGW_* settings (IAM, events, TLS...) are left out.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VGW_", "ROOT_"))}
    env |= {"ROOT_ACCESS_KEY_ID": access_key, "ROOT_SECRET_ACCESS_KEY": secret_key}
    posix = ["posix"]
    if not _xattrs_supported(root):
        # The posix backend keeps object metadata in user xattrs; without them, in a sidecar directory.
        (home / "meta").mkdir()
        posix += ["--sidecar", str(home / "meta")]
    argv = [
        versitygw,
        "--port",
        f"{host}:{port}",
        "--region",
        region,
        "--health",
        "/health",
        *posix,
        str(root),
    ]
    endpoint_url = f"http://{host}:{port}"
    log = home / "server.log"
    async with background_server(argv, env, log, "GET", f"{endpoint_url}/health") as ready_seconds:
        yield S3Server(
            endpoint_url=endpoint_url,
            access_key=access_key,
            secret_key=secret_key,
            region=region,
            root=root,
            log=log,
            ready_seconds=ready_seconds,
        )
