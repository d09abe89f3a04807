"""cache/: strategies against brute-force references, re-basing, equivalence, validation."""

import math

import pytest
import torch

from cache import STRATEGIES, KVCacheManager
from mineworld.config import ModelConfig
from mineworld.model import RotaryEmbedding, Transformer

LAYERS, HEADS, DIM = 2, 2, 16


def bound_manager(strategy, max_positions=64, **params):
    manager = KVCacheManager(strategy, **params)
    rope = RotaryEmbedding(DIM, max_positions, 10000.0)
    manager.bind(
        num_layers=LAYERS,
        num_kv_heads=HEADS,
        head_dim=DIM,
        max_positions=max_positions,
        rotate=rope.shift,
        dtype=torch.float32,
        device="cpu",
    )
    return manager, rope


def feed(manager, rope, raw_keys, first, count, attention=None):
    """Write tokens ``first..first+count-1`` (raw key = raw_keys[token], value = token id)."""
    base = manager.reserve(count)
    positions = torch.arange(base, base + count)
    manager.begin_step(positions)
    for layer in range(LAYERS):
        keys = rope(raw_keys[first : first + count].transpose(0, 1), positions)
        values = torch.arange(first, first + count, dtype=torch.float32)
        manager.write(layer, keys, values.view(1, -1, 1).expand(HEADS, -1, DIM))
        if attention is not None:
            _, _, mask = manager.read(layer, positions)
            end = manager.storage.high_water
            weights = attention(layer, end, count)
            manager.observe(layer, weights, mask)
    manager.end_step()


def live_tokens(manager, layer=0, head=0):
    storage = manager.storage
    row = storage.positions[layer if storage.per_head else 0, head if storage.per_head else 0]
    live = (row >= 0).nonzero().flatten()
    return sorted(storage.values[layer, head, live, 0].long().tolist())


# -- re-rotation ---------------------------------------------------------------


def test_shift_equals_rotation_at_shifted_position():
    rope = RotaryEmbedding(DIM, 4096, 10000.0)
    raw = torch.randn(HEADS, 50, DIM)
    start = torch.randint(0, 4000, (50,))
    shift = torch.randint(-start.min().item(), 90, (HEADS, 50))
    rotated = rope(raw, start)
    moved = rope.shift(rotated, shift)
    for head in range(HEADS):
        direct = rope(raw[head], start + shift[head])
        assert (moved[head] - direct).abs().max() < 1e-5


@pytest.mark.parametrize(
    "strategy, params",
    [
        ("streaming", {"start_size": 4, "recent_size": 16}),
        ("frames", {"frame_tokens": 8, "sink_frames": 1, "recent_frames": 3}),
        ("h2o", {"hh_ratio": 0.25, "recent_size": 8}),
        ("hybrid", {"start_size": 2, "hh_ratio": 0.25, "recent_size": 8}),
    ],
)
def test_keys_stay_exact_through_10000_frames_of_rebasing(strategy, params):
    """10,000 frames of 8 tokens through a 64-position model: every cached key stays
    within 1e-4 of the key computed directly at its final position."""
    frame, frames = 8, 10_000
    manager, rope = bound_manager(strategy, **params)
    torch.manual_seed(0)
    raw_keys = torch.randn(frame * frames, HEADS, DIM)
    manager.reset(prompt_length=32, step_tokens=frame)

    def attention(layer, end, count):  # arbitrary but deterministic attention
        generator = torch.Generator().manual_seed(layer * 7 + end)
        return torch.rand(HEADS, count, end, generator=generator)

    scored = manager.tracks_attention
    for index in range(frames):
        feed(manager, rope, raw_keys, index * frame, frame, attention if scored else None)
    storage = manager.storage
    assert manager.stats.rebases > 1000
    for layer in range(LAYERS):
        positions = storage.positions[layer if storage.per_head else 0]
        for head in range(HEADS):
            live = (positions[head if storage.per_head else 0] >= 0).nonzero().flatten()
            tokens = storage.values[layer, head, live, 0].long()
            where = positions[head if storage.per_head else 0, live]
            direct = rope(raw_keys[tokens, head], where)
            assert (storage.keys[layer, head, live] - direct).abs().max() < 1e-4
            assert int(where.max()) < 64


# -- eviction sets against brute force -----------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_streaming_keeps_first_and_last(seed):
    generator = torch.Generator().manual_seed(seed)
    start, recent = (torch.randint(1, 6, (2,), generator=generator) * 2).tolist()
    manager, rope = bound_manager("streaming", max_positions=256, start_size=start,
                                  recent_size=recent + 3)
    manager.reset(prompt_length=0, step_tokens=3)
    raw = torch.randn(200, HEADS, DIM)
    written = 0
    while written < 150:
        count = int(torch.randint(1, 4, (1,), generator=generator))
        feed(manager, rope, raw, written, count)
        written += count
        expected = sorted(set(range(min(start, written))) | set(range(written)[-(recent + 3):]))
        assert live_tokens(manager) == expected


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("normalize", [False, True])
def test_h2o_keeps_top_scores_outside_the_recent_window(seed, normalize):
    generator = torch.Generator().manual_seed(seed)
    recent, prompt = 6, 40
    manager, rope = bound_manager("h2o", max_positions=512, hh_ratio=0.2, recent_size=recent,
                                  normalize=normalize)
    manager.reset(prompt_length=prompt, step_tokens=3)
    heavy = round(0.2 * prompt)
    raw = torch.randn(300, HEADS, DIM)
    score = torch.zeros(LAYERS, HEADS, 300)  # brute force: accumulated per token id
    seen = torch.zeros(LAYERS, HEADS, 300)
    alive = [[list() for _ in range(HEADS)] for _ in range(LAYERS)]
    written = 0

    def attention(layer, end, count):
        weights = torch.rand(HEADS, count, end, generator=generator)
        ids = manager.storage.values[layer, :, :end, 0].long()
        _, _, mask = manager.read(layer, manager.step_positions)
        visible = mask.expand(HEADS, -1, -1) if mask is not None else torch.ones_like(weights)
        weights = weights * visible
        for head in range(HEADS):
            live = manager.storage.positions[layer, head, :end] >= 0
            score[layer, head].index_add_(0, ids[head][live], weights[head].sum(0)[live])
            seen[layer, head].index_add_(0, ids[head][live], visible[head].sum(0)[live].float())
        return weights

    while written < 200:
        count = int(torch.randint(1, 4, (1,), generator=generator))
        # Brute force of this step's eviction, from the scores before the step.
        for layer in range(LAYERS):
            for head in range(HEADS):
                kept = alive[layer][head] + list(range(written, written + count))
                overflow = len(kept) - (heavy + recent)
                if overflow > 0:
                    window = set(range(written + count)[-recent:])
                    candidates = [t for t in alive[layer][head] if t not in window]
                    norm = seen[layer, head].clamp(min=1) if normalize else 1
                    value = score[layer, head] / norm
                    candidates.sort(key=lambda t: (value[t].item(), t))
                    dropped = set(candidates[:overflow])
                    kept = [t for t in kept if t not in dropped]
                alive[layer][head] = kept
        feed(manager, rope, raw, written, count, attention)
        written += count
        for layer in range(LAYERS):
            for head in range(HEADS):
                assert live_tokens(manager, layer, head) == sorted(alive[layer][head])


def test_frames_evicts_whole_frames_and_keeps_the_sink_frame():
    manager, rope = bound_manager("frames", max_positions=256, frame_tokens=5, sink_frames=1,
                                  recent_frames=3)
    manager.reset(prompt_length=0, step_tokens=2)
    raw = torch.randn(400, HEADS, DIM)
    written = 0
    while written < 300:
        feed(manager, rope, raw, written, 1 if written % 3 else 2)
        written += 1 if written % 3 else 2
        live = live_tokens(manager)
        frames = {t // 5 for t in live}
        assert 0 in frames  # the sink frame
        newest = (written - 1) // 5
        for frame in frames - {newest}:  # every kept frame but the one being written is whole
            assert set(range(frame * 5, frame * 5 + 5)) <= set(live)
        assert max(frames) == newest and len(live) <= 20


# -- equivalence with the full cache -------------------------------------------


def small_model():
    torch.manual_seed(3)
    config = ModelConfig(
        vocab_size=200, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=400,
        image_rows=2, image_cols=3, codebook_size=100,
    )
    return Transformer(config).eval()


GENEROUS = {
    "none": {},
    "streaming": {"start_size": 4, "recent_size": 300},
    "h2o": {"hh_ratio": 1.0, "recent_size": 200},
    "hybrid": {"start_size": 4, "hh_ratio": 1.0, "recent_size": 200},
    "frames": {"frame_tokens": 17, "sink_frames": 1, "recent_frames": 17},
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@torch.no_grad()
def test_generous_budget_equals_full_context(strategy):
    model = small_model()

    def run(name):
        cache = model.new_cache(name, **GENEROUS[name])
        cache.reset(prompt_length=100, step_tokens=17)
        tokens = [torch.randint(0, 100, (1,), generator=torch.Generator().manual_seed(1))]
        logits = []
        start = cache.reserve(100)
        prompt = torch.randint(0, 200, (1, 100), generator=torch.Generator().manual_seed(2))
        for begin in range(0, 100, 17):
            piece = prompt[:, begin : begin + 17]
            out = model(piece, start + begin + torch.arange(piece.shape[1]), cache=cache)
            logits.append(out[0])
        tokens = [int(logits[-1][-1].argmax())]
        for _ in range(150):  # greedy continuation
            position = cache.reserve(1)
            out = model(torch.tensor([[tokens[-1]]]), torch.tensor([position]), cache=cache)
            logits.append(out[0])
            tokens.append(int(out[0, -1].argmax()))
        assert cache.stats.evicted_tokens == 0
        return tokens, torch.cat(logits)

    reference_tokens, reference_logits = run("none")
    tokens, logits = run(strategy)
    assert tokens == reference_tokens
    assert (logits - reference_logits).abs().max() < 1e-5


# -- validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy, params, message",
    [
        ("lru", {}, r"strategy must be one of \['frames', 'h2o', 'hybrid', 'none', 'streaming'\]"),
        ("h2o", {"hh_ratio": 1.5}, r"hh_ratio must be a number in \[0, 1\], got 1.5"),
        ("h2o", {"hh_ratio": -0.1}, r"hh_ratio must be a number in \[0, 1\]"),
        ("streaming", {"start_size": 0}, r"start_size must be >= 1, got 0"),
        ("streaming", {"recent_size": 0}, r"recent_size must be >= 1, got 0"),
        ("streaming", {"recent_size": 2.5}, r"recent_size must be an integer"),
        ("frames", {"frame_tokens": 8, "recent_frames": 0}, r"recent_frames must be >= 1"),
        ("streaming", {"window": 3}, r"streaming.*window"),
    ],
)
def test_bad_parameters_name_parameter_value_and_range(strategy, params, message):
    with pytest.raises(ValueError, match=message):
        KVCacheManager(strategy, **params)


def test_budget_smaller_than_a_step_is_refused():
    manager, _ = bound_manager("streaming", start_size=4, recent_size=8)
    with pytest.raises(ValueError, match="fewer than one step of 12"):
        manager.reset(prompt_length=0, step_tokens=12)
    manager, _ = bound_manager("frames", frame_tokens=8, recent_frames=1)
    with pytest.raises(ValueError, match="frames"):
        manager.reset(prompt_length=0, step_tokens=12)
    manager, _ = bound_manager("streaming", start_size=4, recent_size=100)
    with pytest.raises(ValueError, match="exceeds the model's 64 positions"):
        manager.reset(prompt_length=0, step_tokens=4)


def test_memory_is_allocated_once_per_budget():
    manager, rope = bound_manager("streaming", start_size=2, recent_size=10)
    raw = torch.randn(100, HEADS, DIM)
    for _ in range(3):
        manager.reset(prompt_length=10, step_tokens=2)
        for i in range(40):
            feed(manager, rope, raw, i, 1)
    assert manager.stats.allocations == 1
    expected = 2 * LAYERS * HEADS * 12 * DIM * 4 + 12 * 8  # K, V (fp32) and positions
    assert manager.stats.bytes_allocated == expected
    assert manager.stats.bytes_live == 12 * 2 * LAYERS * HEADS * DIM * 4
    assert not math.isnan(manager.stats.reprefill_seconds)


def test_debug_cache_logs_each_eviction(monkeypatch, capsys):
    monkeypatch.setenv("DEBUG_CACHE", "1")
    manager, rope = bound_manager("streaming", start_size=2, recent_size=4)
    manager.reset(prompt_length=0, step_tokens=1)
    raw = torch.randn(100, HEADS, DIM)
    for i in range(80):
        feed(manager, rope, raw, i, 1)
    log = capsys.readouterr().err
    assert log.count("evict strategy=streaming layer=all count=1") == 80 - 6
    assert "rebase strategy=streaming" in log


# -- the custom (K, V) protocol --------------------------------------------------


class StartRecentKVCache:
    """StreamingLLM's reference policy, written against the (K, V) protocol."""

    def __init__(self, start_size, recent_size):
        self.start_size, self.recent_size = start_size, recent_size
        self.cache_size = start_size + recent_size

    def __call__(self, past_key_values):
        return self.evict_for_space(past_key_values, 0)

    def evict_for_space(self, past_key_values, num_coming):
        seq_len = past_key_values[0][0].size(2)
        if seq_len + num_coming <= self.cache_size:
            return past_key_values
        keep_from = seq_len - self.recent_size + num_coming
        return [
            [torch.cat([t[:, :, : self.start_size], t[:, :, keep_from:]], dim=2) for t in kv]
            for kv in past_key_values
        ]


def test_custom_protocol_policy_keeps_what_the_native_strategy_keeps():
    native, rope = bound_manager("streaming", max_positions=128, start_size=3, recent_size=9)
    custom, _ = bound_manager(StartRecentKVCache(3, 9), max_positions=128, budget=12)
    raw = torch.randn(300, HEADS, DIM)
    for manager in (native, custom):
        manager.reset(prompt_length=0, step_tokens=3)
    written = 0
    while written < 250:
        count = 1 + written % 3
        for manager in (native, custom):
            feed(manager, rope, raw, written, count)
        written += count
        for layer in range(LAYERS):
            for head in range(HEADS):
                assert live_tokens(custom, layer, head) == live_tokens(native)
    assert custom.stats.rebases > 0


def test_custom_policy_that_changes_tokens_is_refused():
    class Rounding(StartRecentKVCache):
        def evict_for_space(self, past_key_values, num_coming):
            return [[t.round() for t in kv] for kv in super().evict_for_space(past_key_values, 1)]

    manager, rope = bound_manager(Rounding(2, 4), budget=6)
    manager.reset(prompt_length=0, step_tokens=1)
    raw = torch.randn(20, HEADS, DIM)
    with pytest.raises(ValueError, match="must select tokens, not change them"):
        for i in range(10):
            feed(manager, rope, raw, i, 1)


def test_custom_policy_without_the_protocol_is_named():
    with pytest.raises(ValueError, match="lacks __call__, evict_for_space"):
        KVCacheManager(object(), budget=8)
