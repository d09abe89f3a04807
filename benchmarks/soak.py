"""Soak: one play session on the embedded model, thousands of frames with a bounded strategy.

    python -m benchmarks.soak                          # 2,000 frames, frames strategy, diagonal
    python -m benchmarks.soak --frames 300 --schedule naive --strategy streaming

It plays what the app plays (``mineworld.play.PlaySession`` on the shipped scene, the true world
replayed beside it and every frame scored), with a seeded script of walks, turns and jumps, and
prints process RSS and ms per frame near the start (after ``--warmup`` frames) and at the end,
with their growth. The goal is under 5 % for both: a bounded cache and the app's bounded history
(``KEPT_FRAMES``) mean that nothing should grow with the length of play. Time is judged in CPU
ms per frame (the process's CPU time, all threads): on a shared machine wall time measures the
neighbours too; wall ms are printed beside it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import numpy as np
import torch

from benchmarks.common import percentile, print_machine
from mineworld.actions import make_action
from mineworld.decoding import Sampling
from mineworld.embedded import SCENE, demo_scene, load_embedded
from mineworld.machine import load_average
from mineworld.play import KEPT_FRAMES, Options, PlaySession, Scene, process_memory_mb
from mineworld.schedules import SCHEDULES
from mineworld.session import default_reference_frames
from mineworld.tokenizers.base import resize_frames
from mineworld.world import read_recording

WINDOW = 100  # frames each end's ms per frame is the median of
GOAL = 5.0  # per cent
MOVES = [
    make_action(["forward"]), make_action(["forward", "sprint"]), make_action(["jump"]),
    make_action((), 0.0, 15.0), make_action((), 0.0, -15.0), make_action((), 9.0, 0.0),
    make_action((), -9.0, 0.0), make_action(["left"]), make_action(["right"]), make_action(),
]  # fmt: skip


def script(frames: int, seed: int) -> list[dict]:
    """Seeded runs of 1-8 repeats of a move, as a player holds a key."""
    rng = np.random.default_rng(seed)
    actions: list[dict] = []
    while len(actions) < frames:
        actions += [MOVES[rng.integers(len(MOVES))]] * int(rng.integers(1, 9))
    return actions[:frames]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=KEPT_FRAMES,
                        help="frames before the start figures (default: KEPT_FRAMES, once the "
                        "app's history is full)")
    parser.add_argument("--strategy", default="frames")
    parser.add_argument("--params", type=json.loads, default={},
                        help="strategy parameters as JSON (default: the strategy's defaults for "
                        "the model)")
    parser.add_argument("--schedule", choices=list(SCHEDULES), default="diagonal")
    parser.add_argument("--window", type=int, help="diagonal window (default: the model's)")
    parser.add_argument("--no-truth", action="store_true",
                        help="skip replaying the true world and scoring each frame")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.frames < args.warmup + 2 * WINDOW:
        parser.error(f"--frames must be at least --warmup + {2 * WINDOW}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine("soak: one play session on the embedded model")
    model, tokenizer = load_embedded()
    frames, actions = demo_scene(SCENE)
    world = None if args.no_truth else read_recording(SCENE)
    scene = Scene(SCENE.name, resize_frames(frames, tokenizer.frame_size), actions, world)
    reference = default_reference_frames(model.config)
    options = Options(reference, args.schedule, args.window, Sampling(), args.seed)
    play = PlaySession(model, tokenizer, scene, reference - 1, [(args.strategy, args.params)],
                       options)
    print(f"strategy {play.describe_sides()}, {args.schedule} decoding, "
          f"{args.frames} frames, true world {'off' if args.no_truth else 'on'}, "
          f"history kept: {KEPT_FRAMES} frames")
    ms, cpu_ms, rss = [], [], []
    started = time.perf_counter()
    for index, action in enumerate(script(args.frames, args.seed), 1):
        before, cpu_before = time.perf_counter(), time.process_time()
        play.step(action)
        ms.append(1000 * (time.perf_counter() - before))
        cpu_ms.append(1000 * (time.process_time() - cpu_before))
        if index in (args.warmup, args.frames):
            gc.collect()  # the figures compare live memory, not the collector's timing
        rss.append(process_memory_mb())
        if index % 250 == 0:
            print(f"  frame {index}: {percentile(cpu_ms[-WINDOW:], 50):.1f} CPU ms/frame, "
                  f"{percentile(ms[-WINDOW:], 50):.1f} wall (medians of the last {WINDOW}), "
                  f"RSS {rss[-1]:.1f} MB", flush=True)
    elapsed = time.perf_counter() - started
    side = play.sides[0]
    start_ms = percentile(cpu_ms[args.warmup : args.warmup + WINDOW], 50)
    end_ms = percentile(cpu_ms[-WINDOW:], 50)
    start_wall = percentile(ms[args.warmup : args.warmup + WINDOW], 50)
    end_wall = percentile(ms[-WINDOW:], 50)
    start_rss, end_rss = rss[args.warmup - 1], rss[-1]
    rss_growth = 100 * (end_rss / start_rss - 1)
    ms_growth = 100 * (end_ms / start_ms - 1)
    print(f"played {args.frames} frames in {elapsed:.0f} s ({args.frames / elapsed:.2f} fps); "
          f"cache: {side.rows[-1]['live tokens']} live tokens, "
          f"{side.rows[-1]['KV allocated']:.2f} MB KV allocated; kept {len(side.frames)} frames")
    print(f"RSS after frame 1: {rss[0]:.1f} MB; after frame {args.warmup}: {start_rss:.1f} MB; "
          f"after frame {args.frames}: {end_rss:.1f} MB; growth {rss_growth:+.2f} % "
          f"(goal < {GOAL:g} %)")
    print(f"CPU ms per frame, median of frames {args.warmup + 1}-{args.warmup + WINDOW}: "
          f"{start_ms:.1f}; of the last {WINDOW}: {end_ms:.1f}; growth {ms_growth:+.2f} % "
          f"(goal < {GOAL:g} %)")
    print(f"wall ms per frame, the same frames: {start_wall:.1f} and {end_wall:.1f} "
          f"({100 * (end_wall / start_wall - 1):+.1f} %; p99 overall {percentile(ms, 99):.1f}; "
          f"load average now {load_average()})")
    play.close()
    ok = rss_growth < GOAL and ms_growth < GOAL
    print("goal met" if ok else "goal missed")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main())
