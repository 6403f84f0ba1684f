"""Finding a model bundle or encoder file by path or shipped name, and the error for one that
cannot be used.

Apart from :mod:`ecgrisk.bundle` because it must not import torch: ``ecgrisk score`` resolves
``--model`` before it starts its reader processes, and they start while the main process
imports torch (see :func:`ecgrisk.scoring.job.score_files`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ecgrisk.shipped import list_shipped, shipped_path

__all__ = ["BundleError", "resolve"]

KINDS = {"bundle": "model bundle", "encoder": "encoder file"}


class BundleError(ValueError):
    """A model bundle or encoder file cannot be used; the message names the file and why."""


def resolve(path_or_name: str | os.PathLike, kind: str = "bundle") -> Path:
    """A model bundle's or encoder file's path: ``path_or_name`` itself when it is a file, else
    the file shipped under that name (``ecgrisk/shipped/<name>.pt``).

    ``kind`` ('bundle' or 'encoder') is what the caller wants: when neither matches, the error
    lists the shipped names of that kind.
    """
    path = Path(path_or_name)
    if path.is_file():
        return path
    shipped = shipped_path(str(path_or_name))
    if shipped is not None:
        return shipped
    names = ", ".join(_shipped_names(kind)) or "none in this installation"
    raise BundleError(f"{path}: no such file, and no shipped {kind} has that name "
                      f"(shipped {kind}s: {names})")


def _shipped_names(kind: str) -> list[str]:
    """The shipped names whose file holds ``kind``; mmap reads the metadata, not the weights."""
    import torch  # only to list the names in an error

    names = []
    for name in list_shipped():
        try:
            meta = torch.load(shipped_path(name), map_location="cpu", weights_only=True, mmap=True)["meta"]
        except Exception:  # an unreadable file is no candidate; loading it by name says why
            continue
        if meta.get("kind") == kind:
            names.append(name)
    return names
