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

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .strategy import CacheView, Layout, Param, Strategy, sink_mask, unless_protected

if TYPE_CHECKING:  # the declarations load without torch (--help answers at once)
    import torch


class FrameWindow(Strategy):
    name = "frames"
    params = (
        Param("frame_tokens", int, low=1, help="tokens per frame block",
              from_layout="frame_tokens"),
        Param("sink_frames", int, 1, low=0, help="the first whole frames, kept as an anchor"),
        Param("recent_frames", int, 7, low=1,
              help="the newest whole frames kept, the one being written included"),
    )
    fixed_score = True
    scored_role = "recent"

    @classmethod
    def for_budget(cls, tokens: int, layout: Layout, prompt_length: int | None = None) -> dict:
        """As many whole frames as fit: one sink frame and the rest recent; no sink frame
        under 3 frames, since the frame being written and the one before it must both fit in
        the recent window."""
        frames = tokens // layout.frame_tokens
        sinks = 1 if frames >= 3 else 0
        return {"sink_frames": sinks, "recent_frames": frames - sinks}

    @property
    def position_stride(self) -> int:
        return self.frame_tokens

    def budget(self, prompt_length: int) -> int:
        return (self.sink_frames + self.recent_frames) * self.frame_tokens

    def protected(self, view: CacheView) -> dict[str, torch.Tensor]:
        return {"sinks": sink_mask(view, self.sink_frames * self.frame_tokens)}

    def keep_score(self, view: CacheView) -> torch.Tensor:
        return unless_protected(view.positions.float(), self.protected(view))  # oldest first

    def step_room(self, budget: int) -> int:
        return self.recent_frames * self.frame_tokens

    def evict_count(self, needed: int) -> int:
        return math.ceil(needed / self.frame_tokens) * self.frame_tokens

    def size_text(self, tokens: int) -> str:
        frames, rest = divmod(tokens, self.frame_tokens)
        unit = "frame" if frames == 1 else "frames"
        return f"{frames} {unit}" if rest == 0 else f"{frames} whole {unit} ({tokens} tokens)"
