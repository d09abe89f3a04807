"""Sampling, and the decoder that makes one frame of image tokens in the order of a schedule
(:mod:`mineworld.schedules`)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch

from cache import KVCacheManager

from .cli import MAX_GUIDANCE, MAX_OVERUSE_PENALTY
from .model import Feed, Transformer
from .schedules import SCHEDULES


@dataclass(frozen=True)
class Sampling:
    """``temperature`` 0 is greedy; ``top_k`` and ``top_p`` may be combined.

    ``repeat_penalty`` divides the odds of each image token repeating the code its cell had
    in the frame before (1: plain sampling). Where walking makes a cell's next code uncertain,
    the likeliest single code is the one it already has, so greedy rollouts stand still; a
    penalty lets the change win there, while a cell that is sure to stay (a still view) stays.

    ``overuse_penalty`` holds back the codes that fill the picture: each code's logit is lowered
    by it times ``code_overuse`` of the newest frames (as many as the model's context holds),
    the log of how many times an even spread over the codebook the code appears among their
    tokens (nothing at or below it). A rollout that drifts into one colour (a white haze, a
    wall of leaves) is a few codes repeated ever more; a confident cell keeps its code all the
    same. For the same reason a view that truly is one texture (a wall up close) is drawn
    less well (0: off; measured in docs/embedded-model.md).

    ``guidance`` scales what the frame's action changes (classifier-free guidance, with "no
    action" as the unconditioned case): tokens are drawn from ``u + guidance * (c - u)``, ``c``
    the logits with the action and ``u`` those with no action after the same context (1: the
    model as it is; above 1: the action's effect amplified, so that a greedy rollout walks
    where it would stand still). ``Session`` applies it, knowing the action: each pass of the
    frame runs twice, the second time on a copy of the cache (``FrameDecoder.passes``'
    ``no_action``); ``sample`` draws from logits already guided.
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    repeat_penalty: float = 1.0
    overuse_penalty: float = 0.0
    guidance: float = 1.0

    @classmethod
    def model_default(cls, config) -> Sampling:
        """The sampling ``config`` (a ModelConfig) names under ``decoding``."""
        penalties = {"repeat_penalty": config.repeat_penalty,
                     "overuse_penalty": config.overuse_penalty}
        if not config.temperature:
            return cls(**penalties)
        return cls(config.temperature, top_k=config.top_k or None, **penalties)

    @classmethod
    def from_flags(cls, config, temperature: float | None = None, top_k: int | None = None,
                   top_p: float | None = None, repeat_penalty: float | None = None,
                   guidance: float = 1.0, overuse_penalty: float | None = None) -> Sampling:
        """What a command line's flags ask for: the model's default for what they do not
        name; ``top_k`` or ``top_p`` alone sample at the model's temperature, or at 1 for a
        model that decodes greedily."""
        default = cls.model_default(config)
        named = {"repeat_penalty": repeat_penalty, "overuse_penalty": overuse_penalty}
        penalties = {name: getattr(default, name) if value is None else value
                     for name, value in named.items()}
        if temperature is None and top_k is None and top_p is None:
            return dataclasses.replace(default, **penalties, guidance=guidance)
        if temperature is None:
            temperature = default.temperature or 1.0
        return cls(temperature, top_k=top_k, top_p=top_p, **penalties, guidance=guidance)

    def __str__(self) -> str:
        parts = ["greedy"] if self.temperature == 0 else [f"temperature {self.temperature:g}"]
        if self.top_k is not None:
            parts.append(f"top-k {self.top_k}")
        if self.top_p is not None:
            parts.append(f"top-p {self.top_p:g}")
        if self.repeat_penalty != 1:
            parts.append(f"repeat penalty {self.repeat_penalty:g}")
        if self.overuse_penalty:
            parts.append(f"overuse penalty {self.overuse_penalty:g}")
        if self.guidance != 1:
            parts.append(f"action guidance {self.guidance:g}")
        return ", ".join(parts)

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k!r}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not self.repeat_penalty >= 1:
            raise ValueError(f"repeat_penalty must be >= 1, got {self.repeat_penalty!r}")
        if not 0 <= self.overuse_penalty <= MAX_OVERUSE_PENALTY:
            raise ValueError(f"overuse_penalty must be in [0, {MAX_OVERUSE_PENALTY:g}], "
                             f"got {self.overuse_penalty!r}")
        if not 0 <= self.guidance <= MAX_GUIDANCE:
            raise ValueError(f"guidance must be in [0, {MAX_GUIDANCE:g}], got {self.guidance!r}")


def code_overuse(ids: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Per code (``[codebook_size]``), the log of how many times its even share the code holds
    among the image tokens ``ids`` (any shape), 0 where it holds no more (see
    ``Sampling.overuse_penalty``)."""
    counts = torch.bincount(ids.flatten(), minlength=codebook_size).float()
    return (counts * (codebook_size / ids.numel())).clamp(min=1).log()


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None,
           repeats: list[int] | None = None, overuse: torch.Tensor | None = None):
    """One token id per row of ``logits`` (``[N, V]``); ``repeats``: per row, the code whose
    odds ``sampling.repeat_penalty`` divides; ``overuse`` (``[V]``): what
    ``sampling.overuse_penalty`` scales (``code_overuse``). With ``top_k``, the draw is among
    the k likeliest only (the same distribution as masking the others, for a fifth of the time
    on 1,000 codes)."""
    if repeats is not None and sampling.repeat_penalty != 1:
        logits = logits.float().clone()
        logits[torch.arange(len(repeats)), repeats] -= math.log(sampling.repeat_penalty)
    if overuse is not None and sampling.overuse_penalty:
        logits = logits.float() - sampling.overuse_penalty * overuse
    if sampling.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / sampling.temperature
    ids = None  # the candidates' ids, when logits holds only theirs, likeliest first
    if sampling.top_k is not None:
        logits, ids = logits.topk(min(sampling.top_k, logits.shape[-1]), dim=-1)
    probs = logits.softmax(-1)
    if sampling.top_p is not None:
        if ids is None:
            probs, ids = probs.sort(-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always).
        probs = probs.masked_fill(probs.cumsum(-1) - probs > sampling.top_p, 0.0)
    drawn = torch.multinomial(probs, 1, generator=generator)
    return (drawn if ids is None else ids.gather(-1, drawn)).squeeze(-1)


@dataclass
class FrameDecoder:
    """Decodes one frame given the tokens that precede it (see module doc)."""

    model: Transformer
    sampling: Sampling | None = None  # None: the model's default (Sampling.model_default)
    schedule: str = "naive"
    window: int | None = None  # None: the model's ``diagonal_window``

    def __post_init__(self):
        config = self.model.config
        self.rows, self.cols = config.image_rows, config.image_cols
        if self.sampling is None:
            self.sampling = Sampling.model_default(config)
        if self.window is None:
            self.window = config.diagonal_window
        self.codebook_size = config.codebook_size
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        self.plan = SCHEDULES[self.schedule]
        if not 1 <= self.window <= self.cols:
            raise ValueError(f"window must be in [1, {self.cols}], got {self.window!r}")

    @property
    def max_step_tokens(self) -> int:
        """Most tokens one pass feeds (used to size and validate cache budgets)."""
        return self.rows if self.plan.rows_in_parallel else 1

    @torch.inference_mode()
    def decode(
        self,
        cache: KVCacheManager,
        prefix: torch.Tensor,
        frame_start: int,
        previous_frame: torch.Tensor,
        generator: torch.Generator | None = None,
        prompt_frame: torch.Tensor | None = None,
        overuse: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Feed ``prefix`` (the tokens just before the frame, ending at position
        ``frame_start - 1``) and decode the frame at ``frame_start``.

        ``previous_frame`` and ``prompt_frame`` (ids ``[rows, cols]``): where a row's first
        input is taken from before its true token exists, as the schedule says
        (``prompt_frame`` is needed by ``published-diagonal`` only). ``overuse``: what
        ``sampling.overuse_penalty`` scales (``code_overuse`` of the newest frames).

        Returns the ids ``[rows, cols]`` and the number of forward passes. The
        frame's last token is not fed: it is the first token of the next prefix. Not guided:
        ``sampling.guidance`` needs the frame's action replaced, which ``Session`` does
        (``passes``' ``no_action``).
        """
        return run_alone(self.model, self.passes(cache, prefix, frame_start, previous_frame,
                                                 generator, prompt_frame, overuse=overuse))

    def passes(self, cache, prefix, frame_start, previous_frame, generator=None,
               prompt_frame=None, no_action=None, overuse=None) -> Passes:
        """``decode`` as the forward passes it needs (see ``Passes``), so that a caller may run
        the passes of several players together (``Transformer.forward_feeds``); returns what
        ``decode`` returns. ``no_action``: ``(cache, prefix)``, the same context with the
        frame's action replaced by no action, for ``sampling.guidance``: each pass then feeds
        that cache too, and the tokens are drawn from the logits of both."""
        stand_ins = prompt_frame if self.plan.stand_ins_from_prompt else previous_frame
        if stand_ins is None:
            raise ValueError(f"schedule {self.schedule} needs the prompt frame")
        device = self.model.lm_head.weight.device
        # Python lists, not tensors, for the bookkeeping: indexing a tensor one cell at a
        # time costs more than a small model's forward pass leaves for it.
        ids = [[0] * self.cols for _ in range(self.rows)]
        stand_ins, previous = stand_ins.tolist(), previous_frame.tolist()
        written = [0] * (self.rows * self.cols)  # 1: the frame's slot at that offset is fed
        positions = torch.arange(frame_start - prefix.numel(), frame_start, device=device)
        first = Feed(prefix.to(device), positions, cache, last_only=True)
        logits = yield from self._guided(first, no_action, first_pass=True)
        ids[0][0] = self._sample(logits, [(0, 0)], previous, generator, overuse)[0]
        produced = [1] + [0] * (self.rows - 1)
        passes = 1
        while produced[-1] < self.cols:
            cells = self._active_cells(produced)
            inputs = [self._input_for(r, c, ids, produced, stand_ins) for r, c in cells]
            offsets = [r * self.cols + c - 1 for r, c in cells]  # the inputs' slots
            unwritten = None
            if self.plan.sees_unwritten:
                unwritten = torch.tensor(self._unwritten_before(offsets, written), device=device)
            feed = Feed(torch.tensor(inputs, device=device),
                        torch.tensor(offsets, device=device) + frame_start, cache,
                        unwritten=unwritten)
            logits = yield from self._guided(feed, no_action)
            drawn = self._sample(logits, cells, previous, generator, overuse)
            for (r, c), token in zip(cells, drawn, strict=True):
                ids[r][c] = token
                produced[r] += 1
            passes += 1
        return torch.tensor(ids, device=device), passes

    def _guided(self, feed: Feed, no_action, first_pass: bool = False):
        """The logits to draw ``feed``'s next tokens from: its own, or, with ``no_action``'s
        cache and prefix, guided (see ``Sampling.guidance``; the same tokens go into both
        caches, but for the first pass's prefix, whose action differs)."""
        if no_action is None:
            [logits] = yield [feed]
            return logits
        still_cache, still_prefix = no_action
        still = dataclasses.replace(feed, cache=still_cache,
                                    tokens=still_prefix.to(feed.tokens.device) if first_pass
                                    else feed.tokens)
        acting, standing = yield [feed, still]
        return standing + self.sampling.guidance * (acting - standing)

    def _active_cells(self, produced: list[int]) -> list[tuple[int, int]]:
        """The (row, col) each active row decodes next, in position order."""
        if not self.plan.rows_in_parallel:
            row = next(r for r, n in enumerate(produced) if n < self.cols)
            return [(row, produced[row])]
        cells = []
        for r, count in enumerate(produced):
            started = count > 0 or produced[r - 1] >= self.window
            if count < self.cols and started:
                cells.append((r, count))
        return cells

    def _input_for(self, row, col, ids, produced, stand_ins) -> int:
        """The token fed to predict cell (row, col): the cell before it, or, when that
        cell (the end of the row above) is not decoded yet, the stand-in frame's."""
        if col:
            return ids[row][col - 1]
        if produced[row - 1] == self.cols:
            return ids[row - 1][-1]
        return stand_ins[row - 1][-1]

    @staticmethod
    def _unwritten_before(offsets: list[int], written: list[int]) -> list[int]:
        """Mark the slots at ``offsets`` (this pass's inputs) written, then count, for each,
        the frame's slots at or before it that are still unwritten: what a query of the
        published code sees as zeros through its plain raster causal mask."""
        for offset in offsets:
            written[offset] = 1
        fed = list(accumulate(written))
        return [offset + 1 - fed[offset] for offset in offsets]

    def _sample(self, logits: torch.Tensor, cells, previous, generator, overuse) -> list[int]:
        """The image token each row of ``logits`` predicts for its cell of ``cells``."""
        repeats = [previous[r][c] for r, c in cells]
        return sample(logits[:, : self.codebook_size], self.sampling, generator,
                      repeats, overuse).tolist()


# Forward passes asked for one at a time: yields the Feeds of a pass (one, or two with action
# guidance), is sent their logits, returns a result.
Passes = Generator[list[Feed], list[torch.Tensor], Any]


class CostClock:
    """What a step costs, in seconds, when its forward passes may be shared with other
    players' (``run_together``): its own work (the time it runs, not the time it waits for a
    pass), plus its feeds' shares of the passes that ran them (``Feed.seconds``). Alone, about
    its wall time. Starts when made."""

    def __init__(self):
        self.seconds = 0.0
        self._since = time.perf_counter()

    def timed(self, passes: Passes) -> Passes:
        """``passes``, counted on this clock: ``yield from clock.timed(passes)``."""
        logits = None
        while True:
            try:
                feeds = passes.send(logits)  # the first send (None) starts it
            except StopIteration as done:
                return done.value
            self.seconds += time.perf_counter() - self._since
            logits = yield feeds
            self._since = time.perf_counter()
            self.seconds += sum(feed.seconds for feed in feeds)

    def total(self) -> float:
        return self.seconds + time.perf_counter() - self._since


def run_alone(model: Transformer, passes: Passes):
    """Run ``passes`` one by one on ``model``; return their result."""
    return run_together(model, [passes])[0]


@torch.inference_mode()
def run_together(model: Transformer, players: list[Passes],
                 stop: Callable[[int], bool] | None = None) -> list:
    """Run the passes of several players in step: each round, one forward over the feeds of
    all players still running. Returns each player's result, in order. ``stop(index)``, asked
    before each round for each player still running, drops player ``index`` when true: its
    result stays None (its passes are left unfinished) and the others run on."""
    results: list = [None] * len(players)
    feeds: dict[int, list[Feed]] = {}
    for index, passes in enumerate(players):
        _advance(passes, None, index, feeds, results)
    while feeds:
        if stop is not None:
            for index in [index for index in feeds if stop(index)]:
                del feeds[index]
            if not feeds:
                break
        asked = list(feeds.items())
        logits = model.forward_feeds([feed for _index, group in asked for feed in group])
        feeds.clear()
        for index, group in asked:
            own, logits = logits[: len(group)], logits[len(group):]
            _advance(players[index], own, index, feeds, results)
    return results


def _advance(passes: Passes, logits, index: int, feeds: dict, results: list) -> None:
    """Send ``logits`` to player ``index``: note its next feeds, or its result when done."""
    try:
        feeds[index] = next(passes) if logits is None else passes.send(logits)
    except StopIteration as done:
        results[index] = done.value
