"""Our decoder against transformers' LlamaForCausalLM with the same weights."""

import pytest
import torch

from mineworld.config import ModelConfig
from mineworld.model import Transformer, side_by_side

transformers = pytest.importorskip("transformers")

TINY = ModelConfig(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=3,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=512,
    image_rows=2,
    image_cols=3,
    codebook_size=200,
)


def reference_llama(config: ModelConfig):
    hf_config = transformers.LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    return transformers.LlamaForCausalLM(hf_config).eval()


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ours = Transformer(TINY).eval()
    with torch.no_grad():  # non-trivial norms, so a wrong norm would show
        for name, p in ours.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if "norm" in name else 0.02))
    reference = reference_llama(TINY)
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    return ours, reference


@torch.no_grad()
def test_full_forward_matches_llama(models):
    ours, reference = models
    tokens = torch.randint(0, TINY.vocab_size, (1, 97))
    expected = reference(tokens).logits
    assert (ours(tokens) - expected).abs().max() < 1e-4


@torch.no_grad()
def test_prefill_and_incremental_steps_match_llama(models):
    ours, reference = models
    tokens = torch.randint(0, TINY.vocab_size, (1, 60))
    expected = reference(tokens).logits
    cache = ours.new_cache("none")
    cache.reset(prompt_length=40, step_tokens=40)
    got = [ours(tokens[:, :40], torch.arange(40), cache=cache)]
    for t in range(40, 60):  # 20 incremental steps
        got.append(ours(tokens[:, t : t + 1], torch.tensor([t]), cache=cache))
    assert (torch.cat(got, 1) - expected).abs().max() < 1e-4


@torch.no_grad()
def test_out_of_order_chunks_match_causal_forward(models):
    """Tokens written in any order see exactly the keys at or before their position."""
    ours, _ = models
    tokens = torch.randint(0, TINY.vocab_size, (1, 30))
    expected = ours(tokens)
    cache = ours.new_cache("none")
    cache.reset(prompt_length=30, step_tokens=30)
    order = [torch.arange(0, 10), torch.tensor([10, 20, 11, 21]), torch.tensor([12, 22])]
    order += [torch.tensor([p]) for p in [13, 14, 15, 16, 17, 18, 19]]
    order += [torch.arange(23, 30)]
    # A token is exact when every earlier position was written, and exact, before it
    # (or in its chunk); the rest saw a partial context, as diagonal decoding intends.
    exact: set[int] = set()
    checked = 0
    for chunk in order:
        logits = ours(tokens[:, chunk], chunk, cache=cache)
        now_exact = {p for p in chunk.tolist() if set(range(p)) <= exact | set(chunk.tolist())}
        now_exact = {p for p in now_exact if all(q in exact or q in now_exact for q in range(p))}
        for i, p in enumerate(chunk.tolist()):
            if p in now_exact:
                assert (logits[0, i] - expected[0, p]).abs().max() < 1e-4
                checked += 1
        exact |= now_exact
    assert checked == 20  # 0..19: positions 20..22 were written before 12..19


@torch.no_grad()
def test_weights_load_from_and_save_as_transformers_names(models):
    """Our q/k/v and gate/up live side by side in one matrix each; state dicts in and out
    of the model still hold transformers' separate linears."""
    ours, reference = models
    expected = reference.state_dict()
    saved = ours.state_dict()
    assert saved.keys() <= expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in saved.items())
    fresh = Transformer(TINY).eval()
    missing, unexpected = fresh.load_state_dict(expected, strict=False)
    assert not missing and all("rotary" in key for key in unexpected)
    tokens = torch.randint(0, TINY.vocab_size, (1, 20))
    assert torch.equal(fresh(tokens), ours(tokens))


def test_side_by_side_weights_start_as_separate_linears_would():
    """The same random draws as nn.Linear layers made in order: a training run from a seed
    starts from the weights it always did."""
    torch.manual_seed(0)
    joined = side_by_side(8, 3, 5)
    torch.manual_seed(0)
    parts = [torch.nn.Linear(8, n, bias=False).weight for n in (3, 5)]
    assert torch.equal(joined, torch.cat(parts).t())


def test_rotary_tables_keep_their_precision_when_the_model_is_cast():
    model = Transformer(TINY).to(torch.bfloat16)
    assert model.rope.cos.dtype == torch.float32 and model.rope.sin.dtype == torch.float32
    raw = torch.randn(2, 5, TINY.head_dim, dtype=torch.float64)
    positions = torch.arange(500, 505)
    half = TINY.head_dim // 2
    inv_freq = 1.0 / TINY.rope_theta ** (torch.arange(0, TINY.head_dim, 2) / TINY.head_dim)
    angles = (positions[:, None] * inv_freq.double()).repeat(1, 2)
    exact = raw * angles.cos() + torch.cat((-raw[..., half:], raw[..., :half]), -1) * angles.sin()
    assert (model.rope(raw.float(), positions) - exact).abs().max() < 1e-5
