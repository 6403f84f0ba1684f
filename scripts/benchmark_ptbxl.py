"""Supervised PTB-XL baselines with the benchmark protocol, plus encoder throughput on this machine.

    python scripts/benchmark_ptbxl.py                               # shared subset, CPU budget
    python scripts/benchmark_ptbxl.py --root data/ptb-xl --models xresnet1d101 inception1d \\
        --tasks all diagnostic subdiagnostic superdiagnostic form rhythm --accelerator gpu

Protocol (BENCHMARKS.md): 100 Hz, folds 1-8 train / 9 val / 10 test, one standard scaler,
random 2.5 s crops, 2.5 s windows at 1.25 s stride max-aggregated, one-cycle AdamW, batch 128,
lr 1e-2 (1e-3 for the transformers, whose training diverges at 1e-2), weight decay 1e-2,
``--epochs`` epochs (the whole one-cycle schedule, no early stopping) with the best epoch picked
on validation macro AUROC; test macro AUROC with 100 bootstrap resamples (5-95%); F-max on the
uncalibrated probabilities, as the benchmark computes it. Each run's directory keeps its config and metrics.

Writes results/benchmark_ptbxl.{json,md} (the runs) and results/encoder_throughput.{json,md};
``--models`` with no names measures throughput only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from ecgrisk.config import compose
from ecgrisk.finetune import train
from ecgrisk.models import create_encoder, list_encoders
from ecgrisk.paths import shared_data

TRANSFORMERS = {"vit1d", "hybrid"}


def throughput(name: str, batch: int = 64, samples: int = 250, reps: int = 3) -> dict:
    """Train (forward+backward) and inference samples/s of an encoder at its default size."""
    enc = create_encoder(name)
    x = torch.randn(batch, 12, samples)
    opt = torch.optim.SGD(enc.parameters(), lr=1e-3)

    def step_train():
        opt.zero_grad()
        enc.embed(x).sum().backward()
        opt.step()

    def step_infer():
        with torch.no_grad():
            enc.embed(x)

    out = {"params": sum(p.numel() for p in enc.parameters())}
    for key, fn, mode in (("train", step_train, True), ("infer", step_infer, False)):
        enc.train(mode)
        fn()  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[f"{key}_samples_per_s"] = batch / statistics.median(times)
    return out


def run(model: str, task: str, args, out_root: Path) -> dict:
    lr = 1e-3 if model in TRANSFORMERS else 1e-2
    overrides = [f"data.root={args.root}", f"data.task={task}", f"model={model}",
                 f"trainer.max_epochs={args.epochs}", f"finetune.lr={lr}",
                 "early_stopping_patience=null",  # the recipe runs the whole one-cycle schedule
                 f"trainer.accelerator={args.accelerator}", "trainer.enable_progress_bar=false",
                 f"output_dir={out_root / f'{model}-{task}'}", f"seed={args.seed}",
                 f"data.num_workers={args.num_workers}"]
    if args.max_minutes:
        overrides.append(f"+trainer.max_time=00:00:{int(args.max_minutes):02d}:00")
    t0 = time.perf_counter()
    m = train(compose("finetune", overrides))
    keep = ["test/macro_auroc", "test/macro_auroc/lower", "test/macro_auroc/upper", "test/fmax",
            "test/macro_auprc", "test/brier", "test/ece", "val/macro_auroc", "train/epochs",
            "train/records", "test/records", "train/wall_s", "train/samples_per_s",
            "test/auroc_skipped_classes", "test/n_classes"]
    row = {k: m[k] for k in keep if k in m}
    row.update(model=model, task=task, lr=lr, total_wall_s=time.perf_counter() - t0,
               run_dir=str(out_root / f"{model}-{task}"))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_root = (shared_data() or Path("data")) / "ptb-xl"
    p.add_argument("--root", default=str(default_root))
    p.add_argument("--models", nargs="*", default=["xresnet1d50", "vit1d"])
    p.add_argument("--tasks", nargs="+", default=["superdiagnostic", "all"])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--max-minutes", type=int, default=0, help="per-run wall-clock cap (0: none)")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--runs-dir", default="runs/benchmark_ptbxl")
    p.add_argument("--out", default="results")
    args = p.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_throughput:
        tp = {name: throughput(name) for name in list_encoders()}
        (out / "encoder_throughput.json").write_text(json.dumps({"started": started, "machine": machine,
                                                                  "encoders": tp}, indent=1))
        md = [f"Encoder throughput at default size on {machine} (batch 64 of 2.5 s crops at 100 Hz, "
              f"median of 3; started {started}):", "",
              "| encoder | params | train samples/s | inference samples/s |", "|---|---|---|---|"]
        md += [f"| {n} | {t['params']:,} | {t['train_samples_per_s']:.0f} | {t['infer_samples_per_s']:.0f} |"
               for n, t in tp.items()]
        (out / "encoder_throughput.md").write_text("\n".join(md) + "\n")
        print("\n".join(md))
    if not args.models:
        return
    rows = [run(m, t, args, Path(args.runs_dir)) for t in args.tasks for m in args.models]
    budget = f"{args.epochs} epochs per run, best epoch on validation" + (f", {args.max_minutes} min cap" if args.max_minutes else "")
    result = {"started": started, "root": str(args.root), "accelerator": args.accelerator,
              "machine": machine, "budget": budget, "runs": rows}
    (out / "benchmark_ptbxl.json").write_text(json.dumps(result, indent=1))
    md = [f"PTB-XL benchmark protocol on `{args.root}` ({machine}; {budget}; {args.accelerator}). "
          f"Started {started}.", "",
          "| task | model | test macro AUROC (90% CI) | classes scored | F-max | val AUROC | epochs run | train/test records | wall s | train samples/s |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = (f"{r['test/macro_auroc']:.3f} ({r.get('test/macro_auroc/lower', float('nan')):.3f}-"
              f"{r.get('test/macro_auroc/upper', float('nan')):.3f})")
        scored = f"{r['test/n_classes'] - r['test/auroc_skipped_classes']}/{r['test/n_classes']}"
        md.append(f"| {r['task']} | {r['model']} | {ci} | {scored} | {r['test/fmax']:.3f} | "
                  f"{r['val/macro_auroc']:.3f} | {r['train/epochs']} | {r['train/records']}/{r['test/records']} | "
                  f"{r['total_wall_s']:.0f} | {r['train/samples_per_s']:.0f} |")
    (out / "benchmark_ptbxl.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
