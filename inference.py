"""Batch generation over a folder of clips, as MineWorld's batch script, with managed KV caches.

For every ``clip_N.mp4`` + ``clip_N.jsonl`` in ``--data_root`` (natural order), the first
``--demo_num`` frames and the actions between them are prefilled, then ``--frames`` frames are
generated, one per following action line. Outputs, in ``--output_dir``:

* ``clip_N.mp4``: the context frames (as fed to the model, at the tokenizer's frame size)
  followed by the generated ones, at 6 fps; the JSON says how many of each;
* ``clip_N.json``: the settings, the generated token ids (``[rows][cols]`` per frame), the
  statistics of every step (time, forward passes, live tokens, KV bytes, evictions,
  re-prefills ...), totals and the model files.

Actions: with ``--action-alignment same`` (the default, as the published interactive demo)
frame i is followed by action line i; ``next`` pairs frame i with line i + 1, as the published
batch script did. A clip needs ``demo_num`` frames and ``demo_num - 1 + frames`` actions.

Sampling: greedy unless ``--top_k`` or ``--top_p`` is given, in which case the temperature
defaults to 1.0; ``--temperature`` always wins (0 is greedy).

Exit status: 0 when every clip was written, 1 when some clip could not be used (it is skipped
with a warning, the others are still written), 2 for a usage, model or configuration error
(one line on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from safetensors import SafetensorError
from tqdm import tqdm

from cache import STRATEGIES, make_strategy
from mineworld.actions import ActionFileError, read_actions
from mineworld.checkpoint import load_transformer, read_state_dict, split_prefix
from mineworld.config import load_config, preset_path
from mineworld.decoding import Sampling
from mineworld.session import Session, pick_device
from mineworld.tokenizers.vqgan import VQGANTokenizer, load_vqgan_state_dict
from mineworld.video import VideoFileError, list_clips, read_video, write_video

PROG = "inference.py"
ASSETS_MODEL = Path(__file__).resolve().parent / "assets" / "model"
FPS = 6
SCHEDULES = {"naive": "naive", "image_diagd": "diagonal"}
# Cache flags -> the strategy parameter each one sets (argparse's dest is the parameter name).
CACHE_FLAGS = {
    "hh_ratio": "--hh-ratio",
    "start_size": "--start-size",
    "recent_size": "--recent-size",
    "sink_frames": "--sink-frames",
    "recent_frames": "--recent-frames",
}


class ClipError(ValueError):
    """A clip that cannot be used (too short); the run skips it and goes on."""


# Errors that concern one clip's files: reported, the clip skipped, the others still run.
CLIP_ERRORS = (ClipError, ActionFileError, VideoFileError)
# Errors of the user's making: one line on stderr and exit status 2, never a stack trace.
USER_ERRORS = (ValueError, OSError, SafetensorError)


# -- command line ----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate frames for every clip_N.mp4 + clip_N.jsonl in a folder with a "
        "MineWorld model, writing clip_N.mp4 (context then generated frames, 6 fps) and "
        "clip_N.json (tokens, per-frame statistics, settings) to --output_dir.",
        epilog="Exit status: 0 all clips written; 1 some clip skipped (too short or unreadable); "
        "2 usage, model or configuration error.",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model_ckpt", help="checkpoint (.ckpt/.pt pickle of tensors or "
                       ".safetensors); default: the model shipped in assets/model/")
    model.add_argument("--config", help="model YAML in the published layout, or a shipped "
                       "preset name such as 300M_16f")
    model.add_argument("--vae_config", help="VQGAN config.json (default: the config's "
                       "model.params.tokenizer_config.params.config_path)")
    model.add_argument("--vae_ckpt", help="VQGAN weights (default: the tokenizer.model.* weights "
                       "in --model_ckpt, else the config's tokenizer_config ckpt_path)")
    model.add_argument("--device", default=None,
                       help="cpu, cuda, cuda:1 ... (default: auto, CUDA when available)")
    model.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"],
                       default="auto", help="default: auto, float16 on CUDA, float32 on CPU")

    data = parser.add_argument_group("data")
    data.add_argument("--data_root", required=True,
                      help="folder of clip_N.mp4 + clip_N.jsonl (one action line per frame)")
    data.add_argument("--output_dir", required=True)
    data.add_argument("--demo_num", type=_positive_int, default=8,
                      help="context frames prefilled from each clip (default: 8)")
    data.add_argument("--frames", type=_positive_int, default=8,
                      help="frames to generate per clip (default: 8)")
    data.add_argument("--action-alignment", choices=["same", "next"], default="same",
                      help="same: frame i is followed by action line i (default); next: by "
                      "line i + 1, as the published batch script")

    decode = parser.add_argument_group("decoding")
    decode.add_argument("--accelerate-algo", choices=sorted(SCHEDULES), default="naive",
                        help="naive: one token per pass; image_diagd: diagonal decoding "
                        "(default: naive)")
    decode.add_argument("--window_size", type=_positive_int, default=2,
                        help="image_diagd: tokens a row is ahead of the next (default: 2)")
    decode.add_argument("--temperature", type=float,
                        help="default: 1.0 with --top_k/--top_p, else 0 (greedy)")
    decode.add_argument("--top_k", type=int)
    decode.add_argument("--top_p", type=float)
    decode.add_argument("--seed", type=int, default=0, help="default: 0")

    cache = parser.add_argument_group(
        "KV cache", "only the flags given are passed to the strategy; the others keep its defaults"
    )
    cache.add_argument("--cache-strategy", choices=sorted(STRATEGIES), default="none",
                       help="default: none (full context, re-prefill when it is used up)")
    cache.add_argument("--hh-ratio", type=float, help="h2o, hybrid: heavy hitters per prompt token")
    cache.add_argument("--start-size", type=int, help="streaming, hybrid: sink tokens")
    cache.add_argument("--recent-size", type=int, help="streaming, h2o, hybrid: recent tokens")
    cache.add_argument("--sink-frames", type=int, help="frames: sink frames")
    cache.add_argument("--recent-frames", type=int, help="frames: recent frames")
    return parser.parse_args(argv)


def sampling_from(args: argparse.Namespace) -> Sampling:
    """Greedy by default; sampling at temperature 1 once top_k or top_p asks for it."""
    temperature = args.temperature
    if temperature is None:
        temperature = 1.0 if args.top_k is not None or args.top_p is not None else 0.0
    return Sampling(temperature=temperature, top_k=args.top_k, top_p=args.top_p)


def strategy_params(args: argparse.Namespace) -> dict:
    """The cache flags the user set, as parameters of the chosen strategy.

    The strategy class's signature says what it takes, so a new strategy needs no change here.
    """
    name = args.cache_strategy
    takes = [p for p in inspect.signature(STRATEGIES[name]).parameters if p in CACHE_FLAGS]
    params = {}
    for param, flag in CACHE_FLAGS.items():
        value = getattr(args, param)
        if value is None:
            continue
        if param not in takes:
            listing = f"it takes: {', '.join(takes)}" if takes else "it takes no parameters"
            raise ValueError(f"{flag} is not a parameter of strategy {name!r} ({listing})")
        params[param] = value
    return params


# -- model -----------------------------------------------------------------------------------


def embedded_model() -> tuple[Path, Path] | None:
    """(config, checkpoint) of the model shipped in ``assets/model/``, or None while there is none.

    Its tokenizer is found as for any model: ``tokenizer.model.*`` weights in the checkpoint or
    the config's ``tokenizer_config`` files, relative paths resolved against ``assets/model/``.
    """
    config, weights = ASSETS_MODEL / "config.yaml", ASSETS_MODEL / "model.safetensors"
    return (config, weights) if config.is_file() and weights.is_file() else None


def model_files(args: argparse.Namespace) -> tuple[Path, Path]:
    """(config YAML, checkpoint): the flags, or the embedded model when neither is given."""
    if args.model_ckpt is None and args.config is None:
        embedded = embedded_model()
        if embedded is None:
            raise ValueError(
                "no embedded model is shipped yet (assets/model/ is empty); "
                "pass --model_ckpt and --config"
            )
        return embedded
    if args.model_ckpt is None or args.config is None:
        raise ValueError("--model_ckpt and --config go together; pass both")
    config = Path(args.config)
    return (config if config.exists() else preset_path(args.config)), Path(args.model_ckpt)


def tokenizer_file(config_path: Path, key: str, flag: str) -> Path:
    """The file the model config names at ``model.params.tokenizer_config.params.<key>``
    (``config_path`` or ``ckpt_path``); a relative path is tried against the working directory
    (where the published scripts run), then the config's folder."""
    document = yaml.safe_load(config_path.read_text())
    named = document["model"]["params"].get("tokenizer_config") or {}
    value = (named.get("params") or {}).get(key)
    if value is None:
        raise ValueError(f"{config_path} names no tokenizer {key}; pass {flag}")
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


def load_model(args: argparse.Namespace, params: dict, device, dtype):
    """(transformer, tokenizer, the files used) for the run; ``params`` are the strategy's,
    checked against the model's config before the (slow) weights are read."""
    config_path, checkpoint = model_files(args)
    config = load_config(config_path)
    extra = {"frame_tokens": config.tokens_per_frame} if args.cache_strategy == "frames" else {}
    make_strategy(args.cache_strategy, **params, **extra)
    vae_config = (
        Path(args.vae_config) if args.vae_config
        else tokenizer_file(config_path, "config_path", "--vae_config")
    )
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


def build_session_factory(model, tokenizer, args: argparse.Namespace, params: dict,
                          sampling: Sampling):
    """A function returning a fresh Session per clip (its own cache, statistics and RNG).

    One session is built here so that bad settings fail before any clip is read.
    """
    factory = functools.partial(
        Session,
        model,
        tokenizer,
        strategy=args.cache_strategy,
        strategy_params=params,
        reference_frames=args.demo_num,
        schedule=SCHEDULES[args.accelerate_algo],
        window=args.window_size,
        sampling=sampling,
        seed=args.seed,
    )
    try:
        factory()
    except ValueError as error:  # Session names its parameters, not our flags
        raise ValueError(
            f"--demo_num {args.demo_num}, --window_size {args.window_size}: {error}"
        ) from None
    return factory


# -- clips -----------------------------------------------------------------------------------


def read_inputs(clip: Path, args: argparse.Namespace, frame_size) -> tuple[np.ndarray, list]:
    """The clip's first ``demo_num`` frames and the ``demo_num - 1 + frames`` actions after
    them; ClipError with both counts when the clip is too short."""
    # with_name, not with_suffix: a stem may hold a dot (clip.v2).
    frames = read_video(clip.with_name(clip.name + ".mp4"), frame_size, args.demo_num)
    actions = read_actions(clip.with_name(clip.name + ".jsonl"), args.action_alignment)
    need = args.demo_num - 1 + args.frames
    shift = args.action_alignment == "next"  # that alignment drops the first line
    if len(frames) < args.demo_num or len(actions) < need:
        raise ClipError(
            f"needs {args.demo_num} frames and {need + shift} action lines "
            f"(--demo_num {args.demo_num}, --frames {args.frames}, alignment "
            f"{args.action_alignment}), has {len(frames)} frames and {len(actions) + shift} lines"
        )
    return frames, actions[:need]


def run_clip(new_session, clip: Path, args: argparse.Namespace, header: dict) -> dict:
    """Generate one clip's frames, write its mp4 and JSON (``header``: the run's settings and
    model files, then this clip's results), return the JSON record."""
    session = new_session()
    context, actions = read_inputs(clip, args, session.tokenizer.frame_size)
    started = time.perf_counter()
    session.start(context, actions[: args.demo_num - 1])
    prefilled = time.perf_counter()
    generated, tokens, steps = [], [], []
    for action in tqdm(actions[args.demo_num - 1 :], desc=clip.name, unit="frame",
                       leave=False, disable=None):
        frame, stats = session.step(action)
        generated.append(frame)
        tokens.append(session.newest_ids.tolist())
        steps.append(stats)
    seconds = time.perf_counter() - prefilled

    output = Path(args.output_dir)
    video = write_video(output / f"{clip.name}.mp4", np.concatenate([context, generated]), FPS)
    record = {
        "clip": clip.name,
        "video": str(video),
        "context_frames": len(context),
        "generated_frames": len(generated),
        **header,
        "cache": session.cache.strategy.describe(),
        "tokens": tokens,
        "stats": steps,
        "totals": {
            "prefill_seconds": prefilled - started,
            "seconds": seconds,
            "frames_per_second": len(generated) / seconds,
            "forward_passes": sum(s["forward_passes"] for s in steps),
        },
    }
    (output / f"{clip.name}.json").write_text(json.dumps(record, indent=1))
    return record


def summary(record: dict) -> str:
    """The one line printed per clip: speed and what the cache did."""
    totals, last = record["totals"], record["stats"][-1]
    return (
        f"{record['clip']}: {record['generated_frames']} frames in {totals['seconds']:.2f} s "
        f"({totals['frames_per_second']:.2f} fps), {totals['forward_passes']} forward passes, "
        f"{last['live_tokens']} live tokens ({last['bytes_live'] / 2**20:.2f} MiB KV), "
        f"{last['evicted_tokens']} evicted, {last['reprefills']} re-prefills -> {record['video']}"
    )


# -- main ------------------------------------------------------------------------------------


def _one_line(error: BaseException) -> str:
    """An error message on one line (weight mismatches list their problems on several)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:1] + ["; ".join(lines[1:])]).strip() or type(error).__name__


def run(args: argparse.Namespace) -> int:
    """The whole batch; user errors propagate to ``main`` as exceptions."""
    sampling = sampling_from(args)
    params = strategy_params(args)
    data_root = Path(args.data_root)
    if not data_root.is_dir():
        raise FileNotFoundError(f"--data_root {data_root}: not a folder")
    clips = list_clips(data_root)
    if not clips:
        raise FileNotFoundError(f"--data_root {data_root}: no clip_N.mp4 + clip_N.jsonl pairs")
    device, dtype = pick_device(args.device, None if args.dtype == "auto" else args.dtype)
    model, tokenizer, files = load_model(args, params, device, dtype)
    new_session = build_session_factory(model, tokenizer, args, params, sampling)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    settings = {
        "strategy": args.cache_strategy,
        "strategy_params": params,
        "schedule": SCHEDULES[args.accelerate_algo],
        "window": args.window_size,
        "sampling": dataclasses.asdict(sampling),
        "seed": args.seed,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "demo_num": args.demo_num,
        "frames": args.frames,
        "action_alignment": args.action_alignment,
    }
    header = {"args": settings, "model": files}
    failed = []
    for clip in tqdm(clips, desc="clips", unit="clip", disable=None):
        try:
            record = run_clip(new_session, clip, args, header)
        except CLIP_ERRORS as error:
            failed.append(clip.name)
            tqdm.write(f"{PROG}: warning: skipped {clip.name}: {_one_line(error)}",
                       file=sys.stderr)
            continue
        tqdm.write(summary(record))
    if failed:
        print(f"{PROG}: {len(failed)} of {len(clips)} clips skipped: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the batch; return the exit status (0 all written, 1 some clip skipped, 2 error)."""
    args = parse_args(argv)
    try:
        return run(args)
    except USER_ERRORS as error:
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
