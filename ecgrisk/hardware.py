"""What this machine runs fast: the numeric precision to train and score in, and the line that
says so in every benchmark's header.

bf16 autocast pays only where the hardware runs bf16: on a CPU with AVX-512 (oneDNN's bf16
kernels) training xresnet1d101 ran 1.7x faster than fp32 at one thread (``results/train_speed.md``),
but on an AVX2-only CPU oneDNN emulates bf16 and the same step is 12x slower than fp32
(``results/train_speed_avx2.md``), scoring 13x (``results/scoring_precision.md``). So the config
says ``trainer.precision: auto`` and scoring asks :func:`bf16_is_native`, per machine.
"""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["bf16_is_native", "describe", "resolve_precision"]


def bf16_is_native(device: str = "cpu") -> bool:
    """Whether bf16 runs at hardware speed on ``device`` ("cpu", "cuda", "cuda:1", ...)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """Lightning's ``precision`` for a Trainer on ``accelerator``: ``"auto"`` becomes
    ``"bf16-mixed"`` where bf16 is native there, else ``"32-true"``; any other value is kept."""
    if str(precision) != "auto":
        return str(precision)
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if bf16_is_native("cuda" if gpu else "cpu") else "32-true"


def describe() -> str:
    """One line for a benchmark's header: the machine as far as speed goes, e.g. ``x86_64 CPU
    (AVX2, bf16 emulated), 2 cores, 1 torch threads, torch 2.13.0+cpu``."""
    bf16 = "bf16 native" if bf16_is_native("cpu") else "bf16 emulated"
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{platform.machine()} CPU ({torch.backends.cpu.get_cpu_capability()}, {bf16}), "
            f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads{gpu}, torch {torch.__version__}")
