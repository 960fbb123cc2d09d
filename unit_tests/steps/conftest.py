"""Fixtures shared by the step tests: an HTTP client, and the local Ocean stand-ins (providers.py)
expecting downloads signed by the test operator key."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from unit_tests.steps.providers import OceanStack

# The address of the test operator key 0x95c7...fd27 that the step tests sign with.
OPERATOR_ADDRESS = "0x6D39A833d1a6789AECa50dB85CB830bc08319F45"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def stack() -> Iterator[OceanStack]:
    with OceanStack(expected_consumer=OPERATOR_ADDRESS) as servers:
        yield servers
