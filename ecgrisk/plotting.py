"""Standard 12-lead ECG plots (25 mm/s, 10 mm/mV on a millimetre grid), rendered with matplotlib Agg."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgrisk.io import STANDARD_LEADS

# The paper layout of a clinical print-out: 3 rows x 4 columns of 2.5 s, plus a lead II rhythm strip.
_LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
_MM_PER_S, _MM_PER_MV = 25.0, 10.0


def plot_12lead(signal: np.ndarray, fs: float, title: str = "", path: str | Path | None = None,
                lead_mask: np.ndarray | None = None, dpi: int = 100,
                evidence: np.ndarray | None = None):
    """Draw ``signal [12, samples]`` (mV, standard lead order) as a clinical 12-lead sheet.

    Returns the matplotlib Figure (not registered with pyplot, so the process's backend and open
    figures are left alone); writes a PNG when ``path`` is given.
    Columns show consecutive 2.5 s segments as a paper ECG does; the bottom strip is 10 s of II.
    ``evidence`` (``[12, samples]`` in [-1, 1], e.g. from
    :func:`ecgrisk.scoring.attribution.evidence_on_record`) colours the trace where it is
    nonzero: red for a statement, blue against, as :func:`plot_attribution` does.
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
            if evidence is not None:
                _colour_evidence(ax, t_mm, base + y * _MM_PER_MV, evidence[i, c * seg: (c + 1) * seg])
            ax.text(c * 2.5 * _MM_PER_S + 1, base + 8, lead + (" (missing)" if missing else ""), fontsize=7)
    y = signal[1, :strip]
    ax.plot(np.arange(len(y)) / fs * _MM_PER_S, row_mm * 0.5 + y * _MM_PER_MV, color="k", lw=0.6)
    if evidence is not None:
        _colour_evidence(ax, np.arange(len(y)) / fs * _MM_PER_S, row_mm * 0.5 + y * _MM_PER_MV,
                         evidence[1, :strip])
    ax.text(1, row_mm * 0.5 + 8, "II", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def _colour_evidence(ax, x: np.ndarray, y: np.ndarray, a: np.ndarray, width: float = 3.0) -> None:
    """Colour a trace by ``a`` in [-1, 1]: red where positive, blue where negative, clear at 0."""
    from matplotlib.collections import LineCollection

    if len(x) < 2:
        return
    points = np.column_stack([x, y]).reshape(-1, 1, 2)
    mid = (a[:-1] + a[1:]) / 2
    colours = np.zeros((len(mid), 4))
    colours[:, 0], colours[:, 2] = mid > 0, mid < 0
    colours[:, 3] = np.clip(np.abs(mid), 0, 1)
    ax.add_collection(LineCollection(np.concatenate([points[:-1], points[1:]], axis=1),
                                     colors=colours, linewidths=width))


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


def plot_attribution(explanations, title: str = "", path: str | Path | None = None, dpi: int = 100):
    """The 12 leads of each explained window on ECG paper, the trace coloured by its attribution
    (red: evidence for the statement, blue: against), one column per statement.

    ``explanations`` are :class:`ecgrisk.scoring.attribution.Explanation` objects (``window`` and
    ``attribution`` ``[12, samples]``, ``statement``, ``probability``, ``start_s``, ``fs``).
    Returns the Figure; writes a PNG when ``path`` is given.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not explanations:
        raise ValueError("nothing to plot: no explanation given")
    row_mm = 15.0
    width_mm = max(e.window.shape[1] / e.fs for e in explanations) * _MM_PER_S
    height_mm = row_mm * len(STANDARD_LEADS)
    fig = Figure(figsize=(len(explanations) * width_mm / 25.4 * 0.8 + 0.4,
                          height_mm / 25.4 * 0.8 + 0.6), dpi=dpi)
    FigureCanvasAgg(fig)
    for k, e in enumerate(explanations):
        ax = fig.add_subplot(1, len(explanations), k + 1)
        _grid(ax, width_mm, height_mm)
        # one colour scale per statement: its strongest evidence is full red
        scale = float(np.abs(e.attribution).max()) or 1.0
        t_mm = np.arange(e.window.shape[1]) / e.fs * _MM_PER_S
        for i, lead in enumerate(STANDARD_LEADS):
            y = height_mm - row_mm * (i + 0.5) + e.window[i] * _MM_PER_MV / 2  # 5 mm/mV
            ax.plot(t_mm, y, color="k", lw=0.5)
            _colour_evidence(ax, t_mm, y, e.attribution[i] / scale)
            ax.text(1, height_mm - row_mm * (i + 0.5) + 4, lead, fontsize=7)
        end = e.start_s + e.window.shape[1] / e.fs
        ax.set_title(f"{e.statement}  p={e.probability:.2f}\n{e.start_s:.2f}-{end:.2f} s "
                     f"(5 mm/mV)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97 if title else 1))
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def plot_reliability(curves: dict, title: str = "", path: str | Path | None = None, dpi: int = 100):
    """Reliability diagram: observed share of positives against mean predicted probability.

    ``curves`` maps a label (e.g. ``"uncalibrated, fold 9"``) to :func:`ecgrisk.metrics.reliability`
    output; marker area follows each bin's count. Returns the Figure; writes a PNG given ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6, 4.4), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="perfectly calibrated")
    for name, r in curves.items():
        size = 8 + 120 * np.sqrt(np.asarray(r["count"]) / max(sum(r["count"]), 1))
        line = ax.plot(r["mean_prob"], r["frac_pos"], lw=1.2, label=f"{name} (ECE {r['ece']:.3f})")
        ax.scatter(r["mean_prob"], r["frac_pos"], s=size, color=line[0].get_color(), alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed share of positives")
    ax.set_title(title or "reliability (all statements pooled)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def plot_subgroups(groups: list[dict], title: str = "", path: str | Path | None = None, dpi: int = 100):
    """Forest plot of macro AUROC by subgroup: one row per measured group, its 90% interval as a
    bar, the marker's area following its number of ECGs, and the overall figure as a dashed line
    with its interval shaded.

    ``groups`` are the ``groups`` of :func:`ecgrisk.scoring.evaluate.evaluate_scores`: the first
    (``by == "all"``) is the overall row; rows without ``macro_auroc`` (too small) are named but
    not drawn. Returns the Figure; writes a PNG when ``path`` is given.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    overall, rows = groups[0], groups[1:]
    if not rows:
        raise ValueError("nothing to plot: no subgroup given")
    n_max = max(g["n"] for g in groups)
    fig = Figure(figsize=(6.4, 0.9 + 0.26 * (len(rows) + len({g["by"] for g in rows}))), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    subtitle = ""
    if overall.get("macro_auroc") is not None:
        # named in the title, not a legend: a legend box hides whichever group sits under it
        subtitle = f"\ndashed: every ECG, {overall['macro_auroc']:.3f} (n={overall['n']})"
        ax.axvline(overall["macro_auroc"], color="0.4", ls="--", lw=1)
        if overall.get("macro_auroc/lower") is not None:
            ax.axvspan(overall["macro_auroc/lower"], overall["macro_auroc/upper"], color="0.9")
    labels, y, last_by = [], 0, None
    for g in rows:
        if g["by"] != last_by:  # a heading row per grouping
            labels.append((y, g["by"].split(":")[0], True))
            y, last_by = y + 1, g["by"]
        if g.get("macro_auroc") is not None:
            lo, hi = g.get("macro_auroc/lower"), g.get("macro_auroc/upper")
            if lo is not None:
                ax.plot([lo, hi], [y, y], color="C0", lw=1.4)
            ax.scatter([g["macro_auroc"]], [y], s=12 + 90 * np.sqrt(g["n"] / n_max), color="C0", zorder=3)
            text = f"{g['group']}  n={g['n']}"
        else:
            text = f"{g['group']}  n={g['n']} (too few)"
        labels.append((y, text, False))
        y += 1
    ax.set_yticks([t[0] for t in labels], [t[1] for t in labels], fontsize=7)
    for tick, (_, _, heading) in zip(ax.get_yticklabels(), labels, strict=True):
        tick.set_fontweight("bold" if heading else "normal")
    ax.set_ylim(y - 0.5, -0.7)
    ax.set_xlabel("macro AUROC (90% bootstrap interval)")
    ax.set_title((title or "discrimination by subgroup") + subtitle, fontsize=9)
    ax.grid(axis="x", color="0.92", lw=0.6)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
