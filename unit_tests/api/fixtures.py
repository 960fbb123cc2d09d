"""Where the API tests read the contract recordings: the copy in the repository (fixtures/README.md),
or the folder OCEAN_COMPAT_DIR names (a fresh recording, before it is copied in)."""

from __future__ import annotations

import os
from pathlib import Path

COMPAT = Path(os.environ.get("OCEAN_COMPAT_DIR") or Path(__file__).parent / "fixtures" / "ocean-compat")


# Dropped before comparing answers, as the recordings' README says; plus Connection (the contract replay's
# deviation "connection": the original closed every connection).
UNCOMPARED_HEADERS = frozenset(
    {"date", "server", "user-agent", "host", "content-length", "transfer-encoding", "connection"}
)
