"""``streaming``: StreamingLLM (Xiao et al., 2023), attention sinks + a recent window.

Keeps the first ``start_size`` tokens (the sinks) and the ``recent_size`` newest
(by position: diagonal decoding writes a frame out of position order, and the
lowest position goes first all the same). The score is the position, fixed once
a token is written, so victims come from a heap: no scan of the cache per step.
Positions live inside the cache: sinks keep positions ``0..start_size-1``,
recent tokens keep their true distances to each other, and when the next
position would leave the trained range the recent window is re-based to follow
the sinks directly.
"""

import math

import torch

from .strategy import CacheView, Strategy, check_int, sink_mask


class StreamingLLM(Strategy):
    name = "streaming"
    fixed_score = True

    def __init__(self, start_size: int = 4, recent_size: int = 512):
        self.start_size = check_int("start_size", start_size, 1)
        self.recent_size = check_int("recent_size", recent_size, 1)

    def budget(self, prompt_length: int) -> int:
        return self.start_size + self.recent_size

    def step_room(self, budget: int) -> int:
        return self.recent_size

    def keep_score(self, view: CacheView) -> torch.Tensor:
        # Oldest first; sinks never.
        return torch.where(sink_mask(view, self.start_size), math.inf, view.positions.float())
