"""The machine a benchmark ran on, for its printed report (CPU model, cores, GPU, library versions)."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_machine() -> str:
    """"<CPU model>, <N> cores, GPU <name> | no GPU; torch <version>, Python <version>"."""
    import torch

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu_model()}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, Python {platform.python_version()}"
