"""In a pod the operator reaches the API server where client-go would: KUBERNETES_SERVICE_HOST/_PORT,
not kopf's hard-coded https://kubernetes.default.svc (a name only cluster DNS resolves)."""

from __future__ import annotations

import pytest

from ocean_c2d.handlers import in_cluster_server


@pytest.mark.parametrize(
    ("environ", "server"),
    [
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, "https://10.96.0.1:443"),
        ({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}, "https://[fd00::1]:6443"),
        (
            {"KUBERNETES_SERVICE_HOST": "api.internal", "KUBERNETES_SERVICE_PORT": "8443"},
            "https://api.internal:8443",
        ),
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, None),
        ({}, None),
    ],
)
def test_the_in_cluster_server_follows_the_service_environment(
    environ: dict[str, str], server: str | None
) -> None:
    assert in_cluster_server(environ) == server
