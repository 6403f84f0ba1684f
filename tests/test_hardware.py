"""precision=auto: bf16 only where the hardware runs it, decided per machine; the machine line
of the benchmarks says which."""

from __future__ import annotations

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
