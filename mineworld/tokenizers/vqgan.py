"""MineWorld's VQGAN image tokenizer, without a run-time dependency on diffusers.

The published tokenizer weights are a state dict of diffusers' `VQModel` (keys `encoder.*`,
`quant_conv.*`, `quantize.embedding.weight`, `post_quant_conv.*`, `decoder.*`) with a diffusers
`config.json`. `VQGAN` re-implements that architecture so that its `state_dict()` has exactly the
same keys and shapes, and loads those weights with `strict=True`; diffusers is only used by the
tests, as the reference. Frames of 384x224 give a 14x24 grid of ids into an 8192-entry codebook.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mineworld.checkpoint import read_state_dict, split_prefix
from mineworld.tokenizers.base import ImageTokenizer

_ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU,
                "relu": nn.ReLU}
_EPS = 1e-6  # every norm in diffusers' VAE encoder/decoder uses this epsilon


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
    """The fields of a diffusers `VQModel` config.json, with diffusers' defaults."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 3
    sample_size: int = 32
    num_vq_embeddings: int = 256
    norm_num_groups: int = 32
    vq_embed_dim: int | None = None
    scaling_factor: float = 0.18215
    norm_type: str = "group"
    mid_block_add_attention: bool = True
    lookup_from_codebook: bool = False
    force_upcast: bool = False

    def __post_init__(self):
        for name, kind in (("down_block_types", "DownEncoderBlock2D"),
                           ("up_block_types", "UpDecoderBlock2D")):
            for value in getattr(self, name):
                if value != kind:
                    raise ValueError(f"{name}: unsupported block type {value!r} "
                                     f"(only {kind!r} is implemented)")
            if len(getattr(self, name)) != len(self.block_out_channels):
                raise ValueError(f"{name} has {len(getattr(self, name))} entries but "
                                 f"block_out_channels has {len(self.block_out_channels)}")
        if self.norm_type not in ("group", "spatial"):
            raise ValueError(f"norm_type: unsupported value {self.norm_type!r}")
        if self.act_fn not in _ACTIVATIONS:
            raise ValueError(f"act_fn: unsupported value {self.act_fn!r}")
        # diffusers conditions the spatial norms on the codebook vectors through convs sized
        # for latent_channels, so any other vq_embed_dim fails at decode time there.
        if self.norm_type == "spatial" and self.embed_dim != self.latent_channels:
            raise ValueError("norm_type 'spatial' needs vq_embed_dim == latent_channels")

    @property
    def embed_dim(self) -> int:
        return self.latent_channels if self.vq_embed_dim is None else self.vq_embed_dim

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VQGANConfig:
        """Build from a diffusers config dict; keys starting with "_" are metadata and ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if not k.startswith("_") and k not in known)
        if unknown:
            raise ValueError(f"unknown VQModel config field(s): {', '.join(unknown)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> VQGANConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


class SpatialNorm(nn.Module):
    """GroupNorm whose scale and shift come from the codebook vectors (MoVQ-style decoders)."""

    def __init__(self, channels: int, cond_channels: int):
        super().__init__()
        # diffusers fixes 32 groups here, whatever norm_num_groups says.
        self.norm_layer = nn.GroupNorm(32, channels, eps=_EPS)
        self.conv_y = nn.Conv2d(cond_channels, channels, 1)
        self.conv_b = nn.Conv2d(cond_channels, channels, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        cond = F.interpolate(cond, size=x.shape[-2:], mode="nearest")
        return self.norm_layer(x) * self.conv_y(cond) + self.conv_b(cond)


def _norm(channels: int, groups: int, cond_channels: int | None) -> nn.Module:
    return nn.GroupNorm(groups, channels, eps=_EPS) if cond_channels is None \
        else SpatialNorm(channels, cond_channels)


def _apply_norm(norm: nn.Module, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    return norm(x, cond) if isinstance(norm, SpatialNorm) else norm(x)


class ResnetBlock(nn.Module):
    """Pre-norm residual block: (norm, act, conv3x3) twice, 1x1 conv shortcut on width change."""

    def __init__(self, cin: int, cout: int, groups: int, act: str, cond_channels: int | None):
        super().__init__()
        self.norm1 = _norm(cin, groups, cond_channels)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout, groups, cond_channels)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.act = _ACTIVATIONS[act]()
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.act(_apply_norm(self.norm1, x, cond)))
        h = self.conv2(self.act(_apply_norm(self.norm2, h, cond)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """Single-head self-attention over all positions, with a residual connection."""

    def __init__(self, channels: int, groups: int, cond_channels: int | None):
        super().__init__()
        spatial = cond_channels is not None
        self.group_norm = None if spatial else nn.GroupNorm(groups, channels, eps=_EPS)
        self.spatial_norm = SpatialNorm(channels, cond_channels) if spatial else None
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # diffusers' key: to_out.0

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.group_norm(x) if self.spatial_norm is None else self.spatial_norm(x, cond)
        y = y.flatten(2).transpose(1, 2)  # [B, h*w, C]
        q, k, v = (proj(y).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))
        y = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        return x + self.to_out[0](y).transpose(1, 2).reshape(b, c, h, w)


class MidBlock(nn.Module):
    """resnet -> (attention) -> resnet at the lowest resolution."""

    def __init__(self, channels: int, groups: int, act: str, attention: bool,
                 cond_channels: int | None = None):
        super().__init__()
        self.attentions = nn.ModuleList(
            [Attention(channels, groups, cond_channels)] if attention else [])
        self.resnets = nn.ModuleList(
            [ResnetBlock(channels, channels, groups, act, cond_channels) for _ in range(2)])

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self.resnets[0](x, cond)
        for attention in self.attentions:
            x = attention(x, cond)
        return self.resnets[1](x, cond)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pad only right and bottom (the taming-transformers convention diffusers keeps).
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _resnets(cin: int, cout: int, layers: int, groups: int, act: str,
             cond_channels: int | None = None) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups, act, cond_channels)
                          for i in range(layers)])


class DownEncoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, act: str, downsample: bool):
        super().__init__()
        self.resnets = _resnets(cin, cout, layers, groups, act)
        self.downsamplers = nn.ModuleList([Downsample(cout)] if downsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (*self.resnets, *self.downsamplers):
            x = layer(x)
        return x


class UpDecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, act: str, upsample: bool,
                 cond_channels: int | None):
        super().__init__()
        self.resnets = _resnets(cin, cout, layers, groups, act, cond_channels)
        self.upsamplers = nn.ModuleList([Upsample(cout)] if upsample else [])

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cond)
        for upsampler in self.upsamplers:
            x = upsampler(x)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        ch, groups, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [DownEncoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, groups, cfg.act_fn,
                              downsample=i < n - 1) for i in range(n)])
        self.mid_block = MidBlock(ch[-1], groups, cfg.act_fn, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], eps=_EPS)
        self.conv_out = nn.Conv2d(ch[-1], cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        # The final activation is SiLU whatever act_fn says, as in diffusers.
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        ch, groups = cfg.block_out_channels[::-1], cfg.norm_num_groups
        n = len(ch)
        # Spatial norms are conditioned on the codebook vectors themselves.
        cond = cfg.latent_channels if cfg.norm_type == "spatial" else None
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        # Decoder blocks hold one resnet more than encoder blocks.
        self.up_blocks = nn.ModuleList(
            [UpDecoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, groups, cfg.act_fn,
                            upsample=i < n - 1, cond_channels=cond) for i in range(n)])
        self.mid_block = MidBlock(ch[0], groups, cfg.act_fn, cfg.mid_block_add_attention, cond)
        self.conv_norm_out = _norm(ch[-1], groups, cond)
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z), cond)
        for block in self.up_blocks:
            x = block(x, cond)
        return self.conv_out(F.silu(_apply_norm(self.conv_norm_out, x, cond)))


class VectorQuantizer(nn.Module):
    def __init__(self, num_codes: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_codes, dim)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """[B,D,h,w] latents -> [B,h,w] ids of the nearest codebook vectors (L2)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        # torch.cdist as in diffusers, so near-ties break the same way; float32 whatever the
        # model dtype, since a bf16 distance cannot separate close codes.
        distances = torch.cdist(flat, self.embedding.weight.float())
        return distances.argmin(dim=1).view(b, h, w)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """[B,h,w] ids -> [B,D,h,w] codebook vectors."""
        return self.embedding(ids).permute(0, 3, 1, 2)


class VQGAN(nn.Module):
    """diffusers' `VQModel` architecture; its state dict loads here with `strict=True`."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.latent_channels, config.embed_dim, 1)
        self.quantize = VectorQuantizer(config.num_vq_embeddings, config.embed_dim)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.latent_channels, 1)
        self.decoder = Decoder(config)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of the code grid for an image of height x width (multiples of 2^k)."""
        f = self.config.downsample_factor
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} is not a multiple of {f}")
        return height // f, width // f

    def encode_ids(self, x: torch.Tensor) -> torch.Tensor:
        """float [B,3,H,W] in [-1, 1] -> int64 ids [B,H/f,W/f]."""
        return self.quantize.nearest(self.quant_conv(self.encoder(x)))

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """int ids [B,h,w] -> float [B,3,h*f,w*f], nominally in [-1, 1]."""
        quant = self.quantize.lookup(ids).to(self.post_quant_conv.weight.dtype)
        cond = quant if self.config.norm_type == "spatial" else None
        return self.decoder(self.post_quant_conv(quant), cond)

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """`load_state_dict(strict=True)` with one readable error listing every mismatch.

        A model built on the meta device takes the tensors as they are (`assign=True`).
        """
        expected = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state_dict.items()}
        problems = {
            "missing keys": [k for k in expected if k not in got],
            "unexpected keys": [k for k in got if k not in expected],
            "mis-shaped keys": [f"{k} (expected {list(expected[k])}, got {list(got[k])})"
                                for k in expected if k in got and got[k] != expected[k]],
        }
        if any(problems.values()):
            lines = [f"{what} ({len(items)}): " + ", ".join(items[:10])
                     + (f", ... and {len(items) - 10} more" if len(items) > 10 else "")
                     for what, items in problems.items() if items]
            raise ValueError("VQGAN weights do not fit the config:\n  " + "\n  ".join(lines))
        meta = self.quant_conv.weight.is_meta
        self.load_state_dict(state_dict, strict=True, assign=meta)


_CHECKPOINT_PREFIXES = (
    "tokenizer.model.",  # a full MineWorld checkpoint: tokenizer and transformer together
    "model.",  # the separate vae.ckpt, saved from the wrapper that holds the VQModel as `model`
)


def load_vqgan_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """VQModel weights from a file (tensors only; see :func:`read_state_dict`).

    Accepts a bare VQModel state dict, or a checkpoint whose tokenizer keys carry one of
    `_CHECKPOINT_PREFIXES` (other keys, e.g. `transformer.*`, are dropped).
    """
    weights = read_state_dict(path)
    for prefix in _CHECKPOINT_PREFIXES:
        if any(k.startswith(prefix) for k in weights):
            return split_prefix(weights, prefix)
    return weights


class VQGANTokenizer(ImageTokenizer):
    """`ImageTokenizer` over a `VQGAN`; MineWorld's frames are 384x224 -> 14x24 ids."""

    def __init__(self, model: VQGAN, frame_size: tuple[int, int] = (384, 224),
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        grid = model.grid_for(frame_size[1], frame_size[0])
        super().__init__(frame_size, grid, model.config.num_vq_embeddings, device, dtype)
        self.model = model.to(device=self.device, dtype=dtype).eval()

    @classmethod
    def from_pretrained(cls, config_path: str | Path, weights_path: str | Path,
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                        grid: tuple[int, int] = (14, 24)) -> VQGANTokenizer:
        """The VQGAN of a diffusers ``config.json`` with the weights of a file."""
        return cls.from_weights(
            config_path, load_vqgan_state_dict(weights_path), device, dtype, grid
        )

    @classmethod
    def from_weights(cls, config_path: str | Path, weights: Mapping[str, torch.Tensor],
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     grid: tuple[int, int] = (14, 24)) -> VQGANTokenizer:
        """The VQGAN of ``config_path`` with ``weights``, framed to give a ``grid`` of
        (rows, cols) codes (MineWorld's 14 x 24 by default: 384x224 frames)."""
        # Build on the meta device: the weights replace every parameter, so skip random init.
        with torch.device("meta"):
            model = VQGAN(VQGANConfig.from_json(config_path))
        model.load_weights(weights)
        factor = model.config.downsample_factor
        return cls(model, (grid[1] * factor, grid[0] * factor), device, dtype)

    def _encode_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_ids(images)

    def _decode_batch(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.decode_ids(ids)
