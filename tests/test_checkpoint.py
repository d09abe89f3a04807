"""Shipped configs against the published numbers and key layout; loading checkpoints safely."""

import pathlib

import pytest
import safetensors.torch
import torch
import yaml

from mineworld.checkpoint import (
    CheckpointError,
    check_state_dict,
    load_transformer,
    read_state_dict,
    save_transformer,
    split_prefix,
)
from mineworld.config import ModelConfig, load_config, preset_path
from mineworld.model import Transformer

# The released configurations: layers, hidden, MLP, heads, kv heads, context frames, positions.
PUBLISHED = {
    "300M_16f": (20, 1024, 4096, 16, 4, 16, 5552),
    "700M_16f": (20, 2048, 4096, 32, 4, 16, 5552),
    "700M_32f": (20, 2048, 4096, 32, 4, 32, 11104),
    "1200M_16f": (20, 2048, 8192, 32, 4, 16, 5552),
    "1200M_32f": (20, 2048, 8192, 32, 4, 32, 11104),
}
VOCAB, HEAD_DIM = 8262, 64

TINY = ModelConfig(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=256,
    image_rows=2,
    image_cols=3,
    codebook_size=200,
)


def published_shapes(layers, hidden, mlp, heads, kv_heads):
    """LlamaForCausalLM's state dict layout, written out from the numbers alone."""
    shapes = {
        "model.embed_tokens.weight": (VOCAB, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (VOCAB, hidden),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (heads * HEAD_DIM, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * HEAD_DIM, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * HEAD_DIM, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * HEAD_DIM),
            p + "mlp.gate_proj.weight": (mlp, hidden),
            p + "mlp.up_proj.weight": (mlp, hidden),
            p + "mlp.down_proj.weight": (hidden, mlp),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    return shapes


@pytest.mark.parametrize("name", PUBLISHED)
def test_shipped_config_has_the_published_numbers(name):
    layers, hidden, mlp, heads, kv_heads, frames, positions = PUBLISHED[name]
    config = load_config(preset_path(name))
    assert (
        config.num_hidden_layers,
        config.hidden_size,
        config.intermediate_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.max_position_embeddings,
    ) == (layers, hidden, mlp, heads, kv_heads, positions)
    assert (config.vocab_size, config.rms_norm_eps, config.rope_theta) == (VOCAB, 1e-5, 10000.0)
    assert config.context_frames == frames
    assert config.head_dim == HEAD_DIM
    kv_bytes_per_token = (
        2
        * config.num_hidden_layers
        * config.num_key_value_heads
        * config.head_dim
        * torch.finfo(torch.float16).bits
        // 8
    )
    assert kv_bytes_per_token == 20_480
    params = preset_path(name).read_text()
    assert "checkpoints/vae/config.json" in params and "checkpoints/vae/vae.ckpt" in params


@pytest.mark.parametrize("name", PUBLISHED)
def test_real_shape_model_matches_the_published_key_layout(name):
    layers, hidden, mlp, heads, kv_heads, _, _ = PUBLISHED[name]
    with torch.device("meta"):
        model = Transformer(load_config(preset_path(name)))
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    expected = published_shapes(layers, hidden, mlp, heads, kv_heads)
    assert sorted(ours) == sorted(expected)
    assert ours == expected
    check_state_dict(model, expected, name)
    # The names promise the size: within 10% of the advertised parameter count.
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(millions / int(name.split("M")[0]) - 1) < 0.1


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="300M_16f"):
        preset_path("9B_1f")


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    model = Transformer(TINY).eval()
    with torch.no_grad():  # non-trivial norms, so weights loaded into the wrong slot would show
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if "norm" in name else 0.02))
    return model


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, TINY.vocab_size, (1, 24), generator=torch.Generator().manual_seed(1))


def mineworld_pickle(model, path, **edits):
    """The reference repository's layout: transformer and tokenizer in one state dict."""
    state = {f"transformer.{k}": v.clone() for k, v in model.state_dict().items()}
    state["tokenizer.model.encoder.conv_in.weight"] = torch.randn(4, 3, 3, 3)
    state.update(edits)
    torch.save({"state_dict": state, "epoch": 7}, path)
    return path


def save(model, tmp_path):
    path = tmp_path / "weights.safetensors"
    save_transformer(model, path)
    return path


@torch.no_grad()
@pytest.mark.parametrize("fmt", ["mineworld.ckpt", "ours.safetensors"])
def test_round_trip_gives_identical_logits(tmp_path, source, tokens, fmt):
    path = tmp_path / fmt
    if fmt.endswith(".safetensors"):
        save_transformer(source, path)
    else:
        mineworld_pickle(source, path)
    loaded = load_transformer(TINY, path)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    for name, buffer in source.rope.named_buffers():  # built on meta, then made real
        assert torch.equal(getattr(loaded.rope, name), buffer), name
    logits = loaded(tokens)
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, source(tokens))


@torch.no_grad()
def test_half_precision_keeps_the_rotary_tables_precise(tmp_path, source, tokens):
    loaded = load_transformer(TINY, save(source, tmp_path), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert loaded.rope.cos.dtype == torch.float32 and loaded.rope.sin.dtype == torch.float32
    logits = loaded(tokens).float()
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits, source(tokens), atol=0.1)


@torch.no_grad()
def test_bare_llama_state_dict_loads(tmp_path, source, tokens):
    # LlamaForCausalLM's own key names (test_model.py checks they are ours), no prefix.
    torch.save(source.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = load_transformer(TINY, tmp_path / "pytorch_model.bin")
    assert torch.equal(loaded(tokens), source(tokens))


def test_read_state_dict_unwraps_and_splits(tmp_path, source):
    path = mineworld_pickle(source, tmp_path / "full.ckpt")
    state = read_state_dict(path)
    assert len(split_prefix(state, "tokenizer.model")) == 1
    transformer = split_prefix(state, "transformer.")
    assert transformer.keys() == source.state_dict().keys()
    torch.save({"module": {"a.weight": torch.ones(2)}}, tmp_path / "ddp.pt")
    assert read_state_dict(tmp_path / "ddp.pt").keys() == {"a.weight"}


def test_mismatches_are_all_named_in_one_message(tmp_path, source):
    bad_shape = torch.zeros(8, TINY.hidden_size)
    path = mineworld_pickle(
        source,
        tmp_path / "bad.ckpt",
        **{
            "transformer.model.extra.weight": torch.zeros(3),
            "transformer.model.layers.1.self_attn.k_proj.weight": bad_shape,
        },
    )
    state = torch.load(path, weights_only=True)
    del state["state_dict"]["transformer.model.layers.0.mlp.up_proj.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError) as caught:
        load_transformer(TINY, path)
    message = str(caught.value)
    assert str(path) in message
    assert "missing keys (1): model.layers.0.mlp.up_proj.weight" in message
    assert "unexpected keys (1): model.extra.weight" in message
    assert "model.layers.1.self_attn.k_proj.weight (expected [16, 64], got [8, 64])" in message


def test_long_listings_are_cut_at_ten(source):
    with pytest.raises(CheckpointError, match=r"missing keys \(21\): .* and 11 more") as caught:
        check_state_dict(source, {}, "empty")
    assert "rope" not in str(caught.value)  # non-persistent buffers are not expected


def test_file_without_transformer_keys_is_refused(tmp_path):
    torch.save({"state_dict": {"tokenizer.model.x": torch.ones(1)}}, tmp_path / "vae.ckpt")
    with pytest.raises(CheckpointError, match="no transformer weights"):
        load_transformer(TINY, tmp_path / "vae.ckpt")


def _write(path: pathlib.Path, kind: str) -> pathlib.Path:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(bytes((i * 37 + 11) % 256 for i in range(512)))
    elif kind == "garbage after a pickle header":
        path.write_bytes(b"\x80\x02" + bytes((i * 37 + 11) % 256 for i in range(512)))
    elif kind == "text":
        path.write_text("model:\n  params: {}\n")
    elif kind == "truncated zip":
        torch.save({"w": torch.ones(64)}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "not tensors":
        torch.save({"w": [1, 2, 3], "b": torch.ones(1)}, path)
    elif kind == "a bare tensor":
        torch.save(torch.ones(3), path)
    elif kind == "empty dict":
        torch.save({}, path)
    return path


@pytest.mark.parametrize(
    "kind, complaint",
    [
        ("empty", "empty"),
        ("garbage", "not a PyTorch checkpoint"),
        ("garbage after a pickle header", "not a"),
        ("text", "not a PyTorch checkpoint"),
        ("truncated zip", "corrupt or truncated"),
        ("not tensors", r"not tensors: 'w' \(list\)"),
        ("a bare tensor", "holds a Tensor, not a dict of tensors"),
        ("empty dict", "it is empty"),
    ],
)
def test_unusable_files_are_named(tmp_path, kind, complaint):
    path = _write(tmp_path / "weights.pt", kind)
    with pytest.raises(CheckpointError, match=complaint) as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value)


def test_missing_file_directory_and_bad_safetensors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="not a file"):
        read_state_dict(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(CheckpointError, match="bad.safetensors: not a safetensors file"):
        read_state_dict(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="safetensors"):
        save_transformer(Transformer(TINY), tmp_path / "weights.pt")


class _TouchesOnUnpickle:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # stands in for os.system: a visible side effect when unpickled
        return pathlib.Path.touch, (self.marker,)


@pytest.mark.parametrize("zipped", [True, False])
def test_pickle_that_runs_code_is_refused(tmp_path, source, zipped):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    state = {f"transformer.{k}": v for k, v in source.state_dict().items()}
    state["transformer.payload"] = _TouchesOnUnpickle(marker)
    torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(CheckpointError, match="contains code or objects other than tensors"):
        load_transformer(TINY, path)
    assert not marker.exists()


def test_saved_safetensors_carry_the_transformer_prefix(tmp_path, source):
    path = save(source, tmp_path)
    from_file = safetensors.torch.load_file(path)
    assert all(key.startswith("transformer.") for key in from_file)
    assert read_state_dict(path).keys() == from_file.keys()


def _config_text(edit) -> str:
    document = yaml.safe_load(preset_path("300M_16f").read_text())
    edit(document, document["model"]["params"]["transformer_config"]["params"])
    return yaml.safe_dump(document)


@pytest.mark.parametrize(
    "text, field",
    [
        (_config_text(lambda d, p: p.pop("hidden_size")), "hidden_size"),
        (_config_text(lambda d, p: p.update(num_hidden_layers=0)), "num_hidden_layers"),
        (_config_text(lambda d, p: p.update(hidden_size=-1024)), "hidden_size"),
        (_config_text(lambda d, p: p.update(num_attention_heads=15)), "num_attention_heads"),
        (_config_text(lambda d, p: p.update(vocab_size="many")), "vocab_size"),
        (_config_text(lambda d, p: p.update(hidden_act="gelu")), "hidden_act"),
        (
            _config_text(lambda d, p: d["model"]["params"].pop("transformer_config")),
            "transformer_config",
        ),
        ("model: [unclosed\n", "cannot read config"),
        ("- just\n- a list\n", "transformer_config"),
    ],
)
def test_config_errors_name_the_file_and_field(tmp_path, text, field):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=field) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
