"""How a record's length moves a bundle's calibrated probabilities, on PTB-XL fold 9.

A record is scored as the max over its windows, and a bundle is calibrated on records of the
length it was fine-tuned on (PTB-XL: 10 s). This scores every fold-9 record as recorded, cut to
its first 5 s and 2.5 s, and lengthened to 30 s and 60 s, and reports discrimination (macro
AUROC, 90% bootstrap interval) and calibration (Brier, ECE, mean probability per statement):

    python scripts/record_length.py --root data/ptb-xl-full

PTB-XL holds no longer recordings, so the long ones are built: the record three times (the
same 10 s again), and the record joined to two (or five) other fold-9 records with the same
labels, drawn with ``--seed``. Those are other patients, so they carry more signal than a longer
recording of one patient would (AUROC rises); the calibration shift is what they show.
Writes ``results/record_length.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ecgrisk.bundle import Bundle
from ecgrisk.bundle_files import resolve
from ecgrisk.data.ptbxl import PTBXL
from ecgrisk.files import atomic_write_text
from ecgrisk.hardware import describe
from ecgrisk.io import read_ecg
from ecgrisk.metrics import bootstrap_ci, brier, ece, macro_auroc
from ecgrisk.provenance import command_line
from ecgrisk.scoring.predict import Predictor


def variants(signals: list[np.ndarray], labels: np.ndarray, fs: float, seed: int) -> dict:
    """Name -> function of a record's index giving the signal to score."""
    rng = np.random.default_rng(seed)
    by_labels: dict[bytes, list[int]] = {}
    for j, row in enumerate(labels.astype(np.uint8)):
        by_labels.setdefault(row.tobytes(), []).append(j)

    def others(j: int, k: int) -> list[np.ndarray]:
        pool = [m for m in by_labels[labels[j].astype(np.uint8).tobytes()] if m != j] or [j]
        return [signals[m] for m in rng.choice(pool, size=k)]

    n5, n25 = round(5 * fs), round(2.5 * fs)
    return {
        "as recorded": lambda j: signals[j],
        "first 5 s": lambda j: signals[j][:, :n5],
        "first 2.5 s": lambda j: signals[j][:, :n25],
        "the record 3 times": lambda j: np.concatenate([signals[j]] * 3, axis=1),
        "+2 records with its labels": lambda j: np.concatenate([signals[j], *others(j, 2)], axis=1),
        "+5 records with its labels": lambda j: np.concatenate([signals[j], *others(j, 5)], axis=1),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, required=True, help="PTB-XL folder")
    p.add_argument("--model", default="ptbxl-superdiagnostic", help="a shipped name or model.pt")
    p.add_argument("--task", default="superdiagnostic", help="the bundle's PTB-XL task")
    p.add_argument("--fold", type=int, default=9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--name", default="record_length")
    args = p.parse_args(argv)
    bundle = Bundle.load(resolve(args.model, "bundle"))
    data = PTBXL(args.root, task=args.task)
    if list(data.classes) != list(bundle.classes):
        raise SystemExit(f"{args.model}'s classes {bundle.classes} are not {args.root}'s {data.classes}")
    idx = np.flatnonzero(data.folds == args.fold)
    ecgs = [read_ecg(data.paths[i]) for i in idx]
    fs = ecgs[0].fs
    y = data.labels[idx]
    predictor = Predictor(bundle)
    rows = {}
    for name, signal in variants([e.signal for e in ecgs], y, fs, args.seed).items():
        t0 = time.perf_counter()
        prepared = [predictor.spec.prepare(signal(j), fs) for j in range(len(idx))]
        prob = predictor.predict_prepared(prepared)
        rows[name] = {
            "seconds_long": prepared[0].shape[1] / bundle.preprocessing.fs,
            "windows": len(predictor.spec.windows(prepared[:1])[1]),
            "macro_auroc": bootstrap_ci(macro_auroc, y, prob, n=100, seed=args.seed),
            "brier": brier(y, prob), "ece": ece(y, prob),
            "mean_prob": dict(zip(data.classes, prob.mean(0).tolist(), strict=True)),
            "wall_s": time.perf_counter() - t0,
        }
        print(name, f"{rows[name]['macro_auroc']['point']:.4f} ECE {rows[name]['ece']:.4f}", flush=True)
    result = {"model": args.model, "task": args.task, "fold": args.fold, "records": len(idx),
              "machine": describe(), "command": command_line(__file__, argv),
              "prevalence": dict(zip(data.classes, y.mean(0).tolist(), strict=True)), "variants": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{args.name}.json", json.dumps(result, indent=1) + "\n")
    md = ["# Record length and calibration", "",
          f"`{result['command']}` on {result['machine']}: `{args.model}` on the {len(idx)} fold-"
          f"{args.fold} records of `{args.root}` ({args.task}), each scored as below. The joined "
          "records are other patients with the same labels: more signal than a longer recording "
          "of one patient, so their AUROC gain is not one a real recording would give.", "",
          "| record scored | length (s) | windows | macro AUROC (90% CI) | Brier | ECE | "
          + " | ".join(f"mean P({c})" for c in data.classes) + " |",
          "|---|---|---|---|---|---|" + "---|" * len(data.classes)]
    for name, r in rows.items():
        a = r["macro_auroc"]
        md.append(f"| {name} | {r['seconds_long']:g} | {r['windows']} | {a['point']:.3f} "
                  f"({a['lower']:.3f}-{a['upper']:.3f}) | {r['brier']:.4f} | {r['ece']:.4f} | "
                  + " | ".join(f"{r['mean_prob'][c]:.3f}" for c in data.classes) + " |")
    md += ["| prevalence | | | | | | " + " | ".join(f"{v:.3f}" for v in result["prevalence"].values())
           + " |", ""]
    atomic_write_text(args.out / f"{args.name}.md", "\n".join(md))
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
