"""Argument types shared by the command lines (kept free of heavy imports, so that --help
answers before torch and gradio load)."""

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def int_in(low: int, high: int):
    """An argument type: a whole number in [low, high]."""
    def whole_number(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value
    return whole_number


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def float_in(low: float, high: float):
    """An argument type: a number in [low, high]."""
    def number(text: str) -> float:
        value = float(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}], got {text}")
        return value
    return number


# --guidance, for every command line that decodes (see mineworld.decoding.Sampling.guidance).
MAX_GUIDANCE = 10.0  # far past where frames stay pictures: a bigger value is a typo
GUIDANCE_HELP = ("action guidance: each token drawn from the logits with the frame's action "
                 "pushed away from those with no action by this factor (1: none, the default; "
                 "1.5: greedy rollouts stand still less often, see docs/embedded-model.md; a "
                 "guided frame costs about 1.5x)")
