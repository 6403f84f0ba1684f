"""What turns a raw signal into model input: preprocessing, zero-padding, scaling, windows.

Steps 1-2 of the evaluation :mod:`ecgrisk.scoring.predict` describes. :class:`InputSpec` is
picklable and needs only numpy/scipy: reader processes unpickle it and must never load torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ecgrisk.preprocess import Preprocessing, Scaler
from ecgrisk.windowing import evaluation_windows

if TYPE_CHECKING:  # pragma: no cover
    from ecgrisk.bundle import Bundle

__all__ = ["InputSpec"]


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
        return cls.from_meta(bundle.meta())

    @classmethod
    def from_meta(cls, meta: dict) -> InputSpec:
        """From a bundle's ``meta`` dict (:meth:`Bundle.meta`, or
        :func:`~ecgrisk.bundle_files.peek_meta` before torch is imported)."""
        pre = Preprocessing.from_dict(meta["preprocessing"])
        window, stride = round(meta["window_s"] * pre.fs), round(meta["stride_s"] * pre.fs)
        if window < 1 or stride < 1:
            raise ValueError(f"bundle window_s={meta['window_s']}, stride_s={meta['stride_s']} "
                             f"give {window}/{stride} samples at {pre.fs:g} Hz; both must be >= 1")
        return cls(pre, Scaler(**meta["scaler"]), window, stride)

    def prepare(self, signal: np.ndarray, fs: float) -> np.ndarray:
        """Preprocessed, scaled signal ``[leads, max(T', window)]`` float32 from ``signal [leads, T]``.

        A record shorter than one window is zero-padded (in mV, before scaling) to one window,
        as the fine-tuning windows are.
        """
        x = self.preprocessing.apply(signal, fs)
        if x.shape[1] < self.window:
            x = np.pad(x, ((0, 0), (0, self.window - x.shape[1])))
        return np.ascontiguousarray(self.scaler(x), dtype=np.float32)

    def windows(self, prepared: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Evaluation windows of records already through :meth:`prepare`.

        Parameters
        ----------
        prepared : ``N >= 1`` arrays ``[leads, T_i]`` with ``T_i >= window``.

        Returns
        -------
        (windows, positions)
            ``[W, leads, window]`` float32 and ``[W]`` int64, the record of each window; starts
            and positions from :func:`~ecgrisk.windowing.evaluation_windows`.
        """
        starts, positions = evaluation_windows([x.shape[1] for x in prepared], self.window,
                                               self.stride)
        bounds = np.searchsorted(positions, np.arange(len(prepared) + 1))
        # one view [leads, T - window + 1, window] per record: only the chosen starts are copied
        views = [sliding_window_view(x, self.window, axis=1) for x in prepared]
        windows = np.concatenate([v[:, starts[a:b]].transpose(1, 0, 2)
                                  for v, a, b in zip(views, bounds[:-1], bounds[1:], strict=True)])
        return windows, positions
