"""``none``: keep everything, as MineWorld does.

The cache holds the model's whole context and never evicts. When the context
is full the caller must start over (MineWorld keeps its last reference frames
and re-prefills them); ``KVCacheManager.can_reserve`` says when.
Positions: absolute, from 0; they never leave the trained range because the
cache never holds more than the context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .strategy import CacheView, Layout, Strategy

if TYPE_CHECKING:  # the declarations load without torch (--help answers at once)
    import torch


class FullContext(Strategy):
    name = "none"
    bounded = False

    @classmethod
    def for_budget(cls, tokens: int, layout: Layout, prompt_length: int | None = None) -> dict:
        return {}  # it keeps the whole context: no budget to set

    def budget(self, prompt_length: int) -> None:
        return None

    def keep_score(self, view: CacheView) -> torch.Tensor:
        raise AssertionError("the full-context cache never evicts")
