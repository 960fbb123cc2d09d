"""The configure pod's side of the operator's download signer (signer.py): the pod holds no operator key;
it asks the operator to sign each provider download, proving its Workflow with the token of the
Workflow's Secret.

Environment (templates/configure-pod.yaml.j2): SIGNER_URL (the operator's signer), SIGNER_TOKEN (by
secretKeyRef), WORKFLOW_NAMESPACE and WORKFLOWID (which Workflow this pod works for).

The signer is reached with a client of its own: the operator's address is fixed by the operator, not by
the Workflow, so it needs none of the checks that the Workflow's URLs get, and the Workflow's client never
gets the token. No redirects, no proxy from the environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ocean_c2d.identity import user_agent
from ocean_c2d.resilience import describe_error, is_transient_status, scrub
from ocean_c2d.signing import DownloadSignature
from ocean_c2d.steps.streaming import FetchError, TransientError

SIGN_PATH = "/v1/download-signature"  # signer.SIGN_PATH (the steps do not import the operator's runtime)
ANSWER_LIMIT = 64 << 10
REASON_LIMIT = 200
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_NONCE = re.compile(r"[0-9]{1,30}")
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")


@dataclass(frozen=True)
class RemoteSigner:
    """Signatures from the operator's signer at `url`, for Workflow `namespace`/`workflow`."""

    url: str
    namespace: str
    workflow: str
    token: str = field(repr=False)
    http: httpx.AsyncClient = field(repr=False)

    async def sign_download(self, did: str) -> DownloadSignature:
        try:
            response = await self.http.post(
                self.url.rstrip("/") + SIGN_PATH,
                json={"namespace": self.namespace, "workflow": self.workflow, "did": did},
                headers={"Authorization": f"Bearer {self.token}"},
            )
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as error:
            raise TransientError(
                f"the operator's signer did not answer: {describe_error(error, [self.token])}"
            ) from None
        except httpx.HTTPError as error:
            raise FetchError(
                f"cannot ask the operator's signer: {describe_error(error, [self.token])}"
            ) from None
        if response.status_code != 200:
            reason = _reason(response)
            message = f"the operator's signer refused to sign (HTTP {response.status_code}: {reason})"
            if is_transient_status(response.status_code):
                raise TransientError(message, _retry_after(response))
            raise FetchError(message)
        return _signature(response)


@dataclass(frozen=True)
class NoSigner:
    """What signs when the pod was given no signer: nothing, saying why."""

    reason: str

    @property
    def message(self) -> str:
        return f"a download by DID is signed by the operator's signer: {self.reason}"

    async def sign_download(self, did: str) -> DownloadSignature:
        raise FetchError(self.message)


def signer_from_env(env: Mapping[str, str], http: httpx.AsyncClient) -> RemoteSigner | NoSigner:
    missing = [
        name
        for name in ("SIGNER_URL", "SIGNER_TOKEN", "WORKFLOW_NAMESPACE", "WORKFLOWID")
        if not env.get(name)
    ]
    if missing:
        return NoSigner(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set")
    return RemoteSigner(
        env["SIGNER_URL"], env["WORKFLOW_NAMESPACE"], env["WORKFLOWID"], env["SIGNER_TOKEN"], http
    )


def signer_client() -> httpx.AsyncClient:
    """The HTTP client for the signer alone (see the module docstring)."""
    return httpx.AsyncClient(
        headers={"User-Agent": user_agent()},
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(15.0, connect=5.0),
    )


def _reason(response: httpx.Response) -> str:
    """The signer's own words ({"error": ...}), short and printable."""
    try:
        document: Any = response.json()
    except ValueError:
        document = None
    reason = document.get("error") if isinstance(document, dict) else None
    text = scrub(reason if isinstance(reason, str) else response.reason_phrase)
    return text[:REASON_LIMIT] or "no reason given"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


def _signature(response: httpx.Response) -> DownloadSignature:
    if len(response.content) > ANSWER_LIMIT:
        raise FetchError("the operator's signer answered more than a signature")
    try:
        document: Any = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise FetchError("the operator's signer did not answer a signature")
    address, nonce, signature = (document.get(k) for k in ("address", "nonce", "signature"))
    if not (
        isinstance(address, str)
        and isinstance(nonce, str)
        and isinstance(signature, str)
        and _ADDRESS.fullmatch(address)
        and _NONCE.fullmatch(nonce)
        and _SIGNATURE.fullmatch(signature)
    ):
        raise FetchError("the operator's signer did not answer a signature")
    return DownloadSignature(address, nonce, signature)
