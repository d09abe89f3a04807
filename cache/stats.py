"""Cache statistics, and the ``DEBUG_CACHE=1`` log of every eviction decision."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field

from .strategy import ROLES


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
    # Strategies that track attention: the attention the cached tokens had accumulated, summed
    # over every eviction, the part of it the evicted tokens held, and the part the kept ones
    # held, by their role (the strategy's: sinks, heavy_hitters, recent).
    attention_before_evictions: float = 0.0
    attention_evicted: float = 0.0
    attention_kept_by_role: dict[str, float] = field(default_factory=dict)

    @property
    def attention_hit_rate(self) -> float | None:
        """The share of the cache's accumulated attention kept through its evictions: 1.0 when
        only tokens nobody attended to were evicted; lower when evicted tokens still drew
        attention, a sign that the budget is too small. ``None`` before an eviction, or when
        the strategy does not track attention."""
        if self.attention_before_evictions == 0:
            return None
        return 1 - self.attention_evicted / self.attention_before_evictions

    @property
    def attention_hit_rate_by_role(self) -> dict[str, float] | None:
        """``attention_hit_rate`` split by the role of the kept tokens (``{"sinks": ..,
        "heavy_hitters": .., "recent": ..}``, the strategy's roles, summing to the hit rate):
        which of them drew the attention the cache kept. ``None`` when the hit rate is."""
        if self.attention_before_evictions == 0:
            return None
        held = self.attention_kept_by_role
        order = [role for role in ROLES if role in held] + [r for r in held if r not in ROLES]
        return {role: held[role] / self.attention_before_evictions for role in order}

    def as_dict(self) -> dict:
        return {**asdict(self), "attention_hit_rate": self.attention_hit_rate,
                "attention_hit_rate_by_role": self.attention_hit_rate_by_role}


def debug_enabled() -> bool:
    return os.environ.get("DEBUG_CACHE", "") not in ("", "0")


def debug_log(message: str) -> None:
    print(f"[cache] {message}", file=sys.stderr)
