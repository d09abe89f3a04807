"""Sessions: long runs far past the context with every strategy, and their invariants."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from cache import STRATEGIES, CacheView
from mineworld.actions import ActionCodec, make_action, noop_action
from mineworld.decoding import Sampling
from mineworld.embedded import demo_scene, load_embedded
from mineworld.lvm import LlamaLVM
from mineworld.model import cache_layout
from mineworld.session import Session, default_reference_frames, pick_device
from tests.stand_ins import (
    CODES,
    COLS,
    CONTEXT_FRAMES,
    FRAME_TOKENS,
    ROWS,
    PatchTokenizer,
    tiny_model,
)

TIGHT_FRAMES = 3  # of the tiny model's 4: every strategy evicts (or re-prefills) often


def tight(strategy: str, model) -> dict:
    """The strategy's parameters for a budget of ``TIGHT_FRAMES`` frames (its own mapping)."""
    layout = cache_layout(model.config)
    return STRATEGIES[strategy].for_budget(TIGHT_FRAMES * layout.frame_tokens, layout)


def protected_positions(strategy, upto: int) -> list[int]:
    """Positions below ``upto`` the strategy never evicts however old (its sinks): those its
    score puts at infinity when nothing is recent and no key drew attention."""
    positions = torch.arange(upto).view(1, 1, -1)
    view = CacheView(positions, None, None, torch.zeros(1, 1, upto), torch.ones(1, 1, upto),
                     newest_position=10**9, incoming=0)
    return positions[torch.isinf(strategy.keep_score(view))].tolist()


def scene(frames=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (frames, 4 * ROWS, 4 * COLS, 3), dtype=np.uint8)
    return images, [make_action(["forward"])] * (frames - 1)


@pytest.mark.parametrize("schedule", ["naive", "diagonal"])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_long_run_keeps_every_invariant(strategy, schedule):
    model = tiny_model()
    session = Session(
        model, PatchTokenizer(), strategy=strategy, strategy_params=tight(strategy, model),
        reference_frames=2, schedule=schedule, window=1,
    )
    session.start(*scene())
    cache = session.cache
    storage = cache.storage
    bounded = STRATEGIES[strategy].bounded
    sinks = protected_positions(cache.strategy, FRAME_TOKENS) if bounded else []
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
        for row in storage.positions.flatten(0, -2):  # a layer's kv head
            held = row[row >= 0]
            assert held.unique().numel() == held.numel(), "two keys at one position"
        # The newest frame's last token is fed with the next action, at the position reserved
        # for it right after the newest live one: re-bases keep it free.
        assert cache.next_position - 1 == cache.newest_position + 1
        for position in sinks:
            assert bool((storage.positions == position).any(-1).all())
    if not bounded:
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


@pytest.fixture(scope="module")
def shipped():
    return load_embedded()


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategys_defaults_play_on_the_shipped_model(shipped, strategy):
    """No parameters given: the strategy's defaults for the model's 8-frame context, played
    past that context with diagonal decoding."""
    model, tokenizer = shipped
    refs = default_reference_frames(model.config)
    session = Session(model, tokenizer, strategy=strategy, reference_frames=refs,
                      schedule="diagonal")
    frames, actions = demo_scene()
    session.start(frames[:refs], actions[: refs - 1])
    for action in actions[refs - 1 : refs + 5]:
        frame, stats = session.step(action)
    assert frame.shape == frames[0].shape
    if STRATEGIES[strategy].bounded:
        assert stats["evicted_tokens"] > 0 and stats["reprefills"] == 0
    else:
        assert stats["reprefills"] > 0


def test_sessions_stepping_together_make_the_frames_each_makes_alone(shipped):
    """One forward pass for the players of every strategy at once (each its own cache,
    positions, evictions, re-prefills; sampled, each with its seed; diagonal and
    published-diagonal in turn; one in two with action guidance, two feeds a pass): the same
    tokens and frames as each playing alone, past the context."""
    from mineworld.decoding import run_together

    model, tokenizer = shipped
    sampled = Sampling.model_default(model.config)
    refs = default_reference_frames(model.config)
    frames, actions = demo_scene()

    def players():
        sessions = []
        for index, strategy in enumerate(STRATEGIES):
            schedule = ("diagonal", "published-diagonal")[index % 2]
            sampling = replace(sampled, guidance=1.5 if index // 2 % 2 else 1.0)
            session = Session(model, tokenizer, strategy=strategy, reference_frames=refs,
                              schedule=schedule, sampling=sampling, seed=index)
            session.start(frames[index : index + refs], actions[index : index + refs - 1])
            sessions.append(session)
        return sessions

    alone, together = players(), players()
    for step in range(refs + 2):
        moves = [actions[index + refs - 1 + step] for index in range(len(alone))]
        expected = [session.step(move)[0] for session, move in zip(alone, moves, strict=True)]
        made = run_together(model, [session.step_passes(move)
                                    for session, move in zip(together, moves, strict=True)])
        for (frame, _stats), want, a, b in zip(made, expected, alone, together, strict=True):
            assert torch.equal(a.newest_ids, b.newest_ids) and np.array_equal(frame, want)

    rounds = []  # a player dropped midway leaves the others' frames as they are alone

    def stop(index):
        rounds.extend([index] if index == 0 else [])
        return index % 2 == 1 and len(rounds) > 3

    step = refs + 2
    moves = [actions[index + refs - 1 + step] for index in range(len(alone))]
    made = run_together(model, [session.step_passes(move)
                                for session, move in zip(together, moves, strict=True)], stop)
    assert len(rounds) > 4 and [result is None for result in made] == [
        index % 2 == 1 for index in range(len(made))]
    for index in range(0, len(made), 2):
        assert np.array_equal(made[index][0], alone[index].step(moves[index])[0])


def test_the_published_call_attaches_a_manager_that_works_at_once_and_sessions_play_it():
    """As the seed's users write it: ``model.transformer.setup_cache_manager("h2o", ...)`` on
    the object holding the decoder and tokenizer, then calls of the model continue one
    sequence (no reset first) and give the logits of a plain causal forward."""
    lvm = LlamaLVM(tiny_model().requires_grad_(False), PatchTokenizer())  # as loaders give it
    manager = lvm.transformer.setup_cache_manager("h2o", hh_ratio=0.1)
    tokens = torch.randint(0, CODES, (1, 2 * FRAME_TOKENS))
    prompt, step = tokens[:, :-1], tokens[:, -1:]
    cached = torch.cat([lvm.transformer(prompt), lvm.transformer(step)], 1)
    assert manager.next_position == tokens.shape[1]
    torch.testing.assert_close(cached, uncached(lvm.transformer, tokens), atol=1e-5, rtol=1e-5)
    # A session made with no strategy plays the attached one, on a cache of its own.
    transformer, tokenizer = lvm
    session = Session(transformer, tokenizer, reference_frames=2)
    assert session.cache is not manager and session.cache.describe() == manager.describe()
    session.start(*scene())
    for _ in range(2 * CONTEXT_FRAMES):
        _, stats = session.step(make_action(["forward"]))
    assert stats["evicted_tokens"] > 0 and stats["reprefills"] == 0
    assert manager.stats.evicted_tokens == 0  # the attached cache is not the session's
    transformer.disable_cache_manager()
    assert Session(transformer, tokenizer, reference_frames=2).cache.strategy.name == "none"


def uncached(model, tokens):
    cache, model.cache = model.cache, None
    try:
        return model(tokens)
    finally:
        model.cache = cache


@pytest.mark.parametrize("strategy", [name for name, cls in STRATEGIES.items() if cls.bounded])
def test_a_prompt_longer_than_the_context_is_prefilled_through_eviction(strategy):
    model = tiny_model()
    frames = CONTEXT_FRAMES + 2
    session = Session(model, PatchTokenizer(), strategy=strategy,
                      strategy_params=tight(strategy, model), reference_frames=frames)
    session.start(*scene(frames))
    assert session.cache.stats.evicted_tokens > 0
    assert session.cache.stats.live_tokens <= session.cache.storage.capacity
    frame, stats = session.step(make_action(["forward"]))
    assert frame.shape == (4 * ROWS, 4 * COLS, 3) and stats["reprefills"] == 0
    assert stats["highest_position"] < CONTEXT_FRAMES * FRAME_TOKENS


def test_a_full_context_cache_refuses_a_prompt_it_cannot_hold():
    with pytest.raises(ValueError, match=r"reference_frames must be in \[1, 3\] for strategy "
                                         r"none on a model with a 4-frame context, got 4"):
        Session(tiny_model(), PatchTokenizer(), reference_frames=CONTEXT_FRAMES)


def test_a_budget_must_leave_a_frames_positions_free_and_what_is_suggested_runs():
    """A step reserves a whole frame's positions: a budget that leaves fewer free in the
    context could not be re-based inside it, so it is refused, and the parameters suggested
    play on past the context."""
    model = tiny_model()
    limit = CONTEXT_FRAMES * FRAME_TOKENS - FRAME_TOKENS
    with pytest.raises(ValueError, match=rf"plus a step of {FRAME_TOKENS} tokens exceeds the "
                       rf"model's context of {CONTEXT_FRAMES * FRAME_TOKENS} tokens; use at most "
                       rf"{limit} tokens; e.g. start_size=4, recent_size={limit - 4}"):
        model.setup_cache_manager("streaming", start_size=2, recent_size=limit)
    too_large = Session(model, PatchTokenizer(), strategy="streaming",
                        strategy_params={"start_size": 2, "recent_size": limit},
                        reference_frames=2)
    with pytest.raises(ValueError, match=rf"plus a step of {FRAME_TOKENS} tokens"):
        too_large.start(*scene())
    session = Session(model, PatchTokenizer(), strategy="streaming",
                      strategy_params={"start_size": 4, "recent_size": limit - 4},
                      reference_frames=2)
    session.start(*scene())
    for _ in range(3 * CONTEXT_FRAMES):
        _, stats = session.step(make_action(["forward"]))
    assert stats["evicted_tokens"] > 0 and stats["rebases"] > 0


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_a_fork_plays_on_as_the_session_would_and_leaves_it_untouched(strategy):
    """Sampled, past the context (evictions, re-bases, re-prefills): a fork's frames are the
    session's, and stepping the fork changes nothing the session makes next."""
    from mineworld.decoding import Sampling

    def session():
        model = tiny_model()
        made = Session(model, PatchTokenizer(), strategy=strategy,
                       strategy_params=tight(strategy, model), reference_frames=2,
                       schedule="diagonal", sampling=Sampling(temperature=1.0, top_k=20), seed=3)
        made.start(*scene())
        return made

    original, twin = session(), session()
    moves = [make_action(["left"], yaw=5.0), make_action(["jump"], pitch=-3.0)] * 4
    for move in moves:
        assert np.array_equal(original.step(move)[0], twin.step(move)[0])
    fork = original.fork()
    assert fork.model is original.model and fork.tokenizer is original.tokenizer
    assert fork.cache.storage.keys.data_ptr() != original.cache.storage.keys.data_ptr()
    forked = [fork.step(move)[0] for move in moves]
    assert [original.step(move)[0].tolist() for move in moves] == [
        frame.tolist() for frame in forked]
    assert [twin.step(move)[0].tolist() for move in moves] == [frame.tolist() for frame in forked]


def test_action_guidance_draws_from_the_guided_logits_of_a_full_forward():
    """Greedy, one token a pass: each token is the argmax of ``u + g (c - u)``, ``c`` the
    logits of a full forward over the play with its actions and ``u`` with the frame's action
    replaced by no action; what is played on is the real action (the next frame's context)."""
    model, guidance = tiny_model().requires_grad_(False), 2.5
    session = Session(model, PatchTokenizer(), schedule="naive",
                      sampling=Sampling(guidance=guidance), reference_frames=1)
    session.start(*scene(frames=1))
    codec = ActionCodec(offset=CODES)
    played = session.newest_ids.flatten()
    for move in (make_action(["forward"]), make_action(["left", "jump"])):
        session.step(move)
        made = session.newest_ids.flatten()
        acted = torch.cat([played, torch.tensor(codec.encode(move))])
        still = torch.cat([played, torch.tensor(codec.encode(noop_action()))])
        for cell in range(len(made)):
            c, u = (uncached(model, torch.cat([prefix, made[:cell]])[None])[0, -1, :CODES]
                    for prefix in (acted, still))
            assert (u + guidance * (c - u)).argmax() == made[cell]
        played = torch.cat([acted, made])


class StillClock:
    """``time.perf_counter`` standing still but when a test moves it: what a player's cost
    holds is then exactly what the test made cost time."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def costing(self, seconds: float, fn):
        """``fn`` taking ``seconds``."""
        def slow(*args, **kwargs):
            self.now += seconds
            return fn(*args, **kwargs)
        return slow


def test_players_stepping_together_each_count_their_own_cost(monkeypatch):
    """Two players' frames made in the same forward passes: each one's ``ms_own`` holds its
    own work (here B's, before its first pass) and its own cache's work in each pass (B's),
    and of what the pass shares (the output layer here) its rows' share; never the other's."""
    from mineworld import decoding
    from mineworld import model as model_module
    from mineworld.decoding import run_together

    clock = StillClock()
    monkeypatch.setattr(model_module, "time", clock)
    monkeypatch.setattr(decoding, "time", clock)
    model = tiny_model()
    players = []
    for strategy in ("frames", "none"):
        session = Session(model, PatchTokenizer(), strategy=strategy, reference_frames=2,
                          schedule="diagonal", window=1)
        session.start(*scene())
        players.append(session)
    a, b = players
    monkeypatch.setattr(model.lm_head, "forward", clock.costing(1.0, model.lm_head.forward))
    monkeypatch.setattr(b.cache, "begin_step", clock.costing(2.0, b.cache.begin_step))
    monkeypatch.setattr(b, "_no_action_branch", clock.costing(7.0, b._no_action_branch))
    move = make_action(["forward"])
    (_, own_a), (_, own_b) = run_together(model, [a.step_passes(move), b.step_passes(move)])
    passes = own_a["forward_passes"]
    assert own_b["forward_passes"] == passes > 1
    # Both feed the same rows each pass: half the output layer's second each.
    assert own_a["ms_own"] == pytest.approx(1000 * 0.5 * passes)
    assert own_b["ms_own"] == pytest.approx(1000 * (7 + 2.5 * passes))
    alone = a.step(move)[1]  # alone, what the pass shares is all its own
    assert alone["ms_own"] == pytest.approx(1000 * 1.0 * alone["forward_passes"])
