"""The API's authentication against the recorded requests of the real clients (shared/ocean-compat).

Every request of provider v4, ocean.py + provider v4 and ocean-node's OPF_K8 was signed by the provider key
of provider's test configuration (address 0xe08A1dAe983BC701D05E492DB80e0144f8f4b909); the probe's
requests were signed by some other key (or not at all), and operator-service accepted them all.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from eth_utils.crypto import keccak

from ocean_c2d.api.app import ApiConfig, CreateRefusedError, build_app
from ocean_c2d.api.auth import (
    OCEAN_NODE_OPF_K8,
    PROVIDER_V4,
    Accepted,
    Authenticator,
    Call,
    MemoryNonceStore,
    Reason,
    Refused,
    authenticate,
    check_signature,
    checksum_address,
    parse_allowed_providers,
    recover_signer,
    signed_messages,
)
from ocean_c2d.api.params import Authenticate, AuthQuery, Refusal
from ocean_c2d.api.replay import WINDOW, NonceWindow
from ocean_c2d.api.store import InMemoryStore
from ocean_c2d.signing import sign_personal
from unit_tests.api.fixtures import COMPAT
from unit_tests.factories import OPERATOR_ADDRESS, OPERATOR_KEY

CLIENT_FILES = ("provider-v4.json", "oceanpy_provider-v4.json", "ocean-node-OPF_K8_9f2870dd.json")
PROVIDER = "0xe08A1dAe983BC701D05E492DB80e0144f8f4b909"
CONSUMER = "0xBE5449a6A97aD46c8558A3356267Ee5D2731ab5e"
# The original's recordings of each client's messages, by client of the fixture file.
CLIENT_OF_FILE = {
    "provider-v4.json": PROVIDER_V4,
    "oceanpy_provider-v4.json": PROVIDER_V4,
    "ocean-node-OPF_K8_9f2870dd.json": OCEAN_NODE_OPF_K8,
}


def exchanges(name: str) -> list[dict[str, Any]]:
    path = COMPAT / name
    assert path.is_file(), f"the recordings are missing: {path} (set OCEAN_COMPAT_DIR)"
    loaded: list[dict[str, Any]] = json.loads(path.read_text())
    return loaded


def call_of(request: dict[str, Any]) -> Call:
    return Call(f"{request['method']} /{request['path'].rsplit('/', 1)[-1]}")


def signed(name: str) -> list[tuple[Call, dict[str, Any]]]:
    """The recorded signed requests of a fixture file, in order: (call, parameters as the API reads them)."""
    return [
        (call_of(e["request"]), e["request"]["params"])
        for e in exchanges(name)
        if "providerSignature" in e["request"]["params"]
    ]


def all_signed() -> list[Any]:
    return [
        pytest.param(name, call, params, id=f"{name.split('.')[0]}-{call.value}-{index}")
        for name in CLIENT_FILES
        for index, (call, params) in enumerate(signed(name))
    ]


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def provider_signature(key_message: str, *, v_offset: int = 0) -> str:
    """A signature by the test's other key (factories.OPERATOR_KEY) as the clients make them: keccak of the
    text, EIP-191 32-byte prefix; `v_offset` -27 gives provider's v 00/01."""
    signature = sign_personal(OPERATOR_KEY, keccak(key_message.encode()))
    v = int(signature[-2:], 16) + v_offset
    return signature[:-2] + f"{v:02x}"


# ---- the recorded requests -------------------------------------------------------------------------------


def test_the_fixture_files_hold_every_signed_call_of_both_clients() -> None:
    calls = {(CLIENT_OF_FILE[name], call) for name in CLIENT_FILES for call, _ in signed(name)}
    assert calls == {
        *((PROVIDER_V4, call) for call in Call),
        *((OCEAN_NODE_OPF_K8, call) for call in Call if call is not Call.DELETE),
    }
    assert sum(len(signed(name)) for name in CLIENT_FILES) == 16 + 9 + 13


@pytest.mark.parametrize(("name", "call", "params"), all_signed())
def test_every_recorded_request_is_the_provider_keys(name: str, call: Call, params: dict[str, Any]) -> None:
    verdict = check_signature(call, params, {PROVIDER})
    assert verdict == Accepted(
        PROVIDER,
        CLIENT_OF_FILE[name],
        int(params["nonce"]),
        # OPF_K8 signs no nonce on getResult.
        replay_protected=not (CLIENT_OF_FILE[name] == OCEAN_NODE_OPF_K8 and call is Call.RESULT),
    )


def test_each_recorded_request_costs_one_recovery(monkeypatch: pytest.MonkeyPatch) -> None:
    """The v byte (00/01 provider, 1b/1c ocean-node) picks the client to try first: one ~5 ms recovery
    per request, where trying provider's message first would double OPF_K8's cost."""
    recoveries: list[str] = []

    def counting(message: str, signature: bytes) -> str | None:
        recoveries.append(message)
        return recover_signer(message, signature)

    monkeypatch.setattr("ocean_c2d.api.auth.recover_signer", counting)
    for name in CLIENT_FILES:
        for call, params in signed(name):
            recoveries.clear()
            assert isinstance(check_signature(call, params, {PROVIDER}), Accepted)
            assert len(recoveries) == 1, (name, call, params["nonce"])


def test_the_messages_are_those_the_recordings_name() -> None:
    """signatures.jsonl names each message by its parts; the request's own values rebuild the text."""
    provider_status = dict(signed("provider-v4.json")[2][1])
    assert provider_status["jobId"] == "38c8ca27d61e4f42ab352c5598162241"
    texts = {
        m.client: m.text for m in signed_messages(Call.STATUS, provider_status, provider_status["nonce"])
    }
    assert texts == {
        PROVIDER_V4: CONSUMER + "38c8ca27d61e4f42ab352c5598162241" + "1796111662141047986",
        OCEAN_NODE_OPF_K8: "1796111662141047986" + CONSUMER + "38c8ca27d61e4f42ab352c5598162241",
    }
    # OPF_K8's status poll by agreementId: "nonce+owner+'undefined'" (signatures.jsonl seq 10).
    _, by_agreement = signed("ocean-node-OPF_K8_9f2870dd.json")[8]
    assert "jobId" not in by_agreement
    node = signed_messages(Call.STATUS, by_agreement, str(by_agreement["nonce"]))[1]
    assert node.text == f"{by_agreement['nonce']}{CONSUMER}undefined"
    assert recover_signer(node.text, bytes.fromhex(by_agreement["providerSignature"][2:])) == PROVIDER


@pytest.mark.parametrize("name", CLIENT_FILES)
def test_each_run_in_order_is_accepted_then_its_replay_refused(name: str) -> None:
    nonces = MemoryNonceStore()
    requests = signed(name)
    first = [run(authenticate(call, params, [PROVIDER.lower()], nonces)) for call, params in requests]
    assert all(isinstance(outcome, Accepted) for outcome in first), first
    protected = [int(p["nonce"]) for (c, p), o in zip(requests, first, strict=True) if o.replay_protected]
    window = nonces.window(PROVIDER)
    assert window is not None
    assert set(window.recent) == set(protected)

    again = [run(authenticate(call, params, [PROVIDER], nonces)) for call, params in requests]
    for (call, params), outcome in zip(requests, again, strict=True):
        if CLIENT_OF_FILE[name] == OCEAN_NODE_OPF_K8 and call is Call.RESULT:
            # The documented hole: OPF_K8 reuses one signature for every getResult (seq 12-14 do).
            assert isinstance(outcome, Accepted)
            assert not outcome.replay_protected
        else:
            assert outcome == Refused(
                Reason.REPLAY,
                replay_text(params["nonce"]),
            )
            assert outcome.body() == {"error": outcome.error}
            assert outcome.status == 401


def test_opf_k8_reuses_one_signature_for_every_get_result_and_it_spends_no_nonce() -> None:
    results = [p for c, p in signed("ocean-node-OPF_K8_9f2870dd.json") if c is Call.RESULT]
    assert len({p["providerSignature"] for p in results}) == 1
    assert [p["index"] for p in results] == [0, 1, 7]
    nonces = MemoryNonceStore({PROVIDER: 10**19})  # far past any ms nonce: a replayed getResult still passes
    outcomes = [run(authenticate(Call.RESULT, p, [PROVIDER], nonces)) for p in results]
    assert all(isinstance(o, Accepted) and not o.replay_protected for o in outcomes)
    assert nonces.window(PROVIDER) == NonceWindow(10**19, ())


# ---- refusals --------------------------------------------------------------------------------------------


def test_the_allowlist_is_what_admits_the_provider() -> None:
    call, params = signed("provider-v4.json")[0]
    assert check_signature(call, params, {PROVIDER.lower()}) == check_signature(call, params, {PROVIDER})
    assert check_signature(call, params, set()) == Refused(
        Reason.NOT_ALLOWED, f"providerAddress {PROVIDER} is not an allowed provider"
    )
    # getResult from provider names no providerAddress: the recovered signer alone decides.
    call, params = next((c, p) for c, p in signed("provider-v4.json") if c is Call.RESULT)
    assert "providerAddress" not in params
    assert check_signature(call, params, {OPERATOR_ADDRESS}) == Refused(
        Reason.NOT_ALLOWED, "providerSignature is not an allowed provider's for this request"
    )


def test_a_request_signed_by_another_key_is_refused() -> None:
    _, recorded = signed("provider-v4.json")[2]
    message = recorded["owner"] + recorded["jobId"] + recorded["nonce"]
    forged = {**recorded, "providerSignature": provider_signature(message, v_offset=-27)}
    # It claims the allowed provider but another key signed: refused, and no nonce is spent.
    nonces = MemoryNonceStore()
    outcome = run(authenticate(Call.STATUS, forged, [PROVIDER], nonces))
    assert outcome == Refused(Reason.NOT_ALLOWED, f"providerSignature is not {PROVIDER}'s for this request")
    assert nonces.window(PROVIDER) is None
    # Naming its own address: that key is not allowed.
    own = {**forged, "providerAddress": OPERATOR_ADDRESS}
    assert run(authenticate(Call.STATUS, own, [PROVIDER], nonces)) == Refused(
        Reason.NOT_ALLOWED, f"providerAddress {OPERATOR_ADDRESS} is not an allowed provider"
    )
    # The control: allow that key, and the very same request passes (the forgery is a real signature).
    assert run(authenticate(Call.STATUS, own, [OPERATOR_ADDRESS], nonces)) == Accepted(
        OPERATOR_ADDRESS, PROVIDER_V4, int(recorded["nonce"]), replay_protected=True
    )


def test_an_allowed_key_cannot_sign_as_another_allowed_provider() -> None:
    """providerAddress must be the signer, even when both are allowed (the nonce counter is the signer's)."""
    _, recorded = signed("provider-v4.json")[2]
    message = recorded["owner"] + recorded["jobId"] + recorded["nonce"]
    forged = {**recorded, "providerSignature": provider_signature(message, v_offset=-27)}
    assert forged["providerAddress"] == PROVIDER
    assert check_signature(Call.STATUS, forged, {PROVIDER, OPERATOR_ADDRESS}) == Refused(
        Reason.NOT_ALLOWED, f"providerSignature is not {PROVIDER}'s for this request"
    )
    without_claim = {key: value for key, value in forged.items() if key != "providerAddress"}
    assert check_signature(Call.STATUS, without_claim, {PROVIDER, OPERATOR_ADDRESS}) == Accepted(
        OPERATOR_ADDRESS, PROVIDER_V4, int(recorded["nonce"]), replay_protected=True
    )


def test_an_opf_k8_shaped_signature_by_another_key_is_refused() -> None:
    _, recorded = signed("ocean-node-OPF_K8_9f2870dd.json")[0]
    forged = {**recorded, "providerSignature": provider_signature(str(recorded["nonce"]))}
    assert check_signature(Call.START, forged, {PROVIDER}) == Refused(
        Reason.NOT_ALLOWED, f"providerSignature is not {PROVIDER}'s for this request"
    )
    assert check_signature(
        Call.START, {**forged, "providerAddress": OPERATOR_ADDRESS}, {OPERATOR_ADDRESS}
    ) == (Accepted(OPERATOR_ADDRESS, OCEAN_NODE_OPF_K8, recorded["nonce"], replay_protected=True))


def test_the_probes_requests_were_not_the_providers_and_are_refused() -> None:
    """operator-service accepted every one of these (probe.json): it checked nothing that held."""
    probes = [e for e in exchanges("probe.json") if "providerSignature" in e["request"]["params"]]
    assert len(probes) == 34
    for exchange in probes:
        call, params = call_of(exchange["request"]), exchange["request"]["params"]
        verdict = check_signature(call, params, {PROVIDER})
        assert isinstance(verdict, Refused), exchange["seq"]
        # Malformed: a two-byte signature (seq 20), no nonce (seq 14); the others name the zero address as
        # provider, or none, and another key signed.
        malformed = params["providerSignature"] == "0x1234" or "nonce" not in params
        assert params.get("providerAddress") in (None, "0x" + "0" * 40)
        assert verdict.reason is (Reason.MALFORMED if malformed else Reason.NOT_ALLOWED), exchange["seq"]


@pytest.mark.parametrize(
    ("name", "index", "field", "value"),
    [
        ("provider-v4.json", 0, "owner", "0xBE5449a6A97aD46c8558A3356267Ee5D2731ab5f"),  # POST
        ("provider-v4.json", 0, "nonce", 1796111661885572352),
        ("provider-v4.json", 2, "jobId", "38c8ca27d61e4f42ab352c5598162242"),  # GET /compute
        ("provider-v4.json", 2, "owner", "0xbe5449a6a97ad46c8558a3356267ee5d2731ab5e"),  # case is signed
        ("provider-v4.json", 10, "jobId", "39d63fe53235468185af9b5bf0536645"),  # PUT
        ("provider-v4.json", 11, "owner", "0xAA5449a6A97aD46c8558A3356267Ee5D2731ab5e"),  # DELETE
        ("provider-v4.json", 12, "jobId", "ffffffffffffffffffffffffffffffff"),  # getResult
        ("provider-v4.json", 12, "nonce", "1796111663973568398"),
        ("ocean-node-OPF_K8_9f2870dd.json", 0, "nonce", 1796111967651),  # POST
        ("ocean-node-OPF_K8_9f2870dd.json", 2, "jobId", "53edb1c1622146a29035ad19a99ba4f8"),  # GET
        ("ocean-node-OPF_K8_9f2870dd.json", 2, "owner", "0xBE5449a6A97aD46c8558A3356267Ee5D2731ab5f"),
        ("ocean-node-OPF_K8_9f2870dd.json", 9, "nonce", 1796111969211),  # PUT
        ("ocean-node-OPF_K8_9f2870dd.json", 10, "jobId", "53edb1c1622146a29035ad19a99ba4f0"),  # getResult
        ("ocean-node-OPF_K8_9f2870dd.json", 10, "owner", "0xBE5449a6A97aD46c8558A3356267Ee5D2731ab5f"),
    ],
)
def test_a_tampered_signed_parameter_is_refused(name: str, index: int, field: str, value: Any) -> None:
    call, recorded = signed(name)[index]
    assert check_signature(call, recorded, {PROVIDER}).__class__ is Accepted
    assert recorded[field] != value
    verdict = check_signature(call, {**recorded, field: value}, {PROVIDER})
    # provider's getResult names no providerAddress: the error then cannot name it either.
    signer = PROVIDER if "providerAddress" in recorded else "an allowed provider"
    assert verdict == Refused(Reason.NOT_ALLOWED, f"providerSignature is not {signer}'s for this request")


def test_what_opf_k8_does_not_sign_can_be_changed() -> None:
    """The documented limit: OPF_K8 signs only the nonce of POST and PUT (owner, jobId, workflow are not
    covered). Pinned so that a change in what is accepted is a decision, not an accident."""
    start, post = signed("ocean-node-OPF_K8_9f2870dd.json")[0]
    stop, put = signed("ocean-node-OPF_K8_9f2870dd.json")[9]
    assert (start, stop) == (Call.START, Call.STOP)
    assert isinstance(check_signature(start, {**post, "owner": OPERATOR_ADDRESS}, {PROVIDER}), Accepted)
    assert isinstance(check_signature(stop, {**put, "jobId": "0" * 32}, {PROVIDER}), Accepted)
    # The provider's signature does cover the owner of its POST.
    _, provider_post = signed("provider-v4.json")[0]
    assert isinstance(
        check_signature(start, {**provider_post, "owner": OPERATOR_ADDRESS}, {PROVIDER}), Refused
    )


def test_a_replayed_nonce_is_refused_an_unused_older_one_is_not_and_a_new_one_needs_a_new_signature() -> None:
    _, earlier = signed("provider-v4.json")[1]
    _, recorded = signed("provider-v4.json")[2]
    _, later = signed("provider-v4.json")[3]
    assert int(earlier["nonce"]) < int(recorded["nonce"]) < int(later["nonce"])
    nonces = MemoryNonceStore(window=2)
    assert isinstance(run(authenticate(Call.STATUS, recorded, [PROVIDER], nonces)), Accepted)
    assert run(authenticate(Call.STATUS, recorded, [PROVIDER], nonces)).reason is Reason.REPLAY
    assert isinstance(run(authenticate(Call.STATUS, later, [PROVIDER], nonces)), Accepted)
    # Signed before `recorded` but arriving after `later` (concurrent requests of a provider arrive out of
    # order): never used, so accepted; the window of 2 then pushes it out as the floor.
    assert isinstance(run(authenticate(Call.STATUS, earlier, [PROVIDER], nonces)), Accepted)
    assert nonces.window(PROVIDER) == NonceWindow(
        int(earlier["nonce"]), (int(recorded["nonce"]), int(later["nonce"])), 2
    )
    for replayed in (earlier, recorded, later):  # at the floor, or in the window
        assert run(authenticate(Call.STATUS, replayed, [PROVIDER], nonces)).reason is Reason.REPLAY
    # Raising the nonce of a captured request breaks its signature (provider signs the nonce).
    bumped = {**later, "nonce": str(int(later["nonce"]) + 1)}
    assert run(authenticate(Call.STATUS, bumped, [PROVIDER], nonces)).reason is Reason.NOT_ALLOWED


def test_one_counter_per_provider_for_every_call() -> None:
    """A nonce spent on one call cannot be spent on another: OPF_K8 signs the bare nonce on POST and PUT."""
    _, post = signed("ocean-node-OPF_K8_9f2870dd.json")[0]
    nonces = MemoryNonceStore()
    assert isinstance(run(authenticate(Call.START, post, [PROVIDER], nonces)), Accepted)
    as_stop = {key: post[key] for key in ("owner", "providerSignature", "providerAddress", "nonce")}
    assert isinstance(check_signature(Call.STOP, as_stop, {PROVIDER}), Accepted)
    assert run(authenticate(Call.STOP, as_stop, [PROVIDER], nonces)).reason is Reason.REPLAY


def test_concurrent_requests_with_one_nonce_spend_it_once() -> None:
    async def race() -> list[bool]:
        nonces = MemoryNonceStore()
        return list(await asyncio.gather(*(nonces.advance(PROVIDER, 5) for _ in range(50))))

    assert sorted(run(race())) == [False] * 49 + [True]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"providerSignature": None}, "providerSignature is required"),
        ({"providerSignature": ""}, "providerSignature is required"),
        ({"providerSignature": "0x1234"}, "providerSignature must be 0x and 65 bytes in hex"),
        ({"providerSignature": "0x" + "00" * 65}, "providerSignature is not a valid signature"),
        ({"providerSignature": "0x" + "11" * 64 + "05"}, "providerSignature is not a valid signature"),
        ({"nonce": None}, "nonce is required, as a decimal integer"),
        ({"nonce": 1.796e18}, "nonce is required, as a decimal integer"),
        ({"nonce": True}, "nonce is required, as a decimal integer"),
        ({"nonce": "abc"}, "nonce must be a decimal integer of at most 20 digits"),
        ({"nonce": "-1"}, "nonce must be a decimal integer of at most 20 digits"),
        ({"nonce": "0123"}, "nonce must be a decimal integer of at most 20 digits"),
        ({"nonce": "1" * 21}, "nonce must be a decimal integer of at most 20 digits"),
        ({"providerAddress": "0x1234"}, "providerAddress must be a 0x-prefixed 40-hex-digit address"),
        ({"providerAddress": 5}, "providerAddress must be an address"),
    ],
)
def test_malformed_requests_are_refused_with_a_clear_error(change: dict[str, Any], error: str) -> None:
    _, recorded = signed("provider-v4.json")[2]
    params = {key: value for key, value in {**recorded, **change}.items() if value is not None}
    verdict = check_signature(Call.STATUS, params, {PROVIDER})
    assert verdict == Refused(Reason.MALFORMED, error)
    assert (verdict.status, verdict.body()) == (401, {"error": error})


def test_no_refusal_or_acceptance_shows_the_signature() -> None:
    """Error texts and reprs reach logs: none carries the signature."""
    for name in CLIENT_FILES:
        nonces = MemoryNonceStore()
        for call, params in signed(name) * 2:
            for allowed in ({PROVIDER}, {OPERATOR_ADDRESS}):
                outcome = run(authenticate(call, params, allowed, nonces))
                shown = repr(outcome) + (outcome.error if isinstance(outcome, Refused) else "")
                assert params["providerSignature"][2:20].lower() not in shown.lower()


# ---- the allowlist ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '["0xe08A1dAe983BC701D05E492DB80e0144f8f4b909"]',
        '["0xe08a1dae983bc701d05e492db80e0144f8f4b909", "0x6D39A833d1a6789AECa50dB85CB830bc08319F45"]',
        "0xE08A1DAE983BC701D05E492DB80E0144F8F4B909, 0x6d39a833d1a6789aeca50db85cb830bc08319f45",
        " 0xe08a1dae983bc701d05e492db80e0144f8f4b909\n0x6D39A833d1a6789AECa50dB85CB830bc08319F45 ",
    ],
)
def test_allowed_providers_parse_to_checksummed_addresses(text: str) -> None:
    parsed = parse_allowed_providers(text)
    assert PROVIDER in parsed
    assert parsed <= {PROVIDER, OPERATOR_ADDRESS}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('["0xe08A1dAe983BC701D05E492DB80e0144f8f4b90"]', "is not a 0x-prefixed 40-hex-digit address"),
        ("0xe08A1dAe983BC701D05E492DB80e0144f8f4B909", "has a wrong EIP-55 checksum"),
        ('["0xe08A1dAe983BC701D05E492DB80e0144f8f4b909", 1]', "must be a JSON list of address strings"),
        ("[0xe08", "is not a JSON list"),
        ("https://provider.example", "is not a 0x-prefixed 40-hex-digit address"),
    ],
)
def test_allowed_providers_refuse_what_is_not_an_address(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_allowed_providers(text)


def test_an_empty_allowlist_parses_to_nobody() -> None:
    assert parse_allowed_providers("  ") == frozenset()
    assert parse_allowed_providers("[]") == frozenset()
    assert checksum_address(PROVIDER.lower()) == PROVIDER


# ---- the app's hook --------------------------------------------------------------------------------------


def test_the_authenticator_is_the_apps_hook() -> None:
    seen: list[tuple[Call, Any]] = []
    hook: Authenticate = Authenticator(
        [PROVIDER.lower()], MemoryNonceStore(), lambda c, o: seen.append((c, o))
    )
    call, params = signed("ocean-node-OPF_K8_9f2870dd.json")[2]
    assert run(hook(AuthQuery(call.value, params))) is None
    assert run(hook(AuthQuery(call.value, params))) == Refusal(401, replay_text(params["nonce"]))
    assert [(c, type(o)) for c, o in seen] == [(Call.STATUS, Accepted), (Call.STATUS, Refused)]
    with pytest.raises(ValueError, match="not a 0x-prefixed"):
        Authenticator(["https://provider.example"], MemoryNonceStore())


def replay_text(nonce: Any) -> str:
    return (
        f"nonce {nonce} of provider {PROVIDER} was used before, or is older than its last {WINDOW} "
        "nonces: a replay"
    )


async def test_a_start_refused_after_its_signature_was_checked_spends_the_nonce() -> None:
    """The nonce is spent when an allowed provider's signature over it is verified, whatever follows: a
    refused POST cannot be sent again, body changed or not, once the refusal's cause is gone (provider signs
    owner + nonce, not the body). Clients sign a fresh nonce for every request, so none retries with one."""
    _, post = next((c, p) for c, p in signed("provider-v4.json") if c is Call.START)

    class RefusingOnce(InMemoryStore):
        refused = False

        async def create_workflow(self, obj: dict[str, Any]) -> dict[str, Any]:
            if not self.refused:
                self.refused = True
                raise CreateRefusedError("spec.inputs: Too many: 300: must have at most 64 items")
            return await super().create_workflow(obj)

    store = RefusingOnce(environments=[{"metadata": {"name": post["environment"]}, "spec": {}}])
    config = ApiConfig(store=store, authenticate=Authenticator([PROVIDER], MemoryNonceStore()))
    async with TestClient(TestServer(build_app(config), host="127.0.0.1")) as client:
        refused = await client.post("/api/v1/operator/compute", json=post)
        assert refused.status == 400
        again = await client.post("/api/v1/operator/compute", json=post)
        assert again.status == 401
        assert (await again.json(content_type=None)) == {"error": replay_text(post["nonce"])}
    assert store.workflows == {}
