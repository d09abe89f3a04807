"""Sessions: long runs far past the context with every strategy, and their invariants."""

import numpy as np
import pytest
import torch

from cache import STRATEGIES
from mineworld.actions import make_action
from mineworld.session import Session, pick_device
from tests.stand_ins import (
    COLS,
    FRAME_TOKENS,
    ROWS,
    PatchTokenizer,
    tiny_model,
)

TIGHT = {
    "none": {},
    "streaming": {"start_size": 2, "recent_size": 20},
    "h2o": {"hh_ratio": 0.2, "recent_size": 20},
    "hybrid": {"start_size": 2, "hh_ratio": 0.2, "recent_size": 20},
    "frames": {"sink_frames": 1, "recent_frames": 2},
}


def scene(frames=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (frames, 4 * ROWS, 4 * COLS, 3), dtype=np.uint8)
    return images, [make_action(["forward"])] * (frames - 1)


@pytest.mark.parametrize("schedule", ["naive", "diagonal"])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_long_run_keeps_every_invariant(strategy, schedule):
    model = tiny_model()
    session = Session(
        model, PatchTokenizer(), strategy=strategy, strategy_params=TIGHT[strategy],
        reference_frames=2, schedule=schedule, window=1,
    )
    session.start(*scene())
    cache = session.cache
    storage = cache.storage
    frames = 300 if schedule == "naive" else 60  # 300 frames = 75 x the context
    turn = [make_action(["left"], yaw=5.0), make_action(["jump"], pitch=-3.0)]
    for index in range(frames):
        frame, stats = session.step(turn[index % 2])
        assert frame.shape == (4 * ROWS, 4 * COLS, 3) and frame.dtype == np.uint8
        assert stats["live_tokens"] <= stats["capacity_tokens"]
        assert 0 <= stats["highest_position"] < model.config.max_position_embeddings
        assert stats["allocations"] == 1 and cache.storage is storage
        live = storage.positions[storage.positions >= 0]
        assert cache.newest_position in live.tolist()  # the newest token is always live
        sinks = {"streaming": 2, "hybrid": 2, "frames": FRAME_TOKENS}.get(strategy, 0)
        for position in range(sinks):
            assert bool((storage.positions == position).any(-1).all())
    if strategy == "none":
        assert stats["reprefills"] >= frames // 3 and stats["reprefill_seconds"] > 0
        assert stats["evicted_tokens"] == 0
    else:
        assert stats["reprefills"] == 0 and stats["evicted_tokens"] > 0
        assert stats["rebases"] > 0


def test_same_seed_same_frames_and_sampling_is_seeded():
    from mineworld.decoding import Sampling

    def play(seed):
        session = Session(
            tiny_model(), PatchTokenizer(), reference_frames=2,
            sampling=Sampling(temperature=1.0, top_k=20), seed=seed,
        )
        session.start(*scene())
        return [session.step(make_action(["forward"]))[0] for _ in range(3)]

    assert all(np.array_equal(a, b) for a, b in zip(play(1), play(1), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(play(1), play(2), strict=True))


def test_bad_session_arguments_are_named():
    with pytest.raises(ValueError, match=r"reference_frames must be in \[1, 3\]"):
        Session(tiny_model(), PatchTokenizer(), reference_frames=4)
    session = Session(tiny_model(), PatchTokenizer(), reference_frames=2)
    with pytest.raises(ValueError, match="3 frames need 2 actions, got 1"):
        session.start(scene()[0], [make_action()])


def test_pick_device_defaults_and_overrides():
    device, dtype = pick_device()
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert device.type == expected
    assert dtype == (torch.float16 if expected == "cuda" else torch.float32)
    assert pick_device("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ValueError, match="dtype must be one of"):
        pick_device("cpu", "float8")
