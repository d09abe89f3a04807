"""The embedded model's card: its goals, what was measured (``mineworld.train.evaluate``) and
how it was trained (``training_log.json``), filled into ``model_card.md``."""

from __future__ import annotations

import math
from pathlib import Path
from string import Template

TEMPLATE = Path(__file__).with_name("model_card.md")
STRUCTURE_KEPT = 0.5  # lowest metrics.scene_ratio of a long rollout's frame that shows a scene


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def worst(per_control: dict, key: str, lowest: bool = True) -> tuple[str, float]:
    """The control with the lowest (or highest) ``key`` among those with cases."""
    measured = {name: r[key] for name, r in per_control.items() if not math.isnan(r[key])}
    if not measured:
        return "none", float("nan")
    name = (min if lowest else max)(measured, key=measured.get)
    return name, measured[name]


def label(decoding: str, r: dict) -> str:
    """"greedy", or "as shipped" with the decoding the model ships."""
    return f"as shipped ({r['sampling']})" if decoding == "shipped" else decoding


def goals(r: dict) -> list[tuple[str, str, bool]]:
    """(goal, what was measured, met) for every goal the model is held to."""
    baseline = max(r["copy_last_frame_psnr_db"], r["rollout_other_actions_psnr_db"])
    rows = [
        ("tokenizer >= 27 dB", f"{r['tokenizer_psnr_db']:.2f} dB", r["tokenizer_psnr_db"] >= 27),
        ("greedy 8-frame rollouts >= 2 dB above copying the last frame and above rollouts "
         "under other actions", f"{r['rollout_psnr_db'] - baseline:+.2f} dB",
         r["rollout_psnr_db"] >= baseline + 2),
        ("one step ahead within 2 dB of the tokenizer's reconstruction",
         f"{r['one_step_psnr_db'] - r['one_step_tokenizer_psnr_db']:+.2f} dB",
         r["one_step_psnr_db"] >= r["one_step_tokenizer_psnr_db"] - 2),
    ]
    for decoding, per_control in r["controls"].items():
        decoding = label(decoding, r)
        name, followed = worst(per_control, "followed")
        rows.append((f"{decoding}: every control followed in >= 80 % of its cases",
                     f"lowest: {name} {followed:.0%}", followed >= 0.8))
        name, moving = worst(per_control, "moves_like_truth")
        rows.append((f"{decoding}: the picture moves like the truth in >= 80 % of moving frames",
                     f"lowest: {name} {moving:.0%}", moving >= 0.8))
        name, frozen = worst(per_control, "frozen", lowest=False)
        rows.append((f"{decoding}: no frozen frame while the true view moves",
                     f"highest: {name} {frozen:.0%}", frozen == 0))
        paces = {name: c["pace"] for name, c in per_control.items() if "pace" in c}
        if paces:  # older logs lack them
            name, drawn = worst(paces, "drawn")
            against = " and ".join(dict.fromkeys(pace["against"] for pace in paces.values()))
            rows.append((f"{decoding}: {' and '.join(paces)} drawn at their pace against "
                         f"{against} in >= 80 % of their cases",
                         f"lowest: {name} {drawn:.0%}", drawn >= 0.8))
    for decoding, clips in r["structure"].items():
        decoding = label(decoding, r)
        lowest = min(clip["min"] for clip in clips.values())
        rows.append((f"{decoding}: long rollouts keep the scene (contrast and colour >= "
                     f"{STRUCTURE_KEPT} of the truth's in every frame)",
                     f"lowest frame: {lowest:.2f}", lowest >= STRUCTURE_KEPT))
    rows += [
        ("no single-colour frame", str(r["single_colour_frames"]), r["single_colour_frames"] == 0),
        ("20 frames per second with diagonal decoding", f"{r['fps_diagonal']:.1f} fps",
         r["fps_diagonal"] >= 20),
    ]
    return rows


def paces_line(controls: dict, r: dict) -> str:
    """A sentence on the paced controls (``mineworld.controls.PACES``), each decoding's share in
    the header's order; empty for logs without them."""
    decodings = list(controls)
    paces = {name: c["pace"] for name, c in controls[decodings[0]].items() if "pace" in c}
    if not paces:
        return ""
    shares = "; ".join(
        f"{name} against {pace['against']}, "
        + " / ".join(f"{controls[d][name]['pace']['drawn']:.0%}" for d in decodings)
        + f" of {pace['cases']} cases" for name, pace in paces.items())
    return (f"\n\nDrawn at its pace ({' / '.join(label(d, r) for d in decodings)}): the rollout "
            "under the control closer to the world's frames for it than the rollout under the "
            "control it is paced against, and visibly different from that rollout, where the "
            f"world's two differ visibly: {shares}.")


def controls_table(controls: dict, r: dict) -> str:
    """One row per control, each measure given for every decoding measured (slash-separated,
    in the order of the header)."""
    decodings = list(controls)
    names = " / ".join(label(d, r) for d in decodings)

    def cells(name, key, moving=False):
        values = [controls[d][name] for d in decodings]
        shown = " / ".join(f"{c[key]:.0%}" for c in values)
        return f"{shown} of {values[0]['moving_frames']}" if moving else shown

    first = controls[decodings[0]]
    return markdown_table(
        ["control", "cases", f"followed ({names})", "frames moving like the truth",
         "frozen frames"],
        [[name, f"{first[name]['cases']} of {first[name]['starts']}", cells(name, "followed"),
          cells(name, "moves_like_truth", moving=True), cells(name, "frozen")]
         for name in first])


def model_card(results: dict, log: dict, config, tokenizer) -> str:
    from mineworld.controls import ROLLOUT as CONTROL_FRAMES
    from mineworld.decoding import Sampling
    from mineworld.train import (
        CONTEXT,
        ROLLOUT,
        SCRIPT_STEP,
        SPEED_ROUNDS,
        STRUCTURE_FRAMES,
    )
    from mineworld.world.render import SUPERSAMPLE

    r = results
    near_misses = r.get("one_step_near_miss_psnr_db", {})  # older logs lack them
    tok = tokenizer.config
    runs = [(f"MLP widened to {run['mlp_width']} units, then " if run.get("mlp_width") else "")
            + f"{run['steps']} at peak LR {run['peak_lr']:g}"
            + (f", {run['self_feed']:.0%} of the frames self-fed"
               + (" (sampled)" if run.get("self_feed_sampled") else "")
               + (f" in {run['self_feed_passes']} passes"
                  if run.get("self_feed_passes", 1) > 1 else "")
               if run.get("self_feed") else "")
            + (f", codes that changed weighted {run['change_weight']:g}x"
               if run.get("change_weight", 1) != 1 else "")
            + (f", windows holding back, strafe, jump or sneak {1 + run['rare_controls']:g}x as "
               "likely" if run.get("rare_controls") else "")
            + (f", the codes' digits' loss weighted {run['digit_weight']:g}"
               if run.get("digit_weight") else "")
            for run in log.get("resumed", [])]
    cached = log.get("cached_episodes", 0)
    structure = r["structure"]
    clips = list(next(iter(structure.values())))
    fields = {
        "hidden": config.hidden_size, "layers": config.num_hidden_layers,
        "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
        "mlp": config.intermediate_size, "vocab": config.vocab_size,
        "context_frames": config.context_frames, "frame_tokens": config.tokens_per_frame,
        "sampling": Sampling.model_default(config),
        "levels": list(tok.levels), "codes": tokenizer.codebook_size,
        "size": f"{tokenizer.frame_size[0]}x{tokenizer.frame_size[1]}",
        "grid": f"{tokenizer.grid[0]}x{tokenizer.grid[1]}",
        "image_tokens": tokenizer.tokens_per_frame,
        "refinement": (f", then a full-size refinement ({tok.refine_channels} wide, "
                       f"{tok.refine_blocks} residual blocks)" if tok.refine_channels else ""),
        "train_frames": log.get("train_frames", "?"),
        "train_episodes": log.get("train_episodes", "?"),
        "data_minutes": f"{log.get('data_minutes', float('nan')):.0f}",
        "render_ms": f"{r['render_ms_per_frame']:.1f}",
        "supersample": f"{SUPERSAMPLE}x{SUPERSAMPLE}",
        "cache_note": (f"; {cached} of the worlds were read from an earlier run's cache and "
                       "their rendering is not in that time" if cached else ""),
        "tokenizer_steps": log.get("tokenizer_steps", "?"),
        "tokenizer_frames": log.get("tokenizer_frames", log.get("train_frames", "?")),
        "decoder": (f" and {log['decoder_steps']} more of its decoder alone on all of them, "
                    "encoder frozen" if log.get("decoder_steps") else ""),
        "world_model_steps": log.get("world_model_steps", "?"),
        "resumed": f" (resumed runs: {'; '.join(runs)})" if runs else "",
        "tokens_per_s": f"{log.get('world_model_tokens_per_s', 0):.0f}",
        "precision": log.get("precision", "fp32"), "threads": log.get("threads", 1),
        "goals": "\n".join(f"| {goal} | {measured} | {'yes' if met else '**no**'} |"
                           for goal, measured, met in goals(r)),
        "tokenizer_psnr": f"{r['tokenizer_psnr_db']:.2f}",
        "scene_tokenizer_psnr": f"{r['scene_tokenizer_psnr_db']:.2f}",
        "teacher_forced": f"{r['teacher_forced_accuracy']:.1%}",
        "copy_accuracy": f"{r['copy_previous_accuracy']:.1%}",
        "one_step": f"{r['one_step_psnr_db']:.2f}",
        "one_step_tokenizer": f"{r['one_step_tokenizer_psnr_db']:.2f}",
        "near_miss_row": (
            "| same, the true view with the camera "
            f"{' / '.join(name.replace('_', ' ') for name in near_misses)}, through the "
            f"tokenizer | {' / '.join(f'{v:.2f}' for v in near_misses.values())} dB |\n"
            if near_misses else ""),
        "rollout": ROLLOUT, "schedule": r["rollout_schedule"],
        "rollout_psnr": f"{r['rollout_psnr_db']:.2f}",
        "shipped_row": (f"| same, decoded as shipped ({r['sampling']}) | "
                        f"{r['rollout_shipped_psnr_db']:.2f} dB |\n"
                        if "rollout_shipped_psnr_db" in r else ""),
        "other_psnr": f"{r['rollout_other_actions_psnr_db']:.2f}",
        "copy_psnr": f"{r['copy_last_frame_psnr_db']:.2f}",
        "copy_tokens_psnr": f"{r['copy_last_frame_tokens_psnr_db']:.2f}",
        "following": f"{r['action_following']:.0%}",
        "probes": ", ".join(f"{k} {v:.0%}" for k, v in r["action_following_per_probe"].items()),
        "long_frames": r["long_rollout_frames"], "single_colour": r["single_colour_frames"],
        "window": r["diagonal_window"], "speed_threads": r["threads"],
        "fps_naive": f"{r['fps_naive']:.1f}", "fps_diagonal": f"{r['fps_diagonal']:.1f}",
        "fps_naive_median": f"{r['fps_naive_median_frame']:.1f}",
        "fps_diagonal_median": f"{r['fps_diagonal_median_frame']:.1f}",
        "fps_window_2": f"{r['fps_diagonal_window_2']:.1f}",
        "fps_window_2_median": f"{r['fps_diagonal_window_2_median_frame']:.1f}",
        "decode_ms": f"{r['tokenizer_decode_ms']:.1f}",
        "cases": r["cases"], "context": CONTEXT, "script_step": SCRIPT_STEP,
        "speed_rounds": SPEED_ROUNDS,
        "speed_machine": r.get("machine", "a machine the log does not name"),
        "speed_kept": (" These speed figures were kept from an earlier evaluation of the same "
                       "weights (`--evaluate-only --keep-speed`), which decoded with "
                       f"{r['speed_sampling']}." if r.get("speed_kept") else ""),
        "control_frames": CONTROL_FRAMES,
        "control_starts": next(iter(r["controls"].values()))["forward"]["starts"],
        "controls": controls_table(r["controls"], r) + paces_line(r["controls"], r),
        "structure_frames": STRUCTURE_FRAMES,
        "structure": markdown_table(
            ["clip", *(label(d, r) for d in structure)],
            [[clip, *(f"{structure[d][clip]['min']:.2f} / {structure[d][clip]['mean']:.2f}"
                      for d in structure)] for clip in clips]),
    }
    return Template(TEMPLATE.read_text()).substitute(fields)
