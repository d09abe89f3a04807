"""Every cache strategy at equal KV budgets, with both decoding schedules, on the embedded model:
speed, memory and picture quality over long horizons, in one command.

    python -m benchmarks.run            # 2 held-out worlds x 64 frames, budgets of 2 and 4 frames,
                                        # naive + diagonal: 2,304 frames, about 13 minutes on 2
                                        # idle cores with the placeholder model (--seeds 1: half)
    python -m benchmarks.run --quick    # 1 world x 12 frames, a 4-frame budget: under 2 minutes
    python -m benchmarks.run --frames 96 --budgets 2,4,6 --schedules diagonal --seeds 3 \\
        --strategies none,streaming,frames --out results/long

The play. For each held-out world (seed ``SEED_BASE + i``: never trained on, and not used by
the model card's evaluation), the world's scripted player plays ``WARMUP`` frames; the model is
prefilled with the next ``reference_frames`` true frames (half the context, as MineWorld) and then
generates ``--frames`` frames, one per action: the scripted play, ending in a revisit (stand still
for ``STILL_FRAMES``, turn ``TURN_FRAMES`` x ``TURN_STEP`` degrees one way, as many back). Every
strategy at every budget (its own ``for_budget``: see ``budget_params``), plus ``none`` (the full
context, re-prefilled from the newest reference frames when it is used up: the baseline), gets
its own ``Session`` with greedy decoding; all of them step through the same actions in turn, the
order rotating every frame so that a loaded machine slows them alike. The world renders the
true frame for every action.

Written to ``--out`` (default ``results/``):

* ``frames.csv``: one row per strategy x budget x schedule x seed x frame: ms (total, generation,
  re-prefill), forward passes, live tokens, KV bytes allocated and live, evictions, re-bases,
  re-prefills so far, process RSS, PSNR and SSIM against the true frame and against ``none``'s
  frame, the motion estimates of the generated and the true picture (horizontal shift, zoom) with
  the action-following verdicts, and on the revisit's last frame its scores;
* ``summary.md``: the machine, the settings, one row per strategy x budget x schedule and, per
  budget, which strategy wins and by how much;
* ``quality.png`` (PSNR vs frame index against truth and against ``none``), ``ms_per_frame.png``,
  ``kv_memory.png`` (KV MiB live per strategy, and the process RSS).

Action following: a frame counts when its action turns the camera (yaw) or walks straight forward
and the true picture visibly moves that way (a shift of ``MIN_SHIFT_PX`` by phase correlation; a
zoom of ``MIN_ZOOM_PX`` of outward optical flow); it is followed when the generated picture moves
the same way by as much, measured between consecutive generated frames.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.common import machine_line, percentile
from cache import STRATEGIES, Layout
from mineworld.charts import Panel, line_charts
from mineworld.config import ACTION_TOKENS
from mineworld.decoding import Sampling
from mineworld.embedded import MODEL_DIR, load_embedded
from mineworld.metrics import (
    frame_scores,
    image_shift,
    moved,
    pooled_psnr,
    psnr,
    revisit_scores,
    zoom,
)
from mineworld.model import cache_layout
from mineworld.play import process_memory_mb
from mineworld.session import Session, default_reference_frames
from mineworld.train import HELD_OUT_SEED_BASE
from mineworld.world import replay, scripted_actions
from mineworld.world.policy import CAMERA_STEPS, action

SEED_BASE = HELD_OUT_SEED_BASE + 700  # held-out worlds of this benchmark alone
WARMUP = 20  # frames of play before the reference frames, so they are not the spawn view
STILL_FRAMES, TURN_FRAMES, TURN_STEP = 3, 4, CAMERA_STEPS[-1]  # the revisit: 55 degrees away
MIN_SHIFT_PX, MIN_ZOOM_PX = 0.5, 0.25  # motion that counts as a visible move
# Line colours in registration order: black for the first (the full-context baseline), then
# matplotlib's tab10.
PALETTE = [(0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
           (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34),
           (23, 190, 207)]  # fmt: skip
MIB = 2**20
PLOT_PSNR_CAP = 60.0  # dB plotted for frames identical to the reference (PSNR is infinite)


def colours() -> dict[str, tuple[int, int, int]]:
    return {name: PALETTE[index % len(PALETTE)] for index, name in enumerate(STRATEGIES)}


def budget_params(strategy: str, budget_frames: int, layout: Layout, prompt_length: int) -> dict:
    """Parameters that make ``strategy`` keep ``budget_frames`` whole frames of ``layout``
    after a prompt of ``prompt_length`` tokens (the strategy's own ``for_budget``)."""
    return STRATEGIES[strategy].for_budget(budget_frames * layout.frame_tokens, layout,
                                           prompt_length)


# -- the play --------------------------------------------------------------------------------


@dataclass
class Case:
    """One held-out world: the reference frames, the actions, the true frame after each."""

    seed: int
    context: np.ndarray  # [reference_frames, H, W, 3]
    context_actions: list[dict]  # the reference_frames - 1 actions between them
    actions: list[dict]  # one per generated frame
    truth: np.ndarray  # [frames, H, W, 3]: truth[i] is the world after actions[i]
    revisit: tuple[int, int]  # (frame seen just before turning away, frame on coming back)

    @cached_property
    def true_motion(self) -> list[tuple[float, float]]:
        """(horizontal shift, zoom) of the true picture from each frame to the next
        (the first entry, before the first generated frame, is unused)."""
        pairs = zip(self.truth[:-1], self.truth[1:], strict=True)
        return [(math.nan, math.nan)] + [(image_shift(a, b)[0], zoom(a, b)) for a, b in pairs]

    @property
    def true_revisit_psnr(self) -> float:
        """The world's own revisit: inf when the true view comes back exactly."""
        before, back = self.revisit
        return psnr(self.truth[back], self.truth[before])


def make_case(seed: int, reference_frames: int, frames: int, frame_size) -> Case:
    turns = 2 * TURN_FRAMES
    if frames < STILL_FRAMES + turns:
        raise ValueError(f"--frames must be >= {STILL_FRAMES + turns} (the revisit's length)")
    lead = WARMUP + reference_frames - 1  # actions before the first generated frame
    direction = 1 if seed % 2 == 0 else -1  # right first in even worlds, left first in odd
    actions = scripted_actions(seed, lead + frames - STILL_FRAMES - turns)
    actions += [action()] * STILL_FRAMES + [action(yaw=direction * TURN_STEP)] * TURN_FRAMES
    actions += [action(yaw=-direction * TURN_STEP)] * TURN_FRAMES
    true = replay(seed, actions + [action()], frame_size)  # true[i + 1]: after actions[i]
    return Case(seed, true[WARMUP : WARMUP + reference_frames], actions[WARMUP:lead],
                actions[lead:], true[lead + 1 :], (frames - turns - 1, frames - 1))


@dataclass
class Run:
    """One strategy at one budget with one schedule on one case: its session and what it made."""

    strategy: str
    budget_frames: int | None  # None: the full context (none)
    params: dict
    schedule: str
    session: Session
    frames: list[np.ndarray] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)

    @property
    def budget(self) -> str:
        return "full" if self.budget_frames is None else str(self.budget_frames)


def make_runs(model, tokenizer, case: Case, schedule: str, strategies: list[str],
              budgets: list[int], reference_frames: int) -> list[Run]:
    config = model.config
    # What Session prefills: the reference frames and the actions between them, less the
    # newest frame's last token (it is fed with the first action).
    prompt_length = reference_frames * config.tokens_per_frame - ACTION_TOKENS - 1
    layout = cache_layout(config)
    plan = [(name, None, {}) for name in strategies if not STRATEGIES[name].bounded]
    plan += [(name, b, budget_params(name, b, layout, prompt_length))
             for b in budgets for name in strategies if STRATEGIES[name].bounded]
    runs = []
    for name, budget, params in plan:
        # Greedy whatever the model's default: the same play decodes the same way under
        # every strategy, so their differences are the caches' own.
        session = Session(model, tokenizer, strategy=name, strategy_params=params,
                          reference_frames=reference_frames, schedule=schedule,
                          sampling=Sampling())
        try:
            session.start(case.context, case.context_actions)
        except ValueError as error:
            raise ValueError(f"budget of {budget} frames, {name} {params}: {error}") from None
        runs.append(Run(name, budget, params, schedule, session))
    return runs


def play(runs: list[Run], case: Case, bar: tqdm) -> None:
    """Step every run through the case's actions, in an order that rotates every frame."""
    for index, act in enumerate(case.actions):
        shift = index % len(runs)
        for run in runs[shift:] + runs[:shift]:
            frame, stats = run.session.step(act)
            run.frames.append(frame)
            run.rows.append({**stats, "rss_mib": process_memory_mb()})
            bar.update()


# -- scores ----------------------------------------------------------------------------------


def motion_rows(frames: list[np.ndarray], case: Case) -> list[dict]:
    """Per frame: the motion estimates of the generated and true pictures, and whether the
    action was visibly followed (``None`` when the frame does not count, see module doc)."""
    rows = [{}]  # the first generated frame has no generated predecessor
    for i in range(1, len(frames)):
        act = case.actions[i]
        pitch, yaw = act["camera"]
        dx, _ = image_shift(frames[i - 1], frames[i])
        z = zoom(frames[i - 1], frames[i])
        dx_true, z_true = case.true_motion[i]
        walks = act["forward"] and not act["back"] and pitch == yaw == 0
        turn_counts = yaw != 0 and moved(dx_true, -yaw, MIN_SHIFT_PX)  # turning right: content left
        forward_counts = walks and moved(z_true, 1, MIN_ZOOM_PX)
        rows.append({
            "shift_x": dx, "shift_x_true": dx_true, "zoom": z, "zoom_true": z_true,
            "turn_followed": moved(dx, -yaw, MIN_SHIFT_PX) if turn_counts else None,
            "forward_followed": moved(z, 1, MIN_ZOOM_PX) if forward_counts else None,
        })
    return rows


def score(runs: list[Run], case: Case, reference_frames: int) -> list[dict]:
    """The CSV rows of one case and schedule: statistics, quality, motion, revisit."""
    baseline = next((r for r in runs if r.budget_frames is None), None)  # the full context
    before, back = case.revisit
    rows = []
    for run in runs:
        motion = motion_rows(run.frames, case)
        revisit = revisit_scores(run.frames[before], run.frames[back], case.truth[back])
        for i, (frame, stats) in enumerate(zip(run.frames, run.rows, strict=True)):
            truth = frame_scores(frame, case.truth[i])
            versus_none = (frame_scores(frame, baseline.frames[i])
                           if baseline is not None and run is not baseline else {})
            pitch, yaw = case.actions[i]["camera"]
            rows.append({
                "schedule": run.schedule, "strategy": run.strategy, "budget_frames": run.budget,
                "budget_tokens": run.session.cache.storage.capacity,
                "params": " ".join(f"{k}={v}" for k, v in run.params.items()) or "-",
                "reference_frames": reference_frames, "seed": case.seed, "frame": i + 1,
                "forward": case.actions[i]["forward"], "yaw": yaw, "pitch": pitch,
                "psnr_truth": truth["psnr"], "ssim_truth": truth["ssim"],
                "psnr_none": versus_none.get("psnr"), "ssim_none": versus_none.get("ssim"),
                **motion[i],
                **({f"revisit_{k}": v for k, v in revisit.items()} if i == back else {}),
                **{key: stats[key] for key in (
                    "ms_per_frame", "ms_generate", "ms_reprefill", "forward_passes",
                    "live_tokens", "bytes_allocated", "bytes_live", "evicted_tokens",
                    "rebases", "reprefills", "reprefill_seconds", "rss_mib",
                    "attention_hit_rate")},
            })  # fmt: skip
    return rows


# -- summary ---------------------------------------------------------------------------------


def mean(values) -> float:
    """Mean of the values that are not None (True/False count as 1/0); NaN when none are."""
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else math.nan


def counts(verdicts) -> tuple[int, int]:
    """(followed, counted) of per-frame verdicts (None: the frame does not count)."""
    counted = [v for v in verdicts if v is not None]
    return sum(counted), len(counted)


def by_run(rows: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """Rows grouped by (schedule, budget, strategy), every seed together, in order."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["schedule"], row["budget_frames"], row["strategy"]), []).append(row)
    return groups


def summarize(rows: list[dict]) -> list[dict]:
    """One line per schedule x budget x strategy, over every seed and frame."""
    lines = []
    for (schedule, budget, strategy), group in by_run(rows).items():
        ms = [r["ms_per_frame"] for r in group]
        finals = {r["seed"]: r for r in group}.values()  # each seed's last frame: its totals
        late = max(r["frame"] for r in group) * 3 // 4
        versus_none = [r for r in group if r["psnr_none"] is not None]
        revisits = [r for r in group if "revisit_psnr_self" in r]
        lines.append({
            "schedule": schedule, "budget": budget, "strategy": strategy,
            "budget_tokens": group[0]["budget_tokens"], "params": group[0]["params"],
            "frames": len(group), "ms_p50": percentile(ms, 50), "ms_p99": percentile(ms, 99),
            "fps": 1000 * len(ms) / sum(ms),
            "passes_per_frame": mean(r["forward_passes"] for r in group),
            "reprefills": mean(r["reprefills"] for r in finals),
            "reprefill_s": mean(r["reprefill_seconds"] for r in finals),
            "hit_rate": mean(r["attention_hit_rate"] for r in finals),
            "kv_alloc_mib": max(r["bytes_allocated"] for r in group) / MIB,
            "kv_live_mib": max(r["bytes_live"] for r in group) / MIB,
            "rss_mib": max(r["rss_mib"] for r in group),
            "psnr_truth": pooled_psnr(r["psnr_truth"] for r in group),
            "ssim_truth": mean(r["ssim_truth"] for r in group),
            "psnr_truth_late": pooled_psnr(r["psnr_truth"] for r in group if r["frame"] > late),
            "psnr_none": pooled_psnr(r["psnr_none"] for r in versus_none),
            "ssim_none": mean(r["ssim_none"] for r in versus_none),
            "identical_to_none": mean(r["psnr_none"] == math.inf for r in versus_none),
            "revisit_psnr_self": pooled_psnr(r["revisit_psnr_self"] for r in revisits),
            "revisit_psnr_truth": pooled_psnr(r["revisit_psnr_truth"] for r in revisits),
            "turns": counts(r.get("turn_followed") for r in group),
            "forwards": counts(r.get("forward_followed") for r in group),
        })  # fmt: skip
    return lines


def fmt(value, digits: int = 1) -> str:
    if isinstance(value, str):
        return value
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def ratio(pair: tuple[int, int]) -> str:
    return f"{pair[0]}/{pair[1]}"


TABLE_HEADER = (
    "| schedule | budget | strategy | params | ms/frame p50 | p99 | fps | passes/frame "
    "| re-prefills (s) | attention hit rate | KV MiB alloc / live | RSS MiB "
    "| PSNR truth (last 1/4) | SSIM truth "
    "| PSNR / SSIM vs none | revisit PSNR self / truth | turn / forward following |"
)


def table_row(s: dict) -> str:
    budget = "full context" if s["budget"] == "full" else f"{s['budget']} frames"
    same = s["identical_to_none"]
    identical = f" ({100 * same:.0f} % identical)" if math.isfinite(same) and same > 0 else ""
    return (
        f"| {s['schedule']} | {budget} ({s['budget_tokens']}) | {s['strategy']} | {s['params']} "
        f"| {fmt(s['ms_p50'], 0)} | {fmt(s['ms_p99'], 0)} | {fmt(s['fps'], 2)} "
        f"| {fmt(s['passes_per_frame'], 0)} | {fmt(s['reprefills'])} ({fmt(s['reprefill_s'], 2)}) "
        f"| {fmt(s['hit_rate'], 3)} "
        f"| {fmt(s['kv_alloc_mib'], 2)} / {fmt(s['kv_live_mib'], 2)} | {fmt(s['rss_mib'], 0)} "
        f"| {fmt(s['psnr_truth'], 2)} ({fmt(s['psnr_truth_late'], 2)}) | {fmt(s['ssim_truth'], 3)} "
        f"| {fmt(s['psnr_none'], 2)} / {fmt(s['ssim_none'], 3)}{identical} "
        f"| {fmt(s['revisit_psnr_self'], 2)} / {fmt(s['revisit_psnr_truth'], 2)} "
        f"| {ratio(s['turns'])} / {ratio(s['forwards'])} |"
    )


def verdicts(summary: list[dict]) -> list[str]:
    """Per schedule and budget: the strategies ranked by PSNR against the truth, the margins,
    the baseline, and the fastest."""
    notes = []
    for schedule in dict.fromkeys(s["schedule"] for s in summary):
        base = next((s for s in summary if s["schedule"] == schedule and s["budget"] == "full"),
                    None)
        for budget in dict.fromkeys(s["budget"] for s in summary if s["budget"] != "full"):
            group = [s for s in summary if (s["schedule"], s["budget"]) == (schedule, budget)]
            ranked = sorted(group, key=lambda s: -s["psnr_truth"])
            best = ranked[0]
            ranking = " > ".join(f"{s['strategy']} {s['psnr_truth']:.2f}" for s in ranked)
            margins = ", ".join(f"{s['strategy']} {s['psnr_truth'] - best['psnr_truth']:+.2f}"
                                for s in ranked[1:])
            fastest = min(group, key=lambda s: s["ms_p50"])
            line = (f"- {schedule}, {budget} frames: PSNR vs truth {ranking} dB; behind "
                    f"{best['strategy']}: {margins or '-'} dB")
            if base is not None:
                line += (f"; none (full context) {base['psnr_truth']:.2f} dB, "
                         f"{base['ms_p50']:.0f} ms p50 / {base['ms_p99']:.0f} ms p99")
            line += (f". Fastest: {fastest['strategy']} ({fastest['ms_p50']:.0f} ms p50, "
                     f"{fastest['ms_p99']:.0f} ms p99).")
            notes.append(line)
    return notes


def write_summary(path: Path, summary: list[dict], settings: str, seconds: float) -> None:
    lines = [
        "# Cache strategies on the embedded model", "",
        f"Machine: {machine_line()}.", "", settings,
        f"Wall time {seconds / 60:.1f} min.", "",
        TABLE_HEADER, "|" + "---|" * 3 + "---|" + "---:|" * (TABLE_HEADER.count("|") - 5),
        *[table_row(s) for s in summary], "",
        "budget: KV tokens (in whole frames of the model's frame + action tokens); none keeps "
        "the full context and re-prefills when it is used up. attention hit rate: the share of "
        "the cached tokens' accumulated attention that the kept ones hold, at each seed's last "
        "frame (strategies that score attention). PSNR in dB, from the mean "
        "squared error over every frame and seed (identical frames add no error; last 1/4: the "
        "last quarter of the frames); SSIM: the mean. vs none: against the baseline's frame of "
        "the same schedule (identical: the share of frames equal to it). revisit: the frame on "
        "coming back, against the frame seen before turning away (self) and against the true "
        "view. following: frames whose generated picture moves as the true one visibly does "
        "(turns: horizontal shift; forward: zoom) / frames where it visibly does.", "",
        "## Who wins", "", *verdicts(summary), "",
    ]  # fmt: skip
    path.write_text("\n".join(lines))


# -- output ----------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value):
        if value is None:
            return ""
        if isinstance(value, bool):
            return int(value)
        return f"{value:.6g}" if isinstance(value, float) else value

    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({key: cell(row.get(key)) for key in fields} for row in rows)


def curve(rows: list[dict], key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    """``key`` per frame index, over the seeds: pooled PSNR (capped at ``PLOT_PSNR_CAP`` for
    identical frames) or the mean; NaN where it is missing."""
    by_frame: dict[int, list] = {}
    for row in rows:
        if row.get(key) is not None:
            by_frame.setdefault(row["frame"], []).append(row[key])
    frames = sorted(by_frame)
    if key.startswith("psnr"):
        return frames, [min(pooled_psnr(by_frame[f]), PLOT_PSNR_CAP) for f in frames]
    return frames, [mean(by_frame[f]) * scale for f in frames]


def write_plots(folder: Path, rows: list[dict], frame_tokens: int) -> list[Path]:
    groups = by_run(rows)
    schedules = list(dict.fromkeys(r["schedule"] for r in rows))
    budgets = list(dict.fromkeys(r["budget_frames"] for r in rows if r["budget_frames"] != "full"))
    budgets = budgets or ["full"]

    def series(schedule, budget, key, scale=1.0):
        """The strategies at ``budget`` with ``none`` beside them."""
        return {strategy: curve(group, key, scale) for (s, b, strategy), group in groups.items()
                if s == schedule and b in (budget, "full")}

    def title(schedule, budget):
        tokens = "" if budget == "full" else f" = {int(budget) * frame_tokens} tokens"
        return f"{schedule}, {budget} frames{tokens}"

    quality, speed, memory = [], [], []
    for schedule in schedules:
        for budget in budgets:
            quality.append(Panel(f"PSNR vs truth, {title(schedule, budget)}", "dB",
                                 series(schedule, budget, "psnr_truth")))
            quality.append(Panel(f"PSNR vs none ({PLOT_PSNR_CAP:g}: same), "
                                 f"{title(schedule, budget)}", "dB",
                                 series(schedule, budget, "psnr_none")))
            speed.append(Panel(f"time per frame, {title(schedule, budget)}", "ms",
                               series(schedule, budget, "ms_per_frame")))
    for budget in budgets:
        memory.append(Panel(f"KV live, {title(schedules[0], budget)}", "MiB",
                            series(schedules[0], budget, "bytes_live", 1 / MIB)))
    first = [r for r in rows if r["schedule"] == schedules[0] and r["seed"] == rows[0]["seed"]]
    order = sorted({(r["frame"], i) for i, r in enumerate(first)})
    memory.append(Panel("process RSS (all sessions of one schedule)", "MiB",
                        {"process RSS": (list(range(1, len(order) + 1)),
                                         [first[i]["rss_mib"] for _, i in order])},
                        xlabel="frame step"))
    return [
        line_charts(quality, folder / "quality.png", colours(), columns=2),
        line_charts(speed, folder / "ms_per_frame.png", colours(), columns=len(budgets)),
        line_charts(memory, folder / "kv_memory.png", colours(), columns=2),
    ]


# -- main ------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results"), help="default: results/")
    parser.add_argument("--frames", type=int, help="generated frames per world (default 64; "
                        "quick 12)")
    parser.add_argument("--seeds", type=int, help="held-out worlds (default 2; quick 1)")
    parser.add_argument("--budgets", type=int_list, help="KV budgets in whole frames, "
                        "comma-separated (default 2,4; quick 4)")
    parser.add_argument("--schedules", default="naive,diagonal",
                        help="comma-separated (default: naive,diagonal)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"comma-separated (default: every registered: {','.join(STRATEGIES)})")
    parser.add_argument("--reference-frames", type=int, help="frames prefilled (default: half "
                        "the model's context, at most 8, as MineWorld)")
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR,
                        help="an embedded model's folder (default: assets/model)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 world, 12 frames, "
                        "a 4-frame budget, both schedules (under 2 minutes on 2 cores)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.frames = args.frames or (12 if quick else 64)
    args.seeds = args.seeds or (1 if quick else 2)
    args.budgets = args.budgets or ([4] if quick else [2, 4])
    args.schedules = [s for s in args.schedules.split(",") if s]
    args.strategies = [s for s in args.strategies.split(",") if s]
    unknown = [s for s in args.strategies if s not in STRATEGIES]
    if unknown:
        parser.error(f"unknown strategies {unknown}; registered: {list(STRATEGIES)}")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_embedded(model_dir=args.model_dir)
    config = model.config
    refs = args.reference_frames or default_reference_frames(config)
    for budget in args.budgets:
        if not 1 <= budget < config.context_frames:
            raise SystemExit(f"budget {budget} frames: must be in [1, {config.context_frames - 1}]"
                             f" for a {config.context_frames}-frame context")
    args.out.mkdir(parents=True, exist_ok=True)
    settings = (
        f"Model: {args.model_dir}, {config.num_hidden_layers} layers x {config.hidden_size}, "
        f"context {config.context_frames} frames of {config.tokens_per_frame} tokens "
        f"({config.max_position_embeddings} positions), fp32. Play: {args.seeds} held-out "
        f"world(s) (seeds {SEED_BASE}..{SEED_BASE + args.seeds - 1}) x {args.frames} frames after "
        f"{refs} reference frames, ending in a revisit ({STILL_FRAMES} still, {TURN_FRAMES} x "
        f"{TURN_STEP} degrees away and back); greedy; schedules {', '.join(args.schedules)} "
        f"(diagonal window {config.diagonal_window}, the model's); budgets "
        f"{', '.join(map(str, args.budgets))} frames."
    )
    cases = [make_case(SEED_BASE + i, refs, args.frames, tokenizer.frame_size)
             for i in range(args.seeds)]
    settings += (" The true views before and after the revisit: PSNR "
                 f"{', '.join(fmt(c.true_revisit_psnr, 1) for c in cases)} dB (- : identical).")
    print(machine_line())
    print(settings)
    bounded = len([s for s in args.strategies if STRATEGIES[s].bounded])
    unbounded = len(args.strategies) - bounded
    per_case = (unbounded + bounded * len(args.budgets)) * args.frames
    total = per_case * len(cases) * len(args.schedules)
    print(f"{total} frames to generate ({len(cases)} worlds x {len(args.schedules)} schedules x "
          f"{per_case // args.frames} runs x {args.frames} frames); the bar shows the time left")
    rows = []
    started = time.perf_counter()
    with tqdm(total=total, desc="frames (all runs)", unit="frame", smoothing=0.1) as bar:
        for case in cases:
            for schedule in args.schedules:
                runs = make_runs(model, tokenizer, case, schedule, args.strategies,
                                 args.budgets, refs)
                play(runs, case, bar)
                rows += score(runs, case, refs)
    seconds = time.perf_counter() - started
    summary = summarize(rows)
    write_csv(args.out / "frames.csv", rows)
    write_summary(args.out / "summary.md", summary, settings, seconds)
    plots = write_plots(args.out, rows, config.tokens_per_frame)
    print(f"\n{total} frames in {seconds:.0f} s ({1000 * seconds / total:.0f} ms a frame, "
          f"scoring included)\n")
    print(TABLE_HEADER)
    for line in summary:
        print(table_row(line))
    print("\n" + "\n".join(verdicts(summary)))
    print(f"\nwrote {args.out / 'frames.csv'}, {args.out / 'summary.md'}, "
          f"{', '.join(str(p) for p in plots)}")
    return args.out


if __name__ == "__main__":
    main()
