"""Bundle -> calibrated per-record probabilities: the one evaluation both fine-tuning and scoring use.

A record is evaluated exactly as :mod:`ecgrisk.finetune` evaluates its test fold:

1. ``bundle.preprocessing.apply(signal, fs)`` (resample to the bundle's rate, optional filters),
   as the cache does when it compiles records;
2. windows of ``round(window_s * fs)`` samples at ``round(stride_s * fs)`` stride
   (:func:`ecgrisk.data.windows.window_starts`), a record shorter than one window zero-padded at
   its end as ``ECGCache.window`` pads it; each window scaled with ``bundle.scaler``;
3. the model's window logits aggregated per record (:func:`aggregate_windows`, max by default);
4. per-label temperature and bias on the aggregated logits, then a sigmoid (:func:`apply_temperature`).

Steps 1-2 need only numpy/scipy (:class:`InputSpec`, picklable, run in reader processes);
steps 3-4 need the model (:class:`Predictor`, main process). torch is imported lazily so reader
processes never load it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ecgrisk.preprocess import Preprocessing, Scaler

if TYPE_CHECKING:  # pragma: no cover
    from ecgrisk.bundle import Bundle

__all__ = ["InputSpec", "Predictor", "aggregate_logits", "calibrate", "predict_proba",
           "record_windows"]


@dataclass(frozen=True)
class InputSpec:
    """What turns a raw signal into model input; everything a reader process needs.

    Attributes
    ----------
    preprocessing : the bundle's :class:`Preprocessing` (its ``fs`` is the model's rate).
    scaler : the bundle's :class:`Scaler`.
    window, stride : window length and stride in samples at ``preprocessing.fs``.
    """

    preprocessing: Preprocessing
    scaler: Scaler
    window: int
    stride: int

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> InputSpec:
        fs = bundle.preprocessing.fs
        window, stride = round(bundle.window_s * fs), round(bundle.stride_s * fs)
        if window < 1 or stride < 1:
            raise ValueError(f"bundle window_s={bundle.window_s}, stride_s={bundle.stride_s} give "
                             f"{window}/{stride} samples at {fs:g} Hz; both must be >= 1")
        return cls(bundle.preprocessing, bundle.scaler, window, stride)

    def prepare(self, signal: np.ndarray, fs: float) -> np.ndarray:
        """Preprocessed, scaled signal ``[leads, max(T', window)]`` float32 from ``signal [leads, T]``.

        A record shorter than one window is zero-padded (in mV, before scaling) to one window,
        as the fine-tuning windows are.
        """
        x = self.preprocessing.apply(signal, fs)
        if x.shape[1] < self.window:
            x = np.pad(x, ((0, 0), (0, self.window - x.shape[1])))
        return np.ascontiguousarray(self.scaler(x), dtype=np.float32)


def record_windows(x: np.ndarray, window: int, stride: int) -> np.ndarray:
    """Evaluation windows of one prepared record.

    Parameters
    ----------
    x : ``[leads, T]`` with ``T >= window`` (see :meth:`InputSpec.prepare`).
    window, stride : samples.

    Returns
    -------
    ``[W, leads, window]`` read-only view, starts given by ``window_starts(T, window, stride)``.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    from ecgrisk.data.windows import window_starts

    starts = window_starts(x.shape[1], window, stride)
    view = sliding_window_view(x, window, axis=1)  # [leads, T - window + 1, window]
    return view[:, starts].transpose(1, 0, 2)


def aggregate_logits(logits: np.ndarray, positions: np.ndarray, n_records: int,
                     how: str = "max") -> np.ndarray:
    """Window logits ``[W, C]`` -> record logits ``[n_records, C]`` with :func:`aggregate_windows`.

    ``positions [W]`` gives each window's record (0 .. n_records - 1).
    """
    import torch

    from ecgrisk.data.windows import aggregate_windows

    k = torch.arange(len(logits))
    out, seen = aggregate_windows(k, torch.from_numpy(np.asarray(logits)), np.asarray(positions),
                                  n_records, how)
    if not bool(seen.all()):
        missing = torch.nonzero(~seen).flatten()[:5].tolist()
        raise RuntimeError(f"no window was evaluated for record positions {missing}")
    return out.numpy()


def calibrate(record_logits: np.ndarray, temperature, bias=None) -> np.ndarray:
    """Per-label temperature and bias, then sigmoid: ``[N, C]`` logits -> ``[N, C]`` probabilities."""
    from ecgrisk.calibration import apply_temperature

    return apply_temperature(record_logits, np.asarray(temperature, dtype=np.float64), bias)


class Predictor:
    """The model side of scoring: window logits, per-record aggregation, calibration.

    Parameters
    ----------
    bundle : a loaded :class:`~ecgrisk.bundle.Bundle`.
    backend : ``"torch"`` or ``"onnx"`` (ONNX Runtime; needs ``onnx_path`` or exports to a
        temporary file).
    onnx_path : an ONNX file written by :func:`ecgrisk.scoring.onnx_backend.export_onnx` from
        this bundle.
    device : torch device for the torch backend.
    """

    def __init__(self, bundle: Bundle, backend: str = "torch", onnx_path=None,
                 device: str = "cpu", bundle_path=None):
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        self.bundle, self.backend, self.device = bundle, backend, device
        self.spec = InputSpec.from_bundle(bundle)
        self._session = None
        if backend == "onnx":
            from ecgrisk.scoring.onnx_backend import OnnxLogits

            self._session = OnnxLogits(bundle, onnx_path, bundle_path=bundle_path)
        else:
            bundle.model.to(device).eval()

    def window_logits(self, windows: np.ndarray) -> np.ndarray:
        """``windows [B, leads, window]`` float32 -> logits ``[B, C]`` float32."""
        if self._session is not None:
            return self._session(windows)
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(self.device)
            return self.bundle.model(x).float().cpu().numpy()

    def aggregate(self, logits: np.ndarray, positions: np.ndarray, n_records: int) -> np.ndarray:
        """Window logits ``[W, C]`` -> record logits ``[n_records, C]`` (see :func:`aggregate_logits`)."""
        return aggregate_logits(logits, positions, n_records, self.bundle.aggregation)

    def calibrate(self, record_logits: np.ndarray) -> np.ndarray:
        """Record logits ``[N, C]`` -> calibrated probabilities ``[N, C]`` float64."""
        return calibrate(record_logits, self.bundle.temperature, self.bundle.bias)

    def predict_prepared(self, prepared: list[np.ndarray], batch_size: int = 512) -> np.ndarray:
        """Probabilities ``[N, C]`` for records already through :meth:`InputSpec.prepare`."""
        wins, pos = [], []
        for i, x in enumerate(prepared):
            w = record_windows(x, self.spec.window, self.spec.stride)
            wins.append(w)
            pos.append(np.full(len(w), i, dtype=np.int64))
        if not wins:
            return np.zeros((0, len(self.bundle.classes)))
        allw = np.concatenate(wins)
        logits = np.concatenate([self.window_logits(allw[s:s + batch_size])
                                 for s in range(0, len(allw), batch_size)])
        return self.calibrate(self.aggregate(logits, np.concatenate(pos), len(prepared)))

    def predict(self, signal: np.ndarray, fs: float) -> np.ndarray:
        """Calibrated probabilities ``[C]`` for one raw ``signal [12, T]`` (mV) sampled at ``fs``."""
        return self.predict_prepared([self.spec.prepare(signal, fs)])[0]


def predict_proba(bundle: Bundle, signal: np.ndarray, fs: float) -> np.ndarray:
    """Calibrated per-statement probabilities ``[C]`` of one ECG, as fine-tuning evaluates it.

    Parameters
    ----------
    bundle : a loaded model bundle.
    signal : ``[12, T]`` float mV in standard lead order (``read_ecg(path).signal``).
    fs : its sampling rate in Hz.

    Returns
    -------
    ``[len(bundle.classes)]`` float64 in [0, 1].
    """
    return Predictor(bundle).predict(signal, fs)
