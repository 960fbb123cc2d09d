"""Who may call the compatibility API: the provider's signature, checked for real (pure, but for the
nonce store it is handed).

operator-service recovered the signer over a message its callers never signed (`owner` or `owner+jobId`,
without the nonce), so the "provider address" it found was effectively random and nothing held. Here the
signer is recovered over the message each real client signs, as the recordings show
(`shared/ocean-compat/recordings/*/signatures.jsonl`); both sign keccak256(utf8(message)) with the 32-byte
EIP-191 prefix (signing.personal_message_hash):

| call            | provider v4 (v 00/01, 19-digit nonce)  | ocean-node OPF_K8 (v 1b/1c, 13-digit nonce) |
|-----------------|----------------------------------------|---------------------------------------------|
| POST /compute   | owner + nonce                          | nonce                                       |
| GET /compute    | owner + jobId + nonce (jobId or "")    | nonce + owner + jobId (absent: "undefined") |
| PUT /compute    | owner + jobId + nonce                  | nonce                                       |
| DELETE /compute | owner + jobId + nonce                  | (never sent)                                |
| GET /getResult  | owner + jobId + nonce                  | owner + jobId (no nonce)                    |

A request is accepted when one of its call's messages recovers to an address of the allowlist (and to
`providerAddress` when the request names one), then only if that address has not spent its nonce yet
(`NonceStore.advance`: one replay window per address for every call, api/replay.py, so a nonce spent on one
call cannot be spent on another). What the clients sign bounds what this can prove, and is said in `Accepted`:
- OPF_K8 signs neither owner nor jobId on POST and PUT: an allowed signature over a nonce is good for any
  body with that nonce, once.
- OPF_K8's getResult signs no nonce: the same signature is reused for every index (the recording does), so
  its nonce proves nothing and is not spent (a replayed one could otherwise push the counter past the
  client's clock and lock the node out); `Accepted.replay_protected` is False. The owner check of
  getResult, and the NetworkPolicy in front of the API, are what remain.
The `v` byte only orders the attempts (the likely client first: a recovery costs ~5 ms in eth-keys' pure
Python backend); it proves nothing, since anyone can flip it.

Refusals are 401 with the original's {"error": ...} shape; their text never carries the signature.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from eth_keys.datatypes import Signature
from eth_keys.exceptions import BadSignature
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from ocean_c2d.api.params import AuthQuery, Refusal
from ocean_c2d.api.replay import WINDOW, NonceWindow
from ocean_c2d.signing import personal_message_hash

PROVIDER_V4 = "provider-v4"
OCEAN_NODE_OPF_K8 = "ocean-node-OPF_K8"

UNAUTHORIZED = 401

# A nonce is a decimal integer in its one canonical spelling (no sign, no leading zero), so a message has one
# text; 20 digits hold any 64-bit value: provider's time_ns() has 19, ocean-node's Date.now() 13.
_NONCE = re.compile(r"0|[1-9][0-9]{0,19}")
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


class Call(enum.Enum):
    """The signed calls of the API, by method and route."""

    START = "POST /compute"
    STATUS = "GET /compute"
    STOP = "PUT /compute"
    DELETE = "DELETE /compute"
    RESULT = "GET /getResult"


@dataclass(frozen=True)
class SignedMessage:
    """A message a client signs for a call: its text, and whether the text holds the nonce."""

    client: str
    text: str
    binds_nonce: bool


@dataclass(frozen=True)
class Accepted:
    """The request is from `provider` (checksummed), sent by `client` with `nonce`. `replay_protected` is
    False when that client does not sign the nonce (OPF_K8's getResult): the nonce was not spent."""

    provider: str
    client: str
    nonce: int
    replay_protected: bool


class Reason(enum.Enum):
    """Why a request was refused: a short word for a metric label and a log line."""

    MALFORMED = "malformed"  # no or unreadable providerSignature, nonce or providerAddress
    NOT_ALLOWED = "not-allowed"  # no call's message recovers to an allowed provider (or to providerAddress)
    REPLAY = "replay"  # the nonce is not above the provider's last one


@dataclass(frozen=True)
class Refused:
    """The request is refused: `status` (401) and `error`, the text of the original's {"error": ...}."""

    reason: Reason
    error: str
    status: int = UNAUTHORIZED

    def body(self) -> dict[str, str]:
        return {"error": self.error}


Outcome = Accepted | Refused


class NonceStore(Protocol):
    """The nonces each provider address has spent, kept where every replica of the API sees it.

    `advance(address, nonce)` answers True and records `nonce` only when the address's replay window
    (api/replay.py) admits it: above the window's floor and not accepted before; otherwise it changes nothing
    and answers False. A Kubernetes implementation decides against the object that holds the window and
    writes it with the read resourceVersion as a precondition; on 409 Conflict it reads and decides again:
    two replicas given the same nonce cannot both succeed. `address` is always the checksummed form.
    """

    async def advance(self, address: str, nonce: int) -> bool: ...


class MemoryNonceStore:
    """A NonceStore in this process only: for tests, or a single replica that may forget on restart (a
    replay of a request older than the restart is then accepted once). `floors`: nonces at or below them
    are refused from the start."""

    def __init__(self, floors: Mapping[str, int] | None = None, window: int = WINDOW) -> None:
        self._windows = {address: NonceWindow(floor, (), window) for address, floor in (floors or {}).items()}
        self._size = window

    async def advance(self, address: str, nonce: int) -> bool:
        # No await between the check and the write: atomic on the event loop.
        window = self._windows.get(address) or NonceWindow(None, (), self._size)
        self._windows[address], [accepted] = window.accept([nonce])
        return accepted

    def window(self, address: str) -> NonceWindow | None:
        return self._windows.get(address)


def parse_allowed_providers(text: str) -> frozenset[str]:
    """ALLOWED_PROVIDERS as operator-service read it (a JSON list of addresses), or separated by commas or
    white space; checksummed or not. The checksummed set; ValueError naming the entry that is not an address
    (a mixed-case entry must carry the right checksum: a typo in it is caught, not trusted)."""
    stripped = text.strip()
    if not stripped:
        return frozenset()
    if stripped.startswith("["):
        try:
            entries = json.loads(stripped)
        except ValueError as error:
            raise ValueError(f"ALLOWED_PROVIDERS is not a JSON list: {error}") from None
        if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
            raise ValueError("ALLOWED_PROVIDERS must be a JSON list of address strings")
    else:
        entries = [entry for entry in re.split(r"[\s,]+", stripped) if entry]
    return frozenset(checksum_address(entry.strip()) for entry in entries)


def checksum_address(text: str) -> str:
    """The EIP-55 form of a 0x-prefixed 20-byte hex address; ValueError if it is not one, or if it is in
    mixed case with a wrong checksum."""
    if not _ADDRESS.fullmatch(text):
        raise ValueError(f"{text[:60]!r} is not a 0x-prefixed 40-hex-digit address")
    checksummed = str(to_checksum_address(text))
    hex_digits = text[2:]
    if hex_digits != hex_digits.lower() and hex_digits != hex_digits.upper() and checksummed != text:
        raise ValueError(f"{text!r} has a wrong EIP-55 checksum")
    return checksummed


def _js_text(params: Mapping[str, Any], key: str) -> str:
    """A parameter as a JavaScript template or `+` writes it: absent is "undefined", null "null"."""
    if key not in params:
        return "undefined"
    return _text(params[key], null="null")


def _text(value: Any, null: str = "") -> str:
    if value is None:
        return null
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def signed_messages(call: Call, params: Mapping[str, Any], nonce: str) -> tuple[SignedMessage, ...]:
    """The messages the known clients sign for `call` with these parameters (`nonce` in its canonical text):
    provider v4's first, then OPF_K8's."""
    owner = _text(params.get("owner"))
    # provider: f"{owner}{job_id}{nonce}" if job_id else f"{owner}{nonce}".
    provider = SignedMessage(PROVIDER_V4, owner + _text(params.get("jobId")) + nonce, binds_nonce=True)
    node: SignedMessage | None
    if call in (Call.START, Call.STOP):
        node = SignedMessage(OCEAN_NODE_OPF_K8, nonce, binds_nonce=True)
    elif call is Call.STATUS:
        # String(nonce + consumerAddress + jobId): jobId undefined when not given.
        text = nonce + _js_text(params, "owner") + _js_text(params, "jobId")
        node = SignedMessage(OCEAN_NODE_OPF_K8, text, binds_nonce=True)
    elif call is Call.RESULT:
        # jobId ? consumerAddress + jobId : consumerAddress; "nonce is not part of signature message".
        job = params.get("jobId")
        text = _js_text(params, "owner") + (_text(job) if job else "")
        node = SignedMessage(OCEAN_NODE_OPF_K8, text, binds_nonce=False)
    else:
        node = None  # OPF_K8 never deletes
    return (provider,) if node is None else (provider, node)


def recover_signer(message: str, signature: bytes) -> str | None:
    """The checksummed address that signed keccak256(utf8(message)) with the 32-byte EIP-191 prefix, or None
    when `signature` (65 bytes, v in 0/1 or 27/28) recovers nothing."""
    v = signature[64]
    if v in (27, 28):
        v -= 27
    if v not in (0, 1):
        return None
    try:
        key = Signature(signature[:64] + bytes([v])).recover_public_key_from_msg_hash(
            # surrogatepass: a lone surrogate from a JSON body cannot be a client's, but must not raise.
            personal_message_hash(keccak(message.encode("utf-8", "surrogatepass")))
        )
    except (BadSignature, ValueError):
        return None
    return str(key.to_checksum_address())


@dataclass(frozen=True)
class _Request:
    signature: bytes = field(repr=False)
    nonce: int
    nonce_text: str
    claimed: str | None  # providerAddress, checksummed


def _read(params: Mapping[str, Any]) -> _Request | Refused:
    signature = params.get("providerSignature")
    if not isinstance(signature, str) or not signature:
        return Refused(Reason.MALFORMED, "providerSignature is required")
    if not _SIGNATURE.fullmatch(signature):
        return Refused(Reason.MALFORMED, "providerSignature must be 0x and 65 bytes in hex")
    raw_nonce = params.get("nonce")
    # A JSON number arrives as int (a float or a bool is not a nonce any client sends), a query value as str.
    if isinstance(raw_nonce, bool) or not isinstance(raw_nonce, int | str):
        return Refused(Reason.MALFORMED, "nonce is required, as a decimal integer")
    nonce_text = str(raw_nonce)
    if not _NONCE.fullmatch(nonce_text):
        return Refused(Reason.MALFORMED, "nonce must be a decimal integer of at most 20 digits")
    claimed = params.get("providerAddress")
    if claimed is not None:
        if not isinstance(claimed, str):
            return Refused(Reason.MALFORMED, "providerAddress must be an address")
        try:
            claimed = checksum_address(claimed)
        except ValueError:
            return Refused(Reason.MALFORMED, "providerAddress must be a 0x-prefixed 40-hex-digit address")
    return _Request(bytes.fromhex(signature[2:]), int(nonce_text), nonce_text, claimed)


def check_signature(call: Call, params: Mapping[str, Any], allowed: Iterable[str]) -> Accepted | Refused:
    """Pure: is the request signed, over one of its call's messages, by an allowed provider (the one it
    names in providerAddress, if it names one)? The nonce is not checked against the store here.
    `allowed` holds addresses, checksummed or not (parse_allowed_providers validates them once)."""
    request = _read(params)
    if isinstance(request, Refused):
        return request
    allowed = frozenset(address.lower() for address in allowed)
    if request.claimed is not None and request.claimed.lower() not in allowed:
        return Refused(Reason.NOT_ALLOWED, f"providerAddress {request.claimed} is not an allowed provider")
    messages = signed_messages(call, params, request.nonce_text)
    # Try the client the v byte suggests first (27/28: ethers, ocean-node): one recovery in the usual case.
    if request.signature[64] in (27, 28):
        messages = tuple(sorted(messages, key=lambda m: m.client != OCEAN_NODE_OPF_K8))
    for message in messages:
        signer = recover_signer(message.text, request.signature)
        if signer is None:
            return Refused(Reason.MALFORMED, "providerSignature is not a valid signature")
        if signer.lower() in allowed and (request.claimed is None or signer == request.claimed):
            return Accepted(signer, message.client, request.nonce, replay_protected=message.binds_nonce)
    if request.claimed is not None:
        return Refused(Reason.NOT_ALLOWED, f"providerSignature is not {request.claimed}'s for this request")
    return Refused(Reason.NOT_ALLOWED, "providerSignature is not an allowed provider's for this request")


async def authenticate(
    call: Call, params: Mapping[str, Any], allowed: Iterable[str], nonces: NonceStore
) -> Outcome:
    """`check_signature`, then the nonce: spent (admitted by the provider's replay window) when the
    signature covers it. Only a request an allowed provider signed reaches the store, so no one else can
    move it."""
    verdict = check_signature(call, params, allowed)
    if isinstance(verdict, Refused) or not verdict.replay_protected:
        return verdict
    if not await nonces.advance(verdict.provider, verdict.nonce):
        return Refused(
            Reason.REPLAY,
            f"nonce {verdict.nonce} of provider {verdict.provider} was used before, or is older than its "
            f"last {WINDOW} nonces: a replay",
        )
    return verdict


class Authenticator:
    """The app's authentication hook (params.Authenticate): None accepts, a Refusal (401) refuses.
    `observe`, when given, sees every outcome (a metric by Reason, a log line naming the provider: an
    Outcome never holds the signature)."""

    def __init__(
        self,
        allowed: Iterable[str],
        nonces: NonceStore,
        observe: Callable[[Call, Outcome], None] | None = None,
    ) -> None:
        self._allowed = frozenset(checksum_address(address) for address in allowed)
        self._nonces = nonces
        self._observe = observe

    async def __call__(self, query: AuthQuery) -> Refusal | None:
        call = Call(query.route)
        outcome = await authenticate(call, query.params, self._allowed, self._nonces)
        if self._observe is not None:
            self._observe(call, outcome)
        return Refusal(outcome.status, outcome.error) if isinstance(outcome, Refused) else None
