"""The operator's download signer: provider downloads are signed here, so no pod of a Workflow holds the
operator key (issue 11, C13).

A configure pod POSTs {namespace, workflow, did} to `SIGN_PATH` with `Authorization: Bearer <token>`,
the token from its Workflow's Secret (`signing.signer_token`, an HMAC of the Workflow's uid). The signer
answers {address, nonce, signature} only when
1. the token is that Workflow's (compared in constant time),
2. the Workflow's spec names the DID (an input's or the algorithm's), and
3. the Workflow is configuring (and not being stopped),
reading the Workflow from the operator's in-memory view (the same watch indexes the reconcile reads).
Every refusal is a 403; a Workflow the view does not hold (yet: the operator just restarted) is a 503,
which the configure pod retries. The nonce comes from one strictly increasing source for the operator
address. The log names the Workflow and the DID, never the token or the signature.

Served by aiohttp on the operator's event loop, like /metrics: the handler reads the view on the thread
that updates it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ocean_c2d.model import InvalidWorkflow, Workflow
from ocean_c2d.signing import (
    DownloadSignature,
    NonceSource,
    OperatorKey,
    same_secret,
    sign_download,
    signer_token,
)
from ocean_c2d.status import Stage

log = logging.getLogger("ocean_c2d")

SIGN_PATH = "/v1/download-signature"
# A request is three short strings: anything larger is not one (aiohttp answers 413 beyond this).
MAX_REQUEST_BYTES = 4096
RETRY_AFTER_SECONDS = 2
# Kubernetes names (a Workflow is a DNS-1123 subdomain, a namespace a label), and Ocean DIDs: checked before
# they reach a log line, so a caller cannot write into the operator's log.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_DID = re.compile(r"did:op:[0-9a-fA-F]{64}")

WorkflowLookup = Callable[[str, str], dict[str, Any] | None]
"""(namespace, name) -> the Workflow's body as the operator knows it, or None (View.workflow)."""


@dataclass(frozen=True)
class SignRequest:
    namespace: str
    workflow: str
    did: str
    token: str

    @property
    def subject(self) -> str:
        return f"{self.did} for Workflow {self.namespace}/{self.workflow}"


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str  # said to the caller and logged: never a secret


def parse_request(body: bytes, authorization: str) -> SignRequest | Refusal:
    """The request, or why it is not one (400: nothing in it is logged but that it was malformed)."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return Refusal(403, "no bearer token")
    try:
        document = json.loads(body)
    except ValueError:
        return Refusal(400, "the request is not JSON")
    if not isinstance(document, dict):
        return Refusal(400, "the request is not a JSON object")
    fields = [document.get(key) for key in ("namespace", "workflow", "did")]
    if not all(isinstance(value, str) for value in fields):
        return Refusal(400, "the request needs the strings namespace, workflow and did")
    namespace, workflow, did = (str(value) for value in fields)
    if not _NAME.fullmatch(namespace) or not _NAME.fullmatch(workflow):
        return Refusal(400, "namespace and workflow must be Kubernetes names")
    if not _DID.fullmatch(did):
        return Refusal(400, "did must be did:op: and 64 hex digits")
    return SignRequest(namespace, workflow, did, token.strip())


class DownloadSigner:
    """Decides and signs; `handle` is its aiohttp handler."""

    def __init__(
        self, key: OperatorKey, workflows: WorkflowLookup, nonces: NonceSource | None = None
    ) -> None:
        self._key = key
        self._workflows = workflows
        self._nonces = nonces or NonceSource()

    def sign(self, request: SignRequest) -> DownloadSignature | Refusal:
        body = self._workflows(request.namespace, request.workflow)
        if body is None:
            return Refusal(503, "the operator does not know this Workflow (yet)")
        uid = str((body.get("metadata") or {}).get("uid") or "")
        # The token first: a caller that is not this Workflow's configure pod learns nothing more.
        if not uid or not same_secret(signer_token(self._key, uid), request.token):
            return Refusal(403, "the token is not this Workflow's")
        try:
            workflow = Workflow.from_object(body)
            stage = workflow.stage
        except (InvalidWorkflow, ValueError):
            return Refusal(403, "the Workflow cannot be read")
        if stage is not Stage.CONFIGURING or workflow.spec.stop:
            return Refusal(403, f"the Workflow is not configuring (stage {stage.value if stage else 'none'})")
        named = {*workflow.spec.input_dids, workflow.spec.algorithm_did}
        if request.did not in named:
            return Refusal(403, "the Workflow names no such DID")
        return sign_download(self._key, request.did, self._nonces)

    async def handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            log.warning("Refused to sign: a request larger than %d bytes", MAX_REQUEST_BYTES)
            return _refused(Refusal(413, "the request is too large"))
        parsed = parse_request(body, request.headers.get("Authorization", ""))
        if isinstance(parsed, Refusal):
            log.warning("Refused to sign a malformed request: %s", parsed.reason)
            return _refused(parsed)
        answer = self.sign(parsed)
        if isinstance(answer, Refusal):
            log.warning("Refused to sign a download of %s: %s", parsed.subject, answer.reason)
            return _refused(answer)
        log.info("Signed a download of %s", parsed.subject)
        return web.json_response(
            {"address": answer.address, "nonce": answer.nonce, "signature": answer.signature}
        )


def _refused(refusal: Refusal) -> web.Response:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if refusal.status == 503 else None
    return web.json_response({"error": refusal.reason}, status=refusal.status, headers=headers)


def application(signer: DownloadSigner) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_post(SIGN_PATH, signer.handle)
    return app


async def serve(signer: DownloadSigner, host: str, port: int) -> web.AppRunner:
    """Serve the signer on the running event loop; the caller cleans the returned runner up."""
    runner = web.AppRunner(application(signer), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
