"""Tests that need no Kubernetes cluster. Some use real local servers, started once per session on
loopback: the S3 (versitygw) and IPFS (kubo) servers of e2e/services.py, fixtures `s3_server` and
`ipfs_api` (built by `toolchain/build.sh kubo versitygw`, which `make unit` runs).

e2e/services.py comes in as a plugin (pytest rewrites its asserts only then); e2e/conftest.py names it
too, and the second registration is a no-op.
"""

from __future__ import annotations

pytest_plugins = ["e2e.services"]
