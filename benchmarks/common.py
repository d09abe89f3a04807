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


def print_machine(title: str) -> None:
    """Torch, threads, CPU and load; warns when spinning OpenMP threads would skew timings."""
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "0 ? ?"
    omp_wait = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"# {title}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU {cpu_model()} "
          f"({os.cpu_count()} cores), load average {load}, OMP_WAIT_POLICY {omp_wait}")
    if float(load.split()[0]) > (os.cpu_count() or 1) and omp_wait.upper() != "PASSIVE":
        print("warning: more runnable jobs than cores; spinning OpenMP threads make small ops "
              "10x slower. Consider OMP_WAIT_POLICY=PASSIVE or --threads 1.")
