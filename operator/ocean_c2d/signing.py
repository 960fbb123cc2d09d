"""Ethereum signatures the Ocean stack expects from the operator (pure: no I/O).

- Notifications (NOTIFY_START_URL / NOTIFY_STOP_URL) carry an EIP-191 personal signature over the
  *text* json.dumps(secret) + json.dumps(DID list) + json.dumps(jobId) + json.dumps(algoDID), exactly as
  the original operator-engine signed them, so existing receivers verify them unchanged.
- Provider downloads are signed over keccak256(did + nonce), with the 32-byte EIP-191 prefix. Only the
  operator signs them (signer.py): no pod of a Workflow holds the key. A configure pod proves which
  Workflow it works for with `signer_token`, which only the operator (and that Workflow's Secret) knows.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eth_keys.datatypes import PrivateKey, Signature
from eth_utils.crypto import keccak


@dataclass(frozen=True)
class OperatorKey:
    """The operator's signing key. `repr` never shows the secret part."""

    private_key: PrivateKey

    @classmethod
    def from_hex(cls, value: str) -> OperatorKey:
        raw = bytes.fromhex(value.removeprefix("0x"))
        if len(raw) != 32:
            raise ValueError("a private key is 32 bytes (64 hex digits)")
        try:
            return cls(PrivateKey(raw))
        except Exception:
            # eth-keys' own error quotes the key as a number: never let it reach a log line.
            raise ValueError(
                "not a valid secp256k1 private key (zero, or not below the curve order)"
            ) from None

    @property
    def address(self) -> str:
        return str(self.private_key.public_key.to_checksum_address())

    def __repr__(self) -> str:
        return f"OperatorKey(address={self.address})"


def job_secret(key: OperatorKey, uid: str) -> str:
    """The per-job secret, derived from the operator key and the Workflow's uid: the same after a restart
    without being stored anywhere but the job's own Secret."""
    derived = hmac.new(key.private_key.to_bytes(), f"ocean-c2d/job-secret/{uid}".encode(), hashlib.sha256)
    return derived.hexdigest()[:32]


def signer_token(key: OperatorKey, uid: str) -> str:
    """The token a Workflow's configure pod shows the operator's signer: like `job_secret`, derived from the
    operator key and the uid (nothing to store, the same after a restart), but under its own label, so
    the job secret (which the algorithm sees) says nothing about it."""
    derived = hmac.new(key.private_key.to_bytes(), f"ocean-c2d/signer-token/{uid}".encode(), hashlib.sha256)
    return derived.hexdigest()


def same_secret(expected: str, presented: str) -> bool:
    """Constant-time comparison (bytes: compare_digest refuses non-ASCII text, which a caller may send)."""
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "surrogateescape"))


def personal_message_hash(message: bytes) -> bytes:
    """keccak256 of the EIP-191 version 0x45 envelope: "\\x19Ethereum Signed Message:\\n<len>" + message."""
    digest: bytes = keccak(b"\x19Ethereum Signed Message:\n" + str(len(message)).encode() + message)
    return digest


def sign_personal(key: OperatorKey, message: bytes) -> str:
    """65-byte r||s||v signature (v in {27, 28}) as 0x-prefixed hex, as eth_account/web3 produce it."""
    signature = key.private_key.sign_msg_hash(personal_message_hash(message))
    r, s, v = int(signature.r), int(signature.s), int(signature.v)
    return "0x" + r.to_bytes(32, "big").hex() + s.to_bytes(32, "big").hex() + f"{v + 27:02x}"


def recover_personal(message: bytes, signature_hex: str) -> str:
    """The checksum address that produced `signature_hex` over `message` (EIP-191 personal sign)."""
    raw = bytes.fromhex(signature_hex.removeprefix("0x"))
    if len(raw) != 65:
        raise ValueError("a signature is 65 bytes")
    v = raw[64] - 27 if raw[64] >= 27 else raw[64]
    signature = Signature(raw[:64] + bytes([v]))
    public_key = signature.recover_public_key_from_msg_hash(personal_message_hash(message))
    address: str = public_key.to_checksum_address()
    return address


def notification_message(secret: str, dids: list[str], job_id: str, algo_did: str | None) -> str:
    """The text the original signed: four json.dumps with default separators, concatenated."""
    return json.dumps(secret) + json.dumps(dids) + json.dumps(job_id) + json.dumps(algo_did)


def notification_payload(
    key: OperatorKey, secret: str, dids: list[str], job_id: str, algo_did: str | None
) -> dict[str, Any]:
    """The original's notify body: {algoDID, jobId, secret, DID, signature}."""
    message = notification_message(secret, dids, job_id, algo_did)
    return {
        "algoDID": algo_did,
        "jobId": job_id,
        "secret": secret,
        "DID": dids,
        "signature": sign_personal(key, message.encode()),
    }


def download_signature(key: OperatorKey, did: str, nonce: str) -> str:
    """Provider's download signature: personal sign over the 32-byte keccak256(utf8(did + nonce))."""
    return sign_personal(key, keccak((did + nonce).encode()))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class NonceSource:
    """Download nonces: the current time in milliseconds, but strictly increasing.

    Every download is signed as the same operator address, and the provider refuses a nonce that is not
    greater than the last one it saw for that address; so two signatures in the same millisecond must
    not share a nonce (the original's Date.now() could). One source for the address, in the operator,
    orders every Workflow's downloads, not just one pod's.
    """

    def __init__(self, clock: Callable[[], int] = _now_ms) -> None:
        self._clock = clock
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            self._last = max(self._clock(), self._last + 1)
            return str(self._last)


@dataclass(frozen=True)
class DownloadSignature:
    """What a provider download needs from the operator: who signs, the nonce, and the signature (kept
    out of repr, so it never reaches a log line by accident)."""

    address: str
    nonce: str
    signature: str = field(repr=False)


def sign_download(key: OperatorKey, did: str, nonces: NonceSource) -> DownloadSignature:
    """A fresh nonce and the download signature over it."""
    nonce = nonces.next()
    return DownloadSignature(key.address, nonce, download_signature(key, did, nonce))
