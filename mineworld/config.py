"""Model configurations in the published MineWorld YAML layout.

A config file holds the transformer's numbers under
``model.params.transformer_config.params`` (the names of ``transformers``'
``LlamaConfig``) and, optionally, the frame layout under ``model.params.layout``
(the published model's layout is the default: a 14 x 24 grid of an 8192-code
VQGAN, then 11 action tokens). Class paths in ``target`` keys are never imported.
The five released configurations ship in ``mineworld/configs/``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"
ACTION_TOKENS = 11


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # Frame layout: not part of LlamaConfig; defaults are the published model's.
    image_rows: int = 14
    image_cols: int = 24
    codebook_size: int = 8192

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{field.name} must be a positive number, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.vocab_size < self.codebook_size + 68:
            raise ValueError(
                f"vocab_size ({self.vocab_size}) must hold the codebook ({self.codebook_size}) "
                f"and 68 action ids"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def tokens_per_image(self) -> int:
        return self.image_rows * self.image_cols

    @property
    def tokens_per_frame(self) -> int:
        return self.tokens_per_image + ACTION_TOKENS

    @property
    def context_frames(self) -> int:
        return self.max_position_embeddings // self.tokens_per_frame


_LAYOUT_KEYS = ("image_rows", "image_cols", "codebook_size")


def load_config(path: str | Path) -> ModelConfig:
    """Read a YAML file in the published layout; errors name the file and the field."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read config: {error}") from None
    try:
        params = document["model"]["params"]
        numbers = dict(params["transformer_config"]["params"])
    except (KeyError, TypeError):
        raise ValueError(
            f"{path}: expected model.params.transformer_config.params (the published layout)"
        ) from None
    numbers.update((params.get("layout") or {}).items())
    if numbers.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path}: hidden_act must be silu, got {numbers['hidden_act']!r}")
    for flag in ("attention_bias", "mlp_bias"):
        if numbers.get(flag):
            raise ValueError(f"{path}: {flag} must be false (the model has no biases)")
    known = {field.name for field in fields(ModelConfig)}
    missing = [name for name in known if name not in numbers and name not in _DEFAULTED]
    if missing:
        raise ValueError(f"{path}: missing field(s) {sorted(missing)}")
    try:
        return ModelConfig(**{k: v for k, v in numbers.items() if k in known})
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


_DEFAULTED = {"rms_norm_eps", "rope_theta", *_LAYOUT_KEYS}


def preset_path(name: str) -> Path:
    """Path of a shipped config by name (``300M_16f`` ...)."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"config must be a file or one of {names}, got {name!r}")
    return path
