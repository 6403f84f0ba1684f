"""A bf16-calibrated bundle scored in bf16 autocast vs fp32, on real records, side by side.

Where the CPU only emulates bf16 (no AVX-512), scoring runs in fp32 (``ecgrisk.hardware``);
this measures what that costs in fidelity (probability differences, macro AUROC of both) and
what it gains in speed, on the first ``--records`` fold-9 records of PTB-XL:

    python scripts/bench_scoring_precision.py --root data/ptb-xl-full --records 300

Writes ``results/scoring_precision.{json,md}``. One thread, both settings in one process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ecgrisk.bundle import Bundle
from ecgrisk.bundle_files import resolve
from ecgrisk.data.ptbxl import PTBXL
from ecgrisk.files import atomic_write_text
from ecgrisk.hardware import bf16_is_native, describe
from ecgrisk.io import read_ecg
from ecgrisk.metrics import macro_auroc
from ecgrisk.provenance import command_line
from ecgrisk.scoring.predict import Predictor


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, required=True, help="PTB-XL folder")
    p.add_argument("--model", default="ptbxl-superdiagnostic", help="a shipped name or model.pt")
    p.add_argument("--task", default="superdiagnostic", help="the bundle's PTB-XL task")
    p.add_argument("--records", type=int, default=300, help="the first N fold-9 records")
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
    probs, secs = {}, {}
    for setting, bf16 in (("bf16", True), ("fp32", False)):
        predictor.bf16 = bf16  # forced either way, whatever this CPU would choose
        predictor.predict_prepared(prepared[:8])  # warm-up
        t0 = time.perf_counter()
        probs[setting] = predictor.predict_prepared(prepared)
        secs[setting] = time.perf_counter() - t0
    d = np.abs(probs["bf16"] - probs["fp32"])
    y = data.labels[idx]
    result = {
        "model": args.model, "records": len(idx), "windows": windows, "machine": describe(),
        "bf16_native": bf16_is_native("cpu"),
        "command": command_line(__file__, argv),
        "abs_diff": {"median": float(np.median(d)), "p99": float(np.quantile(d, 0.99)), "max": float(d.max())},
        "macro_auroc": {s: macro_auroc(y, probs[s]) for s in probs},
        "seconds": secs, "windows_per_s": {s: windows / secs[s] for s in secs},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{args.name}.json", json.dumps(result, indent=1) + "\n")
    r = result
    md = ["# Scoring a bf16-calibrated bundle in bf16 vs fp32", "",
          f"`{r['command']}` on {r['machine']}: `{r['model']}` on the first {r['records']} fold-9 "
          f"records of `{args.root}` ({r['windows']} windows), one thread, both settings in one process.", "",
          "| setting | windows/s | seconds | macro AUROC (these records) |", "|---|---|---|---|",
          *[f"| {s} | {r['windows_per_s'][s]:.0f} | {r['seconds'][s]:.1f} | {r['macro_auroc'][s]:.4f} |"
            for s in ("bf16", "fp32")], "",
          f"fp32 is {r['windows_per_s']['fp32'] / r['windows_per_s']['bf16']:.1f}x the speed of bf16 here "
          f"(bf16 {'native' if r['bf16_native'] else 'emulated'} on this CPU). Calibrated probabilities, "
          f"fp32 vs bf16, absolute difference over records x classes: median {r['abs_diff']['median']:.4f}, "
          f"99th percentile {r['abs_diff']['p99']:.4f}, max {r['abs_diff']['max']:.4f}.", ""]
    atomic_write_text(args.out / f"{args.name}.md", "\n".join(md))
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
