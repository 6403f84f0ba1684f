"""Where a benchmark's figures came from: the command that reproduces them.

Every script under ``scripts/`` writes this line into its JSON and its markdown, so a table can
be rerun by pasting it. Quoted with :func:`shlex.join`, so an argument with a space or a glob
(``'data.sources=[{...}]'``) survives the paste.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["command_line"]


def command_line(script: str, argv: Sequence | None = None) -> str:
    """``python scripts/<script's file name> <args>``, shell-quoted.

    Parameters
    ----------
    script : the script's path (its ``__file__``); only its name is kept, since the scripts are
        run from the repository root.
    argv : the arguments its ``main`` parsed; None means the process's own (``sys.argv[1:]``).
        An empty list is no arguments, not the process's.
    """
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", f"scripts/{Path(script).name}", *map(str, args)])
