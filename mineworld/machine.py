"""What a speed figure was measured on: the CPU, its cores and how busy the host was."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def machine() -> str:
    """The CPU, its cores and the load average, for a figure to name where it was made."""
    return f"{cpu_model()} ({os.cpu_count()} cores), load average {load_average()}"
