"""``h2o``: Heavy-Hitter Oracle (Zhang et al., 2023).

Keeps, per layer and kv head, the ``hh_ratio * prompt_length`` tokens that have
received the most attention so far (summed over every query and over the query
heads of the GQA group), plus the ``recent_size`` newest tokens (default 512,
as ``streaming``). With ``normalize=True`` a key's score is divided by the
number of queries that saw it, so old tokens are not favoured just for being old.
Positions: packed in order when the next position would leave the trained range
(every gap closed, keys re-rotated by their shift).
"""

import math

import torch

from .strategy import CacheView, Strategy, check_fraction, check_int, recent_mask


class HeavyHitters(Strategy):
    name = "h2o"
    tracks_attention = True
    per_head = True

    def __init__(self, hh_ratio: float = 0.1, recent_size: int = 512, normalize: bool = False):
        self.hh_ratio = check_fraction("hh_ratio", hh_ratio)
        self.recent_size = check_int("recent_size", recent_size, 1)
        self.normalize = bool(normalize)

    @property
    def counts_queries(self) -> bool:  # counting costs two ops per layer and step: only if used
        return self.normalize

    def heavy_size(self, prompt_length: int) -> int:
        return round(self.hh_ratio * prompt_length)

    def budget(self, prompt_length: int) -> int:
        return self.heavy_size(prompt_length) + self.recent_size

    def step_room(self, budget: int) -> int:
        return self.recent_size

    def keep_score(self, view: CacheView) -> torch.Tensor:
        score = view.attention
        if self.normalize:
            score = score / view.seen.clamp(min=1)
        return torch.where(recent_mask(view, self.recent_size), math.inf, score)
