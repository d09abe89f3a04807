"""``--target-fps``: the KV budget (and, when it must, the faster decoding schedule) that makes
frames at a target rate on the loaded model, from a short measurement on the shipped scene.

The largest budget that meets the target wins (more context, better pictures); a full-context
strategy has no budget, only a schedule. When nothing meets the target, the fastest
candidate is taken, and ``Fit.met`` says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cache import strategy_class
from mineworld.decoding import Sampling
from mineworld.embedded import demo_scene
from mineworld.model import cache_layout
from mineworld.session import Session
from mineworld.tokenizers.base import resize_frames

BUDGET_SHARES = (4, 3, 2, 1)  # quarters of the context's room, tried from the whole of it down
TIMED_FRAMES = 3  # per candidate, after one frame of warm-up


@dataclass(frozen=True)
class Fit:
    """What ``fit_target_fps`` chose, and the rate it measured with it."""

    target: float
    schedule: str
    params: dict
    fps: float

    @property
    def met(self) -> bool:
        return self.fps >= self.target

    def __str__(self) -> str:
        verdict = "met" if self.met else "not met: the fastest candidate is used"
        params = " ".join(f"{name}={value}" for name, value in self.params.items()) or "-"
        return (f"--target-fps {self.target:g}: {self.schedule} decoding, {params}: "
                f"{self.fps:.1f} fps measured ({verdict})")

    def as_dict(self) -> dict:
        return {"target": self.target, "schedule": self.schedule, "params": self.params,
                "fps": self.fps, "met": self.met}


def fit_target_fps(model, tokenizer, strategy: str, given: dict, target: float, schedule: str,
                   reference_frames: int, window: int | None = None) -> Fit:
    """The largest budget of ``strategy`` (the parameters ``given`` kept as they are) whose
    frames come at ``target`` per second with ``schedule``, or else with diagonal decoding."""
    cls = strategy_class(strategy)
    layout = cache_layout(model.config)
    whole = layout.room // layout.frame_tokens
    budgets = ([max(1, whole * share // 4) * layout.frame_tokens for share in BUDGET_SHARES]
               if cls.bounded else [None])
    frames, actions = demo_scene()
    frames = resize_frames(frames, tokenizer.frame_size)
    best = None
    for candidate in dict.fromkeys([schedule, "diagonal"]):  # the one asked for first
        for tokens in dict.fromkeys(budgets):
            params = {**(cls.for_budget(tokens, layout) if tokens else {}), **given}
            fit = Fit(target, candidate, params,
                      measure(model, tokenizer, strategy, params, candidate, window,
                              reference_frames, frames, actions))
            if fit.met:
                return fit
            best = fit if best is None or fit.fps > best.fps else best
    return best


def measure(model, tokenizer, strategy, params, schedule, window, reference_frames, frames,
            actions) -> float:
    """Frames per second of a session with these settings, prefilled from the scene."""
    session = Session(model, tokenizer, strategy=strategy, strategy_params=params,
                      reference_frames=reference_frames, schedule=schedule, window=window,
                      sampling=Sampling())
    session.start(frames[:reference_frames], actions[: reference_frames - 1])
    moves = actions[reference_frames - 1 :]
    session.step(moves[0])  # warm-up
    started = time.perf_counter()
    for action in moves[1 : TIMED_FRAMES + 1]:
        session.step(action)
    return TIMED_FRAMES / (time.perf_counter() - started)
