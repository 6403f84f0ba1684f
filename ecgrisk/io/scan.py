"""Which files under a folder are ECG records: the one folder scan that scoring, conversion,
pretraining and the review app share.

WFDB records are listed once, by their header (the header names the signal file); ``.npy`` and
``.npz`` by suffix; clinical exports by content (:func:`ecgrisk.io.clinical.sniff`), whatever
their suffix, so that a file named like an export but holding none is told apart.
"""

from __future__ import annotations

import fnmatch
import os
from collections import Counter
from pathlib import Path

from ecgrisk.io.clinical import CLINICAL_SUFFIXES, sniff

__all__ = ["NUMPY_SUFFIXES", "scan_folder"]

NUMPY_SUFFIXES = (".npy", ".npz")


def scan_folder(root: Path, pattern: str | None = None
                ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(records, unrecognised)`` under ``root``, searched recursively (symlinked folders too,
    each folder once), hidden files and folders (caches, checkpoints) left out, in path order.

    ``records`` are ``(id, path given to read_ecg)``: the id is the path relative to ``root``
    without its suffix (``records100/00000/00001_lr``), or with it where two files share a stem
    (``x.hea`` and ``x.npy``), so ids stay unique. ``unrecognised`` are ``(relative path, path)``
    of the files named like a clinical export (``.dcm``, ``.xml``, ...) whose content is no
    format ecgrisk reads. ``pattern`` is a glob matched against the relative path (``*`` also
    crosses ``/``).
    """
    found: list[tuple[str, str, str]] = []  # (relative stem, suffix, path given to read_ecg)
    unknown: list[tuple[str, str]] = []
    for parts, path in _files(root):
        rel = "/".join(parts)
        if pattern is not None and not fnmatch.fnmatch(rel, pattern):
            continue
        f = Path(path)
        suffix = f.suffix.lower()
        stem = rel[: len(rel) - len(suffix)]
        if suffix == ".hea":
            found.append((stem, suffix, str(f.with_suffix(""))))
        elif suffix in NUMPY_SUFFIXES or (
                (suffix in CLINICAL_SUFFIXES or not suffix) and sniff(f) is not None):
            found.append((stem, suffix, path))
        elif suffix in CLINICAL_SUFFIXES:
            unknown.append((rel, path))
    counts = Counter(stem for stem, _, _ in found)
    return [(stem if counts[stem] == 1 else stem + suffix, path)
            for stem, suffix, path in found], unknown


def _files(root: Path) -> list[tuple[tuple[str, ...], str]]:
    """``(path parts relative to root, path)`` of every file under ``root``, sorted as paths
    sort; hidden entries left out. Symlinked folders are followed (a clinic links its export
    shares into one folder), after every real folder and each folder once: one reached both
    ways keeps its real path, and a link back up is not walked again.

    ``os.scandir`` rather than ``Path.rglob``: its entries know their type, so only folders and
    symlinks cost a ``stat``, and no Path is made for what is skipped.
    """
    out = []
    seen = {_identity(os.stat(root))}
    stack: list[tuple[tuple[str, ...], str]] = [((), str(root))]
    links: list[tuple[tuple[str, ...], str]] = []
    while stack or links:
        if not stack:
            links.sort()
            parts, path = links.pop(0)
            try:
                folder_id = _identity(os.stat(path))
            except OSError:  # a broken link
                continue
            if folder_id not in seen:
                seen.add(folder_id)
                stack.append((parts, path))
            continue
        parts, folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:  # unreadable folder: skipped, as rglob skips it
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir(follow_symlinks=False):
                    seen.add(_identity(e.stat(follow_symlinks=False)))
                    stack.append((parts + (e.name,), e.path))
                elif e.is_symlink() and e.is_dir():
                    links.append((parts + (e.name,), e.path))
                elif e.is_file():
                    out.append((parts + (e.name,), e.path))
            except OSError:
                continue
    out.sort()
    return out


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino
