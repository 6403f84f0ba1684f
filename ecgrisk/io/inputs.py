"""The INPUT arguments of ``ecgrisk score``: files, folders, globs and manifests -> records.

:func:`collect_records` turns them into ``(record id, path)`` pairs in input order, each path
once; a path a manifest lists that does not exist is kept and becomes an error row when it is read;
an INPUT argument that names nothing is refused (a typo, most likely).
"""

from __future__ import annotations

import csv
import glob
import os
from pathlib import Path

from ecgrisk.io.errors import ECGReadError
from ecgrisk.io.read import locate_record
from ecgrisk.io.scan import scan_folder

__all__ = ["GLOB_CHARS", "InputError", "as_record", "collect_records", "names_something"]

GLOB_CHARS = set("*?[")
_WFDB_SUFFIXES = (".hea", ".dat", ".mat")


class InputError(ValueError):
    """The INPUT arguments name nothing to score, or a manifest is malformed."""


def as_record(path: Path) -> tuple[str, str]:
    """``(record id, path given to read_ecg)``; WFDB records by their name without extension."""
    if path.suffix.lower() in _WFDB_SUFFIXES:
        path = path.with_suffix("")
        return path.name, os.path.abspath(path)
    return path.stem, os.path.abspath(path)


def _manifest(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise InputError(f"manifest {path}: needs a 'path' column (has {reader.fieldnames})")
        out = []
        for line, row in enumerate(reader, start=2):
            if not (row.get("path") or "").strip():
                raise InputError(f"manifest {path}: line {line} has an empty path")
            p = Path(row["path"].strip())
            rec, abspath = as_record(p if p.is_absolute() else path.parent / p)
            out.append(((row.get("record") or "").strip() or rec, abspath))
    return out


def _expand(arg: str) -> list[tuple[str, str]]:
    p = Path(arg).expanduser()
    if p.is_dir():
        found, unrecognised = scan_folder(p.resolve())
        # files named like an export but holding none: rows with their error, not dropped
        return found + unrecognised
    if p.is_file() and p.suffix.lower() == ".csv":
        return _manifest(p)
    if not p.exists() and GLOB_CHARS & set(arg):
        out = []
        for match in sorted(glob.glob(os.path.expanduser(arg), recursive=True)):
            out += _expand(match)
        return out
    if not names_something(p):
        # most likely a typo: said before the model loads, not as one failed row
        raise InputError(f"INPUT {arg!r}: no such file, folder or record")
    # a file, or a record named without its extension
    return [as_record(p)]


def names_something(p: Path) -> bool:
    """Whether ``p`` is a file or folder, or names a record ``read_ecg`` would find
    (``00001_lr`` for ``00001_lr.hea``)."""
    if p.exists():  # a .dat without its header too: a file, whose row says what is wrong
        return True
    try:
        locate_record(p)
    except ECGReadError:
        return False
    return True


def collect_records(inputs: list[str]) -> list[tuple[str, str]]:
    """``(record id, path)`` of every record INPUT names, in order, each path once and each id
    once (a record whose id an earlier one took gets ``_2``, ``_3``, ...).

    INPUT items are files (any format ``read_ecg`` reads; ``.hea``/``.dat``/``.mat`` name their
    record), folders (searched recursively by :func:`~ecgrisk.io.scan.scan_folder`), globs (``**`` recursive)
    or manifest ``.csv`` files with a ``path`` column (relative to the manifest) and an optional
    ``record`` column. An INPUT that names nothing is an :class:`InputError`; a path in a
    manifest that does not exist is kept: it becomes a row with its error, as does a file in a
    folder named like a clinical export whose content is none (its ``unrecognised``).
    """
    if not inputs:
        raise InputError("no INPUT given")
    seen: dict[str, str] = {}
    for arg in inputs:
        found = _expand(str(arg))
        if not found:
            raise InputError(f"INPUT {arg!r}: no ECG record found (folders hold WFDB .hea, "
                             f".npy, .npz or clinical ECG files; globs must match something)")
        for rec, path in found:
            seen.setdefault(path, rec)
    out, taken = [], set()
    for path, rec in seen.items():
        rid, k = rec, 1
        while rid in taken:  # 00001_lr in two INPUT folders: two rows, told apart as convert does
            k += 1
            rid = f"{rec}_{k}"
        taken.add(rid)
        out.append((rid, path))
    return out
