"""The ECG every reader returns: 12 standard leads in mV, and the names those leads go by."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ECG", "LEAD_INDEX", "SEX_WORDS", "STANDARD_LEADS", "normalise_lead_name", "normalise_sex"]

# fmt: off
STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
LEAD_INDEX = {name: i for i, name in enumerate(STANDARD_LEADS)}
# Modified limb leads (MLII in MIT-BIH) and the D1-D3 / DI-DIII spellings of some exports.
_ALIASES = {name.upper(): name for name in STANDARD_LEADS} | {
    "MLI": "I", "MLII": "II", "MLIII": "III", "ML2": "II",
    "DI": "I", "DII": "II", "DIII": "III", "D1": "I", "D2": "II", "D3": "III",
}
# fmt: on


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

    Case, spaces, '-'/'_' and a leading 'lead' are ignored; unknown labels give None, and so
    does an inverted lead ('-aVR' of the Cabrera display): read as aVR it would score the
    lead upside down, and an absent aVR is derived from I and II where the file has them.
    """
    return _normalised(str(name))


@functools.lru_cache(maxsize=1024)
def _normalised(name: str) -> str | None:
    # the records of a folder spell their leads alike: a PTB-XL record's 12 names take 3 us
    # from here against 11 us through the regular expression each time
    if name.lstrip().startswith(("-", "\u2212")):
        return None
    key = re.sub(r"[\s_\-]", "", name).upper()
    if key.startswith("LEAD") and len(key) > 4:
        key = key[4:]
    return _ALIASES.get(key)


def normalise_age(value) -> float | None:
    """A file's age in years as a float, None when it is no number or not in [0, 130)."""
    try:
        age = float(value)
    except (TypeError, ValueError):
        return None
    return age if 0 <= age < 130 else None


def normalise_sex(value) -> str | None:
    """A file's sex field as ``"M"``/``"F"`` (first letter, any case), else None."""
    s = str(value or "").strip().upper()[:1]
    return s if s in ("M", "F") else None


SEX_WORDS = {"M": "male", "F": "female"}  # in tables and groups, as PTB-XL's labels name them
