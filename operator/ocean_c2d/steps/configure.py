"""`ocean-c2d configure`: fill the job's data volume with its inputs, its algorithm and their DDOs.

Environment (templates/configure-pod.yaml.j2): WORKFLOW (the workflow document, workflow.json), VOLUME
(/data), INPUTS and TRANSFORMATIONS (default VOLUME/inputs and VOLUME/transformations),
SIGNER_URL, SIGNER_TOKEN and WORKFLOW_NAMESPACE (downloads by DID are signed by the operator's signer:
no operator key in this pod; see signer_client.py), DISK_LIMIT_BYTES (all downloads together; no limit
when unset), and for the other sources IPFS_API[, IPFS_API_KEY, IPFS_API_CLIENT] and AWS_*
(AWS_ENDPOINT_URL for S3-compatible stores). Where it may connect: EGRESS_ALLOW_CIDRS and CLUSTER_CIDRS
(steps/egress.py); whom it may ask for a DID: ALLOWED_METADATA_CACHES and ALLOWED_PROVIDERS
(sources.ServiceAllowlist; empty: none).

The layout under VOLUME (reference §2.5):

    inputs/                      0755   re-created empty on every run (so are transformations/ and ddos/)
        <did w/o did:op:>/<i>    0644   file i of an input given by DID
        <input index>/<name>     0644   an input given by URL (name: the URL's last path segment, or "0")
        algoCustomData.json      0644   the algorithm's customData
    transformations/             0755
        algorithm                0755   rawCode, the URL's content, or the algorithm asset's first file
        1 .. N                   0755   the algorithm asset's further files
    ddos/<did w/o did:op:>       0644   the DDO of every input and algorithm given by DID
    outputs/                     0777   the algorithm runs as another user and writes here
    logs/                        0777
        algorithm.log            0666   created empty
    adminlogs/                   0755
        configure.log            0644   what was fetched, sizes, durations; never a signature, nonce,
                                        query string or key

Outcome, as exit code and termination message (contract.py):
    0   {"status": "Provisioned", "inputs": <count>, "bytes": <everything written>}
    31  {"status": "DataProvisioningFailed", "message": "input 1 (did:op:...): <why>"}: the algorithm is
        then not fetched
    32  {"status": "AlgorithmProvisioningFailed", "message": "algorithm (<source>): <why>"}
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

import httpx

from ocean_c2d.identity import user_agent
from ocean_c2d.resilience import describe_error, safe_url
from ocean_c2d.steps.contract import (
    EXIT_ALGORITHM_PROVISIONING_FAILED,
    EXIT_DATA_PROVISIONING_FAILED,
    EXIT_OK,
    TERMINATION_LOG,
    StepError,
    load_workflow,
    write_termination_message,
)
from ocean_c2d.steps.egress import EgressPolicy, guarded_client
from ocean_c2d.steps.signer_client import NoSigner, signer_client, signer_from_env
from ocean_c2d.steps.sources import (
    FetchContext,
    FetchResult,
    InlineSource,
    ProviderSource,
    Signer,
    Source,
    did_directory_name,
    file_name_from_url,
    sanitise_name,
    url_source,
)
from ocean_c2d.steps.streaming import (
    DEFAULT_BACKOFF_SECONDS,
    DEFAULT_RETRIES,
    DiskBudget,
    Expectation,
    FetchError,
    Limits,
    Log,
    Sleep,
    format_bytes,
    write_bytes,
)
from ocean_c2d.times import format_precise_time, utc_now

READ_ONLY_TREE_MODE = 0o755
WRITABLE_TREE_MODE = 0o777
ALGORITHM_MODE = 0o755
MESSAGE_LIMIT = 3000
STATUS_OF_EXIT = {
    EXIT_DATA_PROVISIONING_FAILED: "DataProvisioningFailed",
    EXIT_ALGORITHM_PROVISIONING_FAILED: "AlgorithmProvisioningFailed",
}


@dataclass(frozen=True)
class Layout:
    """The directories of the data volume the step fills."""

    volume: Path
    inputs: Path
    transformations: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Layout:
        if not env.get("VOLUME"):
            raise StepError(EXIT_DATA_PROVISIONING_FAILED, "VOLUME is not set")
        volume = Path(env["VOLUME"])
        return cls(
            volume=volume,
            inputs=Path(env.get("INPUTS") or volume / "inputs"),
            transformations=Path(env.get("TRANSFORMATIONS") or volume / "transformations"),
        )

    @property
    def ddos(self) -> Path:
        return self.volume / "ddos"

    @property
    def outputs(self) -> Path:
        return self.volume / "outputs"

    @property
    def logs(self) -> Path:
        return self.volume / "logs"

    @property
    def adminlogs(self) -> Path:
        return self.volume / "adminlogs"

    @property
    def configure_log(self) -> Path:
        return self.adminlogs / "configure.log"

    def prepare(self) -> None:
        """Create the trees with their modes (chmod after mkdir: the umask must not decide them).

        inputs/, transformations/ and ddos/ start empty, so a retried configure never counts or keeps
        what an earlier attempt left."""
        for tree in (self.inputs, self.transformations, self.ddos):
            if tree.exists():
                shutil.rmtree(tree)
            make_directory(tree, READ_ONLY_TREE_MODE)
        make_directory(self.outputs, WRITABLE_TREE_MODE)
        make_directory(self.logs, WRITABLE_TREE_MODE)
        make_directory(self.adminlogs, READ_ONLY_TREE_MODE)
        algorithm_log = self.logs / "algorithm.log"
        algorithm_log.write_bytes(b"")
        algorithm_log.chmod(0o666)


def make_directory(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)


class ConfigureLog:
    """Timestamped lines to adminlogs/configure.log (once opened) and to `echo` (the pod's stderr).

    Callers pass only safe text: URLs through `safe_url`, errors through `describe_error`."""

    def __init__(self, echo: TextIO | None = None) -> None:
        self.echo = echo
        self._file: IO[str] | None = None
        self._pending: list[str] = []

    def open(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")
        path.chmod(0o644)
        for line in self._pending:
            self._file.write(line)
        self._pending.clear()
        self._file.flush()

    def __call__(self, message: str) -> None:
        stamp = format_precise_time(utc_now())
        line = f"{stamp} {message}\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        else:
            self._pending.append(line)
        if self.echo is not None:
            self.echo.write(line)
            self.echo.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class Summary:
    inputs: int
    bytes: int


NO_SIGNER = NoSigner("no signer was given")


def _disk_limit(env: Mapping[str, str]) -> int | None:
    value = env.get("DISK_LIMIT_BYTES", "").strip()
    if not value:
        return None
    try:
        limit = int(value)
    except ValueError:
        raise StepError(EXIT_DATA_PROVISIONING_FAILED, "DISK_LIMIT_BYTES is not a number of bytes") from None
    if limit < 0:
        raise StepError(EXIT_DATA_PROVISIONING_FAILED, "DISK_LIMIT_BYTES is negative")
    return limit


def _stage(env: Mapping[str, str]) -> dict[str, Any]:
    if not env.get("WORKFLOW"):
        raise StepError(EXIT_DATA_PROVISIONING_FAILED, "WORKFLOW is not set")
    try:
        document = load_workflow(Path(env["WORKFLOW"]))
    except (OSError, ValueError) as error:
        raise StepError(
            EXIT_DATA_PROVISIONING_FAILED, f"cannot read the workflow document: {describe_error(error)}"
        ) from None
    stages = document.get("stages") if isinstance(document, dict) else None
    if not isinstance(stages, list) or not stages or not isinstance(stages[0], dict):
        raise StepError(EXIT_DATA_PROVISIONING_FAILED, "the workflow document has no stage")
    stage: dict[str, Any] = stages[0]
    return stage


def _user_data(spec: Mapping[str, Any], *legacy: str) -> Any:
    """The order's user data: `userData` (what the provider and the CRD send), else the legacy keys."""
    for key in ("userData", *legacy):
        if spec.get(key) is not None:
            return spec[key]
    return None


def _metadata_uri(stage: Mapping[str, Any]) -> str:
    output = stage.get("output")
    uri = output.get("metadataUri") if isinstance(output, dict) else None
    return uri if isinstance(uri, str) else ""


def _provider_source(
    spec: Mapping[str, Any],
    stage: Mapping[str, Any],
    layout: Layout,
    signer: Signer,
    mode: int = 0o644,
) -> ProviderSource:
    did = str(spec["did"])
    service_id, tx_id = spec.get("serviceId"), spec.get("transferTxId")
    if not service_id or not tx_id:
        raise FetchError("a download by DID needs serviceId and transferTxId")
    if isinstance(signer, NoSigner):  # say so before asking anyone anything
        raise FetchError(signer.message)
    return ProviderSource(
        did=did,
        service_id=str(service_id),
        transfer_tx_id=str(tx_id),
        metadata_uri=_metadata_uri(stage),
        ddo_dir=layout.ddos,
        signer=signer,
        user_data=_user_data(spec, "userdata", "algouserdata"),
        mode=mode,
    )


def input_label(spec: Any) -> str:
    if not isinstance(spec, dict):
        return "?"
    if spec.get("did"):
        return str(spec["did"])
    if spec.get("url"):
        return safe_url(str(spec["url"]))
    return "no did or url"


async def fetch_input(
    ctx: FetchContext,
    spec: Any,
    index: int,
    stage: Mapping[str, Any],
    layout: Layout,
    signer: Signer,
) -> FetchResult:
    """One input: by DID into inputs/<did w/o prefix>/<i>, by URL into inputs/<index>/<name>."""
    if not isinstance(spec, dict):
        raise FetchError("not an object")
    did, url = spec.get("did"), spec.get("url")
    if did and url:
        raise FetchError("names both a did and a url")
    if not did and not url:
        raise FetchError("names neither a did nor a url")
    expect = Expectation.from_spec(spec)
    source: Source
    if did:
        source = _provider_source(spec, stage, layout, signer)
        directory = layout.inputs / did_directory_name(str(did))

        def place(i: int) -> Path:
            return directory / str(i)

    else:
        source = url_source(str(url))
        directory = layout.inputs / sanitise_name(str(index))
        name = file_name_from_url(str(url))

        def place(i: int) -> Path:
            return directory / name

    await asyncio.to_thread(make_directory, directory, READ_ONLY_TREE_MODE)
    return await source.fetch(ctx, place, expect)


def algorithm_label(algorithm: Mapping[str, Any]) -> str:
    if algorithm.get("did"):
        return str(algorithm["did"])
    if algorithm.get("url"):
        return safe_url(str(algorithm["url"]))
    return "rawCode"


async def fetch_algorithm(
    ctx: FetchContext,
    algorithm: Mapping[str, Any],
    stage: Mapping[str, Any],
    layout: Layout,
    signer: Signer,
) -> FetchResult:
    """The algorithm into transformations/algorithm (and 1..N), its customData into inputs/."""
    raw_code = algorithm.get("rawCode", algorithm.get("rawcode"))
    candidates = (("did", algorithm.get("did")), ("url", algorithm.get("url")), ("rawCode", raw_code))
    given = [name for name, value in candidates if value]
    if len(given) != 1:
        raise FetchError(
            "names none of did, url and rawCode"
            if not given
            else f"names more than one of {', '.join(given)}"
        )
    source: Source
    if algorithm.get("did"):
        source = _provider_source(algorithm, stage, layout, signer, ALGORITHM_MODE)
    elif algorithm.get("url"):
        source = url_source(str(algorithm["url"]), ALGORITHM_MODE)
    else:
        if not isinstance(raw_code, str):
            raise FetchError("rawCode is not text")
        source = InlineSource(raw_code.encode("utf-8"), "rawCode", ALGORITHM_MODE)

    def place(i: int) -> Path:
        return layout.transformations / ("algorithm" if i == 0 else str(i))

    result = await source.fetch(ctx, place, Expectation.from_spec(algorithm))
    custom = algorithm.get("customData", algorithm.get("algocustomdata"))
    if custom is not None:
        target = layout.inputs / "algoCustomData.json"
        written = await write_bytes(target, json.dumps(custom).encode("utf-8"), ctx.limits.budget)
        ctx.log(f"customData: {written.size} bytes to {target}")
    return result


async def configure(
    env: Mapping[str, str],
    http: httpx.AsyncClient,
    log: ConfigureLog,
    limits: Limits,
    signer: Signer = NO_SIGNER,
) -> Summary:
    """Provision the volume; raises StepError (31 or 32) with a message naming what failed and why."""
    layout = Layout.from_env(env)
    limits.budget = DiskBudget(_disk_limit(env))
    stage = _stage(env)
    try:
        await asyncio.to_thread(layout.prepare)
        await asyncio.to_thread(log.open, layout.configure_log)
    except OSError as error:
        raise StepError(
            EXIT_DATA_PROVISIONING_FAILED,
            f"cannot prepare the volume {layout.volume}: {describe_error(error)}",
        ) from None
    inputs = stage.get("input") or []
    if not isinstance(inputs, list):
        raise StepError(EXIT_DATA_PROVISIONING_FAILED, "the workflow's inputs are not a list")
    limit = limits.budget.limit
    log(
        f"configure {env.get('WORKFLOWID') or 'workflow'}: {len(inputs)} input(s), disk limit "
        f"{format_bytes(limit) if limit is not None else 'none'}"
    )
    for position, spec in enumerate(inputs):
        raw_index = spec.get("index", position) if isinstance(spec, dict) else position
        index = raw_index if isinstance(raw_index, int) else position
        what = f"input {index} ({input_label(spec)})"
        started = time.monotonic()
        input_ctx = FetchContext(http=http, limits=limits, env=env, log=_prefixed(log, what))
        try:
            result = await fetch_input(input_ctx, spec, index, stage, layout, signer)
        except FetchError as error:
            raise StepError(EXIT_DATA_PROVISIONING_FAILED, f"{what}: {error.message}") from None
        except Exception as error:
            raise StepError(
                EXIT_DATA_PROVISIONING_FAILED, f"{what}: unexpected error: {describe_error(error)}"
            ) from None
        log(f"{what}: {len(result.files)} file(s), {result.size} bytes in {time.monotonic() - started:.2f} s")

    algorithm = stage.get("algorithm")
    if not isinstance(algorithm, dict):
        raise StepError(EXIT_ALGORITHM_PROVISIONING_FAILED, "the workflow names no algorithm")
    what = f"algorithm ({algorithm_label(algorithm)})"
    started = time.monotonic()
    algo_ctx = FetchContext(http=http, limits=limits, env=env, log=_prefixed(log, what))
    try:
        result = await fetch_algorithm(algo_ctx, algorithm, stage, layout, signer)
    except FetchError as error:
        raise StepError(EXIT_ALGORITHM_PROVISIONING_FAILED, f"{what}: {error.message}") from None
    except Exception as error:
        raise StepError(
            EXIT_ALGORITHM_PROVISIONING_FAILED, f"{what}: unexpected error: {describe_error(error)}"
        ) from None
    log(f"{what}: {len(result.files)} file(s), {result.size} bytes in {time.monotonic() - started:.2f} s")
    return Summary(inputs=len(inputs), bytes=limits.budget.used)


def _prefixed(log: Log, what: str) -> Log:
    def prefixed(message: str) -> None:
        log(f"{what}: {message}")

    return prefixed


def _fit(message: str) -> str:
    return message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 3] + "..."


def _report(document: dict[str, Any], path: Path, log: ConfigureLog) -> None:
    try:
        write_termination_message(document, path)
    except (OSError, ValueError) as error:
        log(f"cannot write the termination message to {path}: {describe_error(error)}")


async def run_configure(
    env: Mapping[str, str],
    http: httpx.AsyncClient,
    *,
    termination_log: Path = TERMINATION_LOG,
    sleep: Sleep = asyncio.sleep,
    signer: Signer = NO_SIGNER,
    retries: int = DEFAULT_RETRIES,
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
    echo: TextIO | None = None,
) -> int:
    """Run the configure step; returns its exit code, having written the termination message."""
    log = ConfigureLog(echo)
    limits = Limits(retries=retries, backoff_seconds=backoff_seconds, sleep=sleep)
    started = time.monotonic()
    try:
        try:
            summary = await configure(env, http, log, limits, signer)
        except Exception as error:
            if not isinstance(error, StepError):
                error = StepError(EXIT_DATA_PROVISIONING_FAILED, f"unexpected error: {describe_error(error)}")
            log(f"failed, exit code {error.exit_code}: {error.message}")
            status = STATUS_OF_EXIT.get(error.exit_code, "Failed")
            _report({"status": status, "message": _fit(error.message)}, termination_log, log)
            return error.exit_code
        log(
            f"provisioned {summary.inputs} input(s) and the algorithm: {summary.bytes} bytes "
            f"({format_bytes(summary.bytes)}) written in {time.monotonic() - started:.2f} s"
        )
        _report(
            {"status": "Provisioned", "inputs": summary.inputs, "bytes": summary.bytes}, termination_log, log
        )
        return EXIT_OK
    finally:
        log.close()


def _refuse_to_start(message: str) -> int:
    """A misconfigured step (the operator's settings): exit 31 with the reason, fetching nothing."""
    log = ConfigureLog(sys.stderr)
    log(f"failed, exit code {EXIT_DATA_PROVISIONING_FAILED}: {message}")
    _report(
        {"status": STATUS_OF_EXIT[EXIT_DATA_PROVISIONING_FAILED], "message": _fit(message)},
        TERMINATION_LOG,
        log,
    )
    return EXIT_DATA_PROVISIONING_FAILED


async def main(env: Mapping[str, str]) -> int:
    """The `ocean-c2d configure` command: run_configure with its own HTTP client, logging to stderr.

    The client is the egress-guarded one (steps/egress.py): every connection, every redirect hop, goes
    to a public address or one the operator allowed (EGRESS_ALLOW_CIDRS), never to CLUSTER_CIDRS."""
    try:
        policy = EgressPolicy.from_env(env)
    except FetchError as error:
        return _refuse_to_start(error.message)
    async with (
        guarded_client(
            policy,
            headers={"User-Agent": user_agent()},
            timeout=httpx.Timeout(60.0, connect=10.0),
        ) as http,
        signer_client() as signer_http,
    ):
        return await run_configure(env, http, signer=signer_from_env(env, signer_http), echo=sys.stderr)
