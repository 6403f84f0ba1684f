"""Finding a model bundle or encoder file by path or shipped name, its metadata, and the error
for one that cannot be used.

Apart from :mod:`ecgrisk.bundle` because it must not import torch: ``ecgrisk score`` resolves
``--model`` and reads the bundle's preprocessing before it starts its reader processes, and they
read records while the main process imports torch (see :func:`ecgrisk.scoring.job.score_files`).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path

from ecgrisk.shipped import list_shipped, shipped_path

__all__ = ["BundleError", "peek_meta", "resolve"]

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
    """The shipped names whose file holds ``kind`` (an unreadable file is no candidate; loading
    it by name says why)."""
    return [name for name in list_shipped()
            if (peek_meta(shipped_path(name)) or {}).get("kind") == kind]


def peek_meta(path: str | os.PathLike) -> dict | None:
    """The ``meta`` dict of a bundle or encoder file, read without torch and without its
    weights (a few ms), or None where the file is not a ``torch.save`` zip this can read.

    Unverified: :func:`ecgrisk.bundle.Bundle.load` checks the digest over weights and metadata
    and says what is wrong with a file. Unpickling here builds nothing but Python's own
    containers and ``OrderedDict``; a tensor becomes None, any other class is refused.
    """
    try:
        with zipfile.ZipFile(path) as z:
            (pkl,) = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            obj = _WithoutTensors(io.BytesIO(z.read(pkl))).load()
    except Exception:
        return None
    meta = obj.get("meta") if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else None


def _no_tensor(*args, **kwargs) -> None:
    return None


class _WithoutTensors(pickle.Unpickler):
    """A ``torch.save`` pickle without torch: tensors and storages become None."""

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" or module.startswith("torch."):
            return _no_tensor  # _rebuild_tensor_v2, FloatStorage, ...: never torch's own
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")

    def persistent_load(self, pid) -> None:
        return None
