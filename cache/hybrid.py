"""``hybrid``: attention sinks + heavy hitters + a recent window.

StreamingLLM's sinks (the first ``start_size`` tokens, never evicted) added to
H2O: ``start_size + hh_ratio * prompt_length + recent_size`` tokens in all.
Positions: as ``h2o`` (packed when the trained range would be left; the sinks,
being first, keep positions ``0..start_size-1``).
"""

import math

import torch

from .h2o import HeavyHitters
from .strategy import CacheView, check_int, sink_mask


class SinksHeavyRecent(HeavyHitters):
    name = "hybrid"

    def __init__(
        self,
        start_size: int = 4,
        hh_ratio: float = 0.1,
        recent_size: int = 512,
        normalize: bool = False,
    ):
        super().__init__(hh_ratio=hh_ratio, recent_size=recent_size, normalize=normalize)
        self.start_size = check_int("start_size", start_size, 1)

    def budget(self, prompt_length: int) -> int:
        return self.start_size + super().budget(prompt_length)

    def keep_score(self, view: CacheView) -> torch.Tensor:
        score = super().keep_score(view)
        return torch.where(sink_mask(view, self.start_size), math.inf, score)
