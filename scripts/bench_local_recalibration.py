"""Does refitting a bundle's calibration on a clinic's labelled ECGs help on its other ECGs?

    python scripts/bench_local_recalibration.py fold9_scores.csv --labels data/ptb-xl-full \\
        --task superdiagnostic --subset all --subset "age>=80" --subset "device=CS-12" \\
        --out results/local_recalibration_superdiagnostic

Each subset plays a clinic: its patients are split in two halves at random (a patient's ECGs
stay together), ``ecgrisk recalibrate``'s refit (each form, and the form it chooses) is fitted
on one half (local) and Brier, ECE and NLL are measured on the other. The shipped bundles'
calibration was fitted on fold 9, the measured half included, so the fair baseline refits it
on every other ECG of the table (global). ``--splits`` draws, reported as means and the draws
in which a local refit was below the global one. With ``all`` the global refit and the local
temperature-and-shift one are fitted on the same ECGs (a check of the arithmetic). Writes JSON
and a markdown table.
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
from ecgrisk.scoring.recalibrate import (
    FORMS,
    choose_and_fit,
    fit_recalibration,
    halvings,
    recalibrated,
)

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


ARMS = ("shipped", "global", "shift", "temperature and shift", "chosen")


def run_subset(y, p, idx, patients, splits: int) -> dict:
    """Per draw, the subset's patients halved into A (to fit) and B (to measure); on B: the
    shipped calibration (fitted on all of fold 9, B included), the shipped one refitted on
    every other ECG of the table (global: it never saw B, the fair baseline), each form of the
    local refit on A, and the form ``ecgrisk recalibrate`` chooses on A by its own held-out
    check (``chosen``)."""
    scores = {arm: {m: [] for m in METRICS} for arm in ARMS}
    picked = []
    for in_a in halvings(patients, splits):
        a, b = idx[in_a], idx[~in_a]
        rest = np.setdiff1d(np.arange(len(y)), b)
        t2, b2, check = choose_and_fit(p[a], y[a], patients[in_a])
        picked.append(check["chosen"])
        probs = {"shipped": p[b],
                 "global": recalibrated(p[b], *fit_recalibration(p[rest], y[rest])),
                 **{form: recalibrated(p[b], *fit_recalibration(p[a], y[a], form)) for form in FORMS},
                 "chosen": recalibrated(p[b], t2, b2)}
        for arm, pb in probs.items():
            for m, f in METRICS.items():
                scores[arm][m].append(f(y[b], pb))
    out = {"n": int(len(idx)), "patients": int(len(np.unique(patients))),
           "chosen": {form: picked.count(form) for form in FORMS}}
    for m in METRICS:
        g = np.array(scores["global"][m])
        out[m] = {arm: float(np.mean(scores[arm][m])) for arm in ARMS}
        out[m]["better_than_global"] = {arm: int(np.sum(np.array(scores[arm][m]) < g))
                                        for arm in ARMS[2:]}
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
        print(f"{spec}: ECE " + ", ".join(f"{arm} {e[arm]:.4f}" for arm in ARMS), flush=True)
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
             f"Each cell: the measure on B (mean over draws), and for the local refits the draws in "
             f"which it was below the global one. Shipped: the calibration fitted on all of fold 9, "
             f"B included. Global: the shipped one refitted on every other ECG of the table (never "
             f"saw B; the fair baseline). Shift, temperature and shift: the two forms of the local "
             f"refit, fitted on A. Chosen: the form `ecgrisk recalibrate` picks by its own held-out "
             f"check on A (how often each: last column). {result['wall_s']:.0f} s.", "",
             "| subset | ECGs | measure | shipped | global | shift | temperature and shift | chosen | "
             "chosen form (shift / both) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for m in ("ece", "brier", "nll"):
            v, wins = r[m], r[m]["better_than_global"]
            local = [f"{v[arm]:.4f} ({wins[arm]}/{args.splits})" for arm in ARMS[2:]]
            chosen = f"{r['chosen']['shift']} / {r['chosen']['temperature and shift']}" if m == "ece" else ""
            lines.append(f"| {r['subset']} | {r['n']} | {m.upper()} | {v['shipped']:.4f} | "
                         f"{v['global']:.4f} | " + " | ".join(local) + f" | {chosen} |")
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
