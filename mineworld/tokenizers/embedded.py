"""The embedded model's image tokenizer: a small convolutional autoencoder with FSQ codes.

Why FSQ (finite scalar quantisation, arXiv 2309.15505): each latent channel is bounded and
rounded to a few levels, and a code id is the mixed-radix number of those levels. There is no
codebook to learn, so no collapse, no commitment loss and no k-means restarts: the autoencoder is
trained with a plain reconstruction loss and a straight-through rounding.

The encoder downsamples by ``stride`` = (vertical, horizontal), which need not be square: the
64x48 frames of the world become a 6x16 grid of 96 ids with strides (8, 4). The decoder mirrors it
with nearest-neighbour upsampling and is kept narrow, since it runs once per generated frame.
Its pixel shuffle predicts each 4x4 patch linearly from the features around it; an optional
refinement (``refine_channels``, ``refine_blocks``) then runs a few residual convs on the full-size
frame, where block edges and texture cross patch borders. It is added around the output (its
last conv starts at zero), so a trained decoder can gain one and start from where it was.

Files: ``tokenizer.safetensors`` (the weights) and ``tokenizer.json`` (the TokenizerConfig fields)
side by side; ``EmbeddedTokenizer.load(path_or_dir)`` reads both.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from mineworld.checkpoint import read_state_dict
from mineworld.tokenizers.base import ImageTokenizer

WEIGHTS_FILE, CONFIG_FILE = "tokenizer.safetensors", "tokenizer.json"
# The ``target`` a model config names for this tokenizer (compared, never imported).
CONFIG_TARGET = f"{__name__}.EmbeddedTokenizer"


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    frame_size: tuple[int, int] = (64, 48)  # (width, height)
    levels: tuple[int, ...] = (8, 5, 5, 5)  # FSQ levels per latent channel; codes = product
    patch: int = 4  # pixels folded into channels first (pixel unshuffle): convs run small
    down: tuple[int, int] = (2, 1)  # (vertical, horizontal) strided conv after the patching
    channels: int = 96
    encoder_blocks: tuple[int, int] = (1, 1)  # residual blocks before / after the downsampling
    decoder_blocks: tuple[int, int] = (2, 1)  # before / after the upsampling
    refine_channels: int = 0  # width of the full-size refinement; 0: none
    refine_blocks: int = 2

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the code grid."""
        width, height = self.frame_size
        down_v, down_h = self.patch * self.down[0], self.patch * self.down[1]
        if height % down_v or width % down_h:
            raise ValueError(f"frame size {self.frame_size} is not a multiple of the strides")
        return height // down_v, width // down_h

    @classmethod
    def from_dict(cls, fields: dict) -> TokenizerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v
                      for k, v in fields.items() if k in names})


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class Refinement(nn.Module):
    """``x + convs(x)`` on the decoded frame; the last conv starts at zero, so at first it
    changes nothing."""

    def __init__(self, channels: int, blocks: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1), *[ResBlock(channels) for _ in range(blocks)],
            nn.SiLU(), nn.Conv2d(channels, 3, 3, padding=1),
        )
        nn.init.zeros_(self.convs[-1].weight)
        nn.init.zeros_(self.convs[-1].bias)

    def forward(self, x):
        return x + self.convs(x)


class FSQ(nn.Module):
    """Bounds each channel to (-1, 1) scaled to its levels, rounds it (straight-through)."""

    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        levels_t = torch.tensor(levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor((1, *levels[:-1])), 0)
        self.register_buffer("levels", levels_t, persistent=False)
        self.register_buffer("basis", basis, persistent=False)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """[B,C,h,w] -> values in (-(L-1)/2, (L-1)/2) per channel, half-integer for even L."""
        levels = self.levels.view(1, -1, 1, 1)
        half = (levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z.float() + shift) * half - offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Rounded and rescaled to [-1, 1]; gradients pass straight through the rounding."""
        bounded = self.bound(z)
        rounded = bounded + (bounded.round() - bounded).detach()
        return rounded / (self.levels.view(1, -1, 1, 1) // 2)

    def codes_to_ids(self, quantized: torch.Tensor) -> torch.Tensor:
        levels = self.levels.view(1, -1, 1, 1)
        digits = (quantized * (levels // 2) + levels // 2).round().long()
        return (digits * self.basis.view(1, -1, 1, 1)).sum(1)

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        levels = self.levels.long().view(1, -1, 1, 1)
        digits = (ids[:, None] // self.basis.view(1, -1, 1, 1)) % levels
        return (digits - levels // 2).float() / (levels // 2)


class FSQAutoencoder(nn.Module):
    """Pixel-unshuffle, a few residual convs at 1/patch resolution, a strided conv to the code
    grid; the decoder mirrors it and ends in a pixel shuffle, so no conv runs at full size."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        c, p, dims, down = config.channels, config.patch, len(config.levels), config.down
        before, after = config.encoder_blocks
        self.encoder = nn.Sequential(
            nn.PixelUnshuffle(p), nn.Conv2d(3 * p * p, c, 3, padding=1),
            *[ResBlock(c) for _ in range(before)],
            nn.Conv2d(c, c, (down[0] + 2, down[1] + 2), down, padding=1),
            *[ResBlock(c) for _ in range(after)],
            nn.SiLU(), nn.Conv2d(c, dims, 1),
        )
        self.fsq = FSQ(config.levels)
        before, after = config.decoder_blocks
        self.decoder = nn.Sequential(
            nn.Conv2d(dims, c, 3, padding=1), *[ResBlock(c) for _ in range(before)],
            nn.Upsample(scale_factor=down, mode="nearest"), nn.Conv2d(c, c, 3, padding=1),
            *[ResBlock(c) for _ in range(after)],
            nn.SiLU(), nn.Conv2d(c, 3 * p * p, 3, padding=1), nn.PixelShuffle(p),
        )
        if config.refine_channels:
            self.decoder.append(Refinement(config.refine_channels, config.refine_blocks))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction of float images in [-1, 1] (training)."""
        return self.decoder(self.fsq.quantize(self.encoder(images)))


class EmbeddedTokenizer(ImageTokenizer):
    def __init__(self, config: TokenizerConfig, model: FSQAutoencoder | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__(config.frame_size, config.grid, config.codebook_size, device, dtype)
        self.config = config
        # Channels-last convolutions: a quarter faster per decoded frame on a CPU here.
        self.model = (model or FSQAutoencoder(config)).to(
            self.device, dtype, memory_format=torch.channels_last).eval()

    def _encode_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.fsq.codes_to_ids(self.model.fsq.quantize(self.model.encoder(images)))

    def _decode_batch(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.decoder(self.model.fsq.ids_to_codes(ids).to(self.dtype))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().float().contiguous()
                 for k, v in self.model.state_dict().items()}
        safetensors.torch.save_file(state, folder / WEIGHTS_FILE, metadata={"format": "pt"})
        fields = dataclasses.asdict(self.config)
        fields.update(codebook_size=self.config.codebook_size, grid=list(self.config.grid))
        (folder / CONFIG_FILE).write_text(json.dumps(fields, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> EmbeddedTokenizer:
        """From a folder holding tokenizer.safetensors + tokenizer.json, or either file."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        config = TokenizerConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
        model = FSQAutoencoder(config)
        model.load_state_dict(read_state_dict(folder / WEIGHTS_FILE), strict=True)
        return cls(config, model, device, dtype)
