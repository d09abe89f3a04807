"""What every benchmark prints about the machine, and the percentile it reports."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def machine_line() -> str:
    """Torch, threads, CPU, cores, load average and OpenMP wait policy, on one line."""
    return (f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU {cpu_model()} "
            f"({os.cpu_count()} cores), load average {load_average()}, OMP_WAIT_POLICY "
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}")


def print_machine(title: str) -> None:
    """Torch, threads, CPU and load; warns when spinning OpenMP threads would skew timings."""
    print(f"# {title}")
    print(machine_line())
    busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    if busy and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("warning: more runnable jobs than cores; spinning OpenMP threads make small ops "
              "10x slower. Consider OMP_WAIT_POLICY=PASSIVE or --threads 1.")
