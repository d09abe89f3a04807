"""``streaming``: StreamingLLM (Xiao et al., 2023), attention sinks + a recent window.

Keeps the first ``start_size`` tokens (the sinks) and the ``recent_size`` newest
(by position: diagonal decoding writes a frame out of position order, and the
lowest position goes first all the same). The score is the position, fixed once
a token is written, so victims come from a heap: no scan of the cache per step.
Positions, by default, are true ones: sinks keep positions ``0..start_size-1``,
recent tokens keep their true distances to each other, and when the next
position would leave the trained range the recent window is re-based to follow
the sinks directly. With ``pos_shift`` they are the paper's: a token's position
is its place in the cache, so before every reservation the cache evicts for the
tokens coming (the paper's ``evict_for_space``) and re-bases the kept ones to
``0..n-1``, the new ones following at ``n..``; keys are re-rotated from their
form before rotation, as in any re-base.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .strategy import CacheView, Layout, Param, Strategy, sink_mask, unless_protected

if TYPE_CHECKING:  # the declarations load without torch (--help answers at once)
    import torch

START_SIZE = Param("start_size", int, 4, low=1, help="sink tokens: the first ones, never evicted")
RECENT_SIZE = Param("recent_size", int, 512, low=1, help="the newest tokens kept")
POS_SHIFT = Param("pos_shift", bool, False,
                  help="positions by place in the cache, re-based every step (the paper's "
                  "pos_shift), rather than true distances")


class StreamingLLM(Strategy):
    name = "streaming"
    params = (START_SIZE, RECENT_SIZE, POS_SHIFT)
    fixed_score = True
    scored_role = "recent"

    @property
    def packs_positions(self) -> bool:
        return self.pos_shift

    @classmethod
    def for_budget(cls, tokens: int, layout: Layout, prompt_length: int | None = None) -> dict:
        """The default sinks, the rest recent."""
        return {"start_size": START_SIZE.default, "recent_size": tokens - START_SIZE.default}

    def budget(self, prompt_length: int) -> int:
        return self.start_size + self.recent_size

    def step_room(self, budget: int) -> int:
        return self.recent_size

    def protected(self, view: CacheView) -> dict[str, torch.Tensor]:
        return {"sinks": sink_mask(view, self.start_size)}

    def keep_score(self, view: CacheView) -> torch.Tensor:
        return unless_protected(view.positions.float(), self.protected(view))  # oldest first
