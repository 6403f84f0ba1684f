"""Bundle -> calibrated per-record probabilities: the one evaluation both fine-tuning and scoring use.

A record is evaluated as :mod:`ecgrisk.finetune` evaluates its test fold, step by step:

1. ``bundle.preprocessing.apply(signal, fs)`` (resample to the bundle's rate, optional filters),
   as the cache does when it compiles records;
2. windows of ``round(window_s * fs)`` samples at ``round(stride_s * fs)`` stride
   (:func:`ecgrisk.windowing.evaluation_windows`), a record shorter than one window zero-padded
   at its end as ``ECGCache.window`` pads it; each window scaled with ``bundle.scaler``;
3. the model's window logits (its BatchNorms folded into the convolutions before them,
   :func:`~ecgrisk.models.layers.fold_batchnorm`: the same function up to rounding,
   1.13-1.29x as fast), under the autocast the bundle was validated and calibrated with
   (``bundle.precision``: bf16 for the shipped bundles) where the hardware runs it; where bf16
   would be emulated (about 10x slower), in fp32, within 0.01 of the bf16 probabilities
   (``results/scoring_precision.md``, :mod:`ecgrisk.hardware`),
   aggregated per record (:func:`~ecgrisk.windowing.aggregate_windows`,
   max by default);
4. per-label temperature and bias on the aggregated logits, then a sigmoid (:func:`apply_temperature`).

Steps 1-2 need only numpy/scipy (:class:`~ecgrisk.input_spec.InputSpec`, picklable, run
in reader processes, which never import this module); steps 3-4 need the model
(:class:`Predictor`, main process).
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from ecgrisk.calibration import apply_temperature
from ecgrisk.hardware import bf16_is_native, keep_freed_memory
from ecgrisk.input_spec import InputSpec
from ecgrisk.models.layers import fold_batchnorm
from ecgrisk.scoring.onnx_backend import OnnxLogits
from ecgrisk.windowing import aggregate_windows

if TYPE_CHECKING:  # pragma: no cover
    from ecgrisk.bundle import Bundle

__all__ = ["Predictor", "aggregate_logits", "calibrate", "predict_proba", "scores_in_bf16"]

log = logging.getLogger(__name__)

# windows per single-threaded call below which one call on every thread is as fast
MIN_SHARD_WINDOWS = 64


@functools.cache
def _model_threads(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(n, thread_name_prefix="ecgrisk-model")


@contextmanager
def _one_thread_per_op():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def scores_in_bf16(bundle: Bundle, device) -> bool:
    """Whether the torch model runs under bf16 autocast on ``device``: where the bundle was
    validated and calibrated under it and the hardware runs it natively (else fp32)."""
    return bundle.precision.startswith("bf16") and bf16_is_native(str(device))


def aggregate_logits(logits: np.ndarray, positions: np.ndarray, n_records: int,
                     how: str = "max") -> np.ndarray:
    """Window logits ``[W, C]`` -> record logits ``[n_records, C]`` with :func:`aggregate_windows`.

    ``positions [W]`` gives each window's record (0 .. n_records - 1).
    """
    k = torch.arange(len(logits))
    out, seen = aggregate_windows(k, torch.from_numpy(np.asarray(logits)), np.asarray(positions),
                                  n_records, how)
    if not bool(seen.all()):
        missing = torch.nonzero(~seen).flatten()[:5].tolist()
        raise RuntimeError(f"no window was evaluated for record positions {missing}")
    return out.numpy()


def calibrate(record_logits: np.ndarray, temperature, bias=None) -> np.ndarray:
    """Per-label temperature and bias, then sigmoid: ``[N, C]`` logits -> ``[N, C]`` probabilities."""
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
        self._session, self.model = None, None
        if backend == "onnx":
            self._session = OnnxLogits(bundle, onnx_path, bundle_path=bundle_path)
            if bundle.precision != "32-true":
                log.warning("backend onnx runs the network in fp32, but %s was calibrated under "
                            "%s autocast: its probabilities can differ from the torch backend's "
                            "by about 0.01", bundle.name, bundle.precision)
        else:
            self.model = fold_batchnorm(bundle.model).to(device)
            if torch.device(device).type == "cpu":
                keep_freed_memory()
        self.bf16 = scores_in_bf16(bundle, device)
        if bundle.precision.startswith("bf16") and not self.bf16 and backend == "torch":
            log.info("%s was calibrated under bf16 autocast, which this %s only emulates (about 10x "
                     "slower than fp32): scoring in fp32, within 0.01 of the bf16 probabilities "
                     "(results/scoring_precision.md)", bundle.name, torch.device(device).type.upper())

    def window_logits(self, windows: np.ndarray) -> np.ndarray:
        """``windows [B, leads, window]`` float32 -> logits ``[B, C]`` float32.

        On a CPU with ``n > 1`` torch threads a large batch goes as ``n`` single-threaded calls
        on ``n`` Python threads (torch releases the GIL inside each op), because one call's
        threads wait for each other after every op: on 2 cores the shipped model ran 910-925
        windows/s as one call and 1006-1092 as two, and batch scoring, whose readers share the
        cores, gained 16%. The torch thread count is process-wide, so it is 1 during the call.
        """
        if self._session is not None:
            return self._session(windows)
        n = torch.get_num_threads()
        shards = min(n, len(windows) // MIN_SHARD_WINDOWS)
        if torch.device(self.device).type != "cpu" or shards < 2:
            return self._logits(windows)
        with _one_thread_per_op():
            return np.concatenate(list(_model_threads(shards).map(self._logits,
                                                                  np.array_split(windows, shards))))

    def _logits(self, windows: np.ndarray) -> np.ndarray:
        # autocast and inference mode are per thread: set here, in the thread that runs the model
        device_type = torch.device(self.device).type
        with torch.inference_mode(), torch.autocast(device_type, torch.bfloat16, enabled=self.bf16):
            x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(self.device)
            return self.model(x).float().cpu().numpy()

    def aggregate(self, logits: np.ndarray, positions: np.ndarray, n_records: int) -> np.ndarray:
        """Window logits ``[W, C]`` -> record logits ``[n_records, C]`` (see :func:`aggregate_logits`)."""
        return aggregate_logits(logits, positions, n_records, self.bundle.aggregation)

    def calibrate(self, record_logits: np.ndarray) -> np.ndarray:
        """Record logits ``[N, C]`` -> calibrated probabilities ``[N, C]`` float64."""
        return calibrate(record_logits, self.bundle.temperature, self.bundle.bias)

    def predict_prepared(self, prepared: list[np.ndarray], batch_size: int = 512) -> np.ndarray:
        """Probabilities ``[N, C]`` for records already through :meth:`InputSpec.prepare`."""
        if not prepared:
            return np.zeros((0, len(self.bundle.classes)))
        windows, positions = self.spec.windows(prepared)
        logits = np.concatenate([self.window_logits(windows[s:s + batch_size])
                                 for s in range(0, len(windows), batch_size)])
        return self.calibrate(self.aggregate(logits, positions, len(prepared)))

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
