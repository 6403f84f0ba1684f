"""The signal of a WFDB record (``.hea`` + ``.dat``/``.mat``), in the header's physical units.

Single-file format-16 records (PTB-XL) are decoded with numpy, ten times faster than
``wfdb.rdrecord`` and equal to it; Challenge ``.mat`` files go through ``scipy.io.loadmat``;
everything else through ``wfdb.rdrecord``, the one place wfdb is called. The signal files are
checked against the header first, so a missing or truncated file gets its own error rather than
whatever wfdb raises.
"""

from __future__ import annotations

import numpy as np

from ecgrisk.io.errors import (
    ECGReadError,
    EmptyFileError,
    HeaderSignalMismatchError,
    InvalidSignalError,
    MissingSignalFileError,
    TruncatedSignalError,
    UnknownFormatError,
)
from ecgrisk.io.header import Header

__all__ = ["read_wfdb_signal"]

_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "nv": 1e-6, "v": 1e3}
# Bytes per sample of WFDB formats with a fixed size (FLAC 5xx is compressed: not checked).
_BYTES_PER_SAMPLE = {"8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2,
                     "212": 1.5, "310": 4 / 3, "311": 4 / 3}


def read_wfdb_signal(h: Header) -> tuple[np.ndarray, list[str]]:
    """Signal ``[n_sig, samples]`` float32 in mV (NaN = invalid sample), and the header's units
    it did not know, whose channels are taken to be in mV already."""
    x = _physical(h)
    scale = np.array([_UNIT_TO_MV.get(u.lower(), 1.0) for u in h.units], dtype=np.float32)
    if (scale != 1.0).any():
        x *= scale[:, None]
    return x, sorted({u for u in h.units if u.lower() not in _UNIT_TO_MV})


def _physical(h: Header) -> np.ndarray:
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
