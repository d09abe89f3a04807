"""``h2o``: Heavy-Hitter Oracle (Zhang et al., 2023).

Keeps, per layer and kv head, the ``hh_ratio * prompt_length`` tokens that have
received the most attention so far (summed over every query and over the query
heads of the GQA group), plus the ``recent_size`` newest tokens (default 512,
as ``streaming``). With ``normalize=True`` a key's score is divided by the
number of queries that saw it, so old tokens are not favoured just for being old.
Eviction comes before a step, from the scores up to the step before, and
``recent_size`` counts the token being written: the reference code, which evicts
after a step, keeps the same tokens with a recent budget one smaller (see
docs/design.md, "H2O's eviction against the reference's").
Positions: packed in order when the next position would leave the trained range
(every gap closed, keys re-rotated by their shift).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .strategy import CacheView, Layout, Param, Strategy, recent_mask, unless_protected
from .streaming import RECENT_SIZE

if TYPE_CHECKING:  # the declarations load without torch (--help answers at once)
    import torch

HH_RATIO = Param("hh_ratio", float, 0.1, low=0, high=1,
                 help="heavy hitters kept per prompt token: the most attended keys")
NORMALIZE = Param("normalize", bool, False,
                  help="divide a key's attention by the number of queries that saw it")


class HeavyHitters(Strategy):
    name = "h2o"
    params = (HH_RATIO, RECENT_SIZE, NORMALIZE)
    tracks_attention = True
    per_head = True
    scored_role = "heavy_hitters"

    @classmethod
    def for_budget(cls, tokens: int, layout: Layout, prompt_length: int | None = None) -> dict:
        """The default ratio of heavy hitters, the rest recent; at most half the budget heavy
        hitters (a long prompt and a small budget: the ratio is lowered)."""
        prompt = layout.room if prompt_length is None else prompt_length
        ratio = HH_RATIO.default
        if round(ratio * prompt) > tokens // 2:
            ratio = tokens // 2 / prompt
        return {"hh_ratio": ratio, "recent_size": tokens - round(ratio * prompt)}

    @property
    def counts_queries(self) -> bool:  # counting costs two ops per layer and step: only if used
        return self.normalize

    def heavy_size(self, prompt_length: int) -> int:
        return round(self.hh_ratio * prompt_length)

    def budget(self, prompt_length: int) -> int:
        return self.heavy_size(prompt_length) + self.recent_size

    def step_room(self, budget: int) -> int:
        return self.recent_size

    def protected(self, view: CacheView) -> dict[str, torch.Tensor]:
        return {"recent": recent_mask(view, self.recent_size)}

    def keep_score(self, view: CacheView) -> torch.Tensor:
        score = view.attention
        if self.normalize:
            score = score / view.seen.clamp(min=1)
        return unless_protected(score, self.protected(view))
