"""One player's world: prefill reference frames, then ``step(action) -> (frame, stats)``.

A session owns its cache, its frame history and its random generator; the model
and tokenizer are shared and read-only, so many sessions can use one model.

Token layout (the published model's): ``frame_0 action_0 frame_1 action_1 ...``,
where action_t is taken after seeing frame_t. The last image token of the newest
frame is fed together with the next action, so every frame is decoded the same
way whether it came from the scene or from the model.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from .actions import ActionCodec, noop_action
from .config import ACTION_TOKENS
from .decoding import CostClock, FrameDecoder, Passes, Sampling, code_overuse, run_alone
from .model import Transformer


def pick_device(device: str | None = None, dtype: str | torch.dtype | None = None):
    """CUDA fp16 when available, else CPU fp32; either may be overridden."""
    try:
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA device is available")
    if dtype is None:
        return chosen, torch.float16 if chosen.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        if dtype not in names:
            raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
        dtype = names[dtype]
    return chosen, dtype


def max_reference_frames(config) -> int:
    """The most reference frames a full-context cache holds with room for one frame more."""
    return config.context_frames - 1


def default_reference_frames(config) -> int:
    """MineWorld's choice, 8 reference frames of a 16-frame context: half the context, at
    most 8 (a full-context cache then re-prefills every ``context - reference`` frames)."""
    return max(1, min(8, config.context_frames // 2))


@dataclass
class FrameRecord:
    ids: torch.Tensor  # [rows, cols] image token ids
    action: torch.Tensor | None = None  # the 11 action tokens taken after this frame


class Session:
    def __init__(
        self,
        model: Transformer,
        tokenizer,
        *,
        strategy=None,
        strategy_params: dict | None = None,
        reference_frames: int = 8,
        schedule: str = "naive",
        window: int | None = None,
        sampling: Sampling | None = None,
        seed: int = 0,
    ):
        config = model.config
        # No strategy: the one attached to the model (setup_cache_manager), else none.
        self.cache = model.new_cache(strategy, **(strategy_params or {}))
        # A bounded cache prefills a longer prompt through eviction; a full one must hold it
        # and still have room for the frame being made.
        most = None if self.cache.strategy.bounded else max_reference_frames(config)
        if reference_frames < 1 or (most is not None and reference_frames > most):
            valid = ">= 1" if most is None else f"in [1, {most}]"
            raise ValueError(
                f"reference_frames must be {valid} for strategy {self.cache.strategy.name} on "
                f"a model with a {config.context_frames}-frame context, got {reference_frames!r}"
            )
        self.model, self.tokenizer = model, tokenizer
        self.codec = ActionCodec(offset=config.codebook_size)
        self.decoder = FrameDecoder(model, sampling, schedule, window)
        self.reference_frames = reference_frames
        self.frame_tokens = config.tokens_per_frame
        self.device = model.lm_head.weight.device
        self._still = self._action_tokens(noop_action())
        self.seed = seed
        self.history: deque[FrameRecord] = deque(
            maxlen=max(config.context_frames, reference_frames))
        self.frames_generated = 0

    # -- start ----------------------------------------------------------------

    @torch.inference_mode()
    def start(self, frames: np.ndarray, actions: list[dict]) -> None:
        """Prefill ``frames`` (uint8 ``[N, H, W, 3]``) and the ``N - 1`` actions taken
        between them; the next ``step`` gives the action after the last frame."""
        if len(frames) == 0:
            raise ValueError("start needs at least one reference frame")
        if len(actions) < len(frames) - 1:
            raise ValueError(
                f"{len(frames)} frames need {len(frames) - 1} actions, got {len(actions)}"
            )
        first = max(0, len(frames) - self.reference_frames)  # keep the newest frames
        frames, actions = frames[first:], list(actions)[first : len(frames) - 1]
        ids = self.tokenizer.encode(frames).to(self.device)
        self.history.clear()
        for index, frame_ids in enumerate(ids):
            action = self._action_tokens(actions[index]) if index < len(actions) else None
            self.history.append(FrameRecord(frame_ids, action))
        self.generator = torch.Generator(self.device).manual_seed(self.seed)
        self.frames_generated = 0
        self._prefill()

    def _prefill(self) -> None:
        """Feed the history up to (not including) the newest frame's last token."""
        parts = []
        for record in self.history:
            parts.append(record.ids.flatten())
            if record.action is not None:
                parts.append(record.action)
        tokens = torch.cat(parts)[:-1]
        step_tokens = max(self.decoder.max_step_tokens, ACTION_TOKENS + 1)
        # A prompt longer than the context leaves room for a frame: budgets are sized by the
        # longest that does (strategies' defaults are made to fit it).
        longest = self.model.config.max_position_embeddings - self.frame_tokens
        self.cache.reset(prompt_length=min(tokens.numel(), longest), step_tokens=step_tokens,
                         reserve_tokens=self.frame_tokens)  # what a step reserves
        chunk = min(self.frame_tokens, self.cache.step_room)  # a frame at a time, or less
        if tokens.numel() > longest:  # positions re-based on the way: as a step, it must fit
            chunk = min(chunk, step_tokens)  # beside the budget, which reset checked
        for begin in range(0, tokens.numel(), chunk):
            # Reserved chunk by chunk: a bounded cache evicts and re-bases on the way.
            piece = tokens[begin : begin + chunk]
            first = self.cache.reserve(piece.numel())
            positions = first + torch.arange(piece.numel(), device=self.device)
            self.model(piece[None], positions, cache=self.cache, last_only=True)
        self.cache.reserve(1)  # the newest frame's last token, fed with the next action
        self.pending = self.history[-1].ids[-1, -1:]
        # The frame published-diagonal takes stand-ins from: the prompt's first, kept here so
        # that a cache evicting it does not change it.
        self.prompt_ids = self.history[0].ids

    # -- play -----------------------------------------------------------------

    @property
    def newest_ids(self) -> torch.Tensor:
        """Image token ids ``[rows, cols]`` of the newest frame."""
        return self.history[-1].ids

    @torch.inference_mode()
    def fork(self) -> Session:
        """A copy that plays on from here without touching this session: its own cache,
        history and random state (a copy's frames are the ones this session would make); the
        model and tokenizer stay shared."""
        shared = [self.model, self.tokenizer, *self.model.modules(), *self.model.parameters(),
                  *self.model.buffers()]
        return copy.deepcopy(self, {id(part): part for part in shared})

    def _action_tokens(self, action: dict) -> torch.Tensor:
        return torch.tensor(self.codec.encode(action), dtype=torch.long, device=self.device)

    def step(self, action: dict) -> tuple[np.ndarray, dict]:
        """Take ``action`` after the newest frame; return the next frame and statistics."""
        return run_alone(self.model, self.step_passes(action))

    @torch.inference_mode()
    def step_passes(self, action: dict) -> Passes:
        """``step`` as the forward passes it asks for (see ``mineworld.decoding.Passes``), so
        that several sessions of one model may step together (``run_together``)."""
        action_tokens = self._action_tokens(action)
        started = time.perf_counter()
        cost = CostClock()
        reprefill_seconds = 0.0
        block = ACTION_TOKENS + self.model.config.tokens_per_image
        if not self.cache.can_reserve(block):
            reprefill_seconds = self._reprefill()
        no_action = self._no_action_branch(action_tokens, block)
        block_start = self.cache.reserve(block)
        previous = self.history[-1]
        previous.action = action_tokens
        prefix = torch.cat([self.pending, action_tokens])
        ids, passes = yield from cost.timed(self.decoder.passes(
            self.cache, prefix, block_start + ACTION_TOKENS, previous.ids, self.generator,
            self.prompt_ids, no_action, self._overuse(),
        ))
        self.history.append(FrameRecord(ids))
        self.pending = ids[-1, -1:]
        decoded_at = time.perf_counter()
        frame = self.tokenizer.decode(ids[None])[0]
        finished = time.perf_counter()
        self.frames_generated += 1
        stats = {
            "frame": self.frames_generated,
            "ms_per_frame": 1000 * (finished - started),
            "ms_own": 1000 * cost.total(),
            "ms_generate": 1000 * (decoded_at - started - reprefill_seconds),
            "ms_reprefill": 1000 * reprefill_seconds,
            "forward_passes": passes,
            **self.cache.stats.as_dict(),
        }
        return frame, stats

    def _overuse(self) -> torch.Tensor | None:
        """``code_overuse`` of the newest frames (the history), when the sampling penalises
        it (``Sampling.overuse_penalty``)."""
        if not self.decoder.sampling.overuse_penalty:
            return None
        ids = torch.stack([record.ids for record in self.history])
        return code_overuse(ids, self.model.config.codebook_size)

    def _no_action_branch(self, action_tokens: torch.Tensor, block: int):
        """For action guidance (``Sampling.guidance``): a copy of the cache with this frame's
        block reserved, and the prefix that takes no action, for the decoder to run beside
        the real one; None without guidance or when the action is no action (the two would
        be the same)."""
        if self.decoder.sampling.guidance == 1 or torch.equal(action_tokens, self._still):
            return None
        still_cache = self.cache.fork()
        still_cache.reserve(block)
        return still_cache, torch.cat([self.pending, self._still])

    def _reprefill(self) -> float:
        """MineWorld's way when the full context is used up: keep the newest
        ``reference_frames`` frames and prefill them again from scratch."""
        started = time.perf_counter()
        kept = list(self.history)[-self.reference_frames :]
        self.history.clear()
        self.history.extend(kept)
        self._prefill()
        seconds = time.perf_counter() - started
        self.cache.record_reprefill(seconds)
        return seconds
