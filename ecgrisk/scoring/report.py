"""What a person sees after a scoring run: a bounded running summary, a rich table, a PNG report.

:class:`ScoreSummary` accumulates counts, failures by reason, a fixed-bin risk histogram and the
N highest-risk records while rows stream past, so its memory does not grow with the number of
files; :func:`write_report` re-reads only those N records to plot them.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgrisk.files import atomic_write_text
from ecgrisk.progress import progress_bar

__all__ = ["ScoreSummary", "print_summary", "risk_band", "write_report"]

log = logging.getLogger(__name__)

BANDS = ("low", "moderate", "high")
_HIST_BINS = 20


def risk_band(risk: float, bands: tuple[float, float]) -> str:
    """``"low"`` below ``bands[0]``, ``"moderate"`` below ``bands[1]``, else ``"high"``."""
    return BANDS[0] if risk < bands[0] else BANDS[1] if risk < bands[1] else BANDS[2]


def error_reason(error: str) -> str:
    """The reason class of an ``error`` cell (``"TruncatedSignalError: ..."`` -> its class name)."""
    return error.split(":", 1)[0].strip() or "error"


@dataclass
class ScoreSummary:
    """Running totals of one scoring run.

    Attributes
    ----------
    total, scored, failed, resumed : record counts (``resumed``: rows carried over by --resume).
    failures : reason -> count.
    bands : band name -> count.
    quality : quality issue -> count of scored records showing it.
    review, uncertain : scored records with ``needs_review``, and those of them flagged by the
        bundle's review band (an uncertain reading), whatever their quality.
    hist : ``[20]`` counts of risk over equal bins of [0, 1].
    top : up to ``top_n`` ``(risk, record, path, title)`` with the highest risk.
    """

    top_n: int = 5
    total: int = 0
    scored: int = 0
    failed: int = 0
    resumed: int = 0
    failures: Counter = field(default_factory=Counter)
    bands: Counter = field(default_factory=Counter)
    quality: Counter = field(default_factory=Counter)
    review: int = 0
    uncertain: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(_HIST_BINS, dtype=np.int64))
    top: list = field(default_factory=list)
    wall_s: float = 0.0
    shard_rows: dict = field(default_factory=dict)  # scale-out only: rows each rank wrote
    _seq: int = 0

    def add(self, row: dict, classes: list[str], resumed: bool = False) -> None:
        """Count one output row (a dict with the table's columns)."""
        self.total += 1
        self.resumed += int(resumed)
        err = row.get("error") or ""
        if err:
            self.failed += 1
            self.failures[error_reason(str(err))] += 1
            return
        self.scored += 1
        risk = float(row["risk"])
        self.bands[str(row["risk_band"])] += 1
        for issue in str(row.get("quality") or "ok").split(","):
            if issue != "ok":
                self.quality[issue] += 1
        self.review += str(row.get("needs_review")) == "True"  # a bool, or its text read back
        self.uncertain += "uncertain " in str(row.get("review_reason") or "")
        self.hist[min(int(risk * _HIST_BINS), _HIST_BINS - 1)] += 1
        if self.top_n > 0:
            probs = sorted(((float(row[f"prob/{c}"]), c) for c in classes), reverse=True)[:3]
            title = ", ".join(f"{c} {p:.2f}" for p, c in probs)
            if str(row.get("quality") or "ok") != "ok":  # the plot says why it may deserve less trust
                title += f"  |  quality: {row['quality']}"
            self._seq += 1  # tie-breaker so equal risks never compare the strings after them
            item = (risk, -self._seq, str(row["record"]), str(row["path"]), title)
            if len(self.top) < self.top_n:
                heapq.heappush(self.top, item)
            else:
                heapq.heappushpop(self.top, item)

    def highest(self) -> list[tuple[float, str, str, str]]:
        """``(risk, record, path, title)`` by decreasing risk."""
        return [(r, rec, p, t) for r, _, rec, p, t in sorted(self.top, reverse=True)]

    def to_dict(self) -> dict:
        return {"total": self.total, "scored": self.scored, "failed": self.failed,
                "resumed": self.resumed, "failures": dict(self.failures),
                "bands": dict(self.bands), "quality": dict(self.quality),
                "review": self.review, "uncertain": self.uncertain,
                "risk_hist": self.hist.tolist(), "wall_s": self.wall_s,
                "shard_rows": dict(self.shard_rows)}


def print_summary(summary: ScoreSummary, out: str | Path, console=None) -> None:
    """Counts, failures by reason, risk distribution and quality issues as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(stderr=True)
    done = summary.total - summary.resumed  # rows carried over with --resume took no time
    rate = done / summary.wall_s if summary.wall_s > 0 else float("nan")
    t = Table(title=f"scored {summary.scored} of {summary.total} records -> {out}")
    t.add_column("what")
    t.add_column("count", justify="right")
    t.add_row("scored", str(summary.scored))
    t.add_row("failed", str(summary.failed))
    if summary.resumed:
        t.add_row("carried over (--resume)", str(summary.resumed))
    for reason, n in summary.failures.most_common():
        t.add_row(f"  failed: {reason}", str(n))
    for band in BANDS:
        t.add_row(f"risk {band}", str(summary.bands.get(band, 0)))
    t.add_row("needs review", str(summary.review))
    t.add_row("  of them an uncertain reading", str(summary.uncertain))
    for issue, n in summary.quality.most_common():
        t.add_row(f"quality: {issue}", str(n))
    for shard, n in summary.shard_rows.items():
        t.add_row(f"rows in {shard}", str(n))
    console.print(t)
    if summary.scored:
        edges = np.linspace(0, 1, _HIST_BINS + 1)
        peak = max(int(summary.hist.max()), 1)
        lines = [f"{edges[i]:.2f}-{edges[i + 1]:.2f} {'#' * round(30 * n / peak)} {n}"
                 for i, n in enumerate(summary.hist) if n]
        console.print("risk distribution\n" + "\n".join(lines))
    console.print(f"{summary.wall_s:.1f} s, {rate:.1f} records/s"
                  + (f" ({done} read in this run)" if summary.resumed else ""))


def write_report(summary: ScoreSummary, report_dir: str | Path, bands: tuple[float, float],
                 bundle=None, progress: bool = False) -> list[Path]:
    """``risk_hist.png``, and per highest-risk record a 12-lead plot and, given the ``bundle``
    (and captum, in the ``review`` extra), ``*_attribution.png``: where the evidence for its top
    statements lies; ``index.md`` shows them all on one page, with the run's counts. Returns
    the files written, ``index.md`` last. ``progress``: a bar over the highest-risk records
    (their attributions take seconds each on a CPU)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from ecgrisk.plotting import plot_reliability
    from ecgrisk.scoring.attribution import explainer

    predictor = explainer(bundle) if bundle is not None else None
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    edges = np.linspace(0, 1, _HIST_BINS + 1)
    ax.bar(edges[:-1], summary.hist, width=np.diff(edges), align="edge", color="0.35")
    for b in bands:
        ax.axvline(b, color="tab:red", ls="--", lw=1)
    ax.set_xlabel("risk (dashed: the risk bands)")
    ax.set_ylabel("records")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    model = f"{bundle.name} {bundle.version}" if bundle is not None else ""
    # the name and version on a line of their own: one line was wider than the figure
    ax.set_title(f"risk of {summary.scored} records" + (f"\n{model}" if model else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(report_dir / "risk_hist.png", dpi=100)
    plt.close(fig)
    written.append(report_dir / "risk_hist.png")
    if bundle is not None and bundle.extra.get("reliability"):
        # the model's calibration as measured when it was made: scores carry no labels
        png = report_dir / "reliability.png"
        plot_reliability(bundle.extra["reliability"], path=png,
                         title=f"reliability on its own validation/test folds\n{bundle.name}")
        written.append(png)
    top = []
    highest = summary.highest()
    with progress_bar(len(highest), "report: the highest-risk ECGs", progress) as tick:
        for rank, (risk, record, path, title) in enumerate(highest, start=1):
            drawn = _draw_top(rank, risk, record, path, title, report_dir, predictor)
            tick()
            if drawn is not None:
                top.append((rank, record, path, risk, title, drawn))
                written += drawn
    index = report_dir / "index.md"
    atomic_write_text(index, _index(summary, model, report_dir / "reliability.png" in written, top))
    return [*written, index]


def _draw_top(rank: int, risk: float, record: str, path: str, title: str, report_dir: Path,
              predictor) -> list[Path] | None:
    """One highest-risk record's 12-lead plot and, given a predictor, its attribution plot; None
    when its file no longer reads."""
    from ecgrisk.io import ECGReadError, read_ecg
    from ecgrisk.plotting import plot_12lead, plot_attribution
    from ecgrisk.scoring.attribution import explain

    try:
        ecg = read_ecg(path)
    except ECGReadError:  # the file changed since it was scored; the table still stands
        return None
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in record)
    png = report_dir / f"top{rank:02d}_{safe}.png"
    plot_12lead(ecg.signal, ecg.fs, title=f"#{rank} {record}  risk {risk:.2f}  |  {title}",
                path=png, lead_mask=ecg.lead_mask)
    drawn = [png]
    if predictor is not None:
        png = report_dir / f"top{rank:02d}_{safe}_attribution.png"
        plot_attribution(explain(predictor, ecg.signal, ecg.fs), path=png,
                         title=f"#{rank} {record}: where the evidence lies (integrated gradients)")
        drawn.append(png)
    return drawn


def _index(summary: ScoreSummary, model: str, reliability: bool, top: list) -> str:
    counts = ", ".join(f"{n} {what}" for what, n in (
        ("scored", summary.scored), ("failed", summary.failed), ("need review", summary.review)))
    lines = [f"# Scores of {summary.total} records", "", f"{model + ': ' if model else ''}{counts}.",
             "", "![risk](risk_hist.png)", ""]
    if reliability:
        lines += ["![reliability](reliability.png)", ""]
    if summary.failures:
        lines += ["Not scored: " + ", ".join(f"{k} {n}" for k, n in summary.failures.most_common())
                  + " (the table's `error` column names each file).", ""]
    if summary.quality:
        lines += ["Quality issues: " + ", ".join(f"{k} {n}" for k, n in summary.quality.most_common())
                  + ".", ""]
    if top:
        lines += [f"## The {len(top)} highest-risk records", ""]
    for rank, record, path, risk, title, drawn in top:
        lines += [f"### #{rank} {record}: risk {risk:.2f}", "", f"`{path}`: {title}", "",
                  *[f"![{p.stem}]({p.name})" for p in drawn], ""]
    return "\n".join(lines)

