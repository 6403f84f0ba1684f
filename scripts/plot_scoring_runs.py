"""Several ``bench_scoring.py`` runs in one figure: the pipeline against the model's own rate.

    python scripts/plot_scoring_runs.py results/bench_scoring_9ae3f0f.json ... \\
        results/bench_scoring.json --out results/bench_scoring_runs.png

Each run is a point per folder size: x is that run's model-only rate (the host's speed), y the
pipeline's share of it (left) and its speed-up over the per-file loop (right), with the targets
as lines. The host moves these figures as much as the code does, and a figure shows that
better than a table of a dozen rows. A run is labelled by the commit in its file name
(``bench_scoring_<commit>.json``); ``bench_scoring.json`` is "latest".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ecgrisk.files import atomic_path

KEYS = ("medians", "share_of_model_only", "speedup_vs_naive", "share_target", "speedup_target")


def load(path: Path) -> dict:
    """One run's points: ``{"label", "points": [(n, model ECGs/s, share, speed-up)], targets}``."""
    try:
        run = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: not a bench_scoring result ({e})") from e
    missing = [k for k in KEYS if not isinstance(run, dict) or k not in run]
    if missing:
        raise SystemExit(f"{path}: not a bench_scoring result (no {', '.join(missing)})")
    model = {int(m["n"]): m["ecg_per_s"] for m in run["medians"] if m["mode"] == "model"}
    points = [(int(n), model[int(n)], share, run["speedup_vs_naive"][n])
              for n, share in run["share_of_model_only"].items() if int(n) in model]
    label = path.stem.removeprefix("bench_scoring").lstrip("_") or "latest"
    return {"label": label, "points": points,
            "share_target": run["share_target"], "speedup_target": run["speedup_target"]}


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({p[0] for r in runs for p in r["points"]})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, col, target, name in ((axes[0], 2, "share_target", "share of the model-only rate"),
                                  (axes[1], 3, "speedup_target", "speed-up over the per-file loop")):
        for i, n in enumerate(sizes):
            pts = [(p[1], p[col], r["label"]) for r in runs for p in r["points"] if p[0] == n]
            ax.scatter([x for x, _, _ in pts], [y for _, y, _ in pts], color=f"C{i}",
                       marker="os^v"[i % 4], label=f"{n:,} files", zorder=3)
            for x, y, label in pts:
                ax.annotate(label, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7,
                            color=f"C{i}")
        ax.axhline(runs[0][target], color="grey", ls=":", lw=1, label=f"target {runs[0][target]:g}")
        ax.set_xlabel("model-only rate on that host, ECGs/s")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    axes[1].set_ylabel("x")
    fig.suptitle(f"ecgrisk score on 2 cores, {len(runs)} runs of scripts/bench_scoring.py "
                 "(medians of their repeats)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="bench_scoring JSON files")
    ap.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = ap.parse_args(argv)
    runs = [load(p) for p in args.runs]
    plot(runs, args.out)
    print(f"wrote {args.out} ({len(runs)} runs)")


if __name__ == "__main__":
    main()
