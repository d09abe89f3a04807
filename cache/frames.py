"""``frames``: whole-frame window, our frame-aware strategy.

A sequence made of fixed-size blocks (a frame and its action: ``frame_tokens``
each) is cached in whole blocks only: the first ``sink_frames`` blocks stay as
an anchor, and the ``recent_frames`` newest blocks (the one being generated
included) follow them. The oldest non-sink block is evicted whole, never split
(its tokens are the lowest positions; the score is the position, fixed once a
token is written, so victims come from a heap: no scan of the cache per step).
Positions: re-based only by whole blocks (multiples of ``frame_tokens``), so a
token's row/column phase inside its frame is the one the model was trained on;
when the next block would leave the trained range, the recent blocks are moved
to follow the sink blocks directly.
"""

import math

import torch

from .strategy import CacheView, Strategy, check_int, sink_mask


class FrameWindow(Strategy):
    name = "frames"
    fixed_score = True

    def __init__(self, frame_tokens: int, sink_frames: int = 1, recent_frames: int = 7):
        self.frame_tokens = check_int("frame_tokens", frame_tokens, 1)
        self.sink_frames = check_int("sink_frames", sink_frames, 0)
        self.recent_frames = check_int("recent_frames", recent_frames, 1)
        self.position_stride = self.frame_tokens

    def budget(self, prompt_length: int) -> int:
        return (self.sink_frames + self.recent_frames) * self.frame_tokens

    def keep_score(self, view: CacheView) -> torch.Tensor:
        sinks = sink_mask(view, self.sink_frames * self.frame_tokens)
        return torch.where(sinks, math.inf, view.positions.float())

    def step_room(self, budget: int) -> int:
        return self.recent_frames * self.frame_tokens

    def evict_count(self, needed: int) -> int:
        return math.ceil(needed / self.frame_tokens) * self.frame_tokens
