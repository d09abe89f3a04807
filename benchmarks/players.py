"""Many players on one model: frames per second per player when N players step at once, each
frame made alone in turn (one frame at a time for everyone) against all players' forward
passes run together (``mineworld.decoding.run_together``).

    python -m benchmarks.players                          # 1, 2, 4, 8, 16 players
    python -m benchmarks.players --players 1 8 --frames 20 --threads 2
    python -m benchmarks.players --attention --players 8    # per player or one padded call

Every player has its own session (the embedded model, diagonal decoding, the ``frames``
strategy's defaults, its own start frame and seed) and steps ``--frames`` times past a warm-up
frame; both ways run in the same process, alternately, and make the same frames (checked).
Prints the machine, then per N: frames per second per player each way, and the ratio.

``--processes P`` splits the players over P processes instead (each its own model on
``--threads`` / P threads, its players' passes run together; P app.py processes behind a load
balancer), against one process of ``--threads`` threads running them all together, in turn:
the interpreter lock keeps one process's Python on one core at a time, processes share none.
Each process reports its own rate; the slowest is printed.

``--attention`` times instead one layer's attention for N players at the embedded model's shapes
(a diagonal pass of one token per row of the frame, over a full context of keys): each player's
own call, as the model runs it, against one call over all of them padded into a batch, with and
without stacking their caches into it first.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
import timeit

import numpy as np
import torch

from benchmarks.common import print_machine
from mineworld.decoding import run_together
from mineworld.embedded import demo_scene, load_embedded
from mineworld.session import Session, default_reference_frames


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--players", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--frames", type=int, default=12, help="frames timed per player")
    parser.add_argument("--strategy", default="frames", help="every player's cache strategy")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--processes", type=int, default=1,
                        help="split the players over this many processes (see the module doc)")
    parser.add_argument("--attention", action="store_true",
                        help="time one layer's attention per player against one padded call")
    return parser.parse_args(argv)


def attention_calls(config, players: int) -> dict:
    """One layer's attention for ``players`` players, each way (see the module doc): name ->
    a call returning the outputs ``[players, kv_heads, rows, head_dim]``. No mask: every key
    is seen, as a diagonal pass's queries see nearly all."""
    kv_heads, dim = config.num_key_value_heads, config.head_dim
    rows = config.image_rows * config.num_attention_heads // kv_heads  # query heads folded
    keys = config.max_position_embeddings
    queries = torch.randn(players, kv_heads, rows, dim)
    caches = [(torch.randn(kv_heads, keys, dim), torch.randn(kv_heads, keys, dim))
              for _ in range(players)]
    stacked = [torch.stack(part) for part in zip(*caches, strict=True)]
    attend = torch.nn.functional.scaled_dot_product_attention
    return {
        "per player": lambda: torch.cat([attend(queries[i, None], k[None], v[None])
                                         for i, (k, v) in enumerate(caches)]),
        "padded batch": lambda: attend(queries, *stacked),
        "padded batch, caches stacked first": lambda: attend(
            queries, *(torch.stack(part) for part in zip(*caches, strict=True))),
    }


def attention_ways(config, players: int, repeats: int = 300) -> dict[str, float]:
    """Microseconds of each of ``attention_calls``, the best of three rounds."""
    return {name: 1e6 * min(timeit.repeat(call, number=repeats, repeat=3)) / repeats
            for name, call in attention_calls(config, players).items()}


def new_players(model, tokenizer, count: int, strategy: str,
                first: int = 0) -> tuple[list[Session], list]:
    """``count`` started sessions, each from its own frame of the demo scene (player ``first``
    on), and the actions that follow each one's start."""
    refs = default_reference_frames(model.config)
    frames, actions = demo_scene()
    sessions, moves = [], []
    for index in range(first, first + count):
        begin = (7 * index) % (len(frames) - refs - 64)
        session = Session(model, tokenizer, strategy=strategy, reference_frames=refs,
                          schedule="diagonal", seed=index)
        session.start(frames[begin : begin + refs], actions[begin : begin + refs - 1])
        sessions.append(session)
        moves.append(actions[begin + refs - 1 :])
    return sessions, moves


def timed(model, sessions, moves, frames: int, together: bool) -> tuple[float, list]:
    """(seconds for ``frames`` frames of every player after a warm-up frame, the last
    frames)."""
    made = []
    for step in range(frames + 1):
        if step == 1:
            started = time.perf_counter()
        actions = [player_moves[step] for player_moves in moves]
        if together:
            made = run_together(model, [session.step_passes(action)
                                        for session, action in zip(sessions, actions, strict=True)])
        else:
            made = [session.step(action) for session, action in zip(sessions, actions, strict=True)]
    return time.perf_counter() - started, [frame for frame, _stats in made]


def rate_together(model, tokenizer, count: int, first: int, args: argparse.Namespace,
                  start=None) -> float:
    """Frames per second per player of ``count`` players (player ``first`` on) stepping
    together on ``model``, after ``start`` (a Barrier) lets all processes go."""
    sessions, moves = new_players(model, tokenizer, count, args.strategy, first)
    if start is not None:
        start.wait()
    seconds, _frames = timed(model, sessions, moves, args.frames, together=True)
    return args.frames / seconds


def rate_in_process(count: int, first: int, args: argparse.Namespace, threads: int,
                    start) -> float:
    """``rate_together`` in a spawned process of its own, on ``threads`` threads."""
    torch.set_num_threads(threads)
    return rate_together(*load_embedded(), count, first, args, start)


def split_players(count: int, processes: int) -> list[tuple[int, int]]:
    """``count`` players over at most ``processes`` processes, as evenly as they go: each
    process's (number of players, first player)."""
    processes = min(processes, count)
    shares = [count // processes + (p < count % processes) for p in range(processes)]
    return [(share, sum(shares[:p])) for p, share in enumerate(shares)]


def in_processes(count: int, args: argparse.Namespace) -> float:
    """The slowest rate of ``count`` players split over ``args.processes`` processes."""
    parts = split_players(count, args.processes)
    spawn = multiprocessing.get_context("spawn")  # no fork of a process holding OpenMP threads
    threads = max(1, args.threads // len(parts))
    with spawn.Manager() as manager, spawn.Pool(len(parts)) as pool:
        start = manager.Barrier(len(parts))
        rates = pool.starmap(rate_in_process, [(share, first, args, threads, start)
                                               for share, first in parts])
    return min(rates)


def attention_table(args: argparse.Namespace) -> int:
    config = load_embedded()[0].config
    print("| players | " + " | ".join(attention_ways(config, 1)) + " |")
    print("|---|---|---|---|")
    for count in args.players:
        times = attention_ways(config, count)
        print(f"| {count} | " + " | ".join(f"{t:.0f} us" for t in times.values()) + " |")
    return 0


def processes_table(args: argparse.Namespace) -> int:
    print(f"| players | one process, {args.threads} threads: fps per player | "
          f"{args.processes} processes: fps per player (slowest) | ratio |")
    print("|---|---|---|---|")
    model, tokenizer = load_embedded()
    for count in args.players:
        one = rate_together(model, tokenizer, count, 0, args)
        split = in_processes(count, args)
        print(f"| {count} | {one:.1f} | {split:.1f} | {split / one:.2f}x |")
    return 0


def together_table(args: argparse.Namespace) -> int:
    model, tokenizer = load_embedded()
    print("| players | alone in turn: fps per player | together: fps per player | ratio |")
    print("|---|---|---|---|")
    for count in args.players:
        seconds = {}
        frames = {}
        for together in (False, True):
            sessions, moves = new_players(model, tokenizer, count, args.strategy)
            seconds[together], frames[together] = timed(model, sessions, moves, args.frames,
                                                        together)
        if not all(np.array_equal(a, b) for a, b in zip(frames[False], frames[True],
                                                         strict=True)):
            print(f"error: {count} players made different frames together than alone")
            return 1
        alone, both = (args.frames / seconds[way] for way in (False, True))
        print(f"| {count} | {alone:.1f} | {both:.1f} | {both / alone:.2f}x |")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.attention:
        print_machine("players on one model: one layer's attention, per player or padded")
        return attention_table(args)
    print_machine("players on one model: frames per second per player, " + (
        "one process vs several" if args.processes > 1 else "alone in turn vs together"))
    print(f"the embedded model, diagonal decoding, {args.strategy}, {args.frames} frames each")
    return processes_table(args) if args.processes > 1 else together_table(args)


if __name__ == "__main__":
    raise SystemExit(main())
