"""A request's parameters, read as operator-service read them (pure).

operator-service took `request.args if request.args else request.json` for every method: the query string
when it is non-empty, else the JSON body, GET included (ocean-node sends GET /compute and GET /getResult
with a JSON body; provider sends GET/PUT/DELETE as query strings). A body is JSON only under a JSON
Content-Type; anything else is Flask's 415, which each route words its own way.

Numbers: provider's POST nonce is a 19-digit JSON integer, above 2**53. Python's json keeps integers as
int, exactly; nothing here ever goes through a float. The query string's values stay strings.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Params = dict[str, Any]

# Flask/Werkzeug's texts, which operator-service put inside its own error messages.
UNSUPPORTED_MEDIA_TYPE = (
    "415 Unsupported Media Type: Did not attempt to load JSON data because the request Content-Type "
    "was not 'application/json'."
)
BAD_JSON = "400 Bad Request: Failed to decode JSON object: {error}"


class BodyError(Exception):
    """The body could not be read as the parameters: `text` is Werkzeug's wording (415 or 400)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def is_json(content_type: str | None) -> bool:
    """Werkzeug's `is_json`: application/json or application/*+json, parameters ignored."""
    mimetype = (content_type or "").split(";", 1)[0].strip().lower()
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def parse_json(body: bytes) -> Any:
    """JSON with integers kept as int (a 19-digit nonce stays exact)."""
    return json.loads(body.decode("utf-8"))


def read_params(query: Iterable[tuple[str, str]], content_type: str | None, body: bytes) -> Any:
    """The query string's parameters (the first value of each name, as Flask's MultiDict.get) when there
    are any, else the JSON body (whatever JSON it holds: a route checks it is an object). BodyError
    when the body is not JSON."""
    args: Params = {}
    for key, value in query:
        args.setdefault(key, value)
    if args:
        return args
    if not is_json(content_type):
        raise BodyError(415, UNSUPPORTED_MEDIA_TYPE)
    try:
        return parse_json(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise BodyError(400, BAD_JSON.format(error=error)) from error


def missing_attribute(params: Any, required: Iterable[str], route: str) -> str | None:
    """operator-service's `check_required_attributes`: the first problem, in its words, or None."""
    if not params or not isinstance(params, dict):
        return "payload seems empty."
    for name in required:
        if name not in params:
            return f'"{name}" is required in the call to {route}'
    return None


def identifier(params: Mapping[str, Any], name: str) -> str | None:
    """agreementId, jobId or owner as the status routes use them: a value shorter than 2 characters
    counts as absent (operator-service's rule; its probe shows `owner=x` ignored)."""
    value = params.get(name)
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) >= 2 else None


def number(value: Any) -> int:
    """A nonce or an index given as a JSON number or as a string of digits, as Python's int() reads
    it (so the error text of a bad one is int()'s, which operator-service answered)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid literal for int() with base 10: {value!r}")
    return int(value)


@dataclass(frozen=True)
class Refusal:
    """An authentication hook's answer when it refuses a request: the status and the error text."""

    status: int
    message: str


@dataclass(frozen=True)
class AuthQuery:
    """What an authentication hook judges: the call ("POST /compute", "GET /compute", "PUT /compute",
    "GET /getResult": auth.Call's values) and the request's parameters."""

    route: str
    params: Mapping[str, Any]


# The API's authentication hook (api/auth.py provides the real one): None accepts the request.
Authenticate = Callable[[AuthQuery], Awaitable[Refusal | None]]


async def accept_all(query: AuthQuery) -> Refusal | None:
    """The default hook: the original checked nothing that held (SIGNATURE_REQUIRED=0)."""
    return None
