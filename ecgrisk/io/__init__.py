"""Read one ECG file into a 12-lead ``ECG`` (mV, standard lead order); one clear error per file.

Formats read
------------
- WFDB records: ``name.hea`` + signal file(s) in any format ``wfdb.rdrecord`` reads (16, 212, 80,
  24, 32, 310, 311, FLAC, ...), e.g. PTB-XL ``records100/00000/00001_lr`` and MIT-BIH ``100``.
  Single-file format-16 records (PTB-XL) are decoded directly with numpy; the result equals
  ``wfdb.rdrecord``'s, ten times faster.
- PhysioNet/CinC Challenge 2020-2021 records: ``name.hea`` + ``name.mat`` (key ``val``, int16
  ``[leads, samples]``; gain, baseline and units from the header), read with ``scipy.io.loadmat``.
  ``# Age:``, ``# Sex:``, ``# Dx:`` comments (and MIT-BIH's ``# 69 M ...``) go into ``meta``.
- ``.npy``: ``[12, samples]`` (or ``[samples, 12]``) in mV and standard lead order; ``fs`` must
  be passed. ``.npz``: key ``signal``, optional ``fs`` and ``leads``.
- Clinical exports, recognised from their content whatever their suffix: DICOM General ECG,
  GE MUSE XML, Philips (Sierra) XML, HL7 aECG, SCP-ECG and EDF (see ``ecgrisk.io.clinical``;
  needs the ``formats`` extra).

Files that store 8 leads (I, II, V1-V6, as MUSE and many carts do) get III, aVR, aVL and aVF
derived from I and II (Einthoven's and Goldberger's relations, exact for a 12-lead recording),
listed in ``meta["derived_leads"]``; other absent leads are zero-filled and masked.

A record path may be given with or without extension (``00001_lr``, ``00001_lr.hea``,
``00001_lr.dat``, ``E07500.mat``). Headers are parsed here rather than by ``wfdb.rdheader``
(which costs ~3 ms a header through pandas; see ``ecgrisk.io.header``) so ``read_header`` stays
cheap over 20,000 files.
Every failure raises a subclass of ``ECGReadError`` naming the file and the reason.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgrisk.io.clinical import CLINICAL_SUFFIXES, read_clinical, sniff
from ecgrisk.io.errors import (
    ECGReadError,
    EmptyFileError,
    HeaderParseError,
    HeaderSignalMismatchError,
    InvalidSignalError,
    MissingLeadsError,
    MissingSignalFileError,
    SamplingRateError,
    TruncatedSignalError,
    UnknownFormatError,
)
from ecgrisk.io.header import Header, header_meta, parse_header

# fmt: off
STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
_LEAD_INDEX = {name: i for i, name in enumerate(STANDARD_LEADS)}
# Modified limb leads (MLII in MIT-BIH) and the D1-D3 / DI-DIII spellings of some exports.
_ALIASES = {name.upper(): name for name in STANDARD_LEADS} | {
    "MLI": "I", "MLII": "II", "MLIII": "III", "ML2": "II",
    "DI": "I", "DII": "II", "DIII": "III", "D1": "I", "D2": "II", "D3": "III",
}
_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "nv": 1e-6, "v": 1e3}
# Bytes per sample of WFDB formats with a fixed size (FLAC 5xx is compressed: not checked).
_BYTES_PER_SAMPLE = {"8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2,
                     "212": 1.5, "310": 4 / 3, "311": 4 / 3}
# fmt: on
MIN_FS = 50.0


@dataclass
class ECG:
    """One 12-lead ECG.

    Attributes
    ----------
    signal : float32 ``[12, samples]`` in mV, rows in ``STANDARD_LEADS`` order, zeros where absent.
    fs : sampling rate in Hz.
    leads : ``STANDARD_LEADS``.
    lead_mask : bool ``[12]``, False where the lead was absent and zero-padded.
    record_id : file stem, e.g. ``"00001_lr"``.
    path : the header (WFDB/Challenge) or array file that was read.
    meta : ``age`` (float|None), ``sex`` ("M"/"F"/None), ``dx`` (list[str]), ``resampled``,
        ``original_fs``, ``source_format`` ("wfdb", "challenge-mat", "npy", "npz", or a clinical
        format: "dicom", "ge-muse-xml", "philips-xml", "hl7-aecg", "scp-ecg", "edf"),
        ``missing_leads``, ``derived_leads``, ``unknown_leads``, ``nan_samples``, plus header
        ``key: value`` comments; clinical files add ``acquired``, ``reader``, ``reader_warnings``.
    """

    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    lead_mask: np.ndarray
    record_id: str
    path: str
    meta: dict = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.signal.shape[1] / self.fs


def normalise_lead_name(name: str) -> str | None:
    """Map a lead label to its ``STANDARD_LEADS`` spelling: 'AVR'/'avr' -> 'aVR', 'MLII' -> 'II'.

    Case, spaces, '-'/'_' and a leading 'lead' are ignored; unknown labels give None.
    """
    key = re.sub(r"[\s_\-]", "", str(name)).upper()
    if key.startswith("LEAD") and len(key) > 4:
        key = key[4:]
    return _ALIASES.get(key)


# ----------------------------------------------------------------------------- path resolution


def _resolve(path) -> tuple[str, Path]:
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
        hea = p.with_suffix(".hea")
        if not hea.is_file():
            why = "file does not exist" if not p.exists() else f"no header {hea.name} beside it"
            raise MissingSignalFileError(p, why)
        return "wfdb", hea
    hea = p.with_name(p.name + ".hea")
    if hea.is_file():
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


def _check_fs(path, fs, what: str) -> float:
    try:
        value = float(fs)
    except (TypeError, ValueError):
        raise SamplingRateError(path, f"{what} {fs!r} is not a number") from None
    if not math.isfinite(value) or value < MIN_FS:
        raise SamplingRateError(path, f"unsupported {what} {fs!r} (need >= {MIN_FS:g} Hz)")
    return value


# ----------------------------------------------------------------------------- signal readers


def _read_wfdb_signal(h: Header) -> np.ndarray:
    """Physical signal ``[n_sig, samples]`` float32 in the header's units (NaN = invalid sample)."""
    folder = h.path.parent
    n_sig = len(h.files)
    if h.n_samples == 0:
        raise InvalidSignalError(h.path, "header declares 0 samples")
    for fname in dict.fromkeys(h.files):  # pre-checks give precise errors before wfdb guesses
        _check_signal_file(h, fname)
    if any(f.lower().endswith(".mat") for f in h.files):
        return _read_challenge_mat(h)
    simple = len(set(h.files)) == 1 and len(set(h.offsets)) == 1 and not h.skewed
    if simple and set(h.fmts) == {"16"} and set(h.spf) == {1} and h.n_samples is not None:
        n = h.n_samples * n_sig
        digital = np.fromfile(folder / h.files[0], dtype="<i2", count=n, offset=h.offsets[0])
        return _digital_to_physical(digital.reshape(h.n_samples, n_sig).T, h, invalid=-32768)
    return _rdrecord(h)


def _check_signal_file(h: Header, fname: str) -> None:
    sig_path = h.path.parent / fname
    try:
        size = sig_path.stat().st_size
    except FileNotFoundError:
        raise MissingSignalFileError(h.path, f"signal file {fname} is missing") from None
    if size == 0:
        raise EmptyFileError(sig_path, "signal file is empty (0 bytes)")
    # a v5 .mat may be compressed, so its size says nothing; loadmat's shape check covers it
    need = None if fname.lower().endswith(".mat") else _expected_bytes(h, fname)
    if need is not None and size < need:
        raise TruncatedSignalError(sig_path, f"signal file has {size} bytes, header needs {need}")


def _expected_bytes(h: Header, fname: str) -> int | None:
    idx = [i for i, f in enumerate(h.files) if f == fname]
    bps = [_BYTES_PER_SAMPLE.get(h.fmts[i]) for i in idx]
    if h.n_samples is None or None in bps:
        return None
    per_frame = sum(b * h.spf[i] for b, i in zip(bps, idx, strict=True))
    return h.offsets[idx[0]] + int(per_frame * h.n_samples)


def _digital_to_physical(digital: np.ndarray, h: Header, invalid: int | None) -> np.ndarray:
    """``(d - baseline) / gain`` per channel, as wfdb does; WFDB's invalid-sample code -> NaN."""
    x = digital.astype(np.float32)
    x -= h.baselines[:, None].astype(np.float32)
    x /= h.gains[:, None].astype(np.float32)
    if invalid is not None:
        bad = digital == invalid
        if bad.any():
            x[bad] = np.nan
    return x


def _rdrecord(h: Header) -> np.ndarray:
    """The one place wfdb is called; its exceptions become ECGReadErrors."""
    import wfdb  # deferred: importing wfdb pulls in pandas

    base = str(h.path.with_suffix(""))
    try:
        rec = wfdb.rdrecord(base, physical=True, return_res=32)
    except FileNotFoundError as exc:
        raise MissingSignalFileError(h.path, f"wfdb found no {exc.filename}") from exc
    except ValueError as exc:  # reshape/broadcast failures: data and header disagree
        raise HeaderSignalMismatchError(h.path, f"signal does not fit the header ({exc})") from exc
    except Exception as exc:
        raise ECGReadError(h.path, f"wfdb failed ({type(exc).__name__}: {exc})") from exc
    sig = rec.p_signal
    if sig is None or (h.n_samples is not None and sig.shape[0] != h.n_samples):
        got = None if sig is None else sig.shape[0]
        raise HeaderSignalMismatchError(h.path, f"read {got} samples, header says {h.n_samples}")
    return np.ascontiguousarray(sig.T, dtype=np.float32)


def _read_challenge_mat(h: Header) -> np.ndarray:
    import scipy.io

    mat_path = h.path.parent / h.files[0]
    if len(set(h.files)) != 1:
        raise UnknownFormatError(h.path, "signals spread over several .mat files are not supported")
    try:
        data = scipy.io.loadmat(str(mat_path))
    except Exception as exc:
        need, size = _expected_bytes(h, h.files[0]), mat_path.stat().st_size
        if need is not None and size < need:
            msg = f"unreadable .mat of {size} bytes, header needs {need}"
            raise TruncatedSignalError(mat_path, msg) from exc
        raise HeaderSignalMismatchError(mat_path, f"not a readable MATLAB file ({exc})") from exc
    val = data.get("val")
    if not isinstance(val, np.ndarray):
        keys = sorted(k for k in data if not k.startswith("__"))
        raise HeaderSignalMismatchError(mat_path, f"no 'val' array in the .mat (keys: {keys})")
    want = (len(h.names), h.n_samples if h.n_samples is not None else val.shape[-1])
    if val.shape != want:
        msg = f"'val' has shape {val.shape}, header declares {want}"
        raise HeaderSignalMismatchError(mat_path, msg)
    return _digital_to_physical(val, h, invalid=-32768 if val.dtype == np.int16 else None)


def _orient(path: Path, x: np.ndarray, n_leads: int) -> np.ndarray:
    if x.ndim != 2:
        raise InvalidSignalError(path, f"expected a [leads, samples] array, got {x.shape}")
    if x.shape[0] != n_leads and x.shape[1] == n_leads:
        x = x.T
    if x.shape[0] != n_leads:
        raise InvalidSignalError(path, f"array of shape {x.shape} has no axis of {n_leads} leads")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InvalidSignalError(path, f"array dtype {x.dtype} is not numeric")
    return np.asarray(x, dtype=np.float32)


def _member_shape(z) -> tuple:
    """Shape of ``signal`` in an open .npz from its .npy header, without reading the data."""
    with z.zip.open("signal.npy") as f:
        version = np.lib.format.read_magic(f)
        fmt = np.lib.format
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        return reader(f)[0]


def _read_array(kind: str, path: Path, header_only: bool) -> tuple:
    """-> (signal ``[leads, samples]`` float32, or only its shape when ``header_only``;
    the file's fs or None; lead names in row order)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic:
        raise EmptyFileError(path, "file is empty (0 bytes)")
    if not magic.startswith(b"\x93NUMPY" if kind == "npy" else b"PK"):
        raise HeaderParseError(path, f"not a .{kind} file (wrong magic bytes)")
    try:
        fs, names = None, list(STANDARD_LEADS)
        if kind == "npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)  # mmap: header-only stays cheap
            shape = arr.shape
        else:
            with np.load(path, allow_pickle=False) as z:
                if "signal" not in z.files:
                    raise InvalidSignalError(path, f"no 'signal' array in the .npz ({z.files})")
                fs = float(z["fs"]) if "fs" in z.files else None
                names = [str(n) for n in z["leads"]] if "leads" in z.files else names
                arr = None if header_only else z["signal"]
                shape = _member_shape(z) if header_only else arr.shape
    except ECGReadError:
        raise
    except zipfile.BadZipFile as exc:
        raise HeaderParseError(path, f"not a valid .npz archive ({exc})") from exc
    except ValueError as exc:
        msg = str(exc)
        if "mmap length" in msg or "reshape" in msg:
            raise TruncatedSignalError(path, f"array data shorter than its header ({msg})") from exc
        raise HeaderParseError(path, f"not a readable .{kind} array ({msg})") from exc
    except (OSError, EOFError, KeyError, TypeError) as exc:
        msg = f"array data unreadable ({type(exc).__name__}: {exc})"
        raise TruncatedSignalError(path, msg) from exc
    if header_only:
        if len(shape) == 2 and shape[0] != len(names) and shape[1] == len(names):
            shape = shape[::-1]
        return shape, fs, names
    return _orient(path, np.asarray(arr), len(names)), fs, names


# ----------------------------------------------------------------------------- public API


def _lead_order(names: list[str]) -> tuple[list[int], list[int], list[str], list[str]]:
    """-> (source channel per kept lead, its standard row, unknown names, duplicate names)."""
    src, rows, unknown, dup = [], [], [], []
    for i, name in enumerate(names):
        std = normalise_lead_name(name)
        if std is None:
            unknown.append(name)
        elif _LEAD_INDEX[std] in rows:
            dup.append(name)
        else:
            src.append(i)
            rows.append(_LEAD_INDEX[std])
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
    kind, file = _resolve(path)
    if kind == "wfdb":
        h = parse_header(file)
        names, rec_fs, n = h.names, h.fs, h.n_samples
    elif kind not in ("npy", "npz"):  # clinical files are small and have no separate header
        raw, names, rec_fs, meta = read_clinical(file, kind)
        return _described(file, kind, names, rec_fs, raw.shape[1], meta)
    else:
        h = None
        shape, rec_fs, names = _read_array(kind, file, header_only=True)
        rec_fs = rec_fs if rec_fs is not None else fs
        n = int(shape[1]) if len(shape) == 2 else None
    return _described(file, kind, names, rec_fs, n, header_meta(kind, h))


def _described(file: Path, kind: str, names: list[str], rec_fs, n, meta: dict) -> dict:
    _, rows, unknown, _ = _lead_order(names)
    mask = np.zeros(len(STANDARD_LEADS), dtype=bool)
    mask[rows] = True
    meta["unknown_leads"] = unknown
    leads = tuple(STANDARD_LEADS[r] for r in rows)
    return dict(path=str(file), record_id=file.stem, source_format=meta["source_format"],
                fs=rec_fs, n_samples=n, leads=leads, raw_leads=list(names), lead_mask=mask,
                meta=meta)


def read_ecg(path, fs: float | None = None, *, missing_leads: str = "pad") -> ECG:
    """Read one ECG file into 12 standard leads in mV.

    Parameters
    ----------
    path : record path, with or without extension (see the module docstring for formats).
    fs : target rate in Hz for WFDB/Challenge/npz-with-fs records (resampled when it differs,
        ``meta["resampled"]``); the rate *of the file* for a ``.npy`` or an ``.npz`` without one.
    missing_leads : ``"pad"`` zero-fills absent leads (``lead_mask`` False, listed in
        ``meta["missing_leads"]``); ``"refuse"`` raises ``MissingLeadsError``.

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
    kind, file = _resolve(path)
    if kind == "wfdb":
        h = parse_header(file)
        if h.fs is None:
            raise SamplingRateError(file, "header gives no sampling frequency")
        rec_fs = _check_fs(file, h.fs, "header sampling rate")
        raw = _read_wfdb_signal(h)
        scale = np.array([_UNIT_TO_MV.get(u.lower(), 1.0) for u in h.units], dtype=np.float32)
        if (scale != 1.0).any():
            raw *= scale[:, None]
        names, meta = h.names, header_meta(kind, h)
        odd_units = sorted({u for u in h.units if u.lower() not in _UNIT_TO_MV})
        if odd_units:
            meta["units_assumed_mv"] = odd_units
    elif kind not in ("npy", "npz"):
        raw, names, rec_fs, meta = read_clinical(file, kind)
        rec_fs = _check_fs(file, rec_fs, "sampling rate in file")
    else:
        raw, file_fs, names = _read_array(kind, file, header_only=False)
        if file_fs is None and fs is None:
            raise SamplingRateError(file, f"a .{kind} file carries no sampling rate; pass fs=")
        rec_fs = _check_fs(file, file_fs, "sampling rate in file") if file_fs is not None else fs
        meta = header_meta(kind, None)
    return _assemble(file, raw, names, rec_fs, fs, missing_leads, meta)


# each lead as a*I + b*II: III = II - I (Einthoven), aVR/aVL/aVF (Goldberger)
_FROM_I_II = {"III": (-1.0, 1.0), "aVR": (-0.5, -0.5), "aVL": (1.0, -0.5), "aVF": (-0.5, 1.0)}


def _derive_limb_leads(sig: np.ndarray, rows: list[int]) -> tuple[np.ndarray, list[int], list[str]]:
    """Add the limb leads a file left out (8-lead storage) when I and II are there."""
    if 0 not in rows or 1 not in rows:
        return sig, rows, []
    lead_i, lead_ii = sig[rows.index(0)], sig[rows.index(1)]
    new = [name for name in _FROM_I_II if _LEAD_INDEX[name] not in rows]
    if not new:
        return sig, rows, []
    extra = np.stack([_FROM_I_II[n][0] * lead_i + _FROM_I_II[n][1] * lead_ii for n in new])
    return np.concatenate([sig, extra.astype(sig.dtype)]), rows + [_LEAD_INDEX[n] for n in new], new


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
    derived += [lead for lead in listed if lead in _LEAD_INDEX and _LEAD_INDEX[lead] in rows]
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
