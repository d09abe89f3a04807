"""Does the world model answer each control? Measured against the frames the world renders.

From start points in held-out worlds (a few real frames of scripted play as context), each
control is held for ``ROLLOUT`` frames, and so is no action at all; the model rolls out both
from the same context and the world renders both truths. Where a control visibly moves the
true view (its truth differs from the no-action truth by at least ``VISIBLE`` grey levels, mean
absolute), the control is **followed** when its rollout is closer (PSNR) to its truth than the
no-action rollout is, and visibly different from that rollout.

Frame by frame, a generated frame **moves like the truth** when its motion estimate from the
frame before has the true motion's sign and at least half the true motion's threshold
(``MOTION``: phase-correlation shift for turns, looks, strafes and jumps, outward optical flow
for walking). It is **frozen** when it repeats the frame before (under ``FROZEN`` levels) while
the true view moves. Consecutive pairs are taken inside the rollout, so the tokenizer's own
change from a real context frame to the first generated one does not count as motion.

A paced control (``PACES``: sneak, sprint) is **drawn at its pace** when its rollout is closer to
its truth than the rollout of the control it is paced against (walking forward) is, and visibly
different from that rollout, at the start points where the two truths visibly differ: a model
that draws sneaking as walking, or sprinting as walking, fails it.

**Walking into a wall** (``--walls N``), as a player holding W into a hillside does: from the
spawn of N held-out worlds, turned to face terrain ``WALL_DISTANCE`` blocks ahead, with 4 frames
of walking towards it as context, W is held for ``WALL_FRAMES`` frames; the PSNR of the last
``WALL_SCORED`` against the world's frames (by then pressed against the wall, which fills most
of the view). Then the player turns left there, ``WALL_TURN_DEGREES`` a frame (the page's arrow
key) for ``WALL_TURN_FRAMES`` frames, away from the wall; the PSNR of those frames against the
world's (what a model that lost the scene behind it draws). Over the walk and the turn, a frame
**keeps the scene** when its contrast and its colourfulness are both at least ``SCENE_KEPT`` of
the true frame's (``metrics.scene_ratio``): a model that fades into a white haze or a flat wall
of dirt does not.

    python -m mineworld.controls                # the shipped model, plain greedy
    python -m mineworld.controls --overuse-penalty 1   # as it plays by default
    python -m mineworld.controls --starts 8     # quicker (the card: 48)
    python -m mineworld.controls --overuse-penalty 1 --tour tour.gif   # a picture of play
    python -m mineworld.controls --walls 12 --temperature 0 0.7 --top-k 20
    python -m mineworld.controls --guidance 1.5   # with action guidance (decoding.Sampling)
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mineworld.cli import (
    MAX_OVERUSE_PENALTY,
    MAX_REPEAT_PENALTY,
    MAX_TEMPERATURE,
    add_guidance_flag,
    number_in,
    positive_int,
)
from mineworld.metrics import image_shift, psnr, scene_ratio, zoom
from mineworld.world import Player, generate_world, replay, scripted_actions
from mineworld.world.policy import ScriptedPolicy, action, is_water_column

STEP_DEGREES = 5.146  # one of the action codec's exact camera bins

# name: (the action held, the motion estimate that shows it)
CONTROLS = {
    "forward": (action(forward=1), "zoom"),
    "back": (action(back=1), "zoom"),
    "strafe_left": (action(left=1), "dx"),
    "strafe_right": (action(right=1), "dx"),
    "jump": (action(jump=1), "dy"),
    "sneak": (action(forward=1, sneak=1), "zoom"),
    "sprint": (action(forward=1, sprint=1), "zoom"),
    "turn_left": (action(yaw=-STEP_DEGREES), "dx"),
    "turn_right": (action(yaw=STEP_DEGREES), "dx"),
    "look_up": (action(pitch=-STEP_DEGREES), "dy"),
    "look_down": (action(pitch=STEP_DEGREES), "dy"),
}
NO_ACTION = action()
WALK = action(forward=1)
# Paced controls: each against the control it must be drawn slower or faster than (sneaking
# and sprinting against walking), measured as following is, with that control in no action's
# place.
PACES = {"sneak": "forward", "sprint": "forward"}

ROLLOUT = 10
# Start points: a control's share of cases followed is a count out of about this many. On 24,
# the shipped model's shares moved by up to 21 points between two disjoint sets of start points
# (forward 71 / 54 %, jump 79 / 58 %); on 48 a case is 2 points.
STARTS = 48
VISIBLE = 2.0  # grey levels, mean absolute: a difference a player sees
FROZEN = 0.5  # grey levels: a frame that repeats the one before
MOTION = {"dx": 0.5, "dy": 0.5, "zoom": 0.1}  # pixels a frame (64 x 48) the true view must move
START_SEED_BASE = 200  # held-out worlds HELD_OUT_SEED_BASE + 200 + i, apart from the card's
START_PLAY = 20  # frames of scripted play before each context
WALL_DISTANCE = (3.0, 6.0)  # blocks to the terrain faced at a wall start point
WALL_FRAMES, WALL_SCORED = 40, 16
WALL_TURN_DEGREES, WALL_TURN_FRAMES = 15.0, 12  # half a turn, at the page's arrow key's rate
WALL_TURN = action(yaw=-WALL_TURN_DEGREES)
WALL_SEED_BASE = 500  # held-out worlds HELD_OUT_SEED_BASE + 500 + i
SCENE_KEPT = 0.5  # of the true frame's contrast and colourfulness, each


def motion(before: np.ndarray, after: np.ndarray, measure: str) -> float:
    if measure == "zoom":
        return zoom(before, after)
    dx, dy = image_shift(before, after)
    return dx if measure == "dx" else dy


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))))


@dataclass
class Start:
    seed: int
    state: dict  # the player at the last context frame (Player.state), truths start from it
    context: np.ndarray
    context_actions: list[dict]


def starts(count: int, context_frames: int) -> list[Start]:
    from mineworld.train import FRAME_SIZE, HELD_OUT_SEED_BASE

    found = []
    for i in range(count):
        seed = HELD_OUT_SEED_BASE + START_SEED_BASE + i
        play = scripted_actions(seed, START_PLAY + context_frames)
        frames = replay(seed, play, FRAME_SIZE)[START_PLAY:]
        # Physics alone up to the last context frame: each truth then renders its own frames
        # only, the same to the bit as replaying the whole play.
        player = Player.spawn(generate_world(seed))
        for taken in play[: START_PLAY + context_frames - 1]:
            player.step(taken)
        found.append(Start(seed, player.state(), frames,
                           play[START_PLAY : START_PLAY + context_frames - 1]))
    return found


def truth(start: Start, held: dict) -> np.ndarray:
    """The world's frames after the context while ``held`` is held."""
    from mineworld.train import FRAME_SIZE

    return replay(start.seed, [held] * (ROLLOUT + 1), FRAME_SIZE, start=start.state)[1:]


def against(rolled: np.ndarray, other: np.ndarray, true: np.ndarray,
            true_other: np.ndarray) -> dict:
    """A rollout against the rollout of another control from the same start (no action, or
    the control it is paced against); true / true_other: the world's frames for each. A case
    when the truths visibly differ; followed there when ``closer`` and ``distinct``."""
    return {"visible": mean_abs(true, true_other) >= VISIBLE,
            "closer": psnr(rolled, true) > psnr(other, true),
            "distinct": mean_abs(rolled, other) >= VISIBLE}


def score_control(rolled: np.ndarray, still: np.ndarray, true: np.ndarray, true_still: np.ndarray,
                  measure: str) -> dict:
    """One control at one start point: rolled / still are the rollouts under the control and
    under no action; true / true_still the world's frames for each."""
    result = {**against(rolled, still, true, true_still),
              "moving_frames": 0, "matched_frames": 0, "frozen_frames": 0}
    threshold = MOTION[measure]
    for k in range(1, len(true)):
        true_move = motion(true[k - 1], true[k], measure)
        if abs(true_move) < threshold:
            continue
        result["moving_frames"] += 1
        made = motion(rolled[k - 1], rolled[k], measure)
        result["matched_frames"] += int(np.sign(made) == np.sign(true_move)
                                        and abs(made) >= threshold / 2)
        result["frozen_frames"] += int(mean_abs(rolled[k - 1], rolled[k]) < FROZEN)
    return result


def control_rollouts(model, tokenizer, count: int = STARTS, context_frames: int = 4, sampling=None,
                     schedule: str = "diagonal"):
    """Per start point: the rollout under no action and its truth, then per control (in
    ``CONTROLS``' order) its rollout and its truth: ``(still, true_still, {name: (rolled,
    true)})``, each ``[ROLLOUT, H, W, 3]``."""
    from mineworld.train import rollout

    for start in tqdm(starts(count, context_frames), desc="controls"):
        def roll(held, start=start):
            return rollout(model, tokenizer, start.context, start.context_actions,
                           [held] * ROLLOUT, schedule, sampling=sampling, seed=start.seed)[0]

        still, true_still = roll(NO_ACTION), truth(start, NO_ACTION)
        yield still, true_still, {name: (roll(held), truth(start, held))
                                  for name, (held, _measure) in CONTROLS.items()}


def measure_controls(model, tokenizer, count: int = STARTS, context_frames: int = 4, sampling=None,
                     schedule: str = "diagonal", strip_path: Path | None = None) -> dict:
    """Per control: the start points where it visibly moves the true view (``cases``), the
    share of those it is followed in, and over the frames where the true view moves, the share
    the generated picture moves like it and the share that froze. ``strip_path``: a picture of
    the first start point, per control its truth above its rollout."""
    rollouts = control_rollouts(model, tokenizer, count, context_frames, sampling, schedule)
    return score_controls(rollouts, strip_path)


def score_controls(rollouts, strip_path: Path | None = None) -> dict:
    """``measure_controls``' figures from ``rollouts`` (as ``control_rollouts`` yields them)."""
    tallies = {name: [] for name in CONTROLS}
    paced = {name: [] for name in PACES}
    strip_rows = []
    for index, (still, true_still, controls) in enumerate(rollouts):
        for name, (rolled, true) in controls.items():
            tallies[name].append(score_control(rolled, still, true, true_still,
                                               CONTROLS[name][1]))
            if index == 0:
                strip_rows.append((name, np.concatenate(list(true), 1),
                                   np.concatenate(list(rolled), 1)))
        for name, slower_or_faster_than in PACES.items():
            (rolled, true), (other, true_other) = controls[name], controls[slower_or_faster_than]
            paced[name].append(against(rolled, other, true, true_other))
    if strip_path:
        write_strip(strip_rows, strip_path)
    results = {name: summarise(scores) for name, scores in tallies.items()}
    for name, slower_or_faster_than in PACES.items():
        cases, share = followed(paced[name])
        results[name]["pace"] = {"against": slower_or_faster_than, "cases": cases,
                                 "drawn": share}
    return results


def followed(scores: list[dict]) -> tuple[int, float]:
    """The cases among ``against``'s scores, and the share of them followed (nan: none)."""
    cases = [s for s in scores if s["visible"]]
    share = float(np.mean([s["closer"] and s["distinct"] for s in cases])) if cases else math.nan
    return len(cases), share


def summarise(scores: list[dict]) -> dict:
    cases, share = followed(scores)
    moving = sum(s["moving_frames"] for s in scores)
    return {
        "starts": len(scores),
        "cases": cases,
        "followed": share,
        "moving_frames": moving,
        "moves_like_truth": sum(s["matched_frames"] for s in scores) / moving
        if moving else float("nan"),
        "frozen": sum(s["frozen_frames"] for s in scores) / moving if moving else float("nan"),
    }


def write_strip(rows: list[tuple[str, np.ndarray, np.ndarray]], path: Path, scale: int = 2):
    """Per control a label, its true frames, and the generated ones below them."""
    import cv2

    label_width = 120
    blocks = []
    for name, true, made in rows:
        pair = cv2.resize(np.concatenate([true, made], 0), None, fx=scale, fy=scale,
                          interpolation=cv2.INTER_NEAREST)
        label = np.full((pair.shape[0], label_width, 3), 255, np.uint8)
        for line, text in enumerate((name, "truth / model")):
            cv2.putText(label, text, (6, 24 + 22 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (0, 0, 0), 1, cv2.LINE_AA)
        blocks.append(np.concatenate([label, pair], 1))
        blocks.append(np.full((4, blocks[-1].shape[1], 3), 255, np.uint8))
    cv2.imwrite(str(path), np.concatenate(blocks[:-1], 0)[..., ::-1])


# A short play for the README's picture: each control held for a while, in turn.
TOUR = [("forward", 12), ("turn_left", 8), ("back", 8), ("strafe_right", 8), ("jump", 8),
        ("look_up", 6), ("look_down", 6)]


def write_tour(model, tokenizer, path: Path, sampling=None, seed: int | None = None,
               scale: int = 3, context_frames: int = 4) -> None:
    """An animated GIF of ``TOUR`` from a held-out start point: the world's frames on the left,
    the model's on the right, the key held written below."""
    import cv2
    from PIL import Image

    from mineworld.train import FRAME_SIZE, rollout

    start = starts(1, context_frames)[0]
    held = [CONTROLS[name][0] for name, count in TOUR for _ in range(count)]
    names = [name for name, count in TOUR for _ in range(count)]
    true = replay(start.seed, held + [NO_ACTION], FRAME_SIZE, start=start.state)[1:]
    made, _ = rollout(model, tokenizer, start.context, start.context_actions, held, "diagonal",
                      sampling=sampling, seed=start.seed if seed is None else seed)
    pictures = []
    for name, world, dream in zip(names, true, made, strict=True):
        pair = cv2.resize(np.concatenate([world, dream], 1), None, fx=scale, fy=scale,
                          interpolation=cv2.INTER_NEAREST)
        caption = np.full((22, pair.shape[1], 3), 255, np.uint8)
        key = "held: " + name.replace("_", " ")
        key_width = cv2.getTextSize(key, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0]
        for x, text, colour in ((6, "world", (0, 0, 0)), (pair.shape[1] // 2 + 6, "model",
                                (0, 0, 0)), (pair.shape[1] - key_width - 6, key, (200, 0, 0))):
            cv2.putText(caption, text, (x, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1,
                        cv2.LINE_AA)
        pictures.append(Image.fromarray(np.concatenate([pair, caption], 0)))
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=100, loop=0,
                     optimize=True)


def wall_starts(count: int, context_frames: int = 4):
    """``count`` (seed, context, truth of the walk, truth of the turn after it) of walking into a
    wall (see the module doc): the first held-out worlds whose spawn has dry terrain
    ``WALL_DISTANCE`` ahead at some heading, and whose true view stands still over the scored
    frames (the player stopped by it, not sliding down a slope or falling off a ledge)."""
    from mineworld.train import FRAME_SIZE, HELD_OUT_SEED_BASE

    probe = ScriptedPolicy(0)  # its ray along the ground: how far the player could walk
    found, seed = [], HELD_OUT_SEED_BASE + WALL_SEED_BASE
    while len(found) < count:
        seed += 1
        player = Player.spawn(generate_world(seed))
        for yaw in range(0, 360, 15):
            distance, heading = probe.clear_distance(player, yaw), np.radians(yaw)
            stop = (player.x - distance * np.sin(heading), player.z + distance * np.cos(heading))
            if (WALL_DISTANCE[0] <= distance < WALL_DISTANCE[1]
                    and not is_water_column(player.world, *stop)):
                player.yaw = float(yaw)
                # frames[i] is seen as actions[i] is taken: the last action shows in none.
                frames = replay(seed, [WALK] * (context_frames + WALL_FRAMES - 1)
                                + [WALL_TURN] * (WALL_TURN_FRAMES + 1), FRAME_SIZE,
                                start=player.state())
                context, walked = np.split(frames[:-WALL_TURN_FRAMES], [context_frames])
                if mean_abs(walked[-WALL_SCORED], walked[-1]) < FROZEN:
                    found.append((seed, context, walked, frames[-WALL_TURN_FRAMES:]))
                    break
    return found


def walk_into_walls(model, tokenizer, count: int, sampling=None) -> dict:
    """PSNR of the last ``WALL_SCORED`` frames of walking into a wall and of the turn away from
    it, per start point and pooled (the mean of the per-start dB); of the world's last frame at
    the wall held still through the turn, against the turn (a picture that never turns); and
    the share of the frames of the walk and the turn that keep the scene, and of the start
    points where all of them do."""
    from mineworld.train import rollout

    walks, turns, stills, kept = [], [], [], []
    for seed, context, walked, turned in tqdm(wall_starts(count), desc="walls"):
        made = rollout(model, tokenizer, context, [WALK] * (len(context) - 1),
                       [WALK] * WALL_FRAMES + [WALL_TURN] * WALL_TURN_FRAMES, "diagonal",
                       sampling=sampling, seed=seed)[0]
        walks.append(psnr(made[WALL_FRAMES - WALL_SCORED : WALL_FRAMES], walked[-WALL_SCORED:]))
        turns.append(psnr(made[WALL_FRAMES:], turned))
        stills.append(psnr(np.repeat(walked[-1:], len(turned), 0), turned))
        kept.append(scene_ratio(made, np.concatenate([walked, turned])) >= SCENE_KEPT)
    return {"starts": len(walks), "psnr": float(np.mean(walks)), "per_start": walks,
            "turn_psnr": float(np.mean(turns)), "per_start_turn": turns,
            "turn_still_psnr": float(np.mean(stills)),
            "scene_kept_frames": float(np.mean(kept)),
            "scene_kept_starts": int(sum(start.all() for start in kept))}


def table(results: dict) -> str:
    """Markdown rows: control, cases, followed, moves like the truth, frozen; then a line per
    paced control."""
    lines = ["| control | cases | followed | frames moving like the truth | frozen frames |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['cases']} of {r['starts']} | {r['followed']:.0%} | "
                     f"{r['moves_like_truth']:.0%} of {r['moving_frames']} | {r['frozen']:.0%} |")
    lines += [f"{name} against {r['pace']['against']}: drawn at its pace in "
              f"{r['pace']['drawn']:.0%} of {r['pace']['cases']} cases"
              for name, r in results.items() if "pace" in r]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mineworld.controls", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="embedded model folder (default: shipped)")
    parser.add_argument("--starts", type=positive_int, default=STARTS,
                        help="start points (held-out worlds)")
    parser.add_argument("--temperature", type=number_in(float, 0, MAX_TEMPERATURE), nargs="+",
                        default=[0.0],
                        help="sampling temperatures to measure (0: greedy, the default)")
    parser.add_argument("--top-k", type=positive_int, help="top-k of the sampled runs")
    parser.add_argument("--repeat-penalty", type=number_in(float, 1, MAX_REPEAT_PENALTY),
                        default=1.0,
                        help="of every run (see mineworld.decoding.Sampling; default: 1, none)")
    parser.add_argument("--overuse-penalty", type=number_in(float, 0, MAX_OVERUSE_PENALTY),
                        default=0.0, help="of every run (see mineworld.decoding.Sampling; "
                        "default: 0, none; the shipped model decodes with 1)")
    add_guidance_flag(parser)
    parser.add_argument("--strip", type=Path, help="write the first start point's strips here")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--tour", type=Path, help="write an animated GIF of a short play (each "
                        "control held in turn, the world beside the model) here, with the "
                        "first --temperature, and measure nothing")
    parser.add_argument("--walls", type=positive_int, metavar="N",
                        help="measure walking into a wall from N start points instead")
    parser.add_argument("--threads", type=positive_int, default=2)
    args = parser.parse_args(argv)
    import torch

    from mineworld.decoding import Sampling
    from mineworld.embedded import MODEL_DIR, load_embedded

    torch.set_num_threads(args.threads)
    model, tokenizer = load_embedded(model_dir=args.model_dir or MODEL_DIR)
    samplings = [Sampling(t, top_k=args.top_k if t else None, repeat_penalty=args.repeat_penalty,
                          overuse_penalty=args.overuse_penalty, guidance=args.guidance)
                 for t in args.temperature]
    if args.tour:
        write_tour(model, tokenizer, args.tour, samplings[0])
        return
    everything = {}
    for sampling in samplings:
        if args.walls:
            everything[str(sampling)] = walls = walk_into_walls(model, tokenizer, args.walls,
                                                                sampling)
            print(f"{sampling}: walking into a wall, the last {WALL_SCORED} of {WALL_FRAMES} "
                  f"frames against the world's: {walls['psnr']:.2f} dB; turning away from it, "
                  f"{WALL_TURN_FRAMES} frames: {walls['turn_psnr']:.2f} dB (the world's frame "
                  f"at the wall held still: {walls['turn_still_psnr']:.2f} dB); the scene "
                  f"kept in {walls['scene_kept_frames']:.0%} of the frames, in all of them from "
                  f"{walls['scene_kept_starts']} of {walls['starts']} start points")
            continue
        results = measure_controls(model, tokenizer, args.starts, sampling=sampling,
                                   strip_path=args.strip if sampling is samplings[0] else None)
        print(f"\n{sampling}\n{table(results)}")
        everything[str(sampling)] = results
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
