"""Our VQGAN against diffusers' VQModel (the reference the published weights were saved from).

Small configs with random, perturbed weights keep this fast on CPU; the published 384x224 shape
is checked on the meta device, where nothing is allocated.
"""

import json
import os

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import VQModel

from mineworld.tokenizers.base import float_to_uint8, uint8_to_float
from mineworld.tokenizers.vqgan import (
    VQGAN,
    VQGANConfig,
    VQGANTokenizer,
    load_vqgan_state_dict,
)

ENC, DEC = "DownEncoderBlock2D", "UpDecoderBlock2D"


def _config(channels, **overrides):
    n = len(channels)
    cfg = dict(block_out_channels=channels, down_block_types=[ENC] * n, up_block_types=[DEC] * n,
               layers_per_block=1, latent_channels=8, num_vq_embeddings=64, norm_num_groups=8,
               lookup_from_codebook=True)  # lets diffusers' decode() take code ids
    return cfg | overrides


CONFIGS = {
    # vq_embed_dim != latent_channels exercises the shapes of quant_conv / post_quant_conv.
    "two_blocks": _config([32, 64], vq_embed_dim=4),
    "three_blocks": _config([16, 32, 32], layers_per_block=2, latent_channels=4),
    # SpatialNorm hard-codes 32 groups, hence channels that are multiples of 32.
    "spatial": _config([32, 64], norm_type="spatial"),
    # The encoder's and decoder's last activation stay SiLU whatever act_fn says.
    "no_attention_gelu": _config([16, 32], mid_block_add_attention=False, act_fn="gelu"),
}
PUBLISHED = {  # aMUSEd-style VQGAN: 16x downsampling, 8192 codes of dimension 64
    "_class_name": "VQModel", "_diffusers_version": "0.25.0", "act_fn": "silu",
    "block_out_channels": [128, 256, 256, 512, 768], "down_block_types": [ENC] * 5,
    "up_block_types": [DEC] * 5, "in_channels": 3, "out_channels": 3, "latent_channels": 64,
    "layers_per_block": 2, "lookup_from_codebook": True, "mid_block_add_attention": False,
    "norm_num_groups": 32, "norm_type": "group", "num_vq_embeddings": 8192,
    "vq_embed_dim": None, "sample_size": 32, "scaling_factor": 0.18215, "force_upcast": False,
}
H, W = 16, 32


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request):
    """(config dict, diffusers model, our model with its weights, images, diffusers latents)."""
    cfg = CONFIGS[request.param]
    torch.manual_seed(0)
    reference = VQModel(**cfg).eval()
    with torch.no_grad():
        # Move every parameter off its default init (GroupNorm weights off 1, biases off 0).
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = VQGAN(VQGANConfig.from_dict(cfg)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    images = torch.rand(2, 3, H, W) * 2 - 1
    with torch.no_grad():
        latents = reference.encode(images).latents
    return cfg, reference, ours, images, latents


def test_state_dict_keys_and_shapes_match(pair):
    _, reference, ours, _, _ = pair
    expected = [(k, tuple(v.shape)) for k, v in reference.state_dict().items()]
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == expected


def test_encode_ids_match(pair):
    _, reference, ours, images, latents = pair
    with torch.no_grad():
        # sane_index_shape=False in VQModel: indices come back flat, in (B, h, w) order.
        _, _, (_, _, expected) = reference.quantize(latents)
        assert torch.allclose(ours.quant_conv(ours.encoder(images)), latents, atol=1e-5)
        ids = ours.encode_ids(images)
    f = ours.config.downsample_factor
    assert ids.shape == (2, H // f, W // f) and ids.dtype == torch.long
    assert torch.equal(ids.flatten(), expected)
    assert ids.unique().numel() > 8  # the comparison is not between constant grids


def test_decode_ids_match(pair):
    _, reference, ours, images, latents = pair
    with torch.no_grad():
        ids = ours.encode_ids(images)
        shape = (*ids.shape, ours.config.embed_dim)
        expected = reference.decode(ids.flatten(), force_not_quantize=True, shape=shape).sample
        decoded = ours.decode_ids(ids)
        # Default decode() quantises the latents itself: the full encode/decode path.
        roundtrip = reference.decode(latents).sample
    assert decoded.shape == images.shape
    assert torch.allclose(decoded, expected, atol=1e-4)
    assert torch.allclose(decoded, roundtrip, atol=1e-4)


def _small_model():
    torch.manual_seed(1)
    return VQGAN(VQGANConfig.from_dict(CONFIGS["two_blocks"])).eval()


def test_weight_mismatch_error_names_every_problem():
    model = _small_model()
    state = dict(model.state_dict())
    del state["decoder.conv_out.bias"]
    state["encoder.extra.weight"] = torch.zeros(1)
    state["quant_conv.weight"] = torch.zeros(5, 8, 1, 1)
    with pytest.raises(ValueError) as err:
        model.load_weights(state)
    message = str(err.value)
    assert "missing keys (1): decoder.conv_out.bias" in message
    assert "unexpected keys (1): encoder.extra.weight" in message
    assert "quant_conv.weight (expected [4, 8, 1, 1], got [5, 8, 1, 1])" in message

    with pytest.raises(ValueError, match=r"missing keys \(125\): .* and 115 more"):
        model.load_weights({})


@pytest.mark.parametrize("layout", ["bare.safetensors", "bare.pt", "mineworld.ckpt", "vae.ckpt"])
def test_from_pretrained_loads_every_layout(tmp_path, layout):
    source = _small_model()
    state = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / layout
    if layout == "bare.safetensors":
        safetensors.torch.save_file(state, path)
    elif layout == "bare.pt":
        torch.save(state, path)
    elif layout == "mineworld.ckpt":  # tokenizer and transformer in one checkpoint
        full = {f"tokenizer.model.{k}": v for k, v in state.items()}
        full["transformer.model.embed_tokens.weight"] = torch.zeros(8, 4)
        torch.save({"state_dict": full, "epoch": 3}, path)
    else:  # vae.ckpt: saved from a wrapper module that holds the VQModel as `model`
        torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({"_class_name": "VQModel", **CONFIGS["two_blocks"]}))

    factor = 2 ** (len(CONFIGS["two_blocks"]["block_out_channels"]) - 1)
    tokenizer = VQGANTokenizer.from_pretrained(config_path, path, grid=(H // factor, W // factor))
    assert tokenizer.frame_size == (W, H)
    loaded = tokenizer.model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


class _RunsShellOnUnpickle:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _RunsShellOnUnpickle(marker)}, path)
    assert b"system" in path.read_bytes()  # the payload really is in the file
    with pytest.raises(ValueError, match="contains code or objects other than tensors"):
        load_vqgan_state_dict(path)
    assert not marker.exists()


def test_tokenizer_round_trip_shapes_and_dtypes():
    model = _small_model()
    tokenizer = VQGANTokenizer(model, frame_size=(W, H))
    assert tokenizer.grid == (8, 16) and tokenizer.tokens_per_frame == 128
    assert tokenizer.codebook_size == 64
    frames = np.random.default_rng(0).integers(0, 256, (5, H, W, 3), dtype=np.uint8)

    ids = tokenizer.encode(frames, batch_size=2)
    assert ids.dtype == torch.long and ids.shape == (5, 8, 16)
    with torch.no_grad():
        assert torch.equal(ids, model.encode_ids(uint8_to_float(frames)))
    decoded = tokenizer.decode(ids, batch_size=2)
    assert decoded.dtype == np.uint8 and decoded.shape == (5, H, W, 3)
    with torch.no_grad():
        assert np.array_equal(decoded, float_to_uint8(model.decode_ids(ids)))

    big = np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2)  # 2x size, resized on the way in
    assert torch.equal(tokenizer.encode(big), ids)
    assert tokenizer.encode(frames[:0]).shape == (0, 8, 16)
    assert tokenizer.decode(ids[:0]).shape == (0, H, W, 3)
    with pytest.raises(ValueError, match="ids must lie in"):
        tokenizer.decode(torch.full((1, 8, 16), 64))


def test_pixel_conversions():
    levels = np.arange(256, dtype=np.uint8)
    frames = np.stack([levels] * 3, axis=-1)[None, None]  # [1, 1, 256, 3]
    x = uint8_to_float(frames)
    assert x.shape == (1, 3, 1, 256) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    assert np.array_equal(float_to_uint8(x), frames)
    # Rounded to the nearest level and clamped, not truncated.
    assert float_to_uint8(torch.tensor([-2.0, 2.0, 11 / 127.5 - 1 - 0.003]).view(1, 3, 1, 1)
                          ).ravel().tolist() == [0, 255, 11]


def test_config_parsing(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(PUBLISHED))
    cfg = VQGANConfig.from_json(path)
    assert cfg.block_out_channels == (128, 256, 256, 512, 768)
    assert cfg.embed_dim == 64 and cfg.downsample_factor == 16

    bad_block = {**CONFIGS["two_blocks"], "up_block_types": [DEC, "AttnUpDecoderBlock2D"]}
    with pytest.raises(ValueError, match="up_block_types.*'AttnUpDecoderBlock2D'"):
        VQGANConfig.from_dict(bad_block)
    with pytest.raises(ValueError, match="unknown VQModel config field.*: commitment_cost"):
        VQGANConfig.from_dict({**CONFIGS["two_blocks"], "commitment_cost": 0.25})
    with pytest.raises(ValueError, match="norm_type"):
        VQGANConfig.from_dict({**CONFIGS["two_blocks"], "norm_type": "ada_group"})
    with pytest.raises(ValueError, match="spatial"):
        VQGANConfig.from_dict({**CONFIGS["spatial"], "vq_embed_dim": 4})


def test_published_shape_gives_14_by_24_grid():
    with torch.device("meta"):
        ours = VQGAN(VQGANConfig.from_dict(PUBLISHED))
        reference = VQModel.from_config(PUBLISHED)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()]
    assert ours.quantize.embedding.weight.shape == (8192, 64)
    # Meta tensors carry shapes through the whole network without computing anything.
    ids = ours.encode_ids(torch.empty(1, 3, 224, 384, device="meta"))
    assert ids.shape == (1, 14, 24) and ids.dtype == torch.long
    assert ours.decode_ids(ids).shape == (1, 3, 224, 384)
    tokenizer = VQGANTokenizer(ours, frame_size=(384, 224), device="meta")
    assert tokenizer.grid == (14, 24) and tokenizer.tokens_per_frame == 336
