"""A bf16-calibrated bundle scored as fine-tuning evaluated it and as scoring runs it, side by side.

Fine-tuning evaluated and calibrated the model as trained, under bf16 autocast. Scoring folds
its BatchNorm into the convolutions (:func:`~ecgrisk.models.layers.fuse_conv_bn`), and where
the CPU only emulates bf16 (no AVX-512) it runs in fp32 (``ecgrisk.hardware``). This measures
what each costs in fidelity against the fine-tuning evaluation (probability differences, macro
AUROC) and what it gains in speed, on the first ``--records`` fold-9 records of PTB-XL:

    python scripts/bench_scoring_precision.py --root data/ptb-xl-full --records 300

Writes ``results/scoring_precision.{json,md}``. One thread, every setting in one process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ecgrisk.bundle import Bundle, resolve
from ecgrisk.data.ptbxl import PTBXL
from ecgrisk.files import atomic_write_text
from ecgrisk.hardware import bf16_is_native, describe
from ecgrisk.io import read_ecg
from ecgrisk.metrics import macro_auroc
from ecgrisk.provenance import command_line
from ecgrisk.scoring.predict import Predictor

# (name, model, bf16): the first is the reference, what fine-tuning evaluated and calibrated
SETTINGS = (("bf16, as trained", "trained", True),
            ("bf16, BN folded (scoring)", "folded", True),
            ("fp32, BN folded (scoring without native bf16)", "folded", False))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, required=True, help="PTB-XL folder")
    p.add_argument("--model", default="ptbxl-superdiagnostic", help="a shipped name or model.pt")
    p.add_argument("--task", default="superdiagnostic", help="the bundle's PTB-XL task")
    p.add_argument("--records", type=int, default=300, help="the first N fold-9 records")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per setting (median)")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--name", default="scoring_precision")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    bundle = Bundle.load(resolve(args.model, "bundle"))
    if not bundle.precision.startswith("bf16"):
        raise SystemExit(f"{args.model} was calibrated under {bundle.precision}: nothing to compare")
    data = PTBXL(args.root, task=args.task)
    if list(data.classes) != list(bundle.classes):
        raise SystemExit(f"{args.model}'s classes {bundle.classes} are not {args.root}'s {data.classes}")
    idx = np.flatnonzero(data.folds == 9)[:args.records]
    predictor = Predictor(bundle)
    prepared = [predictor.spec.prepare(e.signal, e.fs) for e in (read_ecg(data.paths[i]) for i in idx)]
    windows = len(predictor.spec.windows(prepared)[1])
    folded, trained = predictor.model, bundle.model.eval()
    probs, times = {}, {setting: [] for setting, _, _ in SETTINGS}
    # the settings take turns, --repeats rounds, and each is timed by its median round: on a
    # shared host one round of a few seconds moved by 1.3x from one run to the next
    for _ in range(args.repeats):
        for setting, model, bf16 in SETTINGS:
            predictor.model = folded if model == "folded" else trained
            predictor.bf16 = bf16  # forced either way, whatever this CPU would choose
            # warm-up at the timed batch shape (512 windows), or the first setting pays for it
            predictor.predict_prepared(prepared[:80])
            t0 = time.perf_counter()
            probs[setting] = predictor.predict_prepared(prepared)
            times[setting].append(time.perf_counter() - t0)
    secs = {setting: float(np.median(t)) for setting, t in times.items()}
    reference = SETTINGS[0][0]
    diffs = {s: np.abs(probs[s] - probs[reference]) for s in probs if s != reference}
    y = data.labels[idx]
    result = {
        "model": args.model, "records": len(idx), "windows": windows, "machine": describe(),
        "bf16_native": bf16_is_native("cpu"),
        "command": command_line(__file__, argv),
        "reference": reference,
        "abs_diff": {s: {"median": float(np.median(d)), "p99": float(np.quantile(d, 0.99)),
                         "max": float(d.max())} for s, d in diffs.items()},
        "macro_auroc": {s: macro_auroc(y, probs[s]) for s in probs},
        "repeats": args.repeats, "seconds": secs, "windows_per_s": {s: windows / secs[s] for s in secs},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{args.name}.json", json.dumps(result, indent=1) + "\n")
    r = result
    md = ["# Scoring a bf16-calibrated bundle as fine-tuning evaluated it, BN-folded, and in fp32", "",
          f"`{r['command']}` on {r['machine']}: `{r['model']}` on the first {r['records']} fold-9 "
          f"records of `{args.root}` ({r['windows']} windows), one thread, every setting in one "
          f"process, taking turns for {r['repeats']} rounds (seconds: the median round). Bf16 is "
          f"{'native' if r['bf16_native'] else 'emulated'} on this CPU. The "
          f"difference is the absolute difference of the calibrated probabilities from `{reference}` "
          "(what fine-tuning evaluated and calibrated), over records x classes.", "",
          "| setting | windows/s | seconds | macro AUROC (these records) | median diff | p99 diff | max diff |",
          "|---|---|---|---|---|---|---|",
          *[f"| {s} | {r['windows_per_s'][s]:.0f} | {r['seconds'][s]:.1f} | {r['macro_auroc'][s]:.4f} | "
            + (" | ".join(f"{r['abs_diff'][s][k]:.4f}" for k in ("median", "p99", "max"))
               if s in r["abs_diff"] else "- | - | -") + " |"
            for s, _, _ in SETTINGS], ""]
    atomic_write_text(args.out / f"{args.name}.md", "\n".join(md))
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
