"""What this machine runs fast: the numeric precision to train and score in, and the line that
says so in every benchmark's header.

bf16 autocast pays only where the hardware runs bf16: on a CPU with AVX-512 (oneDNN's bf16
kernels) training xresnet1d101 ran 1.7x faster than fp32 at one thread (``results/train_speed.md``),
but on an AVX2-only CPU oneDNN emulates bf16 and the same step is 12x slower than fp32
(``results/train_speed_avx2.md``), scoring 13x (``results/scoring_precision.md``). So the config
says ``trainer.precision: auto`` and scoring asks :func:`bf16_is_native`, per machine.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

import torch

__all__ = ["bf16_is_native", "describe", "keep_freed_memory", "resolve_precision"]

# mallopt parameters, <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems


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


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory this process frees for its next allocations.

    A CPU forward pass allocates and frees the same large activation buffers batch after
    batch. glibc serves blocks above 128 KiB with mmap and gives freed memory back to the
    system (munmap, heap trimming), so every batch faults all those pages in again. Serving
    blocks up to 32 MiB from the heap and never trimming it made the shipped model's own
    scoring rate 1.14-1.21x as fast on 2 cores (four runs of ``scripts/bench_scoring.py``, its
    ``model-default-malloc`` row; 1.09x on a host where the model ran at half that speed), and
    batch scoring 5% faster. Either setting alone was slower than neither (trimming off alone fixes the mmap
    threshold at 128 KiB, which glibc otherwise raises as blocks are freed).

    Process-wide and for good: the process keeps its peak heap until it exits. Returns whether
    it applied (glibc on Linux only).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                    and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def describe() -> str:
    """One line for a benchmark's header: the machine as far as speed goes, e.g. ``x86_64 CPU
    (AVX2, bf16 emulated), 2 cores, 1 torch threads, torch 2.13.0+cpu``."""
    bf16 = "bf16 native" if bf16_is_native("cpu") else "bf16 emulated"
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{platform.machine()} CPU ({torch.backends.cpu.get_cpu_capability()}, {bf16}), "
            f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads{gpu}, torch {torch.__version__}")
