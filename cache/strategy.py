"""What a cache strategy is: a budget, and a score that says which tokens to keep.

A strategy is a small class (kvpress style). It answers three questions:

* ``budget(prompt_length)``: how many tokens it may keep (``None``: unbounded);
* ``keep_score(view)``: a score per slot, lowest evicted first; ``inf`` never
  (:func:`unless_protected`: the slots of ``protected(view)``);
* ``evict_count(needed)``: how many to evict when ``needed`` slots are short
  (more than asked when it evicts in whole blocks).

``victims`` turns those answers into slots: it scores every slot and takes the
lowest, O(capacity) per eviction, which scores that change every step (H2O's
accumulated attention) need anyway: the step's attention reads every key too. A
strategy whose score of a token never changes while it is cached (a function of
its position, such as "oldest first") sets ``fixed_score``: each token is then
scored once, when written, and victims are popped from the manager's heap
(:class:`cache.manager.ScoreHeap`), so a decode step's eviction costs O(k log capacity)
for k victims, with no scan of the slots. A strategy that selects tokens some other
way (see :mod:`cache.custom`) overrides ``victims`` instead.

Everything else (slots, eviction, positions, statistics) lives once in
:class:`cache.manager.KVCacheManager`.

A strategy also declares itself, once, on its class: its parameters (:class:`Param`: type,
default, valid range, help), what defaults fit a model of a given :class:`Layout`
(``defaults``), and which parameters keep a given number of tokens (``for_budget``). The
command lines' flags, the demo's pickers, validation, the benchmarks and the tests read these
declarations from the registry (:mod:`cache.registry`); none of them names a strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # tensor methods only: declaring a strategy loads no torch (cache/__init__)
    import torch

# The roles of kept tokens the built-in strategies report (``Strategy.protected`` and
# ``scored_role``), in the order statistics show them.
ROLES = ("sinks", "heavy_hitters", "recent")


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


@dataclass(frozen=True)
class Layout:
    """What a strategy may know of the model it serves: a sequence made of fixed-size blocks
    ("frames": a frame's tokens and whatever follows each one), and the positions it was
    trained on."""

    frame_tokens: int
    context_tokens: int

    @property
    def context_frames(self) -> int:
        return self.context_tokens // self.frame_tokens

    @property
    def room(self) -> int:
        """The largest budget that leaves one frame of the context free for the step being
        written: what a default must fit in."""
        return self.context_tokens - self.frame_tokens


@dataclass(frozen=True)
class Param:
    """One parameter of a strategy, as people meet it: a flag of both command lines, an input
    of the demo's picker, and the validation message when a value is out of range."""

    name: str
    type: type  # int, float or bool
    default: Any = None  # None: none of its own (it comes from the layout, or must be given)
    low: float | None = None
    high: float | None = None
    help: str = ""  # one line
    from_layout: str | None = None  # a Layout field that fixes it: not the user's to set

    @property
    def range_text(self) -> str:
        """The valid values, as messages and help say them: ">= 1", "in [0, 1]", "<= 8"."""
        if self.type is bool:
            return "true or false"
        if self.low is not None and self.high is not None:
            return f"in [{self.low}, {self.high}]"
        if self.low is not None:
            return f">= {self.low}"
        return f"<= {self.high}" if self.high is not None else "finite"

    def check(self, value):
        """``value`` as this parameter's type, else a ValueError naming it, the value and
        the valid range."""
        if self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} must be true or false, got {value!r}")
            return value
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        low = -math.inf if self.low is None else self.low
        high = math.inf if self.high is None else self.high
        if self.type is float:
            if not number or not math.isfinite(value) or not low <= value <= high:
                bounded = self.low is not None or self.high is not None
                what = f"a number {self.range_text}" if bounded else "a finite number"
                raise ValueError(f"{self.name} must be {what}, got {value!r}")
            return float(value)
        if not number or not math.isfinite(value) or value != int(value):
            raise ValueError(f"{self.name} must be an integer, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"{self.name} must be {self.range_text}, got {value!r}")
        return int(value)


class Strategy:
    """A cache policy; subclasses declare ``name`` and ``params`` and answer the questions of
    the module doc. Construction checks every value against its declaration."""

    name: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    bounded: ClassVar[bool] = True  # keeps a budget; else the whole context, never evicting
    tracks_attention: ClassVar[bool] = False  # needs attention weights of every query
    counts_queries: ClassVar[bool] = False  # keep_score reads ``view.seen`` too
    per_head: ClassVar[bool] = False  # evicts per (layer, kv head) rather than per token
    # keep_score depends on positions only, and re-basing keeps its order (module doc).
    fixed_score: ClassVar[bool] = False
    position_stride: int = 1  # re-base positions only by multiples of this
    # What statistics call the tokens kept for their score rather than protected.
    scored_role: ClassVar[str] = "scored"
    # Positions are places in the cache (StreamingLLM's pos_shift): every reservation first
    # makes room for its tokens, then packs the live positions from 0, the new ones after them.
    packs_positions: bool = False

    def __init__(self, **values):
        for name, value in self.checked(values).items():
            setattr(self, name, value)

    @classmethod
    def checked(cls, values: dict) -> dict:
        """Every declared parameter's value (``values``, else its default), checked; a
        ValueError names an unknown, missing or bad one (``None`` counts as not given)."""
        declared = {param.name: param for param in cls.params}
        unknown = [name for name in values if name not in declared]
        if unknown:
            takes = ", ".join(declared) or "no parameters"
            raise ValueError(f"strategy {cls.name!r} takes no parameter {', '.join(unknown)} "
                             f"(it takes: {takes})")
        checked = {}
        for param in cls.params:
            value = values.get(param.name)
            value = param.default if value is None else value
            if value is None:
                raise ValueError(f"strategy {cls.name!r} needs {param.name} ({param.help})")
            checked[param.name] = param.check(value)
        return checked

    # -- the declaration, read by everything outside cache/ ---------------------------------

    @classmethod
    def settable(cls) -> tuple[Param, ...]:
        """The parameters a user sets (the others come from the model's layout)."""
        return tuple(param for param in cls.params if param.from_layout is None)

    @classmethod
    def defaults(cls, layout: Layout) -> dict:
        """Every parameter for a model of ``layout``: the declared defaults when the budget
        they give leaves a frame of the context free (for the longest prompt such a model
        takes), else ``for_budget`` of that room."""
        values = {
            param.name: getattr(layout, param.from_layout) if param.from_layout else param.default
            for param in cls.params
        }
        budget = cls(**values).budget(layout.room)
        if budget is None or budget <= layout.room:
            return values
        return {**values, **cls.for_budget(layout.room, layout)}

    @classmethod
    def for_budget(cls, tokens: int, layout: Layout, prompt_length: int | None = None) -> dict:
        """Parameters that make it keep exactly ``tokens`` tokens on a model of ``layout``
        after a prompt of ``prompt_length`` tokens (default: the longest such a model takes,
        ``layout.room``). An unbounded strategy answers ``{}``: it takes no budget."""
        raise ValueError(f"strategy {cls.name!r} declares no budget mapping (for_budget)")

    # -- what the manager asks -------------------------------------------------------------

    def budget(self, prompt_length: int) -> int | None:
        raise NotImplementedError

    def keep_score(self, view: CacheView) -> torch.Tensor:
        raise NotImplementedError

    def protected(self, view: CacheView) -> dict[str, torch.Tensor]:
        """The slots this step may not evict, by role (``{"sinks": mask, ...}``, each like
        ``view.positions``; where roles overlap, the first named holds the slot). The other
        kept slots are ``scored_role``'s. ``keep_score`` gives these ``inf``, and the
        statistics split the attention kept through evictions by these roles."""
        return {}

    def evict_count(self, needed: int) -> int:
        return needed

    def victims(self, view: CacheView, needed: int) -> torch.Tensor | None:
        """Slots to evict (``[rows, heads, k]``) so that ``needed`` more fit; ``None``
        when nothing has to go. Default: the lowest ``keep_score``."""
        if needed <= 0:
            return None
        score = self.keep_score(view).masked_fill(view.positions < 0, math.inf)
        lowest, slots = score.topk(self.evict_count(needed), dim=-1, largest=False)
        if lowest.isinf().any():
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
        return {param.name: getattr(self, param.name) for param in self.params}

    def size_text(self, tokens: int) -> str:
        """``tokens`` in the unit its parameters speak, for messages."""
        return f"{tokens} tokens"


def unless_protected(score: torch.Tensor, protected: dict[str, torch.Tensor]) -> torch.Tensor:
    """``score`` with the ``protected`` slots at ``inf``."""
    masks = iter(protected.values())
    kept = next(masks, None)
    if kept is None:
        return score
    for mask in masks:
        kept = kept | mask
    return score.masked_fill(kept, math.inf)


def recent_mask(view: CacheView, recent_size: int) -> torch.Tensor:
    """Slots that must stay so that, with the incoming tokens, the newest
    ``recent_size`` positions are live after this step."""
    return view.positions > view.newest_position - (recent_size - view.incoming)


def sink_mask(view: CacheView, sink_tokens: int) -> torch.Tensor:
    """Slots of the first ``sink_tokens`` positions (they keep them after re-basing)."""
    return (view.positions >= 0) & (view.positions < sink_tokens)
