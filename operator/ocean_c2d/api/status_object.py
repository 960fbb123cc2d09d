"""The status object of operator-service, built from a Workflow object (pure).

Exactly the recorded shape: agreementId, jobId, owner, status, statusText, dateCreated, dateFinished,
results, stopreq, removed, algoDID, inputDID. Dates are epoch seconds as text with six decimals (Postgres
`extract(epoch ...)` through the original's sanitiser); dateFinished is null until the Workflow is over
and set on every terminal state; results is "" until the publish step reported them, then the list in
publish's order (the getResult index) with each entry's filename, filesize and type (never its url); for
a job with more results than its status holds (status.resultsManifest), the list its manifest holds,
which the caller reads and passes in (app.py: storage is I/O, this module is pure).

Codes. Ours that the original has (1, 20, 30, 31, 32, 40, 50, 60, 70) are answered with the original's
text (40's trailing space included). Of ours that the original lacks:
- 72 Job stopped and 43 Algorithm timed out are answered as the original answered those very cases: 70
  "Job finished" with stopreq 1 (stopped) or 2 (timed out); every client already handles that;
- 22 Container creation failed, 41 Algorithm failed and 62 Results upload failed are answered as they
  are: they are ocean-node's own numbers for those failures, so an OPF_K8 node and its consumers read
  them; provider v4 passes the number through to ocean.py/ocean.js, which show it and, like for the
  original's own 31/32 endings, see the job is over by dateFinished;
- 23 Network isolation not enforced, 51 Results blocked by filter and 90 Invalid workflow are answered
  as they are, with dateFinished set: the original had no such ending (it ran the algorithm unisolated,
  published whatever the filter left, or never started), and hiding them behind 70 would tell a
  consumer that a job which produced nothing succeeded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ocean_c2d import status as st
from ocean_c2d.api.translate import COMPAT_ANNOTATION, epoch_text
from ocean_c2d.status import Outcome, Stage
from ocean_c2d.times import parse_time

# The original's texts for its own codes.
ORIGINAL_TEXTS = {
    1: "Warming up",
    20: "Configuring volumes",
    30: "Provisioning success",
    31: "Data provisioning failed",
    32: "Algorithm provisioning failed",
    40: "Running algorithm ",
    50: "Filtering results",
    60: "Publishing results",
    70: "Job finished",
}
# Ours answered as another code (with stopreq saying why): see the module's docstring.
ANSWERED_AS = {st.JOB_STOPPED.number: 70, st.ALGORITHM_TIMED_OUT.number: 70}
# Ours answered as they are, and why (the docstring): what a client of the original never saw.
OURS_AS_THEY_ARE = {
    st.CONTAINER_CREATION_FAILED.number: "ocean-node's number",
    st.ALGORITHM_FAILED.number: "ocean-node's number",
    st.RESULTS_UPLOAD_FAILED.number: "ocean-node's number",
    st.NETWORK_NOT_ISOLATED.number: "no such ending in the original",
    st.RESULTS_BLOCKED.number: "no such ending in the original",
    st.INVALID_WORKFLOW.number: "no such ending in the original",
}
RESULT_KEYS = ("filename", "filesize", "type")


def client_code(status: Mapping[str, Any]) -> tuple[int, str]:
    """The (status, statusText) a client of the original sees for our status."""
    code = status.get("statusCode")
    if not isinstance(code, int) or status.get("stage") in (None, Stage.QUEUED.value):
        return 1, ORIGINAL_TEXTS[1]  # not yet admitted (or not yet seen by the operator): the original's 1
    code = ANSWERED_AS.get(code, code)
    text = ORIGINAL_TEXTS.get(code)
    if text is None:
        text = str(status.get("statusText") or "Unknown status")
    return code, text


def stop_request(workflow: Mapping[str, Any]) -> int:
    """The original's stopreq: 1 stop asked (PUT /compute), 2 the algorithm timed out, 0 neither."""
    status = workflow.get("status") or {}
    reason = status.get("reason")
    if reason == Outcome.ALGORITHM_TIMED_OUT.value:
        return 2
    if reason == Outcome.STOPPED.value or (workflow.get("spec") or {}).get("stop"):
        return 1
    return 0


def compat_facts(workflow: Mapping[str, Any]) -> dict[str, Any]:
    """What the API recorded at creation (translate.COMPAT_ANNOTATION), else what the spec says (a
    Workflow made with kubectl): algoDID, inputDID, dateCreated."""
    metadata = workflow.get("metadata") or {}
    spec = workflow.get("spec") or {}
    facts: dict[str, Any] = {}
    text = (metadata.get("annotations") or {}).get(COMPAT_ANNOTATION)
    if text:
        try:
            loaded = json.loads(text)
            facts = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            facts = {}
    if not isinstance(facts.get("algoDID"), str):
        facts["algoDID"] = (spec.get("algorithm") or {}).get("did") or "raw"
    if not isinstance(facts.get("inputDID"), list):
        facts["inputDID"] = [
            i["did"] for i in spec.get("inputs") or [] if isinstance(i, dict) and i.get("did")
        ]
    if not isinstance(facts.get("dateCreated"), str):
        created = parse_time(metadata.get("creationTimestamp"))
        facts["dateCreated"] = epoch_text(created) if created else None
    return facts


def finished_text(status: Mapping[str, Any], facts: Mapping[str, Any]) -> str | None:
    """dateFinished: null while running; on every terminal state the time it ended."""
    if status.get("stage") != Stage.FINISHED.value:
        return None
    moment: datetime | None = parse_time(status.get("finishedAt")) or parse_time(status.get("stoppedAt"))
    if moment is None:
        return facts.get("dateCreated") or "0.000000"
    return epoch_text(moment)


def results_of(status: Mapping[str, Any], results: list[dict[str, Any]] | None = None) -> Any:
    """ "" until published; then each entry's filename, filesize and type, in publish's order.
    `results` replaces status.results when the list was read from its manifest (too long for status)."""
    entries = results if results is not None else status.get("results")
    if not entries:
        return ""
    return [{key: entry[key] for key in RESULT_KEYS if key in entry} for entry in entries]


def build_status(workflow: Mapping[str, Any], results: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The status object for one Workflow object."""
    metadata = workflow.get("metadata") or {}
    spec = workflow.get("spec") or {}
    status = workflow.get("status") or {}
    facts = compat_facts(workflow)
    code, text = client_code(status)
    return {
        "agreementId": spec.get("agreementId", ""),
        "jobId": metadata.get("name", ""),
        "owner": spec.get("owner", ""),
        "status": code,
        "statusText": text,
        "dateCreated": facts["dateCreated"],
        "dateFinished": finished_text(status, facts),
        "results": results_of(status, results),
        "stopreq": stop_request(workflow),
        "removed": 0,
        "algoDID": facts["algoDID"],
        "inputDID": facts["inputDID"],
    }


def build_running(workflow: Mapping[str, Any]) -> dict[str, Any]:
    """A /runningjobs entry (the original's: no results, dates or stop fields; namespace = the
    environment; never chainId, which its code looked for where it never was)."""
    full = build_status(workflow)
    return {
        "agreementId": full["agreementId"],
        "jobId": full["jobId"],
        "owner": full["owner"],
        "status": full["status"],
        "statusText": full["statusText"],
        "dateCreated": full["dateCreated"],
        "namespace": (workflow.get("spec") or {}).get("environment", ""),
        "algoDID": full["algoDID"],
        "inputDID": full["inputDID"],
    }


def is_finished(workflow: Mapping[str, Any]) -> bool:
    """Over, for the original's `dateFinished IS NULL` tests (duplicate agreementId, /runningjobs)."""
    return bool((workflow.get("status") or {}).get("stage") == Stage.FINISHED.value)
