"""``hybrid``: attention sinks + heavy hitters + a recent window.

StreamingLLM's sinks (the first ``start_size`` tokens, never evicted) added to
H2O: ``start_size + hh_ratio * prompt_length + recent_size`` tokens in all.
Positions: as ``h2o`` (packed when the trained range would be left; the sinks,
being first, keep positions ``0..start_size-1``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .h2o import HeavyHitters
from .strategy import CacheView, Layout, sink_mask
from .streaming import START_SIZE

if TYPE_CHECKING:  # the declarations load without torch (--help answers at once)
    import torch


class SinksHeavyRecent(HeavyHitters):
    name = "hybrid"
    params = (START_SIZE, *HeavyHitters.params)

    @classmethod
    def for_budget(cls, tokens: int, layout: Layout, prompt_length: int | None = None) -> dict:
        """The default sinks, then as ``h2o`` for the rest."""
        rest = super().for_budget(tokens - START_SIZE.default, layout, prompt_length)
        return {"start_size": START_SIZE.default, **rest}

    def budget(self, prompt_length: int) -> int:
        return self.start_size + super().budget(prompt_length)

    def protected(self, view: CacheView) -> dict[str, torch.Tensor]:
        return {"sinks": sink_mask(view, self.start_size), **super().protected(view)}
