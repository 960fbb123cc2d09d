"""`ocean-c2d queue`: where Workflows wait, answered on demand from one LIST (the I/O shell of
environments.queue_report and workflow_queue_line).

Workflows carry no queue position in their status (only the head does, and the ComputeEnvironment names
its head): writing every waiting Workflow's position on every admission cost one write per waiting
Workflow per admission. This answers any position instead, with the caller's own rights (list Workflows
and ComputeEnvironments of the namespace); nothing runs in the operator.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import kr8s
import kr8s.asyncio
from kr8s.asyncio.objects import APIObject

from ocean_c2d.environments import queue_report, workflow_queue_line
from ocean_c2d.model import GROUP, VERSION, Environment, InvalidWorkflow, Workflow


def _readable(body: dict[str, Any]) -> Workflow:
    try:
        return Workflow.from_object(body)
    except InvalidWorkflow:
        return Workflow.header(body)


async def _list(api: kr8s.asyncio.Api, kind: str, namespace: str) -> list[dict[str, Any]]:
    return [
        dict(obj.raw) async for obj in api.async_get(kind, namespace=namespace) if isinstance(obj, APIObject)
    ]


async def _lines(args: argparse.Namespace) -> list[str]:
    api = await kr8s.asyncio.api()
    namespace = args.namespace or api.namespace or "default"
    workflows = [_readable(body) for body in await _list(api, f"workflows.{VERSION}.{GROUP}", namespace)]
    environments = {
        body["metadata"]["name"]: Environment.from_object(body)
        for body in await _list(api, f"computeenvironments.{VERSION}.{GROUP}", namespace)
    }
    if args.workflow:
        found = [w for w in workflows if w.name == args.workflow]
        if not found:
            raise LookupError(f"no Workflow {args.workflow} in namespace {namespace}")
        return [workflow_queue_line(found[0], environments.get(found[0].spec.environment), workflows)]
    names = [args.environment] if args.environment else sorted(environments)
    return [line for name in names for line in queue_report(environments.get(name), name, workflows)]


def main(args: argparse.Namespace) -> int:
    try:
        lines = asyncio.run(_lines(args))
    except (LookupError, kr8s.NotFoundError, kr8s.ServerError) as error:
        print(f"ocean-c2d queue: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0
