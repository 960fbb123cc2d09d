"""Reading a request's parameters as operator-service did: query string first, else the JSON body."""

from __future__ import annotations

import pytest

from ocean_c2d.api.params import (
    UNSUPPORTED_MEDIA_TYPE,
    BodyError,
    identifier,
    is_json,
    missing_attribute,
    number,
    read_params,
)

# provider's POST body (shortened): its nonce is time.time_ns(), 19 digits, above 2**53.
PROVIDER_BODY = b'{"owner": "0xBE5449a6A97aD46c8558A3356267Ee5D2731ab5e", "nonce": 1796111661885572351}'


def test_the_query_string_wins_over_the_body() -> None:
    params = read_params([("owner", "0xabc"), ("nonce", "1")], "application/json", b'{"owner": "other"}')
    assert params == {"owner": "0xabc", "nonce": "1"}


def test_the_first_value_of_a_repeated_name_counts() -> None:
    assert read_params([("jobId", "a1"), ("jobId", "b2")], None, b"") == {"jobId": "a1"}


def test_an_empty_query_reads_the_json_body_for_any_method() -> None:
    # ocean-node's GET /compute: no query, a JSON body.
    assert read_params([], "application/json", b'{"jobId": "53edb1c1622146a29035ad19a99ba4f9"}') == {
        "jobId": "53edb1c1622146a29035ad19a99ba4f9"
    }


def test_a_19_digit_nonce_stays_exact() -> None:
    params = read_params([], "application/json", PROVIDER_BODY)
    assert params["nonce"] == 1796111661885572351
    assert isinstance(params["nonce"], int)
    assert float(params["nonce"]) != params["nonce"]  # a float would have lost it


def test_no_query_and_no_json_content_type_is_flasks_415() -> None:
    with pytest.raises(BodyError) as error:
        read_params([], None, b"")
    assert error.value.status == 415
    assert error.value.text == UNSUPPORTED_MEDIA_TYPE
    assert error.value.text == (
        "415 Unsupported Media Type: Did not attempt to load JSON data because the request "
        "Content-Type was not 'application/json'."
    )


def test_a_json_content_type_with_a_broken_body_is_a_400() -> None:
    with pytest.raises(BodyError) as error:
        read_params([], "application/json", b"{nope")
    assert error.value.status == 400
    assert error.value.text.startswith("400 Bad Request: Failed to decode JSON object: ")


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/vnd.api+json", True),
        ("text/plain", False),
        (None, False),
    ],
)
def test_is_json(content_type: str | None, expected: bool) -> None:
    assert is_json(content_type) is expected


def test_required_attributes_in_the_original_words() -> None:
    assert missing_attribute({}, ["owner"], "PUT:/compute") == "payload seems empty."
    assert missing_attribute(None, ["owner"], "PUT:/compute") == "payload seems empty."
    assert missing_attribute([1], ["owner"], "PUT:/compute") == "payload seems empty."
    assert (
        missing_attribute({"jobId": "x"}, ["owner", "nonce"], "PUT:/compute")
        == '"owner" is required in the call to PUT:/compute'
    )
    assert missing_attribute({"owner": "", "nonce": 0}, ["owner", "nonce"], "PUT:/compute") is None


def test_identifiers_shorter_than_two_characters_are_absent() -> None:
    # The probe: GET /compute?owner=x&jobId=... found the job: the "x" was ignored.
    assert identifier({"owner": "x"}, "owner") is None
    assert identifier({"owner": ""}, "owner") is None
    assert identifier({}, "owner") is None
    assert identifier({"owner": "0xBE"}, "owner") == "0xBE"


@pytest.mark.parametrize(
    ("value", "expected"), [(0, 0), ("7", 7), (1, 1), ("1796111663973568399", 1796111663973568399)]
)
def test_number_reads_numbers_and_strings(value: object, expected: int) -> None:
    assert number(value) == expected


def test_a_bad_index_says_what_pythons_int_says() -> None:
    # The probe's getResult?index=a answered "Error getResult: invalid literal for int() with base 10: 'a'".
    with pytest.raises(ValueError, match=r"^invalid literal for int\(\) with base 10: 'a'$"):
        number("a")
    with pytest.raises(ValueError, match="True"):
        number(True)
