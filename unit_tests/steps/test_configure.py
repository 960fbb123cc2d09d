"""`ocean-c2d configure` against real HTTP servers on 127.0.0.1 (providers.py): a metadata cache, an Ocean
provider that verifies the download signatures, and plain file URLs. Downloads are signed by a KeySigner
(the key in the test process); test_signer.py runs configure against the operator's real signer."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ocean_c2d.signing import NonceSource, OperatorKey
from ocean_c2d.steps.configure import NO_SIGNER, run_configure
from ocean_c2d.steps.contract import (
    EXIT_ALGORITHM_PROVISIONING_FAILED,
    EXIT_DATA_PROVISIONING_FAILED,
    EXIT_OK,
)
from ocean_c2d.steps.sources import Signer
from unit_tests.steps.providers import BLOCK, Asset, KeySigner, OceanStack

KEY_HEX = "95c716e9df3bc4ffd7299e7861ce401de810e8d245d3127b8e7b430f4ca7fd27"
KEY = OperatorKey.from_hex(KEY_HEX)
ADDRESS = "0x6D39A833d1a6789AECa50dB85CB830bc08319F45"
OTHER_ADDRESS = "0x" + "42" * 20
DATA_DID = "did:op:" + "a1" * 32
ALGO_DID = "did:op:" + "b2" * 32
CONTAINER = {"image": "python", "tag": "3.11-slim", "entrypoint": "python $ALGO"}
RAW_CODE = "import os\nprint(sorted(os.listdir(os.environ['INPUTS'])))\n"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeSleep:
    """Records the delays asked for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@dataclass
class Job:
    """A workflow document and an empty volume under tmp_path, and how to run configure."""

    root: Path
    env: dict[str, str]
    sleep: FakeSleep
    signer: Signer

    @property
    def volume(self) -> Path:
        return self.root / "data"

    @property
    def termination(self) -> Path:
        return self.root / "termination-log"

    def message(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.termination.read_text())
        return document

    def configure_log(self) -> str:
        return (self.volume / "adminlogs" / "configure.log").read_text()

    async def run(self, http: httpx.AsyncClient) -> int:
        return await run_configure(
            self.env, http, termination_log=self.termination, sleep=self.sleep, signer=self.signer
        )


def make_job(
    root: Path,
    inputs: list[dict[str, Any]],
    algorithm: dict[str, Any],
    metadata_uri: str | None = None,
    disk_limit: int | None = None,
    providers: tuple[str, ...] = (),
) -> Job:
    """The job; the operator's allowlists hold `metadata_uri` and `providers` (allowing(stack))."""
    document = {
        "jobId": "0123456789abcdef0123456789abcdef",
        "owner": ADDRESS,
        "agreementId": None,
        "chainId": 8996,
        "environment": "cpu-small",
        "stages": [
            {
                "index": 0,
                "input": [dict(spec, index=n) for n, spec in enumerate(inputs)],
                "algorithm": {**algorithm, "container": CONTAINER},
                "output": {"metadataUri": metadata_uri} if metadata_uri else {},
                "compute": {"maxtime": 300, "storageExpiry": 0},
            }
        ],
    }
    (root / "workflow.json").write_text(json.dumps(document))
    (root / "data").mkdir()
    env = {
        "WORKFLOW": str(root / "workflow.json"),
        "WORKFLOWID": "0123456789abcdef0123456789abcdef",
        "VOLUME": str(root / "data"),
        "INPUTS": str(root / "data" / "inputs"),
        "TRANSFORMATIONS": str(root / "data" / "transformations"),
    }
    if disk_limit is not None:
        env["DISK_LIMIT_BYTES"] = str(disk_limit)
    if metadata_uri:
        env["ALLOWED_METADATA_CACHES"] = metadata_uri
    if providers:
        env["ALLOWED_PROVIDERS"] = ",".join(providers)
    return Job(root, env, FakeSleep(), KeySigner(KEY))


def allowing(stack: OceanStack) -> dict[str, Any]:
    """make_job's arguments for a Workflow whose metadata cache and provider are the stack's, both in
    the operator's allowlists."""
    return {"metadata_uri": stack.metadata.url, "providers": (stack.provider.url,)}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def did_input(asset: Asset, **extra: Any) -> dict[str, Any]:
    return {"did": asset.did, "serviceId": asset.service_id, "transferTxId": asset.transfer_tx_id, **extra}


async def test_did_input_and_did_algorithm_land_at_the_contract_paths(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    data = stack.add_asset(Asset(DATA_DID, [b"a,b\n1,2\n", b"second file"]))
    algo = stack.add_asset(Asset(ALGO_DID, [RAW_CODE.encode(), b"helper"], service_id="algo-compute"))
    stack.files.files["extra.csv"] = b"x,y\n"
    job = make_job(
        tmp_path,
        [did_input(data), {"url": stack.files.url_of("extra.csv") + "?token=s3cr3t"}],
        did_input(algo),
        **allowing(stack),
    )

    assert await job.run(http) == EXIT_OK

    total = 8 + 11 + 4 + len(RAW_CODE) + 6
    volume = job.volume
    stripped, algo_stripped = DATA_DID.removeprefix("did:op:"), ALGO_DID.removeprefix("did:op:")
    assert (volume / "inputs" / stripped / "0").read_bytes() == b"a,b\n1,2\n"
    assert (volume / "inputs" / stripped / "1").read_bytes() == b"second file"
    assert (volume / "inputs" / "1" / "extra.csv").read_bytes() == b"x,y\n"
    assert (volume / "transformations" / "algorithm").read_text() == RAW_CODE
    assert (volume / "transformations" / "1").read_bytes() == b"helper"
    for did, stripped_did in ((DATA_DID, stripped), (ALGO_DID, algo_stripped)):
        assert json.loads((volume / "ddos" / stripped_did).read_text()) == stack.metadata.ddos[did]
    ddo_bytes = sum(len((volume / "ddos" / s).read_bytes()) for s in (stripped, algo_stripped))
    assert job.message() == {"status": "Provisioned", "inputs": 2, "bytes": total + ddo_bytes}

    # Modes: the read-only trees 0755 (not the original's chmod(777 decimal) = 0o1411), writable 0777.
    expected_modes = {
        "inputs": 0o755,
        "transformations": 0o755,
        "ddos": 0o755,
        "outputs": 0o777,
        "logs": 0o777,
        "adminlogs": 0o755,
        f"inputs/{stripped}": 0o755,
        "inputs/1": 0o755,
        f"inputs/{stripped}/0": 0o644,
        "transformations/algorithm": 0o755,
        "logs/algorithm.log": 0o666,
        f"ddos/{stripped}": 0o644,
    }
    assert {name: mode_of(volume / name) for name in expected_modes} == expected_modes
    assert (volume / "logs" / "algorithm.log").read_bytes() == b""
    assert not list(volume.rglob("*.partial"))

    # The provider saw properly signed requests for every file, each with a new nonce.
    downloads = stack.provider.downloads
    assert [(r.query["documentId"], r.query["fileIndex"]) for r in downloads] == [
        (DATA_DID, "0"),
        (DATA_DID, "1"),
        (ALGO_DID, "0"),
        (ALGO_DID, "1"),
    ]
    assert {r.query["consumerAddress"] for r in downloads} == {ADDRESS}
    nonces = [int(r.query["nonce"]) for r in downloads]
    assert nonces == sorted(set(nonces))
    assert stack.provider.refusals == []

    # configure.log says what was fetched, never a signature, nonce, query string or the key.
    log = job.configure_log()
    assert f"{stack.metadata.url}/api/aquarius/assets/ddo/{DATA_DID}" in log
    assert f"{stack.provider.url}/api/services/download" in log
    assert "lists 2 files" in log
    assert "11 bytes" in log
    for secret in [r.query["signature"] for r in downloads] + [r.query["nonce"] for r in downloads]:
        assert secret not in log
    for forbidden in ("signature=", "nonce=", "?", "s3cr3t", KEY_HEX, KEY_HEX.upper()):
        assert forbidden not in log


async def test_url_input_and_raw_code_algorithm(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    stack.files.files["iris.csv"] = b"sepal,petal\n5.1,1.4\n"
    job = make_job(
        tmp_path,
        [{"url": stack.files.url_of("iris.csv"), "checksum": sha256(b"sepal,petal\n5.1,1.4\n"), "size": 20}],
        {"rawCode": RAW_CODE},
    )
    previous = os.umask(0o077)  # modes must not depend on the umask
    try:
        assert await job.run(http) == EXIT_OK
    finally:
        os.umask(previous)

    assert files_under(job.volume / "inputs") == ["0/iris.csv"]
    assert (job.volume / "inputs" / "0" / "iris.csv").read_bytes() == b"sepal,petal\n5.1,1.4\n"
    algorithm = job.volume / "transformations" / "algorithm"
    assert algorithm.read_text() == RAW_CODE
    assert mode_of(algorithm) == 0o755
    assert mode_of(job.volume / "inputs" / "0") == 0o755
    assert mode_of(job.volume / "inputs" / "0" / "iris.csv") == 0o644
    assert mode_of(job.volume / "outputs") == 0o777
    assert mode_of(job.volume / "inputs") == 0o755
    assert list((job.volume / "ddos").iterdir()) == []
    assert job.message() == {"status": "Provisioned", "inputs": 1, "bytes": 20 + len(RAW_CODE)}
    assert stack.provider.requests == []


async def test_provider_refusing_the_signature_fails_the_input(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    with OceanStack(expected_consumer=OTHER_ADDRESS) as stack:
        data = stack.add_asset(Asset(DATA_DID, [b"data"]))
        stack.files.files["algo.py"] = RAW_CODE.encode()
        job = make_job(
            tmp_path,
            [did_input(data)],
            {"url": stack.files.url_of("algo.py")},
            **allowing(stack),
        )

        assert await job.run(http) == EXIT_DATA_PROVISIONING_FAILED

        message = job.message()
        assert message["status"] == "DataProvisioningFailed"
        assert message["message"] == (
            f"input 0 ({DATA_DID}): provider refused the download of file 0: "
            "HTTP 401 Unauthorized"  # the provider's own words stay out of the status
        )
        # Signed once more with a fresh nonce, then given up; the algorithm was never fetched.
        assert len(stack.provider.downloads) == 2
        assert stack.provider.downloads[0].query["nonce"] != stack.provider.downloads[1].query["nonce"]
        assert len(job.sleep.delays) == 1
        assert stack.files.requests == []
        assert not (job.volume / "transformations" / "algorithm").exists()
        assert files_under(job.volume / "inputs") == []
        log = job.configure_log()
        assert "signing again with a fresh nonce" in log
        assert "exit code 31" in log
        for request in stack.provider.downloads:
            assert request.query["signature"] not in log


async def test_wrong_transfer_tx_is_refused_without_signing_again(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    data = stack.add_asset(Asset(DATA_DID, [b"data"]))
    job = make_job(
        tmp_path,
        [did_input(data, transferTxId="0x" + "00" * 32)],
        {"rawCode": RAW_CODE},
        **allowing(stack),
    )

    assert await job.run(http) == EXIT_DATA_PROVISIONING_FAILED

    assert job.message()["message"].startswith(
        f"input 0 ({DATA_DID}): provider refused the download of file 0: HTTP 400 Bad Request"
    )
    assert len(stack.provider.downloads) == 1


async def test_a_nonce_refused_as_too_old_is_signed_again_with_a_newer_one(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    data = stack.add_asset(Asset(DATA_DID, [b"data"]))
    # Another job (same operator address, a node whose clock runs ahead) already used a later nonce.
    stack.provider.last_nonce[ADDRESS.lower()] = 1_700_000_000_500
    clock = iter([1_700_000_000_000, 1_700_000_001_000])
    job = make_job(tmp_path, [did_input(data)], {"rawCode": RAW_CODE}, **allowing(stack))
    job.signer = KeySigner(KEY, NonceSource(clock=lambda: next(clock)))

    assert await job.run(http) == EXIT_OK

    assert [r.query["nonce"] for r in stack.provider.downloads] == ["1700000000000", "1700000001000"]
    assert stack.provider.refusals == [
        "Invalid nonce: 1700000000000 is not greater than the last nonce seen (1700000000500)"
    ]
    assert (job.volume / "inputs" / DATA_DID.removeprefix("did:op:") / "0").read_bytes() == b"data"
    log = job.configure_log()
    assert "the provider refused the signed request (HTTP 400 Bad Request); signing again" in log
    assert "17000000" not in log


async def test_user_data_is_forwarded_for_inputs_and_the_algorithm(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    data = stack.add_asset(Asset(DATA_DID, [b"data"]))
    algo = stack.add_asset(Asset(ALGO_DID, [RAW_CODE.encode()]))
    job = make_job(
        tmp_path,
        [did_input(data, userData={"rows": 10, "note": "a b&c"})],
        did_input(algo, userData={"learningRate": 0.1}, customData={"epochs": 3}),
        **allowing(stack),
    )

    assert await job.run(http) == EXIT_OK

    assert stack.provider.userdata == [
        (DATA_DID, {"rows": 10, "note": "a b&c"}),
        (ALGO_DID, {"learningRate": 0.1}),
    ]
    assert "a b&c" not in job.configure_log()


async def test_custom_data_is_written_for_the_algorithm(tmp_path: Path, http: httpx.AsyncClient) -> None:
    job = make_job(tmp_path, [], {"rawCode": RAW_CODE, "customData": {"epochs": 3, "name": "é"}})

    assert await job.run(http) == EXIT_OK

    custom = job.volume / "inputs" / "algoCustomData.json"
    assert json.loads(custom.read_text()) == {"epochs": 3, "name": "é"}
    assert mode_of(custom) == 0o644
    assert job.message()["inputs"] == 0


async def test_algorithm_url_404_fails_the_algorithm(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    stack.files.files["data.csv"] = b"1,2\n"
    job = make_job(
        tmp_path,
        [{"url": stack.files.url_of("data.csv")}],
        {"url": stack.files.url_of("gone.py") + "?sig=secret"},
    )

    assert await job.run(http) == EXIT_ALGORITHM_PROVISIONING_FAILED

    assert job.message() == {
        "status": "AlgorithmProvisioningFailed",
        "message": f"algorithm ({stack.files.url_of('gone.py')}): HTTP 404 Not Found",
    }
    assert [r.path for r in stack.files.requests] == ["/files/data.csv", "/files/gone.py"]  # 404: no retry
    assert (job.volume / "inputs" / "0" / "data.csv").exists()
    assert "secret" not in job.configure_log()


async def test_checksum_mismatch_fails_the_input_and_leaves_no_file(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    stack.files.files["data.csv"] = b"tampered"
    job = make_job(
        tmp_path,
        [{"url": stack.files.url_of("data.csv"), "checksum": sha256(b"original")}],
        {"rawCode": RAW_CODE},
    )

    assert await job.run(http) == EXIT_DATA_PROVISIONING_FAILED

    message = job.message()["message"]
    assert message.startswith(f"input 0 ({stack.files.url_of('data.csv')}): checksum mismatch: expected ")
    assert sha256(b"tampered") in message
    assert files_under(job.volume / "inputs") == []
    assert not (job.volume / "transformations" / "algorithm").exists()


@pytest.mark.parametrize("kind", ["files", "chunked"])
async def test_size_mismatch_fails_the_input(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack, kind: str
) -> None:
    # "files": Content-Length announces 4 bytes (refused before reading); "chunked": no length, 3 MiB sent.
    stack.files.files["data.csv"] = b"1234"
    url = stack.files.url_of("data.csv") if kind == "files" else stack.files.url_of(str(3 << 20), "chunked")
    job = make_job(tmp_path, [{"url": url, "size": 1000}], {"rawCode": RAW_CODE})

    assert await job.run(http) == EXIT_DATA_PROVISIONING_FAILED

    message = job.message()["message"]
    assert message.startswith("input 0 (")
    assert "size mismatch: " in message
    assert "1000" in message
    assert files_under(job.volume / "inputs") == []


@pytest.mark.parametrize("kind", ["large", "chunked"])
async def test_disk_limit_exceeded_fails_the_input(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack, kind: str
) -> None:
    # "large": Content-Length tells at once; "chunked": found out while streaming.
    stack.files.files["small.csv"] = b"x" * 1000
    job = make_job(
        tmp_path,
        [{"url": stack.files.url_of("small.csv")}, {"url": stack.files.url_of(str(5 << 20), kind)}],
        {"rawCode": RAW_CODE},
        disk_limit=3 << 20,
    )

    assert await job.run(http) == EXIT_DATA_PROVISIONING_FAILED

    message = job.message()["message"]
    assert message.startswith(f"input 1 ({stack.files.url_of(str(5 << 20), kind)}): disk limit exceeded")
    assert f"DISK_LIMIT_BYTES={3 << 20}" in message
    assert files_under(job.volume / "inputs") == ["0/small.csv"]  # no partial file left


async def test_transient_503s_are_retried_then_succeed(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    stack.files.files["data.csv"] = b"eventually"
    job = make_job(tmp_path, [{"url": stack.files.url_of("data.csv", "flaky")}], {"rawCode": RAW_CODE})

    assert await job.run(http) == EXIT_OK

    assert len(stack.files.requests) == 3
    first, second = job.sleep.delays
    assert 0.8 <= first <= 1.2
    assert 1.6 <= second <= 2.4
    assert (job.volume / "inputs" / "0" / "data.csv").read_bytes() == b"eventually"
    log = job.configure_log()
    assert "HTTP 503 Service Unavailable; retry 1 of 4" in log
    assert "busy, try later" not in log  # the server's body is never echoed
    assert "retry 2 of 4" in log


async def test_retries_are_bounded(tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack) -> None:
    job = make_job(tmp_path, [{"url": stack.files.url_of("x", "unavailable")}], {"rawCode": RAW_CODE})

    assert await job.run(http) == EXIT_DATA_PROVISIONING_FAILED

    assert len(stack.files.requests) == 5
    assert len(job.sleep.delays) == 4
    assert job.message()["message"].endswith("HTTP 503 Service Unavailable (gave up after 5 attempts)")


async def test_a_body_cut_short_is_retried_and_never_left_as_complete(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    job = make_job(tmp_path, [{"url": stack.files.url_of("4096", "truncated")}], {"rawCode": RAW_CODE})

    assert await job.run(http) == EXIT_DATA_PROVISIONING_FAILED

    assert len(stack.files.requests) == 5
    assert "RemoteProtocolError" in job.message()["message"]
    assert files_under(job.volume / "inputs") == []


async def test_an_input_with_neither_did_nor_url_is_an_error(tmp_path: Path, http: httpx.AsyncClient) -> None:
    job = make_job(tmp_path, [{"checksum": sha256(b"")}], {"rawCode": RAW_CODE})

    assert await job.run(http) == EXIT_DATA_PROVISIONING_FAILED

    assert job.message()["message"] == "input 0 (no did or url): names neither a did nor a url"


async def test_a_did_input_without_a_signer_is_an_error(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    data = stack.add_asset(Asset(DATA_DID, [b"data"]))
    job = make_job(tmp_path, [did_input(data)], {"rawCode": RAW_CODE}, **allowing(stack))
    job.signer = NO_SIGNER

    assert await job.run(http) == EXIT_DATA_PROVISIONING_FAILED

    assert "signed by the operator's signer: no signer was given" in job.message()["message"]
    assert stack.metadata.requests == []


async def test_an_unknown_did_names_the_metadata_cache_answer(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    job = make_job(
        tmp_path,
        [{"did": DATA_DID, "serviceId": "compute", "transferTxId": "0x01"}],
        {"rawCode": RAW_CODE},
        **allowing(stack),
    )

    assert await job.run(http) == EXIT_DATA_PROVISIONING_FAILED

    assert job.message()["message"] == (f"input 0 ({DATA_DID}): cannot resolve the DDO: HTTP 404 Not Found")


async def test_a_second_run_starts_from_empty_trees(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    stack.files.files["data.csv"] = b"1,2\n"
    job = make_job(tmp_path, [{"url": stack.files.url_of("data.csv")}], {"rawCode": RAW_CODE})
    (job.volume / "inputs" / "stale").mkdir(parents=True)
    (job.volume / "inputs" / "stale" / ".x.partial").write_bytes(b"left by a killed attempt")

    assert await job.run(http) == EXIT_OK
    assert await job.run(http) == EXIT_OK

    assert files_under(job.volume / "inputs") == ["0/data.csv"]
    assert job.configure_log().count("provisioned 1 input(s)") == 2


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


class RssSampler:
    """The process's peak RSS during a block: VmHWM after resetting it (clear_refs 5), and a 10 ms sampler
    of VmRSS in case the reset is not allowed."""

    def __init__(self) -> None:
        self.baseline = 0
        self.peak_sampled = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_sampled = max(self.peak_sampled, _rss_kib("VmRSS"))

    def __enter__(self) -> RssSampler:
        self.baseline = _rss_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.peak_sampled = self.baseline
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_sampled = max(self.peak_sampled, _rss_kib("VmRSS"))

    @property
    def growth_mib(self) -> float:
        peak = max(self.peak_sampled, _rss_kib("VmHWM") if self.hwm_reset else 0)
        return (peak - self.baseline) / 1024


async def test_a_1_gib_input_streams_in_bounded_memory(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    size = 1 << 30
    digest = hashlib.sha256()
    for _ in range(size // len(BLOCK)):
        digest.update(BLOCK)
    url = stack.files.url_of(str(size), "large")
    job = make_job(
        tmp_path,
        [{"url": url, "size": size, "checksum": "sha256:" + digest.hexdigest()}],
        {"rawCode": RAW_CODE},
        disk_limit=2 << 30,
    )
    target = job.volume / "inputs" / "0" / str(size)
    try:
        with RssSampler() as rss:
            started = time.monotonic()
            code = await job.run(http)
            seconds = time.monotonic() - started
        assert code == EXIT_OK, job.message()
        assert target.stat().st_size == size
        throughput = size / 1e6 / seconds
        print(
            f"\n1 GiB input: {seconds:.1f} s, {throughput:.0f} MB/s (sha256, fsync and the local server "
            f"included); peak RSS growth {rss.growth_mib:.1f} MiB (baseline {rss.baseline / 1024:.0f} MiB, "
            f"{'VmHWM reset' if rss.hwm_reset else 'sampled VmRSS'})"
        )
        assert rss.growth_mib < 100
    finally:
        target.unlink(missing_ok=True)
