"""Shared test set-up: tiny tensors run fastest, and most repeatably, on one thread."""

import os

import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
torch.set_num_threads(1)
