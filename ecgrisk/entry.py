"""The console scripts (``pyproject.toml``). Each starts handling SIGINT and SIGTERM before it
imports its command: the training commands spend seconds importing torch and Lightning, and a
Ctrl-C there printed a ``KeyboardInterrupt`` traceback instead of one line and exit status 130."""

from __future__ import annotations

import sys
from importlib import import_module

from ecgrisk.signals import stop_on_signals


def _run(module: str, command: str) -> None:
    with stop_on_signals(command=command):
        sys.exit(import_module(module).main())


def ecgrisk() -> None:
    _run("ecgrisk.cli", "ecgrisk")


def finetune() -> None:
    _run("ecgrisk.finetune.app", "ecgrisk-finetune")


def pretrain() -> None:
    _run("ecgrisk.pretrain.app", "ecgrisk-pretrain")


def refine() -> None:
    _run("ecgrisk.refine.app", "ecgrisk-refine")
