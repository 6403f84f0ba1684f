"""Unlabeled ECG files from any folders, and pooling of several sources for pretraining."""

from __future__ import annotations

import fnmatch
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ecgrisk.data.base import RecordSet
from ecgrisk.io.clinical import CLINICAL_SUFFIXES, sniff

NUMPY_SUFFIXES = (".npy", ".npz")

log = logging.getLogger(__name__)


def _candidates(root: Path, pattern: str | None) -> tuple[list[tuple[str, Path]], list[Path]]:
    """``(id, path)`` of every ECG under ``root`` (WFDB records once, by their header), and the
    files named like a clinical ECG export whose content is none."""
    found: list[tuple[str, str, Path]] = []  # (relative stem, suffix, path given to read_ecg)
    unknown: list[Path] = []
    for parts, path in _files(root):
        rel = "/".join(parts)
        if pattern is not None and not fnmatch.fnmatch(rel, pattern):
            continue
        f = Path(path)
        suffix = f.suffix.lower()
        stem = rel[: len(rel) - len(suffix)]
        if suffix == ".hea":
            # the signal file (.dat, .mat, ...) is named inside the header: one entry per record
            found.append((stem, suffix, f.with_suffix("")))
        elif suffix in NUMPY_SUFFIXES or (
                (suffix in CLINICAL_SUFFIXES or not suffix) and sniff(f) is not None):
            found.append((stem, suffix, f))
        elif suffix in CLINICAL_SUFFIXES:
            unknown.append(f)
    counts = Counter(stem for stem, _, _ in found)
    # a stem shared by two files (x.hea and x.npy) keeps its suffix so both ids stay unique
    return [
        (stem if counts[stem] == 1 else stem + suffix, path) for stem, suffix, path in found
    ], unknown


def _files(root: Path) -> list[tuple[tuple[str, ...], str]]:
    """``(path parts relative to root, path)`` of every file under ``root``, sorted as paths
    sort; hidden files and folders (caches, checkpoints) and symlinked folders left out.

    ``os.scandir`` rather than ``Path.rglob``: its entries know their type, so only symlinks
    cost a ``stat``, and no Path is made for what is skipped.
    """
    out = []
    stack: list[tuple[tuple[str, ...], str]] = [((), str(root))]
    while stack:
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
                    stack.append((parts + (e.name,), e.path))
                elif e.is_file():
                    out.append((parts + (e.name,), e.path))
            except OSError:
                continue
    out.sort()
    return out


class ECGFolder(RecordSet):
    """Every readable ECG file under one or several folders, without labels.

    Signals are not read here; ``read_ecg`` reports unreadable files when they are used.

    Parameters
    ----------
    roots : a folder or several; each is scanned recursively (hidden folders skipped).
    pattern : optional glob matched against each file's path relative to its root, such as
        ``"*_lr.hea"`` or ``"records100/*"`` (``*`` also crosses ``/``).
    name : source name used by :func:`pool` to prefix ids.

    Attributes
    ----------
    record_ids : ``[n]`` path relative to its root without extension
        (``records100/00000/00001_lr``); with several roots prefixed by the root's folder name.
    paths : ``[n]`` WFDB records without extension, other files (``.npy``/``.npz`` and the
        clinical formats of ``ecgrisk.io.clinical``, told by content) as they are.
    unrecognised : ``(id, path)`` of the files named like a clinical export (``.dcm``, ``.xml``,
        ...) whose content is no format ecgrisk reads; not records (a warning names them), but
        ``ecgrisk score`` and ``convert`` give each a row with its error. The id keeps the suffix.
    """

    def __init__(
        self,
        roots: str | Path | Sequence[str | Path],
        pattern: str | None = None,
        name: str = "folder",
    ):
        if isinstance(roots, (str, Path)):
            roots = [roots]
        roots = [Path(r).expanduser().resolve() for r in roots]
        if not roots:
            raise ValueError("ECGFolder needs at least one folder")
        for r in roots:
            if not r.is_dir():
                raise FileNotFoundError(f"ECG folder {r} does not exist or is not a folder")
        ids: list[str] = []
        paths: list[str] = []
        unrecognised: list[tuple[str, str]] = []
        for r in roots:
            found, unknown = _candidates(r, pattern)
            prefix = f"{r.name}/" if len(roots) > 1 else ""
            for rid, path in found:
                ids.append(prefix + rid)
                paths.append(str(path))
            names = [p.relative_to(r).as_posix() for p in unknown]
            unrecognised += [(prefix + n, str(p)) for n, p in zip(names, unknown, strict=True)]
            if names:  # e.g. image DICOMs or report XML beside the ECGs of an export
                log.warning("%s: %d file(s) named like an ECG export hold no ECG format ecgrisk "
                            "reads (%s%s)", r, len(names), ", ".join(names[:3]),
                            ", ..." if len(names) > 3 else "")
        dupes = [i for i, n in Counter(ids).items() if n > 1]
        if dupes:
            raise ValueError(
                f"ECGFolder: roots {[str(r) for r in roots]} share folder names, so ids collide "
                f"(e.g. {dupes[0]!r}); pass them as separate ECGFolder sources to pool()"
            )
        if not ids:
            where = ", ".join(str(r) for r in roots)
            what = f" matching {pattern!r}" if pattern else ""
            raise FileNotFoundError(
                f"no ECG file{what} under {where} (looked recursively for WFDB .hea, .npy, .npz "
                f"and DICOM, MUSE/Philips/aECG XML, SCP-ECG, EDF by content)"
            )
        self.roots = roots
        self.unrecognised = unrecognised
        super().__init__(name=name, record_ids=ids, paths=paths)


def pool(*recordsets: RecordSet) -> RecordSet:
    """Concatenate sources into one unlabeled set, e.g. for self-supervised pretraining.

    Parameters
    ----------
    *recordsets : sources with distinct ``name``; their labels are dropped.

    Returns
    -------
    RecordSet
        ``name="pool"``; ids ``"<source name>/<id>"``; paths in source order; ``missing``
        prefixed the same way.
    """
    if not recordsets:
        raise ValueError("pool() needs at least one record set")
    names = [rs.name for rs in recordsets]
    repeated = sorted(n for n, k in Counter(names).items() if k > 1)
    if repeated:
        raise ValueError(
            f"pool(): sources must have distinct names to keep ids unique; repeated: {repeated}"
        )
    ids, paths, missing = [], [], []
    for rs in recordsets:
        ids += [f"{rs.name}/{i}" for i in rs.record_ids]
        paths += [str(p) for p in rs.paths]
        missing += [f"{rs.name}/{i}" for i in rs.missing]
    return RecordSet(name="pool", record_ids=ids, paths=paths, missing=missing)
