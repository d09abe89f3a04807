"""Argument types shared by the command lines (kept free of heavy imports, so that --help
answers before torch and gradio load)."""

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
