"""precision=auto: bf16 only where the hardware runs it, decided per machine; the machine line
of the benchmarks says which."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from ecgrisk import hardware
from ecgrisk.config import compose
from ecgrisk.runs import make_trainer


@pytest.mark.parametrize("native, want", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_is_bf16_only_where_bf16_is_native(monkeypatch, native, want):
    monkeypatch.setattr(hardware, "bf16_is_native", lambda device="cpu": native)
    assert hardware.resolve_precision("auto", "cpu") == want


def test_an_explicit_precision_is_kept_whatever_the_hardware(monkeypatch):
    monkeypatch.setattr(hardware, "bf16_is_native", lambda device="cpu": False)
    assert hardware.resolve_precision("bf16-mixed") == "bf16-mixed"
    assert hardware.resolve_precision("32-true") == "32-true"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_a_gpu_that_is_not_there_never_runs_bf16():
    assert not hardware.bf16_is_native("cuda")


@pytest.mark.parametrize("native, want", [(True, "bf16-mixed"), (False, "32-true")])
def test_the_default_trainer_takes_the_machines_precision(tmp_path, monkeypatch, native, want):
    monkeypatch.setattr(hardware, "bf16_is_native", lambda device="cpu": native)
    cfg = compose("finetune", ["trainer.accelerator=cpu"])
    assert cfg.trainer.precision == "auto"
    assert make_trainer(cfg, tmp_path, [], loggers=[]).precision == want


_FREE_AND_MEASURE = """
import sys
import numpy as np
from ecgrisk import hardware

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")) / 1024

if sys.argv[1] == "kept":
    assert hardware.keep_freed_memory()
a = np.ones(16 << 20, dtype=np.uint8)  # 16 MiB, every page touched
held = rss_mb()
del a
print(held - rss_mb())
"""


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                    reason="mallopt is glibc's")
def test_freed_memory_stays_with_the_process_for_its_next_batch():
    """A 16 MiB block freed goes back to the system by default (mmap), and stays in the heap,
    ready for the next batch's buffers, once keep_freed_memory ran."""
    # glibc's defaults, whatever this shell sets
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}

    def released(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", _FREE_AND_MEASURE, mode], check=True,
                             capture_output=True, text=True, env=env).stdout
        return float(out)

    assert released("default") > 15
    assert released("kept") < 1
