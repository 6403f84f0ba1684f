"""Unlabeled ECG files from any folders, and pooling of several sources for pretraining."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ecgrisk.data.base import RecordSet
from ecgrisk.io.scan import scan_folder

log = logging.getLogger(__name__)


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
            found, unknown = scan_folder(r, pattern)
            prefix = f"{r.name}/" if len(roots) > 1 else ""
            for rid, path in found:
                ids.append(prefix + rid)
                paths.append(path)
            unrecognised += [(prefix + n, p) for n, p in unknown]
            if unknown:  # e.g. image DICOMs or report XML beside the ECGs of an export
                log.warning("%s: %d file(s) named like an ECG export hold no ECG format ecgrisk "
                            "reads (%s%s)", r, len(unknown), ", ".join(n for n, _ in unknown[:3]),
                            ", ..." if len(unknown) > 3 else "")
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
