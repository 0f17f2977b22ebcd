"""The device, autocast precision and seeding of a run, shared by pretraining and evaluation."""
from __future__ import annotations

import random

import numpy as np
import torch

from twist.config import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but no CUDA device is available; use device=auto or cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device, key: str = "train.precision") -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"{key}=fp16 needs a CUDA device; use bf16 on CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def describe_hardware(device: torch.device | None = None) -> str:
    """The processor (or GPU) and thread count, for the header of every benchmark and study figure."""
    import os
    import platform

    if device is not None and device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}; torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads; torch {torch.__version__}"
