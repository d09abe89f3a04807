"""Cache statistics, and the ``DEBUG_CACHE=1`` log of every eviction decision."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass


@dataclass
class CacheStats:
    live_tokens: int = 0  # same in every layer and kv head: rows are kept equal
    capacity_tokens: int = 0
    bytes_allocated: int = 0  # K, V and bookkeeping tensors
    bytes_live: int = 0  # K and V of the live tokens
    evicted_tokens: int = 0  # cumulative, per row
    eviction_events: int = 0
    rebases: int = 0
    reprefills: int = 0
    reprefill_seconds: float = 0.0
    allocations: int = 0  # how many times storage was (re)allocated
    highest_position: int = -1  # highest position in use
    next_position: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def debug_enabled() -> bool:
    return os.environ.get("DEBUG_CACHE", "") not in ("", "0")


def debug_log(message: str) -> None:
    print(f"[cache] {message}", file=sys.stderr)
