"""Which decoding should a model play with? Each one on the controls, a still view and long
rollouts, against the frames the world renders.

    python -m benchmarks.decodings                                  # the shipped model
    python -m benchmarks.decodings --decodings 0 0:3 0.7/20 0.7/20:2 --starts 12
    python -m benchmarks.decodings --decodings 0 0@1.5 0.7/20 0.7/20@1.5 --starts 12
    python -m benchmarks.decodings --decodings 0.7/20 0.7/20~2 --starts 12

A decoding is ``TEMPERATURE[/TOP_K][:REPEAT_PENALTY][~OVERUSE_PENALTY][@GUIDANCE]`` (0: greedy;
the others: ``mineworld.decoding.Sampling``'s fields). Per decoding, from ``--starts`` start
points in held-out worlds (``mineworld.controls``): the share of moving frames that move like
the truth (mean and lowest over the controls), the highest share of frozen frames, the share of
cases followed (mean and lowest); under no action, how much consecutive generated frames change
(mean absolute, 0-255; the world's own frames change 0-0.3) and their PSNR against the truth;
the PSNR of every control's rollout against its truth; and the scene kept by 100-frame rollouts
on the validation clips (their contrast and colourfulness against the truth's, the lower of the
two, mean and lowest frame; ``mineworld.train.long_rollout_structure``, near 0: a picture
collapsed into flat colour or haze).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import print_machine
from mineworld.cli import positive_int
from mineworld.controls import control_rollouts, mean_abs, score_controls
from mineworld.decoding import Sampling
from mineworld.embedded import MODEL_DIR, VALIDATION_DIR, load_embedded, validation_clips
from mineworld.metrics import psnr
from mineworld.train import CONTEXT, long_rollout_structure


def decoding(text: str) -> Sampling:
    """``TEMPERATURE[/TOP_K][:REPEAT_PENALTY][~OVERUSE_PENALTY][@GUIDANCE]`` as a Sampling."""
    try:
        head, _, guidance = text.partition("@")
        head, _, overuse = head.partition("~")
        head, _, penalty = head.partition(":")
        temperature, _, top_k = head.partition("/")
        return Sampling(float(temperature), top_k=int(top_k) if top_k else None,
                        repeat_penalty=float(penalty) if penalty else 1.0,
                        overuse_penalty=float(overuse) if overuse else 0.0,
                        guidance=float(guidance) if guidance else 1.0)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"a decoding is TEMPERATURE[/TOP_K][:REPEAT_PENALTY][~OVERUSE_PENALTY][@GUIDANCE], "
            f"got {text!r} ({error})"
        ) from None


def measure(model, tokenizer, sampling: Sampling, count: int, clips: list[Path]) -> dict:
    still_change, stills, true_stills, rolls, trues = [], [], [], [], []

    def noted(rollouts):
        """``rollouts``, their frames noted on the way to the controls' scores."""
        for still, true_still, controls in rollouts:
            still_change.extend(mean_abs(a, b) for a, b in zip(still[:-1], still[1:],
                                                               strict=True))
            stills.append(still)
            true_stills.append(true_still)
            for rolled, true in controls.values():
                rolls.append(rolled)
                trues.append(true)
            yield still, true_still, controls

    scores = score_controls(noted(control_rollouts(model, tokenizer, count, CONTEXT, sampling)))
    per_control = list(scores.values())
    structure = long_rollout_structure(model, tokenizer, clips, sampling, "diagonal").values()

    def spread(key):
        values = [c[key] for c in per_control if not np.isnan(c[key])]
        return np.mean(values), min(values), max(values)

    moving, followed, frozen = spread("moves_like_truth"), spread("followed"), spread("frozen")
    return {"moving": moving[:2], "frozen": frozen[2], "followed": followed[:2],
            "still_change": float(np.mean(still_change)),
            "still_psnr": psnr(np.stack(stills), np.stack(true_stills)),
            "controls_psnr": psnr(np.stack(rolls), np.stack(trues)),
            "structure": (np.mean([c["mean"] for c in structure]),
                          min(c["min"] for c in structure))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    parser.add_argument("--clips", type=Path, default=VALIDATION_DIR)
    parser.add_argument("--decodings", type=decoding, nargs="+",
                        default=[decoding(d) for d in ("0", "0~1", "0:3", "0.7/20")])
    parser.add_argument("--starts", type=positive_int, default=12,
                        help="start points (default: 12)")
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print_machine(f"decodings of {args.model_dir}, {args.starts} start points")
    model, tokenizer = load_embedded(model_dir=args.model_dir)
    clips = validation_clips(args.clips)
    print("| decoding | moving like the truth, mean (lowest) | frozen, highest | followed, mean "
          "(lowest) | still view: change a frame, PSNR | controls PSNR | long rollouts' "
          "scene kept, mean (lowest) |\n|---|---|---|---|---|---|---|")
    for sampling in args.decodings:
        r = measure(model, tokenizer, sampling, args.starts, clips)
        print(f"| {sampling} | {r['moving'][0]:.0%} ({r['moving'][1]:.0%}) | {r['frozen']:.0%} "
              f"| {r['followed'][0]:.0%} ({r['followed'][1]:.0%}) "
              f"| {r['still_change']:.2f}, {r['still_psnr']:.2f} dB | {r['controls_psnr']:.2f} dB "
              f"| {r['structure'][0]:.2f} ({r['structure'][1]:.2f}) |", flush=True)


if __name__ == "__main__":
    main()
