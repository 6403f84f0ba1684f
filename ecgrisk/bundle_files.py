"""Finding a model bundle or encoder file by path or shipped name, reading its metadata, and
the error for one that cannot be used.

Apart from :mod:`ecgrisk.bundle` because it must not import torch: ``ecgrisk score`` resolves
``--model`` and reads what its readers need (:func:`peek_meta`) before it imports torch, so
they read records while the main process imports torch and loads the weights (see
:func:`ecgrisk.scoring.job.score_files`).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path

from ecgrisk.shipped import list_shipped, shipped_path

__all__ = ["BundleError", "check_kind", "peek_meta", "resolve"]

KINDS = {"bundle": "model bundle", "encoder": "encoder file"}
# what to do instead, for a file of one kind given where the other is wanted
_INSTEAD = {
    ("encoder", "bundle"): "fine-tune it into one first: ecgrisk-finetune model.pretrained=",
    ("bundle", "encoder"): "a bundle scores ECGs; model.pretrained and --encoder take an "
                           "encoder.pt from ecgrisk-pretrain, e.g. ",
}


class BundleError(ValueError):
    """A model bundle or encoder file cannot be used; the message names the file and why."""


def resolve(path_or_name: str | os.PathLike, kind: str = "bundle") -> Path:
    """A model bundle's or encoder file's path: ``path_or_name`` itself when it is a file, else
    the file shipped under that name (``ecgrisk/shipped/<name>.pt``).

    ``kind`` ('bundle' or 'encoder') is what the caller wants: when neither matches, the error
    lists the shipped names of that kind.
    """
    path = Path(path_or_name)
    found = path if path.is_file() else shipped_path(str(path_or_name))
    if found is not None:  # its kind is checked where its metadata is read (load, peek_meta)
        return found
    names = ", ".join(_shipped_names(kind)) or "none in this installation"
    raise BundleError(f"{path}: no such file, and no shipped {kind} has that name "
                      f"(shipped {kind}s: {names})")


def check_kind(path: str | os.PathLike, found: str, kind: str) -> None:
    """Refuse ``path``, whose metadata says it is a ``found`` file, where a ``kind`` file is
    wanted, saying what to give instead."""
    if found == kind:
        return
    label = KINDS.get(found, f"{found!r} file")
    msg = f"{path}: is {_a(label)}, not {_a(KINDS[kind])}"
    if (found, kind) in _INSTEAD:
        example = Path(path).stem if found == "encoder" else "contrastive-xresnet1d101"
        msg += f" ({_INSTEAD[found, kind]}{example})"
    raise BundleError(msg)


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _shipped_names(kind: str) -> list[str]:
    """The shipped names whose file holds ``kind`` (an unreadable file is no candidate; loading
    it by name says why)."""
    return [name for name in list_shipped()
            if (peek_meta(shipped_path(name)) or {}).get("kind") == kind]


def _no_tensor(*args, **kwargs) -> None:
    return None


class _MetaUnpickler(pickle.Unpickler):
    """A ``torch.save`` pickle without torch: every tensor and storage becomes None, and no
    class or function outside torch's tensor rebuilding is looked up (so none runs)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module == "torch._utils" and name.startswith("_rebuild_")) or (
                module == "torch" and name.endswith("Storage")):
            return _no_tensor
        raise pickle.UnpicklingError(f"{module}.{name} is not read without torch")

    def persistent_load(self, pid) -> None:
        return None


def peek_meta(path: str | os.PathLike) -> dict | None:
    """The ``meta`` dict of a bundle or encoder file, read without torch (9 ms for the shipped
    ``ptbxl-all``, where importing torch and loading the file take 1-2 s); None when the file is
    not a ``torch.save`` zip archive this can read.

    Not verified: :func:`ecgrisk.bundle.Bundle.load` checks the digest and says what is wrong
    with a file this cannot read. A caller acting on the peeked metadata compares it with the
    loaded bundle.
    """
    try:
        with zipfile.ZipFile(path) as z:
            pickles = [n for n in z.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pickles) != 1:
                return None
            obj = _MetaUnpickler(io.BytesIO(z.read(pickles[0]))).load()
    except Exception:  # any fault: the caller loads the file with torch, which names it
        return None
    meta = obj.get("meta") if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else None
