"""What every benchmark prints about the machine, and the percentile it reports."""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from mineworld.machine import machine


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def machine_line() -> str:
    """Torch, threads, CPU, cores, load average and OpenMP wait policy, on one line."""
    return (f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU {machine()}, "
            f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}")


def print_machine(title: str) -> None:
    """Torch, threads, CPU and load; warns when spinning OpenMP threads would skew timings."""
    print(f"# {title}")
    print(machine_line())
    busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    if busy and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("warning: more runnable jobs than cores; spinning OpenMP threads make small ops "
              "10x slower. Consider OMP_WAIT_POLICY=PASSIVE or --threads 1.")
