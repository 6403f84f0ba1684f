"""Does refitting a bundle's calibration on a clinic's labelled ECGs help on its other ECGs?

    python scripts/bench_local_recalibration.py fold9_scores.csv --labels data/ptb-xl-full \\
        --task superdiagnostic --subset all --subset "age>=80" --subset "device=CS-12" \\
        --out results/local_recalibration_superdiagnostic

Each subset plays a clinic: its patients are split in two halves at random (a patient's ECGs
stay together), ``ecgrisk recalibrate``'s refit is fitted on one half (local) and Brier, ECE
and NLL are measured on the other. The shipped bundles' calibration was fitted on fold 9, the
measured half included, so the fair baseline refits it on every other ECG of the table
(global). ``--splits`` draws, reported as means and the 5-95% range of local minus global.
With ``all`` local and global are fitted on the same ECGs (a check of the arithmetic). Writes
JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import operator
import sys
import time
from pathlib import Path

import numpy as np

from ecgrisk.files import atomic_write_text
from ecgrisk.metrics import binary_cross_entropy, brier, ece
from ecgrisk.scoring.evaluate import EvaluationError, join_scores
from ecgrisk.scoring.recalibrate import fit_recalibration, halvings, recalibrated

OPS = {">=": operator.ge, "<": operator.lt, "=": lambda a, b: a == b}
METRICS = {"brier": brier, "ece": ece, "nll": binary_cross_entropy}


def select(spec: str, keys: list[str], columns: dict) -> np.ndarray:
    """Indices of the ECGs a subset spec names: ``all``, ``COL=V``, ``COL>=X`` or ``COL<X``."""
    if spec == "all":
        return np.arange(len(keys))
    for sym in (">=", "<", "="):
        name, sep, value = spec.partition(sym)
        if sep:
            break
    if not sep or name not in columns:
        raise SystemExit(f"--subset {spec!r}: expected all, COL=V, COL>=X or COL<X with COL one of "
                         f"{sorted(columns)}")
    col = columns[name]
    want = value if sym == "=" else float(value)
    return np.array([i for i, k in enumerate(keys) if col.get(k) is not None and (
        (str(col[k]).strip() == want or (isinstance(col[k], float) and f"{col[k]:g}" == want))
        if sym == "=" else OPS[sym](col[k], want))], dtype=int)


ARMS = ("shipped", "global", "local")


def run_subset(y, p, idx, patients, splits: int) -> dict:
    """Per draw, the subset's patients halved into A (to fit) and B (to measure), three
    calibrations measured on B: the shipped one (fitted on all of fold 9, B included), the
    shipped one refitted on every other ECG of the table (a global calibration that never saw
    B: the fair baseline) and the shipped one refitted on A alone (local)."""
    scores = {arm: {m: [] for m in METRICS} for arm in ARMS}
    for in_a in halvings(patients, splits):
        a, b = idx[in_a], idx[~in_a]
        rest = np.setdiff1d(np.arange(len(y)), b)
        probs = {"shipped": p[b],
                 "global": recalibrated(p[b], *fit_recalibration(p[rest], y[rest])),
                 "local": recalibrated(p[b], *fit_recalibration(p[a], y[a]))}
        for arm, pb in probs.items():
            for m, f in METRICS.items():
                scores[arm][m].append(f(y[b], pb))
    out = {"n": int(len(idx)), "patients": int(len(np.unique(patients)))}
    for m in METRICS:
        g, loc = np.array(scores["global"][m]), np.array(scores["local"][m])
        d = loc - g
        out[m] = {**{arm: float(np.mean(scores[arm][m])) for arm in ARMS},
                  "local_minus_global": float(d.mean()), "d_5": float(np.percentile(d, 5)),
                  "d_95": float(np.percentile(d, 95)), "local_better_in": int((d < 0).sum())}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scores", type=Path)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--task", default=None)
    ap.add_argument("--subset", action="append", default=[], help="all, COL=V, COL>=X, COL<X")
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--out", type=Path, required=True, help="stem of the .json and .md to write")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        j = join_scores(args.scores, args.labels, args.task)
    except EvaluationError as e:
        raise SystemExit(f"error: {e}") from e
    if "patient" not in j.labels.columns:
        raise SystemExit(f"{j.labels.source}: no patient column to split by")
    patient = j.labels.columns["patient"]
    rows = []
    for spec in args.subset or ["all"]:
        idx = select(spec, j.keys, j.labels.columns)
        if len(idx) < 40:
            raise SystemExit(f"--subset {spec!r}: {len(idx)} ECGs, too few to fit on half of them")
        pts = np.array([str(patient.get(j.keys[i])) for i in idx])
        rows.append({"subset": spec, **run_subset(j.y, j.p, idx, pts, args.splits)})
        e = rows[-1]["ece"]
        print(f"{spec}: ECE shipped {e['shipped']:.4f} global {e['global']:.4f} local {e['local']:.4f}",
              flush=True)
    result = {"command": " ".join(["python scripts/bench_local_recalibration.py",
                                   *(f"'{a}'" if set(a) & set("<>=") else a for a in (argv or sys.argv[1:]))]),
              "scores": str(args.scores), "labels": j.labels.source, "classes": j.classes,
              "splits": args.splits, "wall_s": time.perf_counter() - t0, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(result, indent=1))
    lines = ["# Local recalibration: fitted on half of a subset's patients, measured on the other half",
             "", f"`{result['command']}`", "",
             f"Scores `{args.scores}`, labels {j.labels.source}, statements {', '.join(j.classes)}. "
             f"{args.splits} random halvings by patient per subset, A to fit and B to measure on. "
             f"Each cell: the measure on B (mean over draws) with the shipped calibration (fitted "
             f"on all of fold 9, B included), refitted on every other ECG of the table (global, "
             f"never saw B: the fair baseline) and refitted on A alone (local); then local minus "
             f"global, [5th, 95th percentile over the draws], and the draws in which local was "
             f"better. {result['wall_s']:.0f} s.", "",
             "| subset | ECGs | patients | ECE shipped / global / local | Brier | NLL |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[m]['shipped']:.4f} / {r[m]['global']:.4f} / {r[m]['local']:.4f}; "
                 f"{r[m]['local_minus_global']:+.4f} [{r[m]['d_5']:+.4f}, {r[m]['d_95']:+.4f}], "
                 f"{r[m]['local_better_in']}/{args.splits}" for m in ("ece", "brier", "nll")]
        lines.append(f"| {r['subset']} | {r['n']} | {r['patients']} | " + " | ".join(cells) + " |")
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
