"""Signal-quality flags that travel with every score, computed on the signal as read (mV, file rate).

The flags say why a probability may deserve less trust; they never stop a record from scoring.
Thresholds were set on the shared PTB-XL and Challenge-2021 records, where clean leads stay far
from them (PTB-XL: lead std >= 0.027 mV, extreme-value share <= 0.7 %, power above 35 Hz
<= 17 %). Every PTB-XL and Challenge-2021 record shared here lasts 10 s.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from ecgrisk.io import STANDARD_LEADS

__all__ = ["FLAT_STD_MV", "LENGTH_TOLERANCE_S", "NOISE_HF_FRACTION", "NOT_FOR_REVIEW",
           "QUALITY_COLUMNS", "RESTING_ECG_S", "SATURATION_FRACTION", "quality_flags"]

FLAT_STD_MV = 0.01  # a lead moving less than this (std, mV) carries no ECG
SATURATION_FRACTION = 0.02  # share of samples pinned at the lead's extreme values (clipping)
NOISE_HF_FRACTION = 0.3  # share of power above NOISE_CUTOFF_HZ (muscle, mains interference)
NOISE_CUTOFF_HZ = 35.0
# A record is scored as the max over its windows, and the shipped bundles were calibrated on
# 10-s PTB-XL records (7 windows each). Longer records give the max more windows to reach, and
# shorter ones fewer, so their probabilities are no longer calibrated: on fold 9, with
# ptbxl-superdiagnostic, ECE 0.014 at 10 s, 0.025 on the first 5 s, 0.045 on the first 2.5 s,
# and 0.145 on 30 s joined from three fold-9 records with the same labels (one record three
# times: 0.016; results/record_length.md). Such records are flagged "length"; 9-11 s passes, as
# exports a sample short or long do.
RESTING_ECG_S = 10.0
LENGTH_TOLERANCE_S = 1.0
# Issues listed in ``quality`` that are no reason to review a score. Leads derived from I and II
# (Einthoven's and Goldberger's relations) are what a 12-lead electrocardiograph computes for
# its own display: it records 8 channels, and GE MUSE stores only those. Flagging them sent
# every record of a MUSE archive to review.
NOT_FOR_REVIEW = ("derived",)

QUALITY_COLUMNS = ("quality", "flat_leads", "saturated_leads", "noisy_leads", "missing_leads",
                   "derived_leads", "resampled", "fs_in", "duration_s")  # "length" has no column: duration_s


def _names(mask: np.ndarray) -> str:
    return ";".join([lead for lead, bad in zip(STANDARD_LEADS, mask.tolist(), strict=True) if bad])


@functools.lru_cache(maxsize=64)
def _cut(n: int, fs: float) -> int:
    """The first of the ``n``-sample spectrum's bins at or above NOISE_CUTOFF_HZ."""
    return int(np.searchsorted(np.fft.rfftfreq(n, 1.0 / fs), NOISE_CUTOFF_HZ))


def quality_flags(signal: np.ndarray, fs: float, lead_mask: np.ndarray, model_fs: float,
                  derived_leads: Sequence[str] = (), units_assumed: bool = False) -> dict:
    """Quality flags of one record.

    Parameters
    ----------
    signal : ``[12, T]`` mV in standard lead order, absent leads zero (``read_ecg`` output).
    fs : its sampling rate in Hz.
    lead_mask : bool ``[12]``, False for absent leads.
    model_fs : the model's rate; a record at another rate is resampled before scoring.
    derived_leads : leads computed from I and II because the file did not store them
        (``ECG.meta["derived_leads"]``): not measured, so their noise is I's and II's.
    units_assumed : the file gave a unit no reader knows, and its values were taken as mV
        (``ECG.meta["units_assumed_mv"]``): the amplitudes may be off by a factor of 1,000.

    Returns
    -------
    dict with ``flat_leads``, ``saturated_leads``, ``noisy_leads``, ``missing_leads``,
    ``derived_leads`` (``;``-joined lead names, ``""`` when none), ``resampled`` (bool),
    ``fs_in``, ``duration_s`` and ``quality``: ``"ok"`` or the ``,``-joined issues among flat,
    saturated, noisy, missing, derived, length (``duration_s`` outside
    ``RESTING_ECG_S +- LENGTH_TOLERANCE_S``) and units.
    """
    # the comparisons run on the samples as read, the sums in float64: at 1000 Hz that is 1.3
    # against 1.8 ms (pydicom's 12-lead example) with the whole record converted to float64
    # first, for the same flags and noise shares within 1e-15. The centred signal serves the
    # standard deviation and the spectrum both (0.22 against 0.26 ms at 100 Hz). The cut bin,
    # cached per length and rate, and the lead names taken from lists: 130 against 145 us at
    # 100 Hz (fastest of 5 rounds over 500 PTB-XL records, one core), the same values.
    x = np.asarray(signal)
    present = np.asarray(lead_mask, dtype=bool)
    derived = np.array([lead in derived_leads for lead in STANDARD_LEADS])
    n = x.shape[1]
    centred = x - x.mean(axis=1, keepdims=True, dtype=np.float64)
    std = np.sqrt(np.einsum("ij,ij->i", centred, centred) / max(n, 1))
    # a derived lead inherits I's and II's faults, which are flagged on I and II themselves
    measured = present & ~derived
    flat = measured & (std < FLAT_STD_MV)
    live = measured & ~flat
    at_max = (x == x.max(axis=1, keepdims=True)).sum(axis=1)
    at_min = (x == x.min(axis=1, keepdims=True)).sum(axis=1)
    saturated = live & ((at_max + at_min) / max(n, 1) >= SATURATION_FRACTION)
    noisy = np.zeros(len(x), dtype=bool)
    if fs / 2 > NOISE_CUTOFF_HZ and n >= 16:
        z = np.fft.rfft(centred, axis=1)
        power = z.real ** 2 + z.imag ** 2
        hf = power[:, _cut(n, float(fs)):].sum(axis=1) / np.maximum(power.sum(axis=1), 1e-20)
        noisy = live & (hf > NOISE_HF_FRACTION)
    issues = [name for name, m in (("flat", flat), ("saturated", saturated), ("noisy", noisy),
                                   ("missing", ~present), ("derived", derived)) if m.any()]
    if abs(n / fs - RESTING_ECG_S) > LENGTH_TOLERANCE_S:
        issues.append("length")
    if units_assumed:
        issues.append("units")
    return {"quality": ",".join(issues) or "ok", "flat_leads": _names(flat),
            "saturated_leads": _names(saturated), "noisy_leads": _names(noisy),
            "missing_leads": _names(~present), "derived_leads": _names(derived), "resampled": bool(fs != model_fs),
            "fs_in": float(fs), "duration_s": round(n / fs, 3)}
