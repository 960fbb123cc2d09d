"""Who the operator is, in one place: the package's name and version, the user agent its HTTP clients
send, and the managed-by label every object it creates carries (its watches select on that label)."""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version

PACKAGE = "ocean-c2d"
MANAGED_BY_KEY = "app.kubernetes.io/managed-by"
MANAGED_BY = {MANAGED_BY_KEY: PACKAGE}


@functools.cache
def package_version() -> str:
    """The installed version, or "unknown" in a source tree that was never installed."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def user_agent() -> str:
    """`ocean-c2d/<installed version>`: what the HTTP requests of the operator and its steps say."""
    return f"{PACKAGE}/{package_version()}"
