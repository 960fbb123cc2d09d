"""Installing this repository's CRDs (crds/) into the test cluster."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kr8s
import kr8s.asyncio
from kr8s.asyncio.objects import APIObject, new_class

CRDS = Path(__file__).resolve().parent.parent / "crds"
CustomResourceDefinition = new_class(
    kind="CustomResourceDefinition", version="apiextensions.k8s.io/v1", namespaced=False, asyncio=True
)


def established(crd: APIObject) -> bool:
    # A CRD just created has `status.conditions: null`.
    conditions = (crd.raw.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


async def apply_crd(api: kr8s.asyncio.Api, manifest: dict[str, Any]) -> APIObject:
    """Create the CRD, or replace the spec of the one already there."""
    crd: APIObject = await CustomResourceDefinition(copy.deepcopy(manifest), api=api)
    try:
        await crd.create()
    except kr8s.ServerError as error:
        if error.response is None or error.response.status_code != 409:
            raise
        await crd.refresh()
        # A JSON-patch `replace` of the whole spec: unlike a merge patch, it drops what the file dropped.
        await crd.patch([{"op": "replace", "path": "/spec", "value": manifest["spec"]}], type="json")
    return crd
