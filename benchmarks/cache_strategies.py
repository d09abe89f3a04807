"""Every cache strategy over a long session, against a full cache of the same size.

    . .venv/bin/activate
    python -m benchmarks.cache_strategies                  # 200 frames, diagonal schedule
    python -m benchmarks.cache_strategies --quick          # smoke run: 12 frames
    python -m benchmarks.cache_strategies --frames 50 --schedule naive --strategies none,frames \\
        --set frames.recent_frames=5 --csv /tmp/cache.csv
    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.cache_strategies ...   # on a loaded machine
    python -m benchmarks.cache_strategies --bookkeeping    # only the cache's own cost per step
    python -m benchmarks.cache_strategies --preset 300M_16f --device cuda --dtype float16 \
        --strategies none,streaming,h2o,frames --no-baseline --agreement   # the GPU check

The model has the published frame layout (a 14 x 24 grid of an 8192-code tokenizer and 11 action
tokens: 347 tokens per frame; vocab 8262; 5552 positions = 16 frames) but a small width so that
it runs on a few CPU cores (``--width/--layers/--heads/--kv-heads/--mlp``; ``--preset`` takes a
published model's shapes instead), with random weights, on ``--device`` in ``--dtype``.
The tokenizer is a cheap stand-in (mean red level of 4 x 4 patches -> ids, ids -> flat patches).
Each strategy gets its own ``Session`` (8 reference frames, diagonal schedule, window 2 by
default), keeps ``BUDGET_FRAMES`` frames when it keeps a budget (the parameters its own
``for_budget`` gives; ``--set`` overrides them) and plays ``--frames`` frames of the same seeded
action script.

Baseline: for each strategy, a ``none`` session prefilled with as many whole frames as the
strategy keeps live in steady state (its budget / 347, rounded; the frame's prefix of the last
token and 11 action tokens comes with the step), timed on one frame and then put back in its
prefilled state (untimed; a deep copy of the prefilled session by default, or a real re-prefill
with ``--baseline-reset prefill``) so that it never grows. A baseline frame is played right
before every frame of its strategy (``--shared-baseline``: one per round for all strategies of
the same size) and the order rotates every round, so that load drift hits both alike.
``ratio`` is the strategy's median ms/frame over its baseline's median (``paired``: the median
of the frame-by-frame ratios). ``none`` is compared with the baseline of its own reference
frames; its live count grows until it re-prefills, and its re-prefill spike (p99/p50, max/p50 of
its ms/frame, re-prefill frames included) is printed below the table. Timings on a shared
machine are noisy: read the ratios. ms/frame is the session's own ``ms_per_frame`` (decode,
re-prefill when there is one, and the stand-in tokenizer's decode).

``--agreement`` first decodes one frame greedily on the device and with the same weights in
fp32 on the CPU, and prints the share of its tokens that agree (random weights make many
near-ties, and a token that differs changes the inputs of those after it). On CUDA the peak
memory the device allocated is printed after the table.

``--bookkeeping`` measures instead what the cache itself costs per decode step (choosing
victims and slots: ``reserve``, ``begin_step``, ``end_step``; no model, no attention) at
capacities of 1k, 4k and 16k tokens: flat for ``streaming`` and ``frames`` (their victims come
from a heap), linear for ``h2o`` (its scores change every step; see ``cache/strategy.py``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.common import percentile, print_machine
from cache import STRATEGIES, KVCacheManager, Layout
from mineworld.actions import make_action
from mineworld.config import ACTION_TOKENS, ModelConfig, load_config, preset_path
from mineworld.decoding import Sampling
from mineworld.model import RotaryEmbedding, Transformer, cache_layout
from mineworld.session import Session, pick_device
from mineworld.tokenizers.base import ImageTokenizer

ROWS, COLS, CODES, VOCAB, POSITIONS = 14, 24, 8192, 8262, 5552
PATCH = 4  # stand-in frames are (4 * 14) x (4 * 24) pixels

SHAPES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads")  # what --preset sets
BUDGET_FRAMES = 8  # what each bounded strategy keeps by default: 8 * 347 = 2776 tokens
COUNTERS = ("evicted_tokens", "eviction_events", "rebases", "reprefills", "reprefill_seconds")


class PatchTokenizer(ImageTokenizer):
    """A stand-in tokenizer: one id per 4 x 4 patch from its mean red level (cheap both ways)."""

    def __init__(self):
        super().__init__(frame_size=(PATCH * COLS, PATCH * ROWS), grid=(ROWS, COLS),
                         codebook_size=CODES)

    def _encode_batch(self, images):
        patches = torch.nn.functional.avg_pool2d(images[:, :1], PATCH)[:, 0]
        return ((patches + 1) / 2 * (CODES - 1)).round().long()

    def _decode_batch(self, ids):
        level = ids.float() / (CODES - 1) * 2 - 1
        image = level.repeat_interleave(PATCH, -1).repeat_interleave(PATCH, -2)
        return image[:, None].expand(-1, 3, -1, -1)


def model_config(args) -> ModelConfig:
    """The published frame layout in the shapes asked for: ``--preset``'s, else the flags'."""
    if args.preset:
        preset = load_config(preset_path(args.preset))
        shapes = {name: getattr(preset, name) for name in SHAPES}
    else:
        flags = (args.width, args.mlp, args.layers, args.heads, args.kv_heads)
        shapes = dict(zip(SHAPES, flags, strict=True))
    return ModelConfig(vocab_size=VOCAB, max_position_embeddings=POSITIONS, image_rows=ROWS,
                       image_cols=COLS, codebook_size=CODES, **shapes)


def build_model(args) -> Transformer:
    """Random weights in the shapes asked for, on ``args.device`` in ``args.dtype``."""
    config = model_config(args)
    torch.manual_seed(args.seed)
    model = Transformer(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.02)
    return model.to(*pick_device(args.device, args.dtype))


def first_frame_agreement(model, tokenizer, scene, action: dict, args) -> tuple[float, int]:
    """(the share of one greedy frame's tokens that the model makes on its device as it does in
    fp32 on the CPU, the first token in raster order that differs, or -1)."""
    made = []
    for copy_of_model in (model, copy.deepcopy(model).to("cpu", torch.float32)):
        session = Session(copy_of_model, tokenizer, reference_frames=args.reference_frames,
                          schedule=args.schedule, window=args.window, sampling=Sampling())
        session.start(*scene)  # its newest reference frames
        session.step(action)
        made.append(session.newest_ids.flatten().cpu())
    same = made[0] == made[1]
    return same.float().mean().item(), -1 if same.all() else int((~same).nonzero()[0])


def action_script(count: int, seed: int) -> list[dict]:
    """A fixed, seeded walk: a few buttons and a small camera turn per frame."""
    rng = np.random.default_rng(seed)
    buttons = ["forward", "back", "left", "right", "jump", "sprint", "sneak", "attack", "use"]
    actions = []
    for _ in range(count):
        pressed = [b for b in buttons if rng.random() < 0.2]
        pitch, yaw = rng.uniform(-15, 15, 2).round(1)
        actions.append(make_action(pressed, pitch=float(pitch), yaw=float(yaw)))
    return actions


def parse_value(raw: str):
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        return int(raw)
    except ValueError:
        return float(raw)


def budget_params(strategies: list[str], layout: Layout, prompt_length: int) -> dict[str, dict]:
    """Each strategy's parameters for ``BUDGET_FRAMES`` frames (its own ``for_budget``)."""
    tokens = BUDGET_FRAMES * layout.frame_tokens
    return {name: STRATEGIES[name].for_budget(tokens, layout, prompt_length)
            for name in strategies}


def parse_overrides(items: list[str], params: dict[str, dict]) -> dict[str, dict]:
    """``params`` with the ``--set STRATEGY.PARAM=VALUE`` overrides applied."""
    params = {name: dict(values) for name, values in params.items()}
    for item in items:
        key, _, raw = item.partition("=")
        name, _, field = key.partition(".")
        if name not in params or not field or not raw:
            raise SystemExit(f"--set wants STRATEGY.PARAM=VALUE for a chosen strategy: {item!r}")
        params[name][field] = parse_value(raw)
    return params






def bookkeeping(steps: int = 2000) -> None:
    """Median time of the cache's own work per one-token decode step, at steady state."""
    layers, kv_heads, head_dim, block = 4, 1, 64, 64
    print("| strategy | capacity | us/step p50 | us/step mean (re-bases included) |")
    print("|---|---:|---:|---:|")
    for name, strategy in STRATEGIES.items():
        if not strategy.bounded:
            continue
        for capacity in (1024, 4096, 16384):
            positions = 2 * capacity  # a re-base every `capacity` tokens
            layout = Layout(block, positions)
            params = strategy.for_budget(capacity, layout, prompt_length=capacity)
            manager = KVCacheManager(name, layout=layout, **params)
            manager.bind(num_layers=layers, num_kv_heads=kv_heads, head_dim=head_dim,
                         max_positions=positions, rotate=RotaryEmbedding(head_dim, positions, 1e4),
                         dtype=torch.float32, device="cpu")
            manager.reset(prompt_length=capacity, step_tokens=block)
            base = manager.reserve(capacity)
            for start in range(0, capacity, block):  # fill it, a block at a time
                manager.begin_step(torch.arange(base + start, base + start + block))
                manager.end_step()
            times = []
            for _ in range(steps):
                started = time.perf_counter()
                position = manager.reserve(1)
                manager.begin_step(torch.tensor([position]))
                manager.end_step()
                times.append(time.perf_counter() - started)
            print(f"| {name} | {capacity} | {1e6 * statistics.median(times):.0f} | "
                  f"{1e6 * statistics.mean(times):.0f} |")


class Baseline:
    """A ``none`` session that always plays one frame after ``frames`` prefilled frames.

    ``reset="snapshot"`` (default) plays every frame on a deep copy of one freshly prefilled
    session (the same state as a re-prefill, in milliseconds); ``"prefill"`` re-prefills it
    before every frame. Either way the preparation is untimed and the cache never grows."""

    def __init__(self, model, tokenizer, frames: int, scene, args):
        self.frames, self.reset = frames, args.baseline_reset
        self.session = Session(model, tokenizer, reference_frames=frames,
                               schedule=args.schedule, window=args.window, seed=args.seed)
        self.scene = scene  # the session starts from its newest ``frames`` frames
        self.session.start(*scene)
        self.live: tuple[int, int] | None = None

    def frame(self, action: dict) -> float:
        if self.reset == "prefill":
            self.session.start(*self.scene)
            session = self.session
        else:  # the model and tokenizer stay shared; cache, history and generator are copied
            session = self.session.fork()
        start_live = session.cache.stats.live_tokens
        _, stats = session.step(action)
        self.live = (start_live, stats["live_tokens"])
        return stats["ms_per_frame"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200, help="timed frames per strategy")
    parser.add_argument("--warmup", type=int, default=1, help="untimed frames first")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help="comma-separated (default: every registered one)")
    parser.add_argument("--set", action="append", default=[], metavar="STRATEGY.PARAM=VALUE",
                        help="override a strategy parameter, e.g. h2o.recent_size=2000")
    parser.add_argument("--schedule", default="diagonal", choices=["diagonal", "naive"])
    parser.add_argument("--window", type=int, default=2, help="diagonal schedule window")
    parser.add_argument("--reference-frames", type=int, default=8)
    parser.add_argument("--width", type=int, default=256, help="hidden size")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=1)
    parser.add_argument("--mlp", type=int, default=768, help="intermediate size")
    parser.add_argument("--no-baseline", action="store_true", help="skip the none baselines")
    parser.add_argument("--baseline-reset", default="snapshot", choices=["snapshot", "prefill"],
                        help="how a baseline frame starts from its prefilled state (untimed)")
    parser.add_argument("--shared-baseline", action="store_true",
                        help="one baseline frame per round for all strategies of the same "
                             "baseline size, instead of one before every strategy frame")
    parser.add_argument("--preset", help="a published model's shapes (e.g. 300M_16f) instead of "
                        "--width/--layers/--heads/--kv-heads/--mlp")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="default: float16 on CUDA, float32 on the CPU")
    parser.add_argument("--agreement", action="store_true",
                        help="first: one greedy frame on the device against fp32 on the CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, help="also write the table as CSV")
    parser.add_argument("--quick", action="store_true", help="smoke run: 12 frames")
    parser.add_argument("--bookkeeping", action="store_true",
                        help="only the cache's own cost per decode step vs capacity")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames = 12
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bookkeeping:
        print_machine("cache_strategies --bookkeeping")
        bookkeeping()
        return
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")

    model, tokenizer = build_model(args), PatchTokenizer()
    config = model.config
    frame_tokens = config.tokens_per_frame
    prompt_length = args.reference_frames * frame_tokens - ACTION_TOKENS - 1  # as Session's
    params = parse_overrides(args.set, budget_params(names, cache_layout(config), prompt_length))
    print_machine("cache_strategies")
    print(f"model: {config.num_hidden_layers} layers, hidden {config.hidden_size}, MLP "
          f"{config.intermediate_size}, {config.num_attention_heads} heads / "
          f"{config.num_key_value_heads} kv, vocab {config.vocab_size}, {POSITIONS} positions "
          f"({config.context_frames} frames of {frame_tokens} tokens), random weights, "
          f"{model.lm_head.weight.dtype} on {model.lm_head.weight.device}")
    print(f"session: {args.reference_frames} reference frames, schedule {args.schedule}"
          f"{f' (window {args.window})' if args.schedule == 'diagonal' else ''}, "
          f"{args.frames} timed frames after {args.warmup} untimed\n")

    # The scene: as many random reference frames as the largest baseline needs.
    rng = np.random.default_rng(args.seed)
    scene_frames = config.context_frames - 1
    images = rng.integers(0, 256, (scene_frames, PATCH * ROWS, PATCH * COLS, 3), dtype=np.uint8)
    scene = (images, action_script(scene_frames - 1, args.seed + 1))
    script = action_script(args.warmup + args.frames, args.seed + 2)
    if args.agreement:
        share, first = first_frame_agreement(model, tokenizer, scene, script[0], args)
        print(f"first frame, greedy, against fp32 on the CPU: {share:.1%} of the tokens agree"
              + (f" (the first to differ: token {first})" if first >= 0 else "") + "\n")
    if model.lm_head.weight.is_cuda:
        torch.cuda.reset_peak_memory_stats()

    sessions, baseline_of, baselines = {}, {}, {}
    for name in names:
        session = Session(model, tokenizer, strategy=name, strategy_params=params[name],
                          reference_frames=args.reference_frames, schedule=args.schedule,
                          window=args.window, seed=args.seed)
        session.start(*scene)  # its newest reference frames
        refs = args.reference_frames
        sessions[name] = session
        capacity = session.cache.storage.capacity
        steady = refs if capacity >= POSITIONS else round(capacity / frame_tokens)
        steady = min(max(steady, 1), scene_frames)
        if not args.no_baseline:
            if steady not in baselines:
                baselines[steady] = Baseline(model, tokenizer, steady, scene, args)
            baseline_of[name] = baselines[steady]

    times = {name: [] for name in names}
    base_times = {name: [] for name in names}
    peaks = {name: {"live_tokens": 0, "bytes_allocated": 0, "bytes_live": 0} for name in names}
    at_warmup, last = {}, {}
    # One round: every strategy plays a frame, each after a baseline frame of its size (or,
    # with --shared-baseline, one baseline frame per size); the order rotates every round.
    if args.shared_baseline:
        units = [[name] for name in names] + [[("base", k)] for k in baselines]
    else:
        units = [[("base", baseline_of[name].frames), name] if name in baseline_of else [name]
                 for name in names]
    started = time.perf_counter()
    for round_index in tqdm(range(args.warmup + args.frames), desc="frames", unit="round"):
        timed = round_index >= args.warmup
        if round_index == args.warmup:
            at_warmup = {name: dict(last.get(name, {})) for name in names}
        action = script[round_index]
        shift = round_index % len(units)
        measured = {}
        for unit in units[shift:] + units[:shift]:
            for item in unit:
                if isinstance(item, tuple):
                    measured[item[1]] = baselines[item[1]].frame(action)
                    continue
                _, stats = sessions[item].step(action)
                last[item] = stats
                if timed:
                    times[item].append(stats["ms_per_frame"])
                    base = baseline_of.get(item)
                    if base is not None and not args.shared_baseline:
                        base_times[item].append(measured[base.frames])
                    for key in peaks[item]:
                        peaks[item][key] = max(peaks[item][key], stats[key])
        if timed and args.shared_baseline:
            for name, base in baseline_of.items():
                base_times[name].append(measured[base.frames])
    wall = time.perf_counter() - started

    rows = []
    for name in names:
        stats, before = last[name], at_warmup.get(name, {})
        counts = {key: stats[key] - before.get(key, 0) for key in COUNTERS}
        p50, p99 = statistics.median(times[name]), percentile(times[name], 99)
        row = {
            "strategy": name,
            "params": " ".join(f"{k}={v}" for k, v in params[name].items()) or "-",
            "ms_p50": p50,
            "ms_p99": p99,
            "fps": 1000 * len(times[name]) / sum(times[name]),
            "live_max": peaks[name]["live_tokens"],
            "alloc_mib": peaks[name]["bytes_allocated"] / 2**20,
            "live_mib": peaks[name]["bytes_live"] / 2**20,
            **counts,
        }
        if name in baseline_of:
            base = baseline_of[name]
            base_p50 = statistics.median(base_times[name])
            pairs = [a / b for a, b in zip(times[name], base_times[name], strict=True)]
            row.update(
                baseline_frames=base.frames,
                baseline_live=f"{base.live[0]}-{base.live[1]}",
                baseline_p50=base_p50,
                ratio=p50 / base_p50,
                ratio_paired=statistics.median(pairs),
            )
        rows.append(row)

    print(f"\n{args.frames} frames x {len(names)} strategies in {wall:.0f} s "
          f"(load average now {' '.join(Path('/proc/loadavg').read_text().split()[:3])})\n")
    header = ("| strategy | params | ms/frame p50 | p99 | fps | live max | KV alloc MiB "
              "| KV live MiB | evicted (events) | rebases | re-prefills | re-prefill s "
              "| baseline live | baseline p50 | ratio p50 | ratio paired |")
    print(header)
    print("|" + "---|" * 2 + "---:|" * (header.count("|") - 3))
    for r in rows:
        base = (f"{r['baseline_live']} | {r['baseline_p50']:.1f} | {r['ratio']:.3f} | "
                f"{r['ratio_paired']:.3f}") if "ratio" in r else "- | - | - | -"
        print(f"| {r['strategy']} | {r['params']} | {r['ms_p50']:.1f} | {r['ms_p99']:.1f} | "
              f"{r['fps']:.1f} | {r['live_max']} | {r['alloc_mib']:.2f} | {r['live_mib']:.2f} | "
              f"{r['evicted_tokens']} ({r['eviction_events']}) | {r['rebases']} | "
              f"{r['reprefills']} | {r['reprefill_seconds']:.2f} | {base} |")
    print("\nfps: frames over their seconds, re-prefills included; baseline live: live tokens "
          "of the none baseline at the start and end of its frame; ratio: strategy p50 / "
          "baseline p50; paired: median of frame-by-frame ratios.")
    if "none" in times:
        values = times["none"]
        p50 = statistics.median(values)
        print(f"none re-prefill spike: p99/p50 {percentile(values, 99) / p50:.2f}, "
              f"max/p50 {max(values) / p50:.2f} (p50 {p50:.1f} ms, max {max(values):.1f} ms, "
              f"{rows[names.index('none')]['reprefills']} re-prefills in {len(values)} frames)")
    if model.lm_head.weight.is_cuda:
        print(f"peak device memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB "
              f"(weights {sum(p.nbytes for p in model.parameters()) / 2**20:.0f} MiB)")
    if args.csv:
        fields = list(dict.fromkeys(key for r in rows for key in r))
        with args.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
