"""The console scripts (``pyproject.toml``). Each starts handling SIGINT and SIGTERM before it
imports its command: the training commands spend seconds importing torch and Lightning, and a
Ctrl-C there printed a ``KeyboardInterrupt`` traceback instead of one line and exit status 130.
Once the command is done, a signal while the interpreter tears down (torch, worker pools) ends
the process at once with the command's own exit status: its work is written, and 130 with no
line would tell a wrapper script it was not. Output cut short by its reader (``| head``) ends
with status 1, as rich ends the commands it prints for, not with a traceback."""

from __future__ import annotations

import os
import signal
import sys
from importlib import import_module

from ecgrisk.signals import HANDLED, fault_point, stop_on_signals


def _run(module: str, command: str) -> None:
    try:
        with stop_on_signals(command=command):
            status = import_module(module).main()
    except SystemExit as e:
        status = e.code
    except BrokenPipeError:
        # the reader of stdout left (`ecgrisk inspect ... | head`): stop without a traceback
        # or a failed flush at exit, with the status rich gives the commands it prints for
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 1
    code = status if isinstance(status, int) else 0 if status is None else 1

    def end(signum, frame) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

    for s in HANDLED:
        if signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, end)
    fault_point("exit")
    sys.exit(status)


def ecgrisk() -> None:
    _run("ecgrisk.cli", "ecgrisk")


def finetune() -> None:
    _run("ecgrisk.finetune.app", "ecgrisk-finetune")


def pretrain() -> None:
    _run("ecgrisk.pretrain.app", "ecgrisk-pretrain")


def refine() -> None:
    _run("ecgrisk.refine.app", "ecgrisk-refine")
