"""ECGs stored as numpy arrays: ``.npy`` (``[12, samples]`` in mV, standard lead order) and
``.npz`` (key ``signal``, optional ``fs``, ``leads`` and ``comments``, the ``Key: value`` lines a
WFDB header would carry (age, sex, derived leads), as ``ecgrisk convert --to npz`` writes)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ecgrisk.io.ecg import STANDARD_LEADS
from ecgrisk.io.errors import (
    ECGReadError,
    EmptyFileError,
    HeaderParseError,
    InvalidSignalError,
    TruncatedSignalError,
)

__all__ = ["read_array"]


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


def read_array(kind: str, path: Path, header_only: bool) -> tuple:
    """-> (signal ``[leads, samples]`` float32, or only its shape when ``header_only``;
    the file's fs or None; lead names in row order; its comment lines)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic:
        raise EmptyFileError(path, "file is empty (0 bytes)")
    if not magic.startswith(b"\x93NUMPY" if kind == "npy" else b"PK"):
        raise HeaderParseError(path, f"not a .{kind} file (wrong magic bytes)")
    try:
        fs, names, comments = None, list(STANDARD_LEADS), []
        if kind == "npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)  # mmap: header-only stays cheap
            shape = arr.shape
        else:
            with np.load(path, allow_pickle=False) as z:
                if "signal" not in z.files:
                    raise InvalidSignalError(path, f"no 'signal' array in the .npz ({z.files})")
                fs = float(z["fs"]) if "fs" in z.files else None
                names = [str(n) for n in z["leads"]] if "leads" in z.files else names
                comments = [str(c) for c in z["comments"]] if "comments" in z.files else comments
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
        return shape, fs, names, comments
    return _orient(path, np.asarray(arr), len(names)), fs, names, comments
