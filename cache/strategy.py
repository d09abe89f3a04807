"""What a cache strategy is: a budget, and a score that says which tokens to keep.

A strategy is a small class (kvpress style). It answers three questions:

* ``budget(prompt_length)``: how many tokens it may keep (``None``: unbounded);
* ``keep_score(view)``: a score per slot, lowest evicted first; ``inf`` never
  (``torch.where(protected, math.inf, score)``: twice as fast as ``masked_fill`` on a CPU);
* ``evict_count(needed)``: how many to evict when ``needed`` slots are short
  (more than asked when it evicts in whole blocks).

``victims`` turns those answers into slots: it scores every slot and takes the
lowest, O(capacity) per eviction, which scores that change every step (H2O's
accumulated attention) need anyway: the step's attention reads every key too. A
strategy whose score of a token never changes while it is cached (a function of
its position, such as "oldest first") sets ``fixed_score``: each token is then
scored once, when written, and victims are popped from a heap
(:class:`ScoreHeap`), so a decode step's eviction costs O(k log capacity) for k
victims, with no scan of the slots. A strategy that selects tokens some other
way (see :mod:`cache.custom`) overrides ``victims`` instead.

Everything else (slots, eviction, positions, statistics) lives once in
:class:`cache.manager.KVCacheManager`.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass
class CacheView:
    """What a strategy may look at when it scores slots (all ``[rows, heads, C]``).

    A ``fixed_score`` strategy is shown the positions alone: those of the tokens
    being written (scored once), or of every slot after a re-base."""

    positions: torch.Tensor  # -1 for dead slots
    keys: torch.Tensor | None  # [L, H, C, D] stored (rotated) keys; values likewise
    values: torch.Tensor | None
    attention: torch.Tensor | None  # accumulated attention per key, when tracked
    seen: torch.Tensor | None  # number of queries that saw each key, when tracked
    newest_position: int  # highest position written so far
    incoming: int  # tokens about to be written this step


class Strategy:
    name: ClassVar[str]
    tracks_attention: ClassVar[bool] = False  # needs attention weights of every query
    counts_queries: ClassVar[bool] = False  # keep_score reads ``view.seen`` too
    per_head: ClassVar[bool] = False  # evicts per (layer, kv head) rather than per token
    # keep_score depends on positions only, and re-basing keeps its order (module doc).
    fixed_score: ClassVar[bool] = False
    position_stride: int = 1  # re-base positions only by multiples of this

    def budget(self, prompt_length: int) -> int | None:
        raise NotImplementedError

    def keep_score(self, view: CacheView) -> torch.Tensor:
        raise NotImplementedError

    def evict_count(self, needed: int) -> int:
        return needed

    def victims(self, view: CacheView, needed: int) -> torch.Tensor | None:
        """Slots to evict (``[rows, heads, k]``) so that ``needed`` more fit; ``None``
        when nothing has to go. Default: the lowest ``keep_score``."""
        if needed <= 0:
            return None
        score = torch.where(view.positions < 0, math.inf, self.keep_score(view))
        lowest, slots = score.topk(self.evict_count(needed), dim=-1, largest=False)
        if torch.isinf(lowest).any():
            raise RuntimeError(
                f"{self.name}: every cached token is protected; no room for "
                f"{view.incoming} new tokens"
            )
        return slots

    def step_room(self, budget: int) -> int:
        """Most tokens one step may add without evicting a protected token."""
        return budget

    def describe(self) -> dict:
        """Parameters, for statistics and logs."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class ScoreHeap:
    """The evictable slots of a ``fixed_score`` strategy (positions shared by all
    rows), lowest score first; protected (``inf``) slots are never entered."""

    def __init__(self):
        self.entries: list[tuple[float, int]] = []

    def push(self, scores: torch.Tensor, slots: torch.Tensor) -> None:
        """Enter new ``slots`` with their ``scores`` (both ``[1, 1, n]``)."""
        for score, slot in zip(scores.flatten().tolist(), slots.flatten().tolist(), strict=True):
            if score != math.inf:
                heapq.heappush(self.entries, (score, slot))

    def rebuild(self, scores: torch.Tensor, live: torch.Tensor) -> None:
        """Start over from every slot's score (``[1, 1, C]``), keeping the ``live`` ones."""
        slots = (live & ~torch.isinf(scores)).flatten().nonzero().flatten()
        self.entries = sorted(zip(scores.flatten()[slots].tolist(), slots.tolist(), strict=True))

    def pop(self, count: int, device: torch.device) -> torch.Tensor:
        """The ``count`` lowest-scored slots, ``[1, 1, count]``, removed from the heap."""
        slots = [heapq.heappop(self.entries)[1] for _ in range(count)]
        return torch.tensor(slots, device=device).view(1, 1, -1)


def check_int(name: str, value, low: int, high: float = math.inf) -> int:
    """``value`` as an int in ``[low, high]``, else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        bound = f"[{low}, {high}]" if high != math.inf else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return int(value)


def check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def recent_mask(view: CacheView, recent_size: int) -> torch.Tensor:
    """Slots that must stay so that, with the incoming tokens, the newest
    ``recent_size`` positions are live after this step."""
    return view.positions > view.newest_position - (recent_size - view.incoming)


def sink_mask(view: CacheView, sink_tokens: int) -> torch.Tensor:
    """Slots of the first ``sink_tokens`` positions (they keep them after re-basing)."""
    return (view.positions >= 0) & (view.positions < sink_tokens)
