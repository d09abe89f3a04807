"""Model configurations in the published MineWorld YAML layout.

A config file holds the transformer's numbers under
``model.params.transformer_config.params`` (the names of ``transformers``'
``LlamaConfig``) and, optionally, the frame layout under ``model.params.layout``
(the published model's layout is the default: a 14 x 24 grid of an 8192-code
VQGAN, then 11 action tokens) and how to decode it under ``model.params.decoding``
(``diagonal_window``: the default window of diagonal decoding, 2 as in MineWorld's
batch script; ``temperature``, ``top_k``, ``repeat_penalty`` and ``overuse_penalty``: the
default sampling, greedy unless given).
Class paths in ``target`` keys are never imported.
The five released configurations ship in ``mineworld/configs/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from .cli import MAX_OVERUSE_PENALTY, MAX_REPEAT_PENALTY, MAX_TEMPERATURE

CONFIG_DIR = Path(__file__).parent / "configs"
ACTION_TOKENS = 11
MAX_CONFIG_BYTES = 1 << 20  # a config is a page of YAML; anything bigger is not one
MAX_PARAMETERS = 20e9  # refuse sizes that could never be allocated, before trying
# Inclusive valid range of every field: wide enough for any MineWorld shape, narrow enough that a
# typo (a missing "e-", an extra zero run) is caught here rather than by an allocation failure.
LIMITS: dict[str, tuple[float, float]] = {
    "vocab_size": (1, 1 << 20),
    "hidden_size": (2, 65536),
    "intermediate_size": (1, 262144),
    "num_hidden_layers": (1, 1024),
    "num_attention_heads": (1, 1024),
    "num_key_value_heads": (1, 1024),
    "max_position_embeddings": (1, 1 << 17),  # RoPE tables are precomputed for every position
    "rms_norm_eps": (1e-12, 1.0),
    "rope_theta": (1.0, 1e9),
    "image_rows": (1, 1024),
    "image_cols": (1, 1024),
    "codebook_size": (1, 1 << 20),
    "diagonal_window": (1, 1024),
    "temperature": (0.0, MAX_TEMPERATURE),
    "top_k": (0, 1 << 20),
    "repeat_penalty": (1.0, MAX_REPEAT_PENALTY),
    "overuse_penalty": (0.0, MAX_OVERUSE_PENALTY),
}


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
    # Tokens a row runs ahead of the next in diagonal decoding, unless the caller says: a
    # trade of speed for quality that depends on the model (measured on its card).
    diagonal_window: int = 2
    # The sampling a model plays best with when the caller names none (its card measures
    # each): temperature 0 is greedy, top_k 0 samples from every code.
    temperature: float = 0.0
    top_k: int = 0
    repeat_penalty: float = 1.0  # see decoding.Sampling
    overuse_penalty: float = 0.0

    def __post_init__(self):
        for field in fields(self):
            value, (low, high) = getattr(self, field.name), LIMITS[field.name]
            whole = field.type == "int"
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
                kind = "a whole number" if whole else "a number"
                raise ValueError(f"{field.name} must be {kind}, got {value!r}")
            if not low <= value <= high:  # also refuses NaN
                raise ValueError(f"{field.name} must be in [{low:g}, {high:g}], got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"hidden_size / num_attention_heads ({self.hidden_size} / "
                f"{self.num_attention_heads} = {self.head_dim}) must be even (rotary embeddings)"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.diagonal_window > self.image_cols:
            raise ValueError(
                f"diagonal_window must be in [1, image_cols = {self.image_cols}], "
                f"got {self.diagonal_window!r}"
            )
        if self.vocab_size < self.codebook_size + 68:
            raise ValueError(
                f"vocab_size ({self.vocab_size}) must hold the codebook ({self.codebook_size}) "
                f"and 68 action ids"
            )
        if self.parameters > MAX_PARAMETERS:
            raise ValueError(
                f"these sizes make a model of {self.parameters:.3g} parameters; at most "
                f"{MAX_PARAMETERS:.0e} are supported (the largest published one has 1.2e9)"
            )

    @property
    def parameters(self) -> int:
        """The number of weights the sizes describe (embeddings, layers, head)."""
        kv = self.num_key_value_heads * self.head_dim
        attention = self.hidden_size * (2 * self.hidden_size + 2 * kv)
        mlp = 3 * self.hidden_size * self.intermediate_size
        layer = attention + mlp + 2 * self.hidden_size
        return 2 * self.vocab_size * self.hidden_size + self.num_hidden_layers * layer

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
    """Read a YAML file in the published layout.

    Every problem raises ValueError naming the file, then the field and what is wrong with it
    (missing, wrong type, outside its range in ``LIMITS``, inconsistent with another field):
    not YAML, not a mapping, a file over ``MAX_CONFIG_BYTES``, a context of fewer than two
    frames, a ``token_num`` / ``image_num`` / ``frame`` (the published configs' own keys) other
    than the tokens per frame, image tokens per frame and context frames the rest makes. Other
    unknown fields (LlamaConfig has many) are ignored.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"{path}: not a config (over {MAX_CONFIG_BYTES // 1024} KiB)")
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as error:
        reason = getattr(error, "strerror", None) or " ".join(str(error).split())[:300]
        raise ValueError(f"{path}: cannot read config: {reason}") from None
    where = "model.params.transformer_config.params"
    node, keys = _mapping(document, "the document", path), where.split(".")
    for depth, key in enumerate(keys):
        node = _mapping(node.get(key), ".".join(keys[: depth + 1]), path)
    numbers = dict(node)
    for section in ("layout", "decoding"):
        found = document["model"]["params"].get(section)
        if found is not None:
            numbers.update(_mapping(found, f"model.params.{section}", path))
    if numbers.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path}: hidden_act must be silu, got {numbers['hidden_act']!r}")
    for flag in ("attention_bias", "mlp_bias"):
        if numbers.get(flag):
            raise ValueError(f"{path}: {flag} must be false (the model has no biases)")
    known = {field.name for field in fields(ModelConfig)}
    floats = {field.name for field in fields(ModelConfig) if field.type == "float"}
    numbers = {k: _yaml_float(v) if k in floats else v for k, v in numbers.items()}
    missing = [name for name in known if name not in numbers and name not in _DEFAULTED]
    if missing:
        raise ValueError(f"{path}: missing field(s) {sorted(missing)} under {where}")
    try:
        config = ModelConfig(**{k: v for k, v in numbers.items() if k in known})
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    for key, derived in _RESTATED.items():
        if key in numbers and numbers[key] != getattr(config, derived):
            raise ValueError(
                f"{path}: {key} is {numbers[key]!r}, but the other fields make {derived} "
                f"{getattr(config, derived)}"
            )
    if config.context_frames < 2:
        raise ValueError(
            f"{path}: max_position_embeddings ({config.max_position_embeddings}) must hold at "
            f"least 2 frames of {config.tokens_per_frame} tokens (a reference frame and the "
            f"frame being made), so at least {2 * config.tokens_per_frame}"
        )
    return config


# YAML 1.1 (PyYAML) reads an exponent float only with a dot and a signed exponent: "1e-05",
# "1E+5" stay strings there, while OmegaConf, which the published code reads configs with,
# takes them as numbers.
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _yaml_float(value):
    """``value``, or the float that a string spells (as OmegaConf would read it)."""
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


def _mapping(value, where: str, path: Path) -> dict:
    """``value`` if it is a mapping with string keys, else a ValueError naming ``where``."""
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        expected = "expected model.params.transformer_config.params (the published layout)"
        shown = type(value).__name__ if value is not None else "nothing"
        raise ValueError(f"{path}: {where} must be a mapping, got {shown}; {expected}")
    return value


# Keys the published configs carry beside LlamaConfig's, restating what the other fields say:
# checked, so that a config whose numbers disagree with them is not read as some other model.
_RESTATED = {"token_num": "tokens_per_frame", "image_num": "tokens_per_image",
             "frame": "context_frames"}

_DEFAULTED = {"rms_norm_eps", "rope_theta", "diagonal_window", "temperature", "top_k",
              "repeat_penalty", "overuse_penalty", *_LAYOUT_KEYS}


def preset_path(name: str) -> Path:
    """Path of a shipped config by name (``300M_16f`` ...)."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"config must be a file or one of {names}, got {name!r}")
    return path
