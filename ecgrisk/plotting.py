"""Standard 12-lead ECG plots (25 mm/s, 10 mm/mV on a millimetre grid), rendered with matplotlib Agg."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgrisk.io import STANDARD_LEADS

# The paper layout of a clinical print-out: 3 rows x 4 columns of 2.5 s, plus a lead II rhythm strip.
_LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
_MM_PER_S, _MM_PER_MV = 25.0, 10.0


def plot_12lead(signal: np.ndarray, fs: float, title: str = "", path: str | Path | None = None,
                lead_mask: np.ndarray | None = None, dpi: int = 100):
    """Draw ``signal [12, samples]`` (mV, standard lead order) as a clinical 12-lead sheet.

    Returns the matplotlib Figure (not registered with pyplot, so the process's backend and open
    figures are left alone); writes a PNG when ``path`` is given.
    Columns show consecutive 2.5 s segments as a paper ECG does; the bottom strip is 10 s of II.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    signal = np.asarray(signal, dtype=np.float32)
    if signal.ndim != 2 or signal.shape[0] != len(STANDARD_LEADS):
        raise ValueError(f"expected a [12, samples] signal, got shape {signal.shape}")
    seg = int(round(2.5 * fs))
    strip = min(signal.shape[1], int(round(10 * fs)))
    width_mm, row_mm = 4 * 2.5 * _MM_PER_S, 30.0
    height_mm = row_mm * 4
    fig = Figure(figsize=(width_mm / 25.4 * 0.72, height_mm / 25.4 * 0.72), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.9 if title else 0.98))
    _grid(ax, width_mm, height_mm)
    for r, row in enumerate(_LAYOUT):
        base = height_mm - row_mm * (r + 0.5)
        for c, lead in enumerate(row):
            i = STANDARD_LEADS.index(lead)
            y = signal[i, c * seg : (c + 1) * seg]
            t_mm = c * 2.5 * _MM_PER_S + np.arange(len(y)) / fs * _MM_PER_S
            missing = lead_mask is not None and not lead_mask[i]
            ax.plot(t_mm, base + y * _MM_PER_MV, color="0.6" if missing else "k", lw=0.6)
            ax.text(c * 2.5 * _MM_PER_S + 1, base + 8, lead + (" (missing)" if missing else ""), fontsize=7)
    y = signal[1, :strip]
    ax.plot(np.arange(len(y)) / fs * _MM_PER_S, row_mm * 0.5 + y * _MM_PER_MV, color="k", lw=0.6)
    ax.text(1, row_mm * 0.5 + 8, "II", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def _grid(ax, width_mm: float, height_mm: float) -> None:
    ax.set_xlim(0, width_mm)
    ax.set_ylim(0, height_mm)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for x in np.arange(0, width_mm + 0.01, 1.0):
        ax.axvline(x, color="#f4c7c7", lw=0.5 if x % 5 == 0 else 0.2, zorder=0)
    for y in np.arange(0, height_mm + 0.01, 1.0):
        ax.axhline(y, color="#f4c7c7", lw=0.5 if y % 5 == 0 else 0.2, zorder=0)
