"""``read_ecg`` and ``read_header``: any supported file -> 12 standard leads in mV, or one error.

The format is found from the path (:func:`locate_record`), the signal read by its reader
(:mod:`ecgrisk.io.wfdb_signal`, :mod:`ecgrisk.io.arrays`, :mod:`ecgrisk.io.clinical`), then one
assembly for all (:func:`_assemble`): leads into standard order, 8-lead storage completed,
NaN and flat leads handled, resampled on request.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ecgrisk.io.arrays import read_array
from ecgrisk.io.clinical import CLINICAL_SUFFIXES, read_clinical, sniff
from ecgrisk.io.ecg import ECG, LEAD_INDEX, STANDARD_LEADS, normalise_lead_name
from ecgrisk.io.errors import (
    EmptyFileError,
    InvalidSignalError,
    MissingLeadsError,
    MissingSignalFileError,
    SamplingRateError,
    UnknownFormatError,
)
from ecgrisk.io.header import header_meta, parse_header
from ecgrisk.io.wfdb_signal import read_wfdb_signal

__all__ = ["MIN_FS", "locate_record", "read_ecg", "read_header"]

MIN_FS = 50.0


def locate_record(path) -> tuple[str, Path]:
    """-> (kind, file): kind is wfdb/npy/npz or a clinical format; ``file`` is the .hea for WFDB."""
    p = Path(os.fspath(path))
    suffix = p.suffix.lower()
    if p.is_file() and suffix not in (".hea", ".dat", ".mat", ".npy", ".npz"):
        kind = sniff(p)
        if kind is not None:
            return kind, p
    if suffix in (".npy", ".npz"):
        if not p.is_file():
            raise MissingSignalFileError(p, "file does not exist")
        return suffix[1:], p
    if suffix in (".hea", ".dat", ".mat"):
        hea = _header(p.with_suffix(""))
        if hea is None:
            why = ("file does not exist" if not p.exists() else
                   f"no header {p.with_suffix('.hea').name} beside it")
            raise MissingSignalFileError(p, why)
        return "wfdb", hea
    hea = _header(p)
    if hea is not None:
        return "wfdb", hea
    for ext in (".npy", ".npz"):
        if p.with_name(p.name + ext).is_file():
            return ext[1:], p.with_name(p.name + ext)
    if p.is_file():
        if p.stat().st_size == 0:
            raise EmptyFileError(p, "file is empty (0 bytes)")
        kinds = ("WFDB .hea/.dat, Challenge .hea/.mat, .npy, .npz, DICOM, GE MUSE XML, "
                 "Philips XML, HL7 aECG, SCP-ECG or EDF")
        what = "content" if suffix in CLINICAL_SUFFIXES or not suffix else f"file type {suffix!r}"
        raise UnknownFormatError(p, f"unsupported {what}; ecgrisk reads {kinds}")
    raise MissingSignalFileError(p, "no such record (no file, .hea, .npy or .npz)")


def _header(base: Path) -> Path | None:
    """``base.hea``, or ``base.HEA`` as some systems export it (the folder scan matches either)."""
    for suffix in (".hea", ".HEA"):
        hea = base.with_name(base.name + suffix)
        if hea.is_file():
            return hea
    return None


def _check_fs(path, fs, what: str) -> float:
    try:
        value = float(fs)
    except (TypeError, ValueError):
        raise SamplingRateError(path, f"{what} {fs!r} is not a number") from None
    if not math.isfinite(value) or value < MIN_FS:
        raise SamplingRateError(path, f"unsupported {what} {fs!r} (need >= {MIN_FS:g} Hz)")
    return value


def _lead_order(names: list[str]) -> tuple[list[int], list[int], list[str], list[str]]:
    """-> (source channel per kept lead, its standard row, unknown names, duplicate names)."""
    src, rows, unknown, dup = [], [], [], []
    for i, name in enumerate(names):
        std = normalise_lead_name(name)
        if std is None:
            unknown.append(name)
        elif LEAD_INDEX[std] in rows:
            dup.append(name)
        else:
            src.append(i)
            rows.append(LEAD_INDEX[std])
    return src, rows, unknown, dup


def read_header(path, fs: float | None = None) -> dict:
    """Describe a record without reading its signal.

    Parameters
    ----------
    path : record path, with or without extension.
    fs : sampling rate of a bare ``.npy`` (ignored for other formats).

    Returns
    -------
    dict with ``path``, ``record_id``, ``source_format``, ``fs`` (the file's own rate, not
    validated; None when the header or array file has none and no ``fs``), ``n_samples``, ``leads`` (recognised standard
    names in file order), ``raw_leads`` (names as written), ``lead_mask`` (bool ``[12]``), ``meta``.
    """
    kind, file = locate_record(path)
    if kind == "wfdb":
        h = parse_header(file)
        names, rec_fs, n, meta = h.names, h.fs, h.n_samples, header_meta(h.source_format, h.comments)
    elif kind not in ("npy", "npz"):  # clinical files are small and have no separate header
        raw, names, rec_fs, meta = read_clinical(file, kind)
        return _described(file, kind, names, rec_fs, raw.shape[1], meta)
    else:
        shape, rec_fs, names, comments = read_array(kind, file, header_only=True)
        rec_fs = rec_fs if rec_fs is not None else fs
        n = int(shape[1]) if len(shape) == 2 else None
        meta = header_meta(kind, comments)
    return _described(file, kind, names, rec_fs, n, meta)


def _described(file: Path, kind: str, names: list[str], rec_fs, n, meta: dict) -> dict:
    _, rows, unknown, _ = _lead_order(names)
    mask = np.zeros(len(STANDARD_LEADS), dtype=bool)
    mask[rows] = True
    meta["unknown_leads"] = unknown
    leads = tuple(STANDARD_LEADS[r] for r in rows)
    return dict(path=str(file), record_id=file.stem, source_format=meta["source_format"],
                fs=rec_fs, n_samples=n, leads=leads, raw_leads=list(names), lead_mask=mask,
                meta=meta)


def read_ecg(path, fs: float | None = None, *, missing_leads: str = "pad",
             array_fs: float | None = None) -> ECG:
    """Read one ECG file into 12 standard leads in mV.

    Parameters
    ----------
    path : record path, with or without extension (see the module docstring for formats).
    fs : target rate in Hz for WFDB/Challenge/npz-with-fs records (resampled when it differs,
        ``meta["resampled"]``); the rate *of the file* for a ``.npy`` or an ``.npz`` without one.
    missing_leads : ``"pad"`` zero-fills absent leads (``lead_mask`` False, listed in
        ``meta["missing_leads"]``); ``"refuse"`` raises ``MissingLeadsError``.
    array_fs : the rate of a ``.npy`` or ``.npz`` that carries none, and nothing else: unlike
        ``fs``, never a rate to resample to (``ecgrisk score --npy-fs``).

    Returns
    -------
    ECG with ``signal`` float32 ``[12, samples]``.

    Raises
    ------
    ECGReadError subclass naming the file and the reason.
    """
    if missing_leads not in ("pad", "refuse"):
        raise ValueError(f"missing_leads must be 'pad' or 'refuse', got {missing_leads!r}")
    if fs is not None:
        fs = _check_fs(path, fs, "requested sampling rate")
    if array_fs is not None:
        array_fs = _check_fs(path, array_fs, "sampling rate given for arrays")
    kind, file = locate_record(path)
    if kind == "wfdb":
        h = parse_header(file)
        if h.fs is None:
            raise SamplingRateError(file, "header gives no sampling frequency")
        rec_fs = _check_fs(file, h.fs, "header sampling rate")
        raw, odd_units = read_wfdb_signal(h)
        names, meta = h.names, header_meta(h.source_format, h.comments)
        if odd_units:
            meta["units_assumed_mv"] = odd_units
    elif kind not in ("npy", "npz"):
        raw, names, rec_fs, meta = read_clinical(file, kind)
        rec_fs = _check_fs(file, rec_fs, "sampling rate in file")
    else:
        raw, file_fs, names, comments = read_array(kind, file, header_only=False)
        given = array_fs if array_fs is not None else fs
        if file_fs is None and given is None:
            raise SamplingRateError(file, f"a .{kind} file carries no sampling rate; give it "
                                          "(ecgrisk score --npy-fs, read_ecg(fs=...))")
        rec_fs = _check_fs(file, file_fs, "sampling rate in file") if file_fs is not None else given
        meta = header_meta(kind, comments)
    return _assemble(file, raw, names, rec_fs, fs, missing_leads, meta)


# each lead as a*I + b*II: III = II - I (Einthoven), aVR/aVL/aVF (Goldberger)
_FROM_I_II = {"III": (-1.0, 1.0), "aVR": (-0.5, -0.5), "aVL": (1.0, -0.5), "aVF": (-0.5, 1.0)}


def _derive_limb_leads(sig: np.ndarray, rows: list[int]) -> tuple[np.ndarray, list[int], list[str]]:
    """Add the limb leads a file left out (8-lead storage) when I and II are there."""
    if 0 not in rows or 1 not in rows:
        return sig, rows, []
    lead_i, lead_ii = sig[rows.index(0)], sig[rows.index(1)]
    new = [name for name in _FROM_I_II if LEAD_INDEX[name] not in rows]
    if not new:
        return sig, rows, []
    extra = np.stack([_FROM_I_II[n][0] * lead_i + _FROM_I_II[n][1] * lead_ii for n in new])
    return np.concatenate([sig, extra.astype(sig.dtype)]), rows + [LEAD_INDEX[n] for n in new], new


def _assemble(file: Path, raw: np.ndarray, names: list[str], rec_fs: float, fs: float | None,
              missing_leads: str, meta: dict) -> ECG:
    """Reorder ``raw [channels, samples]`` into 12 standard rows; validate, clean, resample."""
    if raw.shape[1] == 0:
        raise InvalidSignalError(file, "signal has no samples")
    src, rows, unknown, dup = _lead_order(names)
    if not src:
        raise MissingLeadsError(file, f"no standard lead among {names}")
    sig = raw[src]
    all_nan = np.isnan(sig).all(axis=1)
    if all_nan.all():
        raise InvalidSignalError(file, "every lead is NaN")
    nan_leads = [STANDARD_LEADS[r] for r, bad in zip(rows, all_nan, strict=True) if bad]
    if all_nan.any():  # a lead with no valid sample is as good as absent
        sig = sig[~all_nan]
        rows = [r for r, bad in zip(rows, all_nan, strict=True) if not bad]
    sig, rows, derived = _derive_limb_leads(sig, rows)
    # a record ecgrisk converted says which of its stored leads were derived
    listed = str(meta.pop("derived leads", "")).split(",")
    derived += [lead for lead in listed if lead in LEAD_INDEX and LEAD_INDEX[lead] in rows]
    missing = [lead for i, lead in enumerate(STANDARD_LEADS) if i not in rows]
    if missing and missing_leads == "refuse":
        found = [STANDARD_LEADS[r] for r in rows]
        raise MissingLeadsError(file, f"missing leads {missing} (found {found})")
    nan_mask = np.isnan(sig)
    n_nan = int(nan_mask.sum())
    if n_nan:
        sig[nan_mask] = 0.0
    if (sig.max(axis=1) == sig.min(axis=1)).all():
        raise InvalidSignalError(file, "signal is flat (every lead constant)")
    out_fs = rec_fs
    if fs is not None and fs != rec_fs:
        from ecgrisk.preprocess import resample

        sig, out_fs = resample(sig, rec_fs, fs), fs
    out = np.zeros((len(STANDARD_LEADS), sig.shape[1]), dtype=np.float32)
    out[rows] = sig
    mask = np.zeros(len(STANDARD_LEADS), dtype=bool)
    mask[rows] = True
    meta.update(resampled=out_fs != rec_fs, original_fs=float(rec_fs), missing_leads=missing,
                derived_leads=derived,
                unknown_leads=unknown, duplicate_leads=dup, nan_leads=nan_leads, nan_samples=n_nan)
    return ECG(signal=out, fs=float(out_fs), leads=STANDARD_LEADS, lead_mask=mask,
               record_id=file.stem, path=str(file), meta=meta)
