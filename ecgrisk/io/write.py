"""Write an ``ECG`` as files every ecgrisk stage reads: a WFDB record or an ``.npz``.

Only the leads the source held (or that were derived from I and II) are written; a zero-filled
absent lead would read back as a flat lead. Both keep age, sex, the acquisition time, the
diagnosis codes, the source file and format, and which leads were derived, as the ``Key: value``
lines that ``read_ecg`` reads back: WFDB as header comments, the ``.npz`` as its ``comments``
array beside ``signal``, ``fs`` and ``leads``. Both are written atomically: a reader sees no
record or the whole record.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ecgrisk.files import atomic_path
from ecgrisk.io.ecg import ECG, STANDARD_LEADS

__all__ = ["WRITE_FORMATS", "write_ecg"]

WRITE_FORMATS = ("wfdb", "npz")
_UV_PER_COUNT = 1.0  # 16-bit WFDB at 1 uV per count spans +-32.7 mV


def write_ecg(ecg: ECG, base: str | os.PathLike, to: str) -> Path:
    """Write ``ecg`` to ``base`` + ``.hea``/``.dat`` (``to="wfdb"``) or ``.npz``.

    Returns
    -------
    The path ``read_ecg`` takes to read it back: ``base`` for WFDB, ``base.npz`` for npz.
    """
    if to not in WRITE_FORMATS:
        raise ValueError(f"cannot write {to!r}; formats: {', '.join(WRITE_FORMATS)}")
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    leads = [lead for lead, m in zip(STANDARD_LEADS, ecg.lead_mask, strict=True) if m]
    signal = ecg.signal[ecg.lead_mask]
    if to == "npz":
        out = base.with_name(base.name + ".npz")
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.savez(f, signal=signal, fs=np.float64(ecg.fs), leads=np.array(leads),
                     comments=np.array(_comments(ecg)))
        return out
    _write_wfdb(base, signal, leads, ecg.fs, _comments(ecg))
    return base


def _comments(ecg: ECG) -> list[str]:
    meta = ecg.meta
    lines = [f"Age: {meta['age']:g}" if meta.get("age") is not None else "Age: Unknown",
             f"Sex: {meta.get('sex') or 'Unknown'}",
             f"Source: {ecg.path}", f"Source format: {meta.get('source_format', '')}"]
    if meta.get("acquired"):
        lines.append(f"Acquired: {meta['acquired']}")
    if meta.get("dx"):  # a Challenge record's labels (SNOMED CT codes)
        lines.append(f"Dx: {','.join(meta['dx'])}")
    if meta.get("derived_leads"):
        lines.append(f"Derived leads: {','.join(meta['derived_leads'])}")
    return lines


def _write_wfdb(base: Path, signal: np.ndarray, leads: list[str], fs: float,
                comments: list[str]) -> None:
    import wfdb  # deferred: importing wfdb pulls in pandas

    peak_uv = float(np.abs(signal).max()) * 1000.0
    # 1 uV per count unless the signal would overflow 16 bits; then the finest gain that fits
    gain = 1000.0 / _UV_PER_COUNT if peak_uv < 32000 else np.floor(32000.0 / peak_uv * 1000.0)
    # wfdb writes both files in place, so write them in a scratch folder beside the target and
    # move the signal in first: the header, which makes the record visible, comes last
    with tempfile.TemporaryDirectory(dir=base.parent, prefix=f".{base.name}.") as scratch:
        wfdb.wrsamp(base.name, fs=float(fs), units=["mV"] * len(leads), sig_name=leads,
                    p_signal=signal.T.astype(np.float64), fmt=["16"] * len(leads),
                    adc_gain=[float(gain)] * len(leads), baseline=[0] * len(leads),
                    comments=comments, write_dir=scratch)
        os.replace(Path(scratch) / f"{base.name}.dat", base.with_name(f"{base.name}.dat"))
        os.replace(Path(scratch) / f"{base.name}.hea", base.with_name(f"{base.name}.hea"))
