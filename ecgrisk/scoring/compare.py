"""Score tables of the same ECGs compared, paired: macro AUROC each and its difference from the first.

Each table is what ``ecgrisk score`` wrote, joined to its labels as ``ecgrisk evaluate`` joins
them; only ECGs every table scored are compared. The difference's interval resamples ECGs once
for both tables (paired), so it is narrower than the two tables' own intervals suggest where the
models err on the same ECGs. Per table also: F-max, Brier and ECE of the calibrated probabilities,
and the share of ECGs flagged for review. ``scripts/compare_scores.py`` is its command line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgrisk.metrics import bootstrap_ci, brier, ece, fmax, macro_auroc
from ecgrisk.scoring.evaluate import EvaluationError, join_scores

__all__ = ["compare", "table_lines", "to_markdown"]


def compare(tables: list[Path], labels: str, task: str | None, only: list[str],
            bootstrap: int = 200, seed: int = 0) -> dict:
    joined = [join_scores(t, labels, task, only) for t in tables]
    classes = joined[0].classes
    for t, j in zip(tables, joined, strict=True):
        if j.classes != classes:
            raise EvaluationError(f"{t} scores {j.classes[:3]}..., {tables[0]} {classes[:3]}...: "
                                  f"compare tables of the same statements")
    common = sorted(set.intersection(*(set(j.keys) for j in joined)))
    if not common:
        raise EvaluationError("the tables share no labelled ECG")
    arrays = []
    for j in joined:
        at = {k: i for i, k in enumerate(j.keys)}
        idx = np.array([at[k] for k in common])
        arrays.append((j.y[idx], j.p[idx], [j.rows[i] for i in idx]))
    y = arrays[0][0]
    c = len(classes)
    out = {"labels": str(labels), "task": task, "only": list(only), "ecgs": len(common),
           "bootstrap": bootstrap, "tables": []}
    for i, (t, (_, p, rows)) in enumerate(zip(tables, arrays, strict=True)):
        # a statement with no positive (a small clinic set, --only fold=9) is left out, as evaluate does
        auroc = bootstrap_ci(_auroc, y, p, n=bootstrap, seed=seed)
        flagged = np.mean([str(r.get("needs_review")) == "True" for r in rows])
        row = {"table": str(t), "model": f"{rows[0].get('model_name')} {rows[0].get('model_version')}",
               "macro_auroc": auroc, "fmax": fmax(y, p), "brier": brier(y, p), "ece": ece(y, p),
               "flagged": float(flagged)}
        if i:
            # one resample of the ECGs scores both tables: the pair side by side, labels twice
            row["auroc_minus_first"] = bootstrap_ci(
                lambda yy, s: _auroc(yy[:, :c], s[:, :c]) - _auroc(yy[:, :c], s[:, c:]),
                np.hstack([y, y]), np.hstack([p, arrays[0][1]]), n=bootstrap, seed=seed)
        out["tables"].append(row)
    return out


def table_lines(r: dict) -> list[str]:
    """The markdown table of :func:`compare`'s result, one row per table."""
    lines = ["| scores | model | macro AUROC (90% CI) | minus the first (90% CI) | F-max | Brier | ECE | flagged |",
             "|---|---|---|---|---|---|---|---|"]
    for t in r["tables"]:
        a, d = t["macro_auroc"], t.get("auroc_minus_first")
        diff = f"{d['point']:+.4f} ({d['lower']:+.4f} to {d['upper']:+.4f})" if d else "-"
        lines.append(f"| `{Path(t['table']).name}` | {t['model']} | {a['point']:.4f} "
                     f"({a['lower']:.4f}-{a['upper']:.4f}) | {diff} | {t['fmax']:.4f} | "
                     f"{t['brier']:.4f} | {t['ece']:.4f} | {t['flagged']:.1%} |")
    return lines


def to_markdown(r: dict) -> str:
    head = (f"{r['ecgs']:,} ECGs scored by every table, labels `{r['labels']}`"
            + (f" ({r['task']})" if r["task"] else "")
            + (f", only {', '.join(r['only'])}" if r["only"] else "")
            + f"; 90% intervals from {r['bootstrap']} resamples of the ECGs, the difference paired.")
    return "\n".join([head, "", *table_lines(r)]) + "\n"


def _auroc(y, p) -> float:
    return macro_auroc(y, p, skip_degenerate=True)
