"""Model loading shared by inference.py and app.py: which files, the tokenizer, the weights.

The embedded model (``assets/model/``, see :mod:`mineworld.embedded`) is used when neither
``--model_ckpt`` nor ``--config`` is given; otherwise both name the model. Every problem the
user can fix raises ValueError (or OSError for files) with a message that names the flag.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError

from cache import make_strategy, strategy_class
from cache.storage import kv_bytes_per_token
from mineworld.checkpoint import load_transformer, read_state_dict, split_prefix
from mineworld.config import load_config, preset_path
from mineworld.embedded import MODEL_DIR, load_embedded, load_embedded_tokenizer
from mineworld.model import cache_layout
from mineworld.tokenizers.embedded import CONFIG_TARGET
from mineworld.tokenizers.vqgan import VQGANTokenizer, load_vqgan_state_dict

# What a CLI reports as one line and exit status 2, rather than a stack trace.
USER_ERRORS = (ValueError, OSError, SafetensorError)


def one_line(error: BaseException) -> str:
    """An error message on one line (weight mismatches list their problems on several)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:1] + ["; ".join(lines[1:])]).strip() or type(error).__name__


def model_files(args: argparse.Namespace) -> tuple[Path, Path]:
    """(config YAML, checkpoint) named by the flags."""
    if args.model_ckpt is None or args.config is None:
        raise ValueError("--model_ckpt and --config go together; pass both")
    config = Path(args.config)
    return (config if config.exists() else preset_path(args.config)), Path(args.model_ckpt)


def uses_embedded(args: argparse.Namespace) -> bool:
    """Neither model flag given: the model shipped in ``assets/`` is used."""
    return args.model_ckpt is None and args.config is None


def tokenizer_config(config_path: Path) -> dict:
    """The model config's ``model.params.tokenizer_config`` (``{}`` when it names none)."""
    document = yaml.safe_load(config_path.read_text())  # load_config has read it: a mapping
    named = document["model"]["params"].get("tokenizer_config")
    return named if isinstance(named, dict) else {}


def tokenizer_file(config_path: Path, key: str, flag: str) -> Path:
    """The file the model config names at ``model.params.tokenizer_config.params.<key>``
    (``config_path`` or ``ckpt_path``); a relative path is tried against the working directory
    (where the published scripts run), then the config's folder."""
    params = tokenizer_config(config_path).get("params")
    value = params.get(key) if isinstance(params, dict) else None
    if value is None:
        raise ValueError(f"{config_path} names no tokenizer {key}; pass {flag}")
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError(
            f"{config_path}: tokenizer_config.params.{key} must be a file path, got {value!r}"
        )
    for path in (Path(value), config_path.parent / value):
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{config_path}: tokenizer {key} {value!r} not found (relative to the working directory "
        f"or {config_path.parent}); pass {flag}"
    )


def load_tokenizer(vae_config: Path, weights: dict, source: str, model_config, device, dtype):
    """The VQGAN of ``vae_config`` with ``weights`` (read from ``source``), framed so that its
    code grid is the model's."""
    grid = (model_config.image_rows, model_config.image_cols)
    try:
        tokenizer = VQGANTokenizer.from_weights(vae_config, weights, device, dtype, grid)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    if tokenizer.codebook_size != model_config.codebook_size:
        raise ValueError(
            f"{vae_config}: codebook of {tokenizer.codebook_size} codes, but the model "
            f"expects {model_config.codebook_size}"
        )
    return tokenizer


def settle_strategy(args: argparse.Namespace, params: dict, config, dtype) -> None:
    """Complete ``params`` from ``--kv-budget-mb`` when given (the strategy's own flags win),
    then raise the strategy's own ValueError for bad ones, before any weights are read."""
    megabytes = getattr(args, "kv_budget_mb", None)
    if megabytes is None:
        make_strategy(args.cache_strategy, cache_layout(config), **params)
        return
    fitted = kv_budget_params(args.cache_strategy, megabytes, config, dtype, "--kv-budget-mb")
    params.update({**fitted, **params})
    try:
        make_strategy(args.cache_strategy, cache_layout(config), **params)
    except ValueError as error:
        raise ValueError(f"--kv-budget-mb {megabytes:g}: {error}") from None


def model_kv_bytes_per_token(config, dtype, raw_keys: bool = True) -> int:
    """Bytes a token takes in the cache of a model of ``config`` in ``dtype`` (see
    ``kv_bytes_per_token``); ``raw_keys``: as a bounded cache keeps them, the most."""
    return kv_bytes_per_token(config.num_hidden_layers, config.num_key_value_heads,
                              config.head_dim, torch.empty(0, dtype=dtype).element_size(),
                              raw_keys)


def kv_budget_params(spec: str, megabytes: float, config, dtype, field: str) -> dict:
    """The parameters of strategy ``spec`` that keep ``megabytes`` MiB of KV cache (keys, the
    raw keys a bounded cache re-bases from, and values, every layer) on a model of ``config``
    in ``dtype``: its own budget mapping of the tokens that fit, at most the context. A
    refusal names ``field``, where the user gave the megabytes."""
    cls = strategy_class(spec)
    layout = cache_layout(config)
    per_token = model_kv_bytes_per_token(config, dtype, raw_keys=cls.bounded)  # bounded re-bases
    if not cls.bounded:
        whole = per_token * layout.context_tokens / 2**20
        raise ValueError(f"{field}: strategy {spec} keeps the whole context "
                         f"({whole:.2f} MiB on this model); choose a bounded strategy")
    tokens = min(int(megabytes * 2**20 // per_token), layout.room)
    if tokens < layout.frame_tokens:
        least = per_token * layout.frame_tokens / 2**20
        raise ValueError(f"{field} {megabytes:g} holds {tokens} tokens, less than one "
                         f"frame ({layout.frame_tokens} tokens); give at least {least:.2f}")
    return cls.for_budget(tokens, layout)


def load_model(args: argparse.Namespace, params: dict, device, dtype):
    """(transformer, tokenizer, the files used) for the run; ``params`` are the strategy's,
    completed from ``--kv-budget-mb`` and checked against the model's config before the (slow)
    weights are read."""
    if uses_embedded(args):
        settle_strategy(args, params, load_config(MODEL_DIR / "config.yaml"), dtype)
        model, tokenizer = load_embedded(device, dtype)
        return model, tokenizer, {"config": str(MODEL_DIR / "config.yaml"), "model": str(MODEL_DIR)}
    config_path, checkpoint = model_files(args)
    config = load_config(config_path)
    settle_strategy(args, params, config, dtype)
    vae_config = (
        Path(args.vae_config) if args.vae_config
        else tokenizer_file(config_path, "config_path", "--vae_config")
    )
    if tokenizer_config(config_path).get("target") == CONFIG_TARGET and not args.vae_ckpt:
        # The shipped model's own files, named by the flags: its tokenizer is not a VQGAN.
        model = load_transformer(config, checkpoint, device, dtype)
        tokenizer = load_embedded_tokenizer(vae_config, config, device)
        files = {"config": str(config_path), "checkpoint": str(checkpoint),
                 "tokenizer": str(vae_config)}
        return model, tokenizer, files
    state = read_state_dict(checkpoint)  # read once: it holds the transformer, maybe the VQGAN
    weights = {} if args.vae_ckpt else split_prefix(state, "tokenizer.model")
    weights_from = f"{checkpoint} (tokenizer.model.*)"
    if not weights:
        vae_ckpt = (
            Path(args.vae_ckpt) if args.vae_ckpt
            else tokenizer_file(config_path, "ckpt_path", "--vae_ckpt")
        )
        weights, weights_from = load_vqgan_state_dict(vae_ckpt), str(vae_ckpt)
    tokenizer = load_tokenizer(vae_config, weights, weights_from, config, device, dtype)
    model = load_transformer(config, state, device, dtype, where=str(checkpoint))
    files = {
        "config": str(config_path),
        "checkpoint": str(checkpoint),
        "vae_config": str(vae_config),
        "vae_weights": weights_from,
    }
    return model, tokenizer, files
