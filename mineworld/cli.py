"""Argument types shared by the command lines (kept free of heavy imports, so that --help
answers before torch and gradio load)."""

import argparse


def parsed(kind: type, text: str):
    """``text`` as ``kind`` (int or float), or None when it is not one."""
    try:
        return kind(text)
    except ValueError:
        return None


def positive_int(text: str) -> int:
    value = parsed(int, text)
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def number_in(kind: type, low, high):
    """An argument type: a number of ``kind`` (int or float) in [low, high]."""
    def number(text: str):
        value = parsed(kind, text)
        if value is None or not low <= value <= high:
            named = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {named} in [{low}, {high}], got {text}")
        return value
    return number


def positive_float(text: str) -> float:
    value = parsed(float, text)
    if value is None or not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def probability(text: str) -> float:
    value = parsed(float, text)
    if value is None or not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return value


MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds
MAX_TEMPERATURE = 100  # odds flattened past any use: a bigger value is a typo
MAX_GUIDANCE = 10  # far past where frames stay pictures: a bigger value is a typo
MAX_OVERUSE_PENALTY = 10  # likewise: at 10, a code holding 1.1x its even share loses 1 logit
MAX_REPEAT_PENALTY = 10**6  # odds divided by a million: a repeat is never drawn


def add_sampling_flags(parser, top_p: bool = False) -> None:
    """How every command line that decodes draws a token (mineworld.decoding.Sampling):
    ``--temperature``, ``--top_k``, ``--top_p`` if asked, ``--repeat_penalty`` and
    ``--overuse_penalty`` (unset, each is the model's own: its config's decoding section), and
    ``--seed``."""
    parser.add_argument(
        "--temperature", type=number_in(float, 0, MAX_TEMPERATURE),
        help="sampling temperature, 0 for greedy (default: the model's own; greedy for the "
        "embedded model and the published configs; 1.0 when --top_k or --top_p asks a greedy "
        "model to sample)")
    parser.add_argument("--top_k", type=positive_int,
                        help="sample among the k likeliest codes (default: the model's own)")
    if top_p:
        parser.add_argument("--top_p", type=probability,
                            help="sample among the likeliest codes holding this share of the "
                            "odds (default: every code)")
    parser.add_argument(
        "--repeat_penalty", type=number_in(float, 1, MAX_REPEAT_PENALTY),
        help="divide the odds of a cell repeating its code from the frame before (1: none; "
        "default: the model's own)")
    parser.add_argument(
        "--overuse_penalty", type=number_in(float, 0, MAX_OVERUSE_PENALTY),
        help="hold back the codes that fill more of the frames in context than an even share "
        "of the codebook, by this times the log of how many times that share (0: none; "
        "default: the model's own, 1 for the embedded model; it keeps greedy play moving and "
        "long play from drifting into one colour, see docs/embedded-model.md)")
    parser.add_argument("--seed", type=number_in(int, 0, MAX_SEED), default=0,
                        help="sampling seed (default: 0)")


def add_guidance_flag(parser) -> None:
    """``--guidance``, for every command line that decodes (mineworld.decoding.Sampling)."""
    parser.add_argument(
        "--guidance", type=number_in(float, 0, MAX_GUIDANCE), default=1.0,
        help="action guidance: each token drawn from the logits with the frame's action pushed "
        "away from those with no action by this factor (1: none, the default; 1.5: greedy "
        "rollouts stand still less often, see docs/embedded-model.md; a guided frame costs "
        "about 1.5x)")
