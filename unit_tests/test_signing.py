"""Signatures against the vector in the reference (shared/reference/original-operator-engine.md §5.1)."""

from __future__ import annotations

import pytest
from eth_utils.crypto import keccak

from ocean_c2d.signing import (
    OperatorKey,
    download_signature,
    notification_message,
    notification_payload,
    personal_message_hash,
    recover_personal,
    sign_personal,
)
from unit_tests.factories import (
    JOB_ID,
    NOTIFY_ALGO_DID,
    NOTIFY_DIDS,
    NOTIFY_SECRET,
    OPERATOR_ADDRESS,
    OPERATOR_KEY,
)


def test_address_of_the_reference_key() -> None:
    assert OPERATOR_KEY.address == OPERATOR_ADDRESS


def test_message_is_four_json_dumps_concatenated() -> None:
    assert notification_message(NOTIFY_SECRET, NOTIFY_DIDS, JOB_ID, NOTIFY_ALGO_DID) == (
        '"fedcba9876543210fedcba9876543210"["did:op:bbbb", "did:op:cccc"]'
        '"0123456789abcdef0123456789abcdef""did:op:aaaa"'
    )
    assert notification_message(NOTIFY_SECRET, [], JOB_ID, None).endswith("null")


def test_hash_and_signature_match_the_reference_vector() -> None:
    message = notification_message(NOTIFY_SECRET, NOTIFY_DIDS, JOB_ID, NOTIFY_ALGO_DID).encode()
    assert (
        personal_message_hash(message).hex()
        == "e066eca151de2f3836342ddfedd3e5a63faf1c18a34019830a5d942fd6c3c655"
    )
    assert sign_personal(OPERATOR_KEY, message) == (
        "0x05b8205b84ac51a0ae76a2e9508c3a69931788db56448def4a89060211fcbcad"
        "0eabcb369adad5dcba456ab5a771baedc29f6e22d12c2e2318650f81b5710fd81c"
    )


def test_payload_signature_recovers_to_the_operator_address() -> None:
    payload = notification_payload(OPERATOR_KEY, NOTIFY_SECRET, NOTIFY_DIDS, JOB_ID, NOTIFY_ALGO_DID)
    assert payload.keys() == {"algoDID", "jobId", "secret", "DID", "signature"}
    message = notification_message(payload["secret"], payload["DID"], payload["jobId"], payload["algoDID"])
    assert recover_personal(message.encode(), payload["signature"]) == OPERATOR_ADDRESS
    tampered = notification_message(payload["secret"], payload["DID"], "another-job", payload["algoDID"])
    assert recover_personal(tampered.encode(), payload["signature"]) != OPERATOR_ADDRESS


def test_download_signature_signs_the_32_byte_hash_of_did_and_nonce() -> None:
    signature = download_signature(OPERATOR_KEY, "did:op:abcd", "1700000000000")
    assert recover_personal(keccak(b"did:op:abcd1700000000000"), signature) == OPERATOR_ADDRESS


def test_repr_hides_the_private_key() -> None:
    assert "95c716e9" not in repr(OPERATOR_KEY)
    assert OPERATOR_ADDRESS in repr(OPERATOR_KEY)


@pytest.mark.parametrize("bad", ["0x1234", "zz" * 32, "00" * 32, "ff" * 32])
def test_malformed_keys_are_refused_without_quoting_them(bad: str) -> None:
    with pytest.raises(ValueError, match=r"32 bytes|non-hexadecimal|not a valid") as refused:
        OperatorKey.from_hex(bad)
    message = str(refused.value)
    assert bad not in message
    if bad == "ff" * 32:  # eth-keys' own error would quote the key as a decimal number
        assert str(int(bad, 16)) not in message
