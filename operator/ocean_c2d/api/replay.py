"""Which nonces of a provider the API still accepts: a sliding window, as IPsec's anti-replay window (pure).

A strictly increasing nonce refuses legitimate requests: provider runs several workers that sign with
time_ns() and call concurrently, so a request signed a moment earlier can arrive a moment later, and a
strict counter answers it 401 (measured: benchmarks/api_load.py). The window keeps the last WINDOW accepted
nonces; a nonce is accepted when it is above the floor (the highest nonce ever pushed out of the window) and
not among them. A replay is refused either way: every accepted nonce is still in the window or at most the
floor. What is given up is only that a request held back by more than WINDOW later ones is refused.

The window is stored as ConfigMap data (api/nonces.py): {"floor": "<decimal>", "recent": "<decimals,
ascending, space separated>"}. The form of the first version, {"nonce": "<decimal>"} (a strict counter),
reads as the floor.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# 1,024 nonces of 19 digits: 20 KiB of ConfigMap data, read and written once per batch of requests.
WINDOW = 1024


@dataclass(frozen=True)
class NonceWindow:
    floor: int | None  # nonces at or below it are refused; None: none was pushed out yet
    recent: tuple[int, ...]  # the accepted nonces above the floor, ascending, at most `size`
    size: int = WINDOW

    def admits(self, nonce: int) -> bool:
        if self.floor is not None and nonce <= self.floor:
            return False
        at = bisect.bisect_left(self.recent, nonce)
        return at == len(self.recent) or self.recent[at] != nonce

    def accept(self, nonces: Iterable[int]) -> tuple[NonceWindow, list[bool]]:
        """The window after deciding `nonces` in order, and each one's verdict (a nonce repeated within
        `nonces` is accepted once)."""
        window = self
        verdicts = []
        for nonce in nonces:
            admitted = window.admits(nonce)
            verdicts.append(admitted)
            if admitted:
                window = window._with(nonce)
        return window, verdicts

    def _with(self, nonce: int) -> NonceWindow:
        recent = list(self.recent)
        bisect.insort(recent, nonce)
        floor = self.floor
        if len(recent) > self.size:
            dropped = len(recent) - self.size
            floor = recent[dropped - 1]
            recent = recent[dropped:]
        return NonceWindow(floor, tuple(recent), self.size)

    def to_data(self) -> dict[str, str]:
        data = {"recent": " ".join(str(n) for n in self.recent)}
        if self.floor is not None:
            data["floor"] = str(self.floor)
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, str] | None, size: int = WINDOW) -> NonceWindow | None:
        """The window ConfigMap data holds (empty data: an empty window), or None when it is unreadable:
        then refuse rather than guess (deleting the ConfigMap resets the provider)."""
        data = data or {}
        floor_text = data.get("floor", data.get("nonce"))
        recent_text = data.get("recent", "")
        if floor_text is not None and not _decimal(floor_text):
            return None
        parts = recent_text.split()
        if not all(_decimal(part) for part in parts):
            return None
        floor = int(floor_text) if floor_text is not None else None
        recent = sorted({int(part) for part in parts if floor is None or int(part) > floor})
        if len(recent) > size:  # a smaller window than the one that wrote it: push the oldest out
            floor, recent = recent[-size - 1], recent[-size:]
        return cls(floor, tuple(recent), size)


def _decimal(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 40
