"""The objects the unit tests build, defined once: the operator key, Workflow objects (raw and typed),
environments, the default environment's values, the settings' environment, the planner's settings.

Each builder returns a fresh object with fixed, readable defaults; a test overrides only what it is
about (`workflow_object(stop=True)`, `workflow("b", stage="Queued")`, `default_environment(gpu_count=2)`).
The values are test data, never production defaults: the code under test supplies those itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ocean_c2d.model import API_VERSION, Admission, Environment, PlanSettings, TemplateValues, Workflow
from ocean_c2d.render import Templates
from ocean_c2d.settings import DefaultEnvironment
from ocean_c2d.signing import OperatorKey

# ---- the operator's key ----------------------------------------------------------------------------------

# The key of the reference vector (shared/reference/original-operator-engine.md §5.1) and its address.
OPERATOR_KEY_HEX = "0x95c716e9df3bc4ffd7299e7861ce401de810e8d245d3127b8e7b430f4ca7fd27"
OPERATOR_KEY = OperatorKey.from_hex(OPERATOR_KEY_HEX)
OPERATOR_ADDRESS = "0x6D39A833d1a6789AECa50dB85CB830bc08319F45"

# The reference's notification vector: what the operator signs for one job (signing.notification_payload).
NOTIFY_SECRET = "fedcba9876543210fedcba9876543210"
NOTIFY_DIDS = ["did:op:bbbb", "did:op:cccc"]
NOTIFY_ALGO_DID = "did:op:aaaa"
JOB_ID = "0123456789abcdef0123456789abcdef"  # a Workflow's name: the job id Ocean gives it


def settings_environ(**extra: str) -> dict[str, str]:
    """The smallest environment `load_settings` accepts (the operator key), with `extra` on top."""
    return {"OPERATOR_PRIVATE_KEY": OPERATOR_KEY_HEX, **extra}


# ---- Workflows ---------------------------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)  # "now" of the planner's tests
CREATED = "2026-01-01T11:59:00Z"  # a minute before T0
OWNER = "0x" + "a" * 40
DID = "did:op:" + "b" * 64


def workflow_object(
    *, metadata: Mapping[str, Any] | None = None, status: Mapping[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    """A Workflow as the API server returns it: `job1` in namespace `c2d`, one input, a raw-code algorithm
    in python:3.11, environment `cpu`. `metadata` entries replace the default ones, `spec` keywords the
    spec's; `status`, when given, is the object's status."""
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "Workflow",
        "metadata": {
            "name": "job1",
            "namespace": "c2d",
            "uid": "uid-1",
            "generation": 1,
            "creationTimestamp": CREATED,
            **(metadata or {}),
        },
        "spec": {
            "environment": "cpu",
            "owner": OWNER,
            "inputs": [{"did": DID, "serviceId": "svc", "transferTxId": "0x01"}],
            "algorithm": {
                "rawCode": "print(42)",
                "container": {"image": "python", "tag": "3.11", "entrypoint": "python $ALGO"},
            },
            **spec,
        },
    }
    if status is not None:
        body["status"] = dict(status)
    return body


def workflow(
    name: str = "job1",
    *,
    created: str = CREATED,
    stage: str | None = None,
    environment: str = "cpu",
    namespace: str = "c2d",
    **status: Any,
) -> Workflow:
    """The typed Workflow `name` (uid `uid-<name>`) of `environment`: new (no status) without `stage`,
    else in `stage` with the other `status` fields."""
    return Workflow.from_object(
        workflow_object(
            metadata={
                "name": name,
                "namespace": namespace,
                "uid": f"uid-{name}",
                "creationTimestamp": created,
            },
            status=None if stage is None else {"stage": stage, **status},
            environment=environment,
        )
    )


# ---- environments --------------------------------------------------------------------------------------

ENVIRONMENT = Environment(name="cpu", max_jobs=2, max_job_duration=600)
ADMIT = Admission(may_start=True)


def default_environment(**overrides: Any) -> DefaultEnvironment:
    """The default environment's values (from the original's variables): 4 CPUs, 16 GB, no GPU."""
    values: dict[str, Any] = {
        "cpu_count": 4,
        "cpu_type": "AMD EPYC",
        "gpu_count": 0,
        "gpu_ram_gb": 0.0,
        "gpu_type": "",
        "ram_gb": 16.0,
        "disk_gb": 100.0,
        "price_per_minute": 0.5,
        "description": "The default environment",
        "max_jobs": 7,
        "max_job_duration_seconds": 7200,
        "storage_expiry_hours": 48,
    }
    return DefaultEnvironment(**{**values, **overrides})


# ---- what the planner and the templates are given ------------------------------------------------------

TEMPLATES = Templates()
TEMPLATE_VALUES: dict[str, Any] = {
    "service_account": "default",
    "pull_secret": None,
    "node_selector_scope": None,
    "pull_policy": "IfNotPresent",
    "configure_image": "ocean-c2d:test",
    "publish_image": "ocean-c2d:test",
    "credentials_secret": "ocean-c2d-credentials",
    "storage_class": "",
    "publish_env": {},
    "isolation_probe_address": None,
    "isolation_timeout": 60,
}


def template_values(**overrides: Any) -> TemplateValues:
    """TEMPLATE_VALUES as the planner gets them, with `overrides` (each call its own publish_env)."""
    return TemplateValues(**{**TEMPLATE_VALUES, "publish_env": {}, **overrides})


PLAN_SETTINGS = PlanSettings(template_values=template_values(), notify_start=True, notify_stop=True)
