"""Sampling and the frame schedules: naive, diagonal and published-diagonal."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from mineworld import decoding, schedules
from mineworld.config import ModelConfig
from mineworld.decoding import FrameDecoder, Sampling, code_overuse, sample
from mineworld.embedded import MODEL_DIR, demo_scene, load_embedded
from mineworld.model import Transformer
from mineworld.schedules import Schedule
from mineworld.session import Session
from tests.published_diagonal import published_diagonal
from tests.stand_ins import PatchTokenizer


def tiny_model(rows=4, cols=6, frames=6, seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=64 + 70,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=frames * (rows * cols + 11),
        image_rows=rows,
        image_cols=cols,
        codebook_size=64,
    )
    model = Transformer(config).eval()
    with torch.no_grad():  # sharper logits than the default init, so argmax is stable
        for p in model.parameters():
            p.mul_(4.0) if p.dim() > 1 else None
    return model


class OneTokenAtATime(torch.nn.Module):
    """The same model, fed each pass's tokens one by one in position order."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config, self.lm_head = model, model.config, model.lm_head
        self.forward_calls = 0

    def forward_feeds(self, feeds):
        return [self.one_by_one(feed) for feed in feeds]

    def one_by_one(self, feed):
        tokens, positions = feed.tokens[None], feed.positions
        logits = torch.empty(len(positions), self.config.vocab_size)
        for i in positions.argsort().tolist():
            one = self.inner(tokens[:, i : i + 1], positions[i : i + 1], cache=feed.cache)
            logits[i] = one[0, 0]
            self.forward_calls += 1
        return logits[-1:] if feed.last_only else logits


GREEDY = Sampling()


def decode_frame(model, schedule, window, seed=0, sampling=GREEDY, previous=None):
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, config.codebook_size, (config.tokens_per_frame,), generator=generator)
    if previous is None:
        previous = prompt[: config.tokens_per_image].view(config.image_rows, config.image_cols)
    cache = model.new_cache("none") if hasattr(model, "new_cache") else model.inner.new_cache()
    cache.reset(prompt_length=prompt.numel(), step_tokens=config.image_rows)
    start = cache.reserve(prompt.numel() + config.tokens_per_image)
    decoder = FrameDecoder(model, sampling, schedule, window)
    ids, passes = decoder.decode(cache, prompt, start + prompt.numel(), previous)
    return prompt, ids, passes


@pytest.mark.parametrize("window", [1, 2, 4])
def test_diagonal_pass_count_on_published_grid(window):
    model = tiny_model(rows=14, cols=24, frames=3)
    _, ids, passes = decode_frame(model, "diagonal", window)
    assert passes <= 24 + 13 * window
    assert ids.shape == (14, 24) and int(ids.min()) >= 0


def test_naive_takes_one_pass_per_token():
    model = tiny_model()
    _, _, passes = decode_frame(model, "naive", 1)
    assert passes == 4 * 6


@pytest.mark.parametrize("window", [1, 2, 3])
def test_diagonal_equals_the_same_schedule_one_token_at_a_time(window):
    model = tiny_model()
    _, batched, _ = decode_frame(model, "diagonal", window)
    serial = OneTokenAtATime(model)
    _, one_by_one, _ = decode_frame(serial, "diagonal", window)
    assert torch.equal(batched, one_by_one)
    assert serial.forward_calls > 4 * 6  # really fed token by token


def test_naive_greedy_tokens_are_the_argmax_of_a_full_forward():
    model = tiny_model()
    prompt, ids, _ = decode_frame(model, "naive", 1)
    sequence = torch.cat([prompt, ids.flatten()])
    with torch.no_grad():
        logits = model(sequence[None])[0, :, :64]
    predicted = logits[prompt.numel() - 1 : -1].argmax(-1)
    assert torch.equal(predicted, ids.flatten())


def test_diagonal_with_full_window_is_naive():
    model = tiny_model()
    _, naive, _ = decode_frame(model, "naive", 1)
    _, diagonal, _ = decode_frame(model, "diagonal", 6)
    assert torch.equal(naive, diagonal)


def test_sampling_rules():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    assert torch.equal(sample(logits, Sampling(), None), logits.argmax(-1))
    top1 = Sampling(temperature=1.0, top_k=1)
    assert torch.equal(sample(logits, top1, None), logits.argmax(-1))
    tiny_p = Sampling(temperature=1.0, top_p=1e-6)
    assert torch.equal(sample(logits, tiny_p, None), logits.argmax(-1))
    top3 = set(logits[0].topk(3).indices.tolist())
    row = logits[:1].expand(500, -1)
    drawn = sample(row, Sampling(temperature=5.0, top_k=3), torch.Generator().manual_seed(1))
    assert set(drawn.tolist()) == top3
    a = sample(row, Sampling(temperature=1.0, top_p=0.9), torch.Generator().manual_seed(7))
    b = sample(row, Sampling(temperature=1.0, top_p=0.9), torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_top_k_and_top_p_draw_with_the_renormalised_odds():
    row = torch.tensor([[0.0, math.log(2), math.log(3), math.log(4)]]).expand(40000, -1)
    drawn = sample(row, Sampling(temperature=1.0, top_k=2), torch.Generator().manual_seed(0))
    shares = torch.bincount(drawn, minlength=4).float() / len(drawn)
    assert shares.tolist() == pytest.approx([0, 0, 3 / 7, 4 / 7], abs=0.01)
    # top-p 0.5 of the top 3 (2/9, 3/9, 4/9): the likeliest two reach it
    drawn = sample(row, Sampling(temperature=1.0, top_k=3, top_p=0.5),
                   torch.Generator().manual_seed(0))
    shares = torch.bincount(drawn, minlength=4).float() / len(drawn)
    assert shares.tolist() == pytest.approx([0, 0, 3 / 7, 4 / 7], abs=0.01)


def test_repeat_penalty_divides_the_odds_of_the_repeated_code():
    logits = torch.tensor([[2.0, 1.5, 0.0], [2.0, 0.0, 0.5]])
    penalised = Sampling(repeat_penalty=2.0)  # log 2 = 0.69: beats row 0's margin, not row 1's
    assert sample(logits, penalised, None, repeats=[0, 0]).tolist() == [1, 0]
    assert sample(logits, Sampling(), None, repeats=[0, 0]).tolist() == [0, 0]
    # Sampled: the odds of the repeated code against each other are divided exactly.
    row = torch.tensor([[0.0, 0.0]]).expand(20000, -1)
    drawn = sample(row, Sampling(temperature=1.0, repeat_penalty=3.0),
                   torch.Generator().manual_seed(0), repeats=[0] * 20000)
    assert (drawn == 0).float().mean().item() == pytest.approx(0.25, abs=0.01)


def test_code_overuse_is_the_log_of_the_times_its_even_share():
    ids = torch.tensor([[1, 1, 1, 2], [1, 3, 3, 0]])  # 8 tokens of 4 codes: an even share is 2
    expected = [0.0, math.log(4 / 2), 0.0, 0.0]  # 1 and 2 hold it, 0 and 3 less
    assert code_overuse(ids, 4).tolist() == pytest.approx(expected)
    assert not code_overuse(torch.arange(10), 10).any()  # every code once: none overused


def test_overuse_penalty_lowers_each_codes_logit_by_its_overuse():
    logits = torch.tensor([[2.0, 1.5, 0.0], [2.0, 0.0, 0.5]])
    overuse = torch.tensor([1.0, 0.0, 0.0])
    assert sample(logits, Sampling(overuse_penalty=0.4), None, overuse=overuse).tolist() == [0, 0]
    assert sample(logits, Sampling(overuse_penalty=0.6), None, overuse=overuse).tolist() == [1, 0]
    assert sample(logits, Sampling(overuse_penalty=1.6), None, overuse=overuse).tolist() == [1, 2]
    # Sampled: the odds of the overused code are multiplied by exp(-penalty x overuse) exactly.
    row = torch.tensor([[0.0, 0.0]]).expand(20000, -1)
    drawn = sample(row, Sampling(temperature=1.0, overuse_penalty=2.0),
                   torch.Generator().manual_seed(0), overuse=torch.tensor([math.log(3), 0.0]))
    assert (drawn == 0).float().mean().item() == pytest.approx(1 / 10, abs=0.01)


def test_a_session_penalises_the_overuse_of_the_frames_in_its_history(monkeypatch):
    model = tiny_model()
    tokenizer = PatchTokenizer(rows=4, cols=6, codes=64)
    session = Session(model, tokenizer, strategy="none", reference_frames=2,
                      sampling=Sampling(overuse_penalty=1.0))
    prompt = np.concatenate([random_frame(tokenizer, 0), random_frame(tokenizer, 1)])
    session.start(prompt, [{}])
    seen = []
    real_sample = decoding.sample

    def noted(logits, sampling, generator, repeats=None, overuse=None):
        seen.append(overuse)
        return real_sample(logits, sampling, generator, repeats, overuse)

    monkeypatch.setattr(decoding, "sample", noted)
    for _ in range(3):
        history = torch.stack([record.ids for record in session.history])
        seen.clear()
        session.step({"forward": 1})
        assert seen and all(torch.equal(o, code_overuse(history, 64)) for o in seen)
    assert len(session.history) == 5
    plain = Session(model, tokenizer, strategy="none", reference_frames=2, sampling=Sampling())
    plain.start(prompt, [{}])
    plain.step({"forward": 1})
    assert not torch.equal(plain.newest_ids, list(session.history)[2].ids)


def test_a_strong_repeat_penalty_changes_every_cell():
    """Naive decoding reads the frame before for the penalty alone: with that frame set to
    what plain greedy decoding makes, a huge penalty must change every cell."""
    model = tiny_model()
    _, plain, _ = decode_frame(model, "naive", 1)
    _, again, _ = decode_frame(model, "naive", 1, previous=plain)
    assert torch.equal(again, plain)
    _, penalised, _ = decode_frame(model, "naive", 1, previous=plain,
                                   sampling=Sampling(repeat_penalty=1e6))
    assert not (penalised == plain).any()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"temperature": -1}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 1.5}, "top_p"),
     ({"repeat_penalty": 0.5}, r"repeat_penalty must be >= 1, got 0.5"),
     ({"overuse_penalty": -1.0}, r"overuse_penalty must be in \[0, 10\], got -1.0"),
     ({"guidance": -1.0}, r"guidance must be in \[0, 10\], got -1.0")],
)
def test_bad_sampling_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**kwargs)


def test_bad_schedule_and_window_are_named():
    model = tiny_model()
    with pytest.raises(ValueError, match="schedule"):
        FrameDecoder(model, Sampling(), "zigzag", 2)
    with pytest.raises(ValueError, match=r"window must be in \[1, 6\]"):
        FrameDecoder(model, Sampling(), "diagonal", 7)


def test_the_window_is_the_models_unless_given():
    model = tiny_model()
    model.config = dataclasses.replace(model.config, diagonal_window=3)
    assert FrameDecoder(model, Sampling(), "diagonal").window == 3
    assert FrameDecoder(model, Sampling(), "diagonal", 1).window == 1


ACTIONS = [{"forward": 1}, {"camera": [0.0, 15.0]}, {"jump": 1}, {}]


def played(model, tokenizer, schedule, window, frames, actions, strategy="none"):
    """The frames a greedy session makes after a one-frame prompt, and the action tokens fed."""
    session = Session(model, tokenizer, strategy=strategy, reference_frames=1,
                      schedule=schedule, window=window, sampling=Sampling())
    session.start(frames[:1], [])
    for action in actions:
        session.step(action)
    records = list(session.history)
    return [r.ids for r in records[1:]], [r.action for r in records[:-1]]


def random_frame(tokenizer, seed=0):
    width, height = tokenizer.frame_size
    return np.random.default_rng(seed).integers(0, 256, (1, height, width, 3), dtype=np.uint8)


def published_layout_model():
    """A random model on the published 14 x 24 grid (4 frames made after the prompt), its
    attention softer than tiny_model's, so that each of published-diagonal's two differences
    changes the tokens."""
    model = tiny_model(rows=14, cols=24, frames=5)
    config = model.config
    queries_and_keys = config.hidden_size + config.num_key_value_heads * config.head_dim
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.qkv_weight[:, :queries_and_keys].mul_(0.5)
    return model


@pytest.mark.parametrize("window", [1, 2, 3])
def test_published_diagonal_reproduces_the_published_code_token_for_token(window, monkeypatch):
    model = published_layout_model()
    tokenizer = PatchTokenizer(rows=14, cols=24, codes=64)
    prompt = random_frame(tokenizer)
    ours, actions = played(model, tokenizer, "published-diagonal", window, prompt, ACTIONS)
    reference = published_diagonal(model, tokenizer.encode(prompt)[0], actions, window)
    for made, expected in zip(ours, reference, strict=True):
        assert torch.equal(made, expected)
    # Each difference is needed: without either one, or both (the masked default), some
    # frame differs.
    monkeypatch.setitem(schedules.SCHEDULES, "zeros-only", Schedule(True, sees_unwritten=True))
    monkeypatch.setitem(schedules.SCHEDULES, "prompt-only",
                        Schedule(True, stand_ins_from_prompt=True))
    for schedule in ("diagonal", "zeros-only", "prompt-only"):
        other, _ = played(model, tokenizer, schedule, window, prompt, ACTIONS)
        assert any(not torch.equal(a, b) for a, b in zip(other, reference, strict=True))


@pytest.mark.skipif(not (MODEL_DIR / "model.safetensors").exists(), reason="no embedded model")
def test_published_diagonal_reproduces_the_published_code_on_the_shipped_model():
    model, tokenizer = load_embedded()
    frames, actions = demo_scene()
    window = model.config.diagonal_window
    ours, fed = played(model, tokenizer, "published-diagonal", window, frames, actions[:4])
    reference = published_diagonal(model, tokenizer.encode(frames[:1])[0], fed, window)
    assert all(torch.equal(a, b) for a, b in zip(ours, reference, strict=True))
    masked, _ = played(model, tokenizer, "diagonal", window, frames, actions[:4])
    assert any(not torch.equal(a, b) for a, b in zip(masked, reference, strict=True))


@pytest.mark.parametrize("strategy", ["streaming", "h2o", "frames"])
def test_published_diagonal_keeps_its_prompt_frame_past_the_context(strategy):
    model = tiny_model(rows=4, cols=6, frames=3)
    tokenizer = PatchTokenizer(rows=4, cols=6, codes=64)
    prompt = random_frame(tokenizer)
    session = Session(model, tokenizer, strategy=strategy, reference_frames=1,
                      schedule="published-diagonal", window=2)
    session.start(prompt, [])
    for action in ACTIONS * 2:  # 8 frames on a 3-frame context
        frame, stats = session.step(action)
    assert stats["evicted_tokens"] > 0 and frame.shape == (16, 24, 3)
    assert torch.equal(session.prompt_ids, tokenizer.encode(prompt)[0])
