"""Batch generation over a folder of clips, as MineWorld's batch script, with managed KV caches.

For every ``clip_N.mp4`` + ``clip_N.jsonl`` in ``--data_root`` (natural order), the first
``--demo_num`` frames and the actions between them are prefilled, then ``--frames`` frames are
generated, one per following action line. Outputs, in ``--output_dir``:

* ``clip_N.mp4``: the context frames (as fed to the model, at the tokenizer's frame size)
  followed by the generated ones, at 6 fps; the JSON says how many of each;
* ``clip_N.json``: the settings, the generated token ids (``[rows][cols]`` per frame), the
  statistics of every step (time, forward passes, live tokens, KV bytes, evictions,
  re-prefills ...), totals, the model files and ``quality``: PSNR and SSIM of every generated
  frame against the clip's own frame at that time (read from its mp4 at the tokenizer's frame
  size; a frame's PSNR is ``null`` where the two are identical: JSON has no infinity), the
  pooled PSNR and the mean SSIM (``mineworld.metrics.sequence_scores``), for as many generated
  frames as the clip has frames after the context; ``null`` when it has none.

Actions: with ``--action-alignment same`` (the default, as the published interactive demo)
frame i is followed by action line i; ``next`` pairs frame i with line i + 1, as the published
batch script did. A clip needs ``demo_num`` frames and ``demo_num - 1 + frames`` actions.

Sampling: the model's own default (its config's ``decoding`` section: the embedded model decodes
greedily with an overuse penalty of 1, since its plain greedy rollouts freeze; the published
configs name none, so greedy) unless a flag is given; ``--top_k`` or ``--top_p`` alone sample
at the model's temperature (1.0 for a greedy model); ``--temperature`` always wins (0 is
greedy).

A ``--demo_num`` longer than the model's context is a prompt longer than the context: a bounded
strategy prefills it through eviction; ``none`` prefills the newest frames that fit with room
for the frame being made, and says so on stderr.

Several clips at once: ``--batch-size B`` decodes B clips together on one device, their forward
passes as one (``mineworld.decoding.run_together``: the same tokens as one at a time), and
``torchrun --nproc_per_node N inference.py ...`` shards the clips over N processes (gloo on CPU,
nccl on CUDA, one GPU a process; several machines through torchrun's own ``--nnodes`` and
``--rdzv-endpoint``). Every clip is written once, by the process that ran it; the first writes
``summary.json`` (each clip's speed, cache statistics and quality, and which process ran it).

Exit status: 0 when some clip was written (a clip that cannot be used, too short for instance,
is skipped with a warning naming it), 1 when no clip was, 2 for a usage, model or
configuration error (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mineworld.cache_flags import add_cache_flags  # no torch: it loads after the flags
from mineworld.cli import add_guidance_flag, add_sampling_flags, positive_int
from mineworld.schedules import SCHEDULES

PROG = "inference.py"
FPS = 6
# --accelerate-algo: every schedule by its name, and diagonal by the published script's name.
ALGORITHMS = {**{name: name for name in SCHEDULES}, "image_diagd": "diagonal"}


# -- command line ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate frames for every clip_N.mp4 + clip_N.jsonl in a folder with a "
        "MineWorld model, writing clip_N.mp4 (context then generated frames, 6 fps) and "
        "clip_N.json (tokens, per-frame statistics, settings) to --output_dir.",
        epilog="Exit status: 0 some clip written (the others skipped with a warning: too short "
        "or unreadable); 1 no clip written; 2 usage, model or configuration error.",
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
    data.add_argument("--data_root",
                      help="folder of clip_N.mp4 + clip_N.jsonl (one action line per frame); "
                      "default with the embedded model: its validation clips")
    data.add_argument("--output_dir", required=True)
    data.add_argument("--demo_num", type=positive_int,
                      help="context frames prefilled from each clip (default: half the model's "
                      "context, at most 8)")
    data.add_argument("--frames", type=positive_int, default=8,
                      help="frames to generate per clip (default: 8)")
    data.add_argument("--action-alignment", choices=["same", "next"], default="same",
                      help="same: frame i is followed by action line i (default); next: by "
                      "line i + 1, as the published batch script")
    data.add_argument("--batch-size", type=positive_int, default=1,
                      help="clips decoded together, their forward passes as one (default: 1); "
                      "under torchrun, per process")

    decode = parser.add_argument_group("decoding")
    decode.add_argument("--accelerate-algo", choices=list(ALGORITHMS), default="naive",
                        help="naive: one token per pass; diagonal or image_diagd: diagonal "
                        "decoding; published-diagonal: diagonal decoding as the published code "
                        "does it, token for token (default: naive)")
    decode.add_argument("--window_size", type=positive_int,
                        help="diagonal decoding: tokens a row is ahead of the next (default: the "
                        "model's, 1 for the embedded model, 2 for the published configs)")
    add_sampling_flags(decode, top_p=True)
    add_guidance_flag(decode)

    add_cache_flags(parser, "only the flags given are passed to the strategy; the others keep "
                    "its defaults for the model")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # --help and bad flags answer here, before torch and the model load

import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from cache import strategy_class  # noqa: E402
from mineworld.actions import ActionFileError, read_actions  # noqa: E402
from mineworld.cache_flags import strategy_params  # noqa: E402
from mineworld.decoding import Sampling, run_together  # noqa: E402
from mineworld.embedded import VALIDATION_DIR  # noqa: E402
from mineworld.loading import USER_ERRORS, load_model, one_line, uses_embedded  # noqa: E402
from mineworld.metrics import sequence_scores  # noqa: E402
from mineworld.session import (  # noqa: E402
    Session,
    default_reference_frames,
    max_reference_frames,
    pick_device,
)
from mineworld.tuning import fit_target_fps  # noqa: E402
from mineworld.video import VideoFileError, list_clips, read_video, write_video  # noqa: E402


class ClipError(ValueError):
    """A clip that cannot be used (too short); the run skips it and goes on."""


# Errors that concern one clip's files: reported, the clip skipped, the others still run.
CLIP_ERRORS = (ClipError, ActionFileError, VideoFileError)


# -- model -----------------------------------------------------------------------------------


def prefilled_frames(args: argparse.Namespace, config) -> int:
    """How many of the ``--demo_num`` context frames are prefilled: all of them with a bounded
    cache (it evicts on the way), the newest that fit with a full one (said on stderr)."""
    most = max_reference_frames(config)
    if args.demo_num <= most or strategy_class(args.cache_strategy).bounded:
        return args.demo_num
    print(f"{PROG}: note: --demo_num {args.demo_num} is more than strategy "
          f"{args.cache_strategy}'s {config.context_frames}-frame context holds with a frame "
          f"to make; the newest {most} context frames are prefilled", file=sys.stderr)
    return most


def build_session_factory(model, tokenizer, args: argparse.Namespace, sampling: Sampling,
                          reference_frames: int):
    """A function returning a fresh Session per clip (its own cache, statistics and RNG) on
    the strategy attached to ``model``, prefilled from ``reference_frames`` context frames.

    One session is built here so that bad settings fail before any clip is read.
    """
    factory = functools.partial(
        Session,
        model,
        tokenizer,
        reference_frames=reference_frames,
        schedule=ALGORITHMS[args.accelerate_algo],
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
    """The clip's first ``demo_num + frames`` frames (the context, then the true frames, as
    many as it has) and the ``demo_num - 1 + frames`` actions after the first; ClipError with
    both counts when the clip is too short for the context or the actions."""
    # with_name, not with_suffix: a stem may hold a dot (clip.v2).
    frames = read_video(clip.with_name(clip.name + ".mp4"), frame_size,
                        args.demo_num + args.frames)
    actions = read_actions(clip.with_name(clip.name + ".jsonl"), args.action_alignment)
    need = args.demo_num - 1 + args.frames
    shift = args.action_alignment == "next"  # that alignment drops the first line
    context_frames = min(len(frames), args.demo_num)  # the frames after it are optional
    if context_frames < args.demo_num or len(actions) < need:
        raise ClipError(
            f"needs {args.demo_num} frames and {need + shift} action lines "
            f"(--demo_num {args.demo_num}, --frames {args.frames}, alignment "
            f"{args.action_alignment}), has {context_frames} frames and {len(actions) + shift} "
            "lines"
        )
    return frames, actions[:need]


@dataclasses.dataclass
class ClipRun:
    """One clip being generated: its session (prefilled), frames and what it has made."""

    clip: Path
    session: Session
    context: np.ndarray
    truth: np.ndarray
    actions: list
    prefill_seconds: float
    generated: list = dataclasses.field(default_factory=list)
    tokens: list = dataclasses.field(default_factory=list)
    steps: list = dataclasses.field(default_factory=list)


def start_clip(new_session, clip: Path, args: argparse.Namespace) -> ClipRun:
    """Read ``clip`` and prefill a new session with its context; ClipError when too short."""
    session = new_session()
    frames, actions = read_inputs(clip, args, session.tokenizer.frame_size)
    started = time.perf_counter()
    session.start(frames[: args.demo_num], actions[: args.demo_num - 1])
    return ClipRun(clip, session, frames[: args.demo_num], frames[args.demo_num :],
                   actions[args.demo_num - 1 :], time.perf_counter() - started)


def generate(model, runs: list[ClipRun]) -> float:
    """Every frame of ``runs``, made together (one forward per pass for all of them); returns
    the seconds it took."""
    started = time.perf_counter()
    names = ", ".join(run.clip.name for run in runs)
    for index in tqdm(range(len(runs[0].actions)), desc=names, unit="frame", leave=False,
                      disable=None):
        made = run_together(model, [run.session.step_passes(run.actions[index])
                                    for run in runs])
        for run, (frame, stats) in zip(runs, made, strict=True):
            run.generated.append(frame)
            run.tokens.append(run.session.newest_ids.tolist())
            run.steps.append(stats)
    return time.perf_counter() - started


def write_clip(run: ClipRun, seconds: float, args: argparse.Namespace, header: dict) -> dict:
    """Write the clip's mp4 and JSON (``header``: the run's settings and model files, then this
    clip's results; ``seconds``: the time its frames took, beside those made with them);
    return the JSON record."""
    output = Path(args.output_dir)
    name, generated, steps = run.clip.name, run.generated, run.steps
    video = write_video(output / f"{name}.mp4", np.concatenate([run.context, generated]), FPS)
    record = {
        "clip": name,
        "video": str(video),
        "context_frames": len(run.context),
        "generated_frames": len(generated),
        **header,
        "cache": run.session.cache.strategy.describe(),
        "tokens": run.tokens,
        "stats": steps,
        "totals": {
            "prefill_seconds": run.prefill_seconds,
            "seconds": seconds,
            "frames_per_second": len(generated) / seconds,
            "forward_passes": sum(step["forward_passes"] for step in steps),
        },
        "quality": (sequence_scores(generated[: len(run.truth)], run.truth)
                    if len(run.truth) else None),
    }
    (output / f"{name}.json").write_text(json.dumps(finite_or_null(record), indent=1))
    return record


def finite_or_null(value):
    """``value`` with every infinite or NaN float replaced by None, so that the JSON is
    standard (``json.dumps`` would write ``Infinity``, which strict parsers refuse)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    return value


def summary(record: dict) -> str:
    """The one line printed per clip: speed, what the cache did and the quality."""
    totals, last, quality = record["totals"], record["stats"][-1], record["quality"]
    scores = ""
    if quality is not None:
        ssim = f", SSIM {quality['mean_ssim']:.3f}" if "mean_ssim" in quality else ""
        scores = f", PSNR {quality['pooled_psnr']:.2f} dB{ssim} vs {quality['frames']} true frames"
    hit_rate, by_role = last["attention_hit_rate"], last["attention_hit_rate_by_role"]
    kept = "" if hit_rate is None else (
        f" (attention hit rate {hit_rate:.3f}: "
        + ", ".join(f"{role.replace('_', ' ')} {share:.3f}" for role, share in by_role.items())
        + ")")
    return (
        f"{record['clip']}: {record['generated_frames']} frames in {totals['seconds']:.2f} s "
        f"({totals['frames_per_second']:.2f} fps), {totals['forward_passes']} forward passes, "
        f"{last['live_tokens']} live tokens ({last['bytes_live'] / 2**20:.2f} MiB KV), "
        f"{last['evicted_tokens']} evicted{kept}, {last['reprefills']} re-prefills{scores} -> "
        f"{record['video']}"
    )


# -- main ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """The whole batch; user errors propagate to ``main`` as exceptions."""
    params = strategy_params(args)
    if args.data_root is None and not uses_embedded(args):
        raise ValueError("--data_root is required with --model_ckpt and --config")
    data_root = Path(args.data_root or VALIDATION_DIR)
    if not data_root.is_dir():
        raise FileNotFoundError(f"--data_root {data_root}: not a folder")
    clips = list_clips(data_root)
    if not clips:
        raise FileNotFoundError(f"--data_root {data_root}: no clip_N.mp4 + clip_N.jsonl pairs")
    group = ProcessGroup()
    device, dtype = pick_device(group.device(args.device),
                                None if args.dtype == "auto" else args.dtype)
    group.start(device)
    model, tokenizer, files = load_model(args, params, device, dtype)
    if args.demo_num is None:
        args.demo_num = default_reference_frames(model.config)
    if args.window_size is None:
        args.window_size = model.config.diagonal_window
    sampling = Sampling.from_flags(model.config, args.temperature, args.top_k, args.top_p,
                                  args.repeat_penalty, args.guidance, args.overuse_penalty)
    reference_frames = prefilled_frames(args, model.config)
    fit = None
    if args.target_fps is not None:
        fit = fit_target_fps(model, tokenizer, args.cache_strategy, params, args.target_fps,
                             ALGORITHMS[args.accelerate_algo], reference_frames,
                             args.window_size)
        print(f"{PROG}: {fit}", file=sys.stderr)
        params = fit.params
        args.accelerate_algo = fit.schedule
    model.setup_cache_manager(args.cache_strategy, **params)
    new_session = build_session_factory(model, tokenizer, args, sampling, reference_frames)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    settings = {
        "strategy": args.cache_strategy,
        "strategy_params": params,
        "schedule": ALGORITHMS[args.accelerate_algo],
        "window": args.window_size,
        "sampling": dataclasses.asdict(sampling),
        "seed": args.seed,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "demo_num": args.demo_num,
        "frames": args.frames,
        "action_alignment": args.action_alignment,
        "kv_budget_mb": args.kv_budget_mb,
        "target_fps": fit.as_dict() if fit else None,
    }
    header = {"args": settings, "model": files}
    rank, processes = group.rank, group.size
    mine = clips[rank::processes]
    records, failed = [], []
    for first in tqdm(range(0, len(mine), args.batch_size), desc="clips", unit="batch",
                      disable=None or rank > 0):
        runs = []
        for clip in mine[first : first + args.batch_size]:
            try:
                runs.append(start_clip(new_session, clip, args))
            except CLIP_ERRORS as error:
                failed.append(clip.name)
                tqdm.write(f"{PROG}: warning: skipped {clip.name}: {one_line(error)}",
                           file=sys.stderr)
        if not runs:
            continue
        names = ", ".join(run.clip.name for run in runs)
        try:
            seconds = generate(model, runs)
            for run in runs:
                record = write_clip(run, seconds, args, header)
                records.append(brief(record, rank))
                tqdm.write(summary(record))
        except Exception as error:  # a crash names the clips (and process) it was making
            raise RuntimeError(f"{names}{group.where()}: {one_line(error)}") from error
    records, failed = group.gathered(records, failed)
    order = {clip.name: index for index, clip in enumerate(clips)}
    records.sort(key=lambda record: order[record["clip"]])
    failed.sort(key=order.__getitem__)
    if rank == 0:
        written = {"args": settings, "model": files, "processes": processes,
                   "batch_size": args.batch_size, "clips": records, "skipped": failed}
        path = Path(args.output_dir) / "summary.json"
        path.write_text(json.dumps(finite_or_null(written), indent=1))
        if failed:
            print(f"{PROG}: {len(failed)} of {len(clips)} clips skipped: {', '.join(failed)}",
                  file=sys.stderr)
        print(f"{len(records)} clips -> {path}")
    return 1 if not records else 0


def brief(record: dict, rank: int) -> dict:
    """A clip's line of ``summary.json``: its speed, the cache's last state and its quality."""
    last, quality = record["stats"][-1], record["quality"] or {}
    return {
        "clip": record["clip"],
        "process": rank,
        "frames": record["generated_frames"],
        "frames_per_second": record["totals"]["frames_per_second"],
        "forward_passes": record["totals"]["forward_passes"],
        **{key: last[key] for key in ("live_tokens", "bytes_live", "evicted_tokens",
                                      "attention_hit_rate", "attention_hit_rate_by_role",
                                      "reprefills")},
        "pooled_psnr": quality.get("pooled_psnr"),
        "mean_ssim": quality.get("mean_ssim"),
    }


class ProcessGroup:
    """This process's place among those torchrun started (rank 0 of 1 without torchrun)."""

    def __init__(self):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    def device(self, asked: str | None) -> str | None:
        """The device of this process: with several on CUDA, one GPU each (its local rank)."""
        if self.size > 1 and asked in (None, "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return asked

    def start(self, device: torch.device) -> None:
        if self.size > 1:
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def where(self) -> str:
        return f" (process {self.rank} of {self.size})" if self.size > 1 else ""

    def gathered(self, records: list, failed: list) -> tuple[list, list]:
        """Every process's records and skipped clips (all of them wait here for the others);
        the processes then leave their group."""
        if self.size == 1:
            return records, failed
        parts: list = [None] * self.size
        torch.distributed.all_gather_object(parts, (records, failed))
        torch.distributed.barrier()  # every process has its copy before any leaves the group
        torch.distributed.destroy_process_group()
        return ([record for part, _ in parts for record in part],
                [name for _, part in parts for name in part])


def main(argv: list[str] | None = None) -> int:
    """Run the batch; return the exit status (0 some clip written, 1 none, 2 error)."""
    args = parse_args(argv)
    try:
        return run(args)
    except USER_ERRORS as error:
        print(f"{PROG}: error: {one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
