"""The model shipped in ``assets/``: load it, its demo scene and its validation clips.

``assets/model/`` holds config.yaml (the published layout, with ``model.params.layout`` for the
grid and codebook), model.safetensors (``save_transformer``) and the tokenizer files
(tokenizer.safetensors + tokenizer.json). ``python -m mineworld.train`` writes all of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mineworld.checkpoint import load_transformer
from mineworld.config import ModelConfig, load_config
from mineworld.lvm import LlamaLVM
from mineworld.session import pick_device
from mineworld.tokenizers.embedded import EmbeddedTokenizer
from mineworld.video import list_clips
from mineworld.world import read_recording, replay_recording

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MODEL_DIR = ASSETS / "model"
SCENE = ASSETS / "scene" / "scene"
VALIDATION_DIR = ASSETS / "validation"


def load_embedded(device=None, dtype=None, model_dir: str | Path = MODEL_DIR) -> LlamaLVM:
    """The shipped model: ``.transformer`` and ``.tokenizer`` (it unpacks as that pair); CPU
    fp32 unless told otherwise."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"no embedded model in {model_dir} (run python -m mineworld.train)")
    device, dtype = pick_device(device, dtype)
    config = load_config(config_path)
    model = load_transformer(config, model_dir / "model.safetensors", device, dtype)
    return LlamaLVM(model, load_embedded_tokenizer(model_dir, config, device))


def load_embedded_tokenizer(path: str | Path, config: ModelConfig, device) -> EmbeddedTokenizer:
    """The embedded tokenizer in ``path`` (its folder or one of its files), checked against the
    model ``config`` it serves."""
    tokenizer = EmbeddedTokenizer.load(path, device)  # fp32: it is cheap, and exact
    if (tokenizer.grid, tokenizer.codebook_size) != (
        (config.image_rows, config.image_cols), config.codebook_size
    ):
        raise ValueError(f"{path}: the tokenizer's grid or codebook is not the model's")
    return tokenizer


def demo_scene(stem: str | Path = SCENE) -> tuple[np.ndarray, list[dict]]:
    """(frames uint8 [T,H,W,3], actions) of the shipped scene, re-rendered by the world from its
    jsonl and sidecar: exact, unlike the mp4's compressed frames."""
    _, actions = read_recording(stem)
    return replay_recording(stem), actions


def validation_clips(folder: str | Path = VALIDATION_DIR) -> list[Path]:
    """Stems of the shipped validation clips (``clip_N``), in natural order."""
    return list_clips(folder)
