"""Pure preprocessing functions on signals shaped ``[leads, samples]`` (numpy, float32 out).

The PTB-XL benchmark applies none of the filters: it feeds raw 100 Hz signals through one
standard scaler fitted on the training values. The filters exist for other sources (Holter,
Challenge data with strong wander) and are off by default in the configs.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np

# the longest record downsampled through one FFT (17 min at 1000 Hz): the spectra of a whole
# record take twice its memory, where resample_poly holds little beyond its input and output
FFT_MAX_SAMPLES = 2**20
DECIMATION_HALF_TAPS = 10  # resample_poly's filter for 1 / q has 2 * 10 * q + 1 taps


def resample(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Resampling along the last axis, as ``scipy.signal.resample_poly`` does it; exact when the
    rate ratio is rational (whole-number downsampling goes through :func:`_decimate`)."""
    if fs_in <= 0 or fs_out <= 0:
        raise ValueError(f"sampling rates must be positive, got {fs_in} -> {fs_out}")
    if fs_in == fs_out:
        return np.asarray(x, dtype=np.float32)
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    if ratio.numerator == 1 and np.shape(x)[-1] <= FFT_MAX_SAMPLES:
        return _decimate(x, ratio.denominator)
    # scipy.signal takes about a second to import: a reader process scoring records already
    # at the model's rate, or at a whole multiple of it, never pays it
    from scipy import signal as sps

    y = sps.resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)
    return y.astype(np.float32, copy=False)


def _decimate(x: np.ndarray, q: int) -> np.ndarray:
    """``resample_poly(x, 1, q)``'s output (same filter, padding and alignment) through an FFT.

    ``resample_poly`` filters sample by sample: 2.0-2.1 ms for 10 s of 12 leads at 1000 Hz and
    0.9 ms at 500 Hz, the rates DICOM and MUSE exports come at, against 0.45 and 0.22-0.23 ms
    here (two means of 300 calls each, one run); outputs differ by float32 rounding (1e-6 on
    unit-variance noise). It needs scipy.fft, not scipy.signal, whose import costs a reader
    process 0.85 s against 0.25 s.
    """
    from scipy import fft

    x = np.asarray(x, dtype=np.float32)
    half = DECIMATION_HALF_TAPS * q
    n = x.shape[-1]
    size = fft.next_fast_len(n + 2 * half, real=True)
    full = fft.irfft(fft.rfft(x, size, axis=-1) * _filter_spectrum(q, size), size, axis=-1)
    return np.ascontiguousarray(full[..., half::q][..., :-(-n // q)], dtype=np.float32)


@functools.lru_cache(maxsize=16)
def _filter_spectrum(q: int, size: int) -> np.ndarray:
    """The spectrum of ``resample_poly``'s filter for ``1 / q``, ``firwin(20 * q + 1, 1 / q,
    window=("kaiser", 5))``, zero-padded to ``size``: the same for every record of one rate and
    length, and a quarter of a 10-s 1000 Hz record's time when built anew for each."""
    from scipy import fft

    half = DECIMATION_HALF_TAPS * q
    taps = np.sinc(np.arange(-half, half + 1) / q) * np.kaiser(2 * half + 1, 5.0)
    spectrum = fft.rfft((taps / taps.sum()).astype(np.float32), size)
    spectrum.flags.writeable = False
    return spectrum


def bandpass(x: np.ndarray, fs: float, low: float = 0.5, high: float = 40.0, order: int = 3) -> np.ndarray:
    """Zero-phase Butterworth band-pass; ``low`` removes baseline wander. ``high`` is capped below Nyquist."""
    from scipy import signal as sps

    nyq = fs / 2.0
    high = min(high, 0.95 * nyq)
    sos = sps.butter(order, [low / nyq, high / nyq], btype="bandpass", output="sos")
    return sps.sosfiltfilt(sos, x, axis=-1).astype(np.float32, copy=False)


def notch(x: np.ndarray, fs: float, freq: float = 50.0, quality: float = 30.0) -> np.ndarray:
    """Zero-phase notch at the mains frequency (50 or 60 Hz); a no-op when ``freq`` is above Nyquist."""
    if freq >= fs / 2.0:
        return np.asarray(x, dtype=np.float32)
    from scipy import signal as sps

    b, a = sps.iirnotch(freq, quality, fs)
    return sps.filtfilt(b, a, x, axis=-1).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Preprocessing:
    """Settings applied when a record enters the cache (and, identically, when it is scored)."""

    fs: float = 100.0
    bandpass: tuple[float, float] | None = None
    notch: float | None = None

    def apply(self, x: np.ndarray, fs_in: float) -> np.ndarray:
        y = resample(x, fs_in, self.fs)
        if self.bandpass is not None:
            y = bandpass(y, self.fs, *self.bandpass)
        if self.notch is not None:
            y = notch(y, self.fs, self.notch)
        return np.ascontiguousarray(y, dtype=np.float32)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bandpass"] = list(self.bandpass) if self.bandpass is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        bp = d.get("bandpass")
        return cls(fs=float(d["fs"]), bandpass=tuple(bp) if bp else None, notch=d.get("notch"))


@dataclass(frozen=True)
class Scaler:
    """One mean and one standard deviation over all training values, as the benchmark fits it."""

    mean: float
    std: float

    def __call__(self, x):
        return (x - self.mean) / self.std

    @classmethod
    def fit(cls, chunks) -> Scaler:
        """Fit from an iterable of arrays without holding them all (streaming sums in float64)."""
        n, s, ss = 0, 0.0, 0.0
        for c in chunks:
            c = np.asarray(c, dtype=np.float64)
            n += c.size
            s += float(c.sum())
            ss += float(np.square(c).sum())
        if n == 0:
            raise ValueError("cannot fit a scaler on no data")
        mean = s / n
        var = max(ss / n - mean * mean, 0.0)
        return cls(mean=mean, std=float(np.sqrt(var)) or 1.0)
