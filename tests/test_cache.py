"""cache/: strategies against brute-force references, re-basing, equivalence, validation."""

import math

import pytest
import torch

from cache import STRATEGIES, KVCacheManager, Layout
from mineworld.config import ModelConfig
from mineworld.model import RotaryEmbedding, Transformer
from tests.stand_ins import StartRecentKVCache

LAYERS, HEADS, DIM = 2, 2, 16


def bound_manager(strategy, max_positions=64, dtype=torch.float32, **params):
    manager = KVCacheManager(strategy, **params)
    rope = RotaryEmbedding(DIM, max_positions, 10000.0)
    manager.bind(
        num_layers=LAYERS,
        num_kv_heads=HEADS,
        head_dim=DIM,
        max_positions=max_positions,
        rotate=rope,
        dtype=dtype,
        device="cpu",
    )
    return manager, rope


def feed(manager, rope, raw_keys, first, count, attention=None):
    """Write tokens ``first..first+count-1`` (raw key = raw_keys[token], value = token id)."""
    base = manager.reserve(count)
    positions = torch.arange(base, base + count)
    manager.begin_step(positions)
    dtype = manager.storage.keys.dtype
    raw = raw_keys[first : first + count].transpose(0, 1).to(dtype)
    tokens = torch.arange(first, first + count)
    values = torch.zeros(HEADS, count, DIM, dtype=dtype)
    values[..., 0], values[..., 1] = tokens // 1000, tokens % 1000  # exact in fp16 too
    keys = rope(raw, positions)
    for layer in range(LAYERS):
        manager.write(layer, keys, values, raw)
        if attention is not None:
            _, _, mask = manager.read(layer, positions)
            end = manager.storage.high_water
            weights = attention(layer, end, count)
            manager.observe(layer, weights, mask)
    manager.end_step()


def token_ids(values):
    """The token ids ``feed`` wrote into ``values`` (``[..., DIM]``)."""
    return values[..., 0].long() * 1000 + values[..., 1].long()


def live_tokens(manager, layer=0, head=0):
    storage = manager.storage
    row = storage.positions[layer if storage.per_head else 0, head if storage.per_head else 0]
    live = (row >= 0).nonzero().flatten()
    return sorted(token_ids(storage.values[layer, head, live]).tolist())


# -- re-rotation ---------------------------------------------------------------


def exact_rotation(raw, positions):
    """RoPE in fp64: ``raw`` ``[n, D]`` at ``positions`` ``[n]``."""
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, DIM, 2, dtype=torch.float64) / DIM)
    angles = (positions.double()[:, None] * inv_freq).repeat(1, 2)
    raw = raw.double()
    half = torch.cat((-raw[:, DIM // 2 :], raw[:, : DIM // 2]), -1)
    return raw * angles.cos() + half * angles.sin()


def key_errors(manager, rope, raw_keys):
    """Largest difference of a cached key from the key computed directly at its position
    (same dtype, the model's own rotation) and from the exact (fp64) rotated key."""
    storage = manager.storage
    direct_error = exact_error = 0.0
    for layer in range(LAYERS):
        for head in range(HEADS):
            rows = storage.positions[layer] if storage.per_head else storage.positions[0]
            row = rows[head] if storage.per_head else rows[0]
            live = (row >= 0).nonzero().flatten()
            tokens, where = token_ids(storage.values[layer, head, live]), row[live]
            cached = storage.keys[layer, head, live]
            raw = raw_keys[tokens, head].to(cached.dtype)
            direct = rope(raw, where)
            direct_error = max(direct_error, float((cached - direct).abs().max()))
            exact = exact_rotation(raw, where)
            exact_error = max(exact_error, float((cached.double() - exact).abs().max()))
    return direct_error, exact_error


def test_rebased_keys_equal_keys_computed_at_the_shifted_positions():
    manager, rope = bound_manager("h2o", max_positions=64, hh_ratio=0.5, recent_size=4)
    manager.reset(prompt_length=32, step_tokens=4)
    torch.manual_seed(0)
    raw_keys = torch.randn(200, HEADS, DIM)
    generator = torch.Generator().manual_seed(1)

    def attention(layer, end, count):
        return torch.rand(HEADS, count, end, generator=generator)

    for first in range(0, 64, 4):
        feed(manager, rope, raw_keys, first, 4, attention)
    before = manager.storage.positions.clone()
    feed(manager, rope, raw_keys, 64, 4, attention)  # the 64 positions are used up: re-base
    assert manager.stats.rebases == 1
    still = (before >= 0) & (manager.storage.positions >= 0)
    shifts = (manager.storage.positions - before)[still]
    assert int(shifts.min()) < -10  # gaps of evicted tokens were closed
    direct_error, exact_error = key_errors(manager, rope, raw_keys)
    assert direct_error < 1e-5 and exact_error < 1e-5


FRAME, STEP, BUDGET = 2, 128, 512  # 64 frames a step; a model with room for one more step
LONG_LIVED = [
    ("streaming", {"start_size": 4, "recent_size": BUDGET - 4}),
    ("frames", {"frame_tokens": FRAME, "sink_frames": 2, "recent_frames": BUDGET // FRAME - 2}),
    ("h2o", {"hh_ratio": 0.5, "recent_size": BUDGET // 2}),
    ("hybrid", {"start_size": 4, "hh_ratio": 0.5, "recent_size": BUDGET // 2 - 4}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("strategy, params", LONG_LIVED, ids=[s for s, _ in LONG_LIVED])
def test_keys_stay_exact_through_10000_frames_of_rebasing(strategy, params, dtype):
    """10,000 frames of 2 tokens, 64 frames a step, with a budget of 512 tokens in 640
    positions: every step re-bases, and a recent token or a heavy hitter is moved again
    and again (a sink stays put). Every cached key stays the key the model computes
    directly at its final position, and its error from the exact (fp64) key is one
    rotation's in the storage dtype, after 1,000 frames as after 10,000: it does not grow."""
    frames = 10_000
    manager, rope = bound_manager(strategy, max_positions=BUDGET + STEP, dtype=dtype, **params)
    torch.manual_seed(0)
    raw_keys = torch.randn(frames * FRAME, HEADS, DIM)
    manager.reset(prompt_length=BUDGET, step_tokens=STEP)
    noise = torch.rand(LAYERS, HEADS, STEP, BUDGET + STEP)

    def attention(layer, end, count):  # arbitrary; tokens 5, 1005, 2005... are favoured
        favoured = manager.storage.values[layer, :, :end, 1] == 5
        return noise[layer, :, :count, :end] + 4 * favoured.unsqueeze(1)

    scored = attention if manager.tracks_attention else None
    errors = []
    steps = frames * FRAME // STEP
    for step in range(steps):
        feed(manager, rope, raw_keys, step * STEP, STEP, scored)
        if step + 1 in (steps // 10, steps):  # after about 1,000 frames, and after 10,000
            errors.append(key_errors(manager, rope, raw_keys))
    assert manager.stats.rebases > 150  # one every step once the budget is full
    assert int(manager.storage.positions.max()) < BUDGET + STEP
    (direct_early, exact_early), (direct_late, exact_late) = errors
    assert direct_early < 1e-4 and direct_late < 1e-4
    one_rotation = 1e-5 if dtype == torch.float32 else 8e-3  # |key| < 8: two fp16 ulps
    assert exact_early < one_rotation and exact_late < one_rotation


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


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "strategy, params, sinks, block",
    [
        ("streaming", {"start_size": 3, "recent_size": 9}, 3, 1),
        ("frames", {"frame_tokens": 6, "sink_frames": 1, "recent_frames": 2}, 6, 6),
    ],
)
def test_oldest_first_evicts_lowest_positions_when_written_out_of_order(
    seed, strategy, params, sinks, block
):
    """Diagonal decoding writes a frame out of position order: the heap must still evict
    the lowest positions, as a brute force over the live tokens does (whole frames for
    ``frames``), through re-bases."""
    generator = torch.Generator().manual_seed(seed)
    manager, rope = bound_manager(strategy, max_positions=40, **params)
    manager.reset(prompt_length=0, step_tokens=3)
    capacity = manager.storage.capacity
    raw = torch.randn(400, HEADS, DIM)
    alive: list[int] = []
    for frame_start in range(0, 360, 6):  # a 6-token frame, its tokens in a random order
        base = manager.reserve(6)
        order = torch.randperm(6, generator=generator)
        while len(order):
            count = int(torch.randint(1, 4, (1,), generator=generator))
            chunk, order = order[:count], order[count:]
            overflow = len(alive) + len(chunk) - capacity
            if overflow > 0:  # brute force: the lowest non-sinks go, in whole blocks
                candidates = sorted(t for t in alive if t >= sinks)
                dropped = set(candidates[: -(-overflow // block) * block])
                alive = [t for t in alive if t not in dropped]
            alive += (frame_start + chunk).tolist()
            positions = base + chunk
            manager.begin_step(positions)
            tokens = frame_start + chunk
            values = torch.zeros(HEADS, len(chunk), DIM)
            values[..., 0], values[..., 1] = tokens // 1000, tokens % 1000
            keys = rope(raw[tokens].transpose(0, 1), positions)
            for layer in range(LAYERS):
                manager.write(layer, keys, values, raw[tokens].transpose(0, 1))
            manager.end_step()
            assert live_tokens(manager) == sorted(alive)
    assert manager.stats.rebases > 5


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
        ids = token_ids(manager.storage.values[layer, :, :end])
        _, _, mask = manager.read(layer, manager.step_positions)
        ones = torch.ones_like(weights)
        visible = (~mask.hidden).expand(HEADS, -1, -1) if mask is not None else ones
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


def small_model(layers=2, positions=400, seed=3):
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=200, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions,
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
    with pytest.raises(ValueError, match="exceeds the model's context of 64 tokens; use at most "
                                         "60 tokens"):
        manager.reset(prompt_length=0, step_tokens=4)


def test_a_budget_over_the_context_is_refused_in_the_unit_of_the_fields():
    """Frames's own defaults (8 frames) on the shipped model's layout (8 frames of 107 tokens):
    the message speaks frames and says what fits."""
    manager, _ = bound_manager("frames", max_positions=856, layout=Layout(107, 856),
                               sink_frames=1, recent_frames=7)
    message = (r"a budget of 8 frames plus a step of 12 tokens exceeds the model's context of "
               r"8 frames; use at most 7 whole frames \(844 tokens\); e.g. sink_frames=1, "
               r"recent_frames=6")
    with pytest.raises(ValueError, match=message):
        manager.reset(prompt_length=416, step_tokens=12)


def test_memory_is_allocated_once_per_budget():
    manager, rope = bound_manager("streaming", start_size=2, recent_size=10)
    raw = torch.randn(100, HEADS, DIM)
    for _ in range(3):
        manager.reset(prompt_length=10, step_tokens=2)
        for i in range(40):
            feed(manager, rope, raw, i, 1)
    assert manager.stats.allocations == 1
    expected = 3 * LAYERS * HEADS * 12 * DIM * 4 + 12 * 8  # K, raw K, V (fp32) and positions
    assert manager.stats.bytes_allocated == expected
    assert manager.stats.bytes_live == 12 * 3 * LAYERS * HEADS * DIM * 4
    assert not math.isnan(manager.stats.reprefill_seconds)


@pytest.mark.parametrize("normalize", [False, True])
def test_h2o_counts_queries_only_when_it_normalizes(normalize):
    manager, _ = bound_manager("h2o", hh_ratio=0.5, recent_size=4, normalize=normalize)
    manager.reset(prompt_length=8, step_tokens=2)
    slots = 8  # 4 heavy + 4 recent; per layer and head: attention (and counts) in fp32
    scores = (2 if normalize else 1) * LAYERS * HEADS * slots * 4
    expected = 3 * LAYERS * HEADS * slots * DIM * 4 + LAYERS * HEADS * slots * 8 + scores
    assert (manager.storage.seen is not None) == normalize
    assert manager.stats.bytes_allocated == expected


def test_the_manager_is_whole_from_construction_and_takes_the_seeds_prompt_len():
    manager = KVCacheManager("streaming")
    with pytest.raises(RuntimeError, match="reset before bind: attach the manager to a model"):
        manager.reset(10, 1)
    assert manager.storage is None and manager.stats.live_tokens == 0
    born_with = set(vars(manager))
    manager, rope = bound_manager("streaming", start_size=2, recent_size=4)
    with pytest.raises(RuntimeError, match="call reset"):
        manager.reserve(1)
    manager.reset(prompt_length=0, step_tokens=1)
    raw = torch.randn(80, HEADS, DIM)
    for token in range(80):  # evicts and re-bases
        feed(manager, rope, raw, token, 1)
    assert manager.stats.rebases > 0
    assert set(vars(manager)) == born_with  # nothing appeared after construction
    manager, _ = bound_manager("h2o", max_positions=1000, hh_ratio=0.1, recent_size=8,
                               prompt_len=200)
    manager.reset()  # the budget comes from prompt_len: 10 % of 200 heavy hitters + 8 recent
    assert manager.storage.capacity == 28
    manager.reset(prompt_length=100, step_tokens=1)  # a caller that knows says so
    assert manager.storage.capacity == 18
    with pytest.raises(ValueError, match="prompt_len must be a whole number >= 0, got -1"):
        KVCacheManager("h2o", prompt_len=-1)


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

    manager, rope = bound_manager("streaming", start_size=2, recent_size=4, pos_shift=True)
    manager.reset(prompt_length=0, step_tokens=1)
    for i in range(20):
        feed(manager, rope, raw, i, 1)
    log = capsys.readouterr().err.splitlines()
    rebases = [line for line in log if line.startswith("[cache] rebase")]
    assert len(rebases) == 20 - 6 == manager.stats.rebases  # one per eviction, every step
    assert set(rebases) == {"[cache] rebase strategy=streaming positions shifted by -1..0, "
                            "next position 6 -> 5"}  # 5 kept, the new token at 5

    manager, rope = bound_manager("none")
    manager.reset(prompt_length=3, step_tokens=1)
    feed(manager, rope, raw, 0, 3)
    manager.record_reprefill(0.25)
    assert "reprefill strategy=none 3 tokens prefilled again in 250 ms" in capsys.readouterr().err


# -- the custom (K, V) protocol --------------------------------------------------


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


@pytest.mark.parametrize("attended, hit_rate", [("first", 1.0), ("newest", 0.5)])
def test_attention_hit_rate_is_the_attention_kept_through_evictions(attended, hit_rate):
    """H2O keeping one heavy hitter and the newest token: when every query attends to the
    first token (kept as the heavy hitter), evictions lose no attention; when every query
    attends to the token just written, each eviction takes the one of the two cached tokens
    that drew attention, half of it."""
    manager, rope = bound_manager("h2o", hh_ratio=0.1, recent_size=1)
    manager.reset(prompt_length=10, step_tokens=1)  # 1 heavy hitter + 1 recent
    assert manager.stats.attention_hit_rate is None  # nothing evicted yet

    def attention(layer, end, count):
        slot = 0 if attended == "first" else manager.step_slots[layer, :, -1]
        weights = torch.zeros(HEADS, count, end)
        weights[torch.arange(HEADS), :, slot] = 1.0
        return weights

    raw = torch.randn(20, HEADS, DIM)
    for token in range(20):
        feed(manager, rope, raw, token, 1, attention)
    assert manager.stats.evicted_tokens == 18
    stats = manager.stats.as_dict()
    assert stats["attention_hit_rate"] == pytest.approx(hit_rate)
    # The recent window is the token being written, which has drawn nothing yet: the one
    # cached token kept beside it is the heavy hitter.
    kept_by = {"heavy_hitters": hit_rate, "recent": 0.0}
    assert stats["attention_hit_rate_by_role"] == pytest.approx(kept_by)


def test_hit_rate_is_split_by_the_role_of_the_kept_tokens():
    """Hybrid keeping 1 sink, 1 heavy hitter and 2 recent tokens, one token a step. Every
    query gives token 0 (the sink) 0.5, token 1 0.3 and itself 0.2: token 1 becomes the heavy
    hitter and each step from the 5th evicts token t-2, which holds 0.2. At the eviction of
    step t the sink holds 0.5 t, the heavy hitter 0.3 (t - 1), the recent token t-1 0.2."""
    manager, rope = bound_manager("hybrid", start_size=1, hh_ratio=0.1, recent_size=2)
    manager.reset(prompt_length=10, step_tokens=1)  # 1 + 1 + 2 tokens

    def attention(layer, end, count):
        ids = token_ids(manager.storage.values[layer, :, :end])
        query = int(token_ids(manager.storage.values[layer, 0, manager.step_slots[layer, 0]]))
        weights = torch.where(ids == 0, 0.5, torch.where(ids == 1, 0.3, 0.0))
        weights = torch.where(ids == query, torch.maximum(weights, torch.tensor(0.2)), weights)
        live = manager.storage.positions[layer, :, :end] >= 0
        return (weights * live).unsqueeze(1).expand(HEADS, count, end)

    raw = torch.randn(10, HEADS, DIM)
    for token in range(10):
        feed(manager, rope, raw, token, 1, attention)
    steps = range(4, 10)
    sinks = sum(0.5 * t for t in steps)
    heavy = sum(0.3 * (t - 1) for t in steps)
    recent = evicted = 0.2 * len(steps)
    total = sinks + heavy + recent + evicted
    stats = manager.stats.as_dict()
    assert stats["evicted_tokens"] == len(steps)
    assert stats["attention_hit_rate"] == pytest.approx(1 - evicted / total)
    by_role = stats["attention_hit_rate_by_role"]
    assert list(by_role) == ["sinks", "heavy_hitters", "recent"]
    assert by_role["sinks"] == pytest.approx(sinks / total)
    assert by_role["heavy_hitters"] == pytest.approx(heavy / total)
    assert by_role["recent"] == pytest.approx(recent / total)


def test_strategies_that_do_not_track_attention_give_no_hit_rate():
    manager, rope = bound_manager("streaming", start_size=1, recent_size=2)
    manager.reset(prompt_length=0, step_tokens=1)
    raw = torch.randn(10, HEADS, DIM)
    for token in range(10):
        feed(manager, rope, raw, token, 1)
    assert manager.stats.evicted_tokens > 0 and manager.stats.attention_hit_rate is None
    assert manager.stats.as_dict()["attention_hit_rate_by_role"] is None


# -- StreamingLLM's position shift -------------------------------------------------


def one_layer_model():
    """One layer: a cached key and value depend on their token and position alone, so a cache
    is exactly a fresh forward of the tokens it keeps."""
    return small_model(layers=1, positions=64, seed=5)


@pytest.mark.parametrize("pos_shift", [True, False])
@torch.no_grad()
def test_pos_shift_places_kept_tokens_at_0_to_n_as_a_fresh_forward_does(pos_shift):
    """The paper's assignment: each step, the sinks and the recent window sit at 0..n-1 and
    the new token at n, so the logits are a fresh forward of the kept tokens at those
    positions. True positions (the default) keep the gap after the sinks: other logits."""
    model = one_layer_model()
    start, recent = 3, 9
    cache = model.new_cache("streaming", start_size=start, recent_size=recent,
                            pos_shift=pos_shift)
    cache.reset(prompt_length=0, step_tokens=1)
    tokens = torch.randint(0, 200, (100,), generator=torch.Generator().manual_seed(6))
    differences = []
    for written in range(len(tokens)):
        logits = model(tokens[written : written + 1][None], cache=cache)[0, -1]
        kept = sorted(set(range(min(start, written + 1))) | set(range(written + 1)[-recent:]))
        positions = cache.storage.positions[0, 0]
        live = positions[positions >= 0].sort().values
        fresh = model(tokens[kept][None])[0, -1]  # positions 0..len(kept)-1
        differences.append(float((logits - fresh).abs().max()))
        if pos_shift:
            assert live.tolist() == list(range(len(kept)))
    assert cache.stats.evicted_tokens == len(tokens) - start - recent
    if pos_shift:
        assert max(differences) < 1e-5
        assert cache.stats.rebases == cache.stats.evicted_tokens  # one per eviction
    else:
        assert max(differences[start + recent :]) > 1e-3
        assert int(cache.storage.positions.max()) > start + recent  # true distances kept


@torch.no_grad()
def test_pos_shift_packs_positions_on_a_deep_model_with_frames_written_out_of_order():
    """Several layers and frames reserved whole, their tokens written in a scrambled order
    (as diagonal decoding writes them): after each reservation the live positions are
    0..n-1 and the reservation follows them, never leaving the trained range."""
    model = small_model()
    frame = 17
    cache = model.new_cache("streaming", start_size=4, recent_size=3 * frame, pos_shift=True)
    cache.reset(prompt_length=0, step_tokens=frame)
    generator = torch.Generator().manual_seed(7)
    for _ in range(30):
        base = cache.reserve(frame)
        positions = cache.storage.positions[0, 0]
        live = positions[positions >= 0].sort().values
        assert live.tolist() == list(range(base))
        order = torch.randperm(frame, generator=generator)
        for chunk in order.split(5):
            chunk_positions = base + chunk.sort().values
            tokens = torch.randint(0, 200, (1, len(chunk)), generator=generator)
            model(tokens, chunk_positions, cache=cache)
        assert cache.storage.num_live <= 4 + 3 * frame
    assert cache.stats.evicted_tokens > 0 and int(positions.max()) < 4 + 3 * frame


def test_pos_shift_needs_a_recent_window_of_a_whole_reservation():
    manager, _ = bound_manager("streaming", start_size=4, recent_size=8, pos_shift=True)
    with pytest.raises(ValueError, match="fewer than one step of 12 tokens"):
        manager.reset(prompt_length=0, step_tokens=4, reserve_tokens=12)


# -- H2O against the reference's rule ----------------------------------------------


def reference_h2o_visible(raw, prompt, total, heavy, recent):
    """The rule of H2O's reference code (h2o_hf), written out on token ids: the prompt is
    one causal pass, then one token a step; after every pass the attention each key
    received is added to its score and, once more than ``heavy + recent`` tokens are held,
    the ``recent`` newest stay with the ``heavy`` best-scored of the others (the evicted
    ones' scores zeroed, so they never come back). ``raw[layer, head, query, key]`` are
    positive weights, normalised over the keys a query sees. Returns, per pass, the ids
    each query of each (layer, head) saw: ``[pass][layer][head][query] -> list``."""
    layers, heads = raw.shape[:2]
    held = [[[] for _ in range(heads)] for _ in range(layers)]
    score = torch.zeros(layers, heads, total, dtype=torch.float64)
    passes = [list(range(prompt))] + [[token] for token in range(prompt, total)]
    seen_by_pass = []
    for queries in passes:
        seen_by_pass.append([[None] * heads for _ in range(layers)])
        for layer in range(layers):
            for head in range(heads):
                keys = held[layer][head] + queries
                seen = []
                for query in queries:
                    visible = [key for key in keys if key <= query]
                    weights = raw[layer, head, query, visible]
                    score[layer, head, visible] += weights / weights.sum()
                    seen.append(sorted(visible))
                seen_by_pass[-1][layer][head] = seen
                if len(keys) > heavy + recent:
                    newest = sorted(keys)[-recent:]
                    others = [key for key in keys if key not in newest]
                    ranked = sorted(others, key=lambda key: -float(score[layer, head, key]))
                    keys = ranked[:heavy] + newest
                held[layer][head] = sorted(keys)
    return seen_by_pass


def test_h2o_attends_to_the_tokens_the_reference_rule_keeps():
    """Our H2O evicts before a step, from the scores up to the step before; the reference
    evicts after a step, from the same scores, keeping one recent token fewer besides the
    token about to come. Every query of every step then sees the same keys, per layer and
    head: ours with ``recent_size`` R is the reference with a recent budget of R - 1. The
    weights favour a few tokens per head, different in every head, so heavy hitters are
    chosen per head and far from the recent window."""
    prompt, total, heavy, recent = 8, 48, 2, 6  # the prompt fills the budget exactly
    manager, rope = bound_manager("h2o", max_positions=128, hh_ratio=heavy / prompt,
                                  recent_size=recent)
    manager.reset(prompt_length=prompt, step_tokens=4)
    assert manager.storage.capacity == heavy + recent
    generator = torch.Generator().manual_seed(8)
    raw = torch.rand(LAYERS, HEADS, total, total, generator=generator, dtype=torch.float64)
    for layer in range(LAYERS):
        for head in range(HEADS):
            favoured = torch.randperm(prompt, generator=generator)[:heavy]
            raw[layer, head, :, favoured] += 2.0
    expected = reference_h2o_visible(raw, prompt, total, heavy, recent - 1)
    ours = []

    def attention(layer, end, count):
        _, _, mask = manager.read(layer, manager.step_positions)
        ids = token_ids(manager.storage.values[layer, :, :end])  # [heads, slots]
        weights = torch.zeros(HEADS, count, end)
        if layer == 0:
            ours.append([[None] * HEADS for _ in range(LAYERS)])
        for head in range(HEADS):
            slots = manager.step_slots[layer, head]
            queries = token_ids(manager.storage.values[layer, head, slots])
            hidden = mask.hidden[head] if mask is not None else torch.zeros(count, end, dtype=bool)
            seen = []
            for row, query in enumerate(queries.tolist()):
                visible = (~hidden[row]).nonzero().flatten()
                keys = ids[head, visible]
                row_weights = raw[layer, head, query, keys]
                weights[head, row, visible] = (row_weights / row_weights.sum()).float()
                seen.append(sorted(keys.tolist()))
            ours[-1][layer][head] = seen
        return weights

    raw_keys = torch.randn(total, HEADS, DIM)
    feed(manager, rope, raw_keys, 0, 4, attention)
    feed(manager, rope, raw_keys, 4, 4, attention)
    ours = [[[a + b for a, b in zip(first, second, strict=True)]
             for first, second in zip(*ours, strict=True)]]  # the prompt's two chunks as one
    for token in range(prompt, total):
        feed(manager, rope, raw_keys, token, 1, attention)
    assert ours == expected
    assert manager.stats.evicted_tokens == total - heavy - recent
    last = [[set(expected[-1][layer][head][0]) - set(range(total - recent, total))
             for head in range(HEADS)] for layer in range(LAYERS)]
    assert all(len(kept) == heavy and max(kept) < prompt for row in last for kept in row)
    assert len({frozenset(kept) for row in last for kept in row}) > 1  # chosen per head


@pytest.mark.parametrize("strategy, params", [
    ("streaming", {"start_size": 2, "recent_size": 8}),
    ("h2o", {"hh_ratio": 0.2, "recent_size": 6}),
])
def test_a_fork_goes_on_as_the_original_would_without_touching_it(strategy, params):
    """What action guidance runs its second branch on: the fork's writes, evictions and
    attention scores leave the original as it was, and the same steps give both the same."""
    manager, rope = bound_manager(strategy, max_positions=512, **params)
    manager.reset(prompt_length=20, step_tokens=3)
    raw = torch.randn(60, HEADS, DIM, generator=torch.Generator().manual_seed(0))

    def play(on, first, last, seed):
        generator = torch.Generator().manual_seed(seed)

        def attention(layer, end, count):
            return torch.rand(HEADS, count, end, generator=generator)

        for token in range(first, last, 3):
            feed(on, rope, raw, token, 3, attention if on.tracks_attention else None)

    def state(of):
        live = [live_tokens(of, layer, head) for layer in range(LAYERS) for head in range(HEADS)]
        return live, of.next_position, of.stats.as_dict(), of.storage.keys.clone()

    play(manager, 0, 30, seed=1)
    before = state(manager)
    fork = manager.fork()
    play(fork, 30, 60, seed=2)
    after = state(manager)
    assert after[:3] == before[:3] and torch.equal(after[3], before[3])
    assert fork.stats.as_dict()["evicted_tokens"] > before[2]["evicted_tokens"]
    play(manager, 30, 60, seed=2)
    mine, theirs = state(manager), state(fork)
    assert mine[:3] == theirs[:3] and torch.equal(mine[3], theirs[3])
