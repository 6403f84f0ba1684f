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

With two or more ``--models``, each task also gets an ensemble row: the mean of the runs'
calibrated probabilities on the scored fold.

Writes results/benchmark_ptbxl.{json,md} (the runs) and results/encoder_throughput.{json,md};
``--models`` with no names measures throughput only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ecgrisk.config import compose
from ecgrisk.files import atomic_write_text
from ecgrisk.finetune.app import train
from ecgrisk.hardware import describe, resolve_precision
from ecgrisk.metrics import evaluate
from ecgrisk.models import create_encoder, list_encoders
from ecgrisk.paths import shared_data
from ecgrisk.provenance import command_line

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


def published_val(model: str, task: str) -> float | None:
    """The published benchmark's own fold-9 macro AUROC, read from its results file in
    ../shared/data/ptbxl-benchmark-peer (task ``all`` only; None where it is absent)."""
    csv = (shared_data() or Path("/nonexistent")) / "ptbxl-benchmark-peer" / f"val_results_{model}.csv"
    if task != "all" or not csv.is_file():
        return None
    import pandas as pd

    return float(pd.read_csv(csv, index_col=0).loc["point", "macro_auc"])


ENSEMBLE_NOTE = ("\nAn ensemble row averages its members' calibrated probabilities on the scored fold "
                 "(each member's calibration was fitted on fold 9), so its F-max is on calibrated "
                 "probabilities; its wall time is the members' sum.\n")
KEEP = ("macro_auroc", "macro_auroc/lower", "macro_auroc/upper", "fmax", "macro_auprc", "brier", "ece",
        "auroc_skipped_classes", "n_classes")


def run(model: str, task: str, args, out_root: Path) -> dict:
    """One protocol run; a finished run is read back, an interrupted one resumes from last.ckpt."""
    run_path = out_root / f"{model}-{task}"
    done = run_path / "metrics.json"
    if done.is_file() and not args.rerun:
        m = json.loads(done.read_text())
        print(f"{model}-{task}: finished earlier, read from {done}")
        wall = m.get("train/wall_s", float("nan")) + m.get("eval/wall_s", 0.0)
    else:
        lr = 1e-3 if model in TRANSFORMERS else 1e-2
        overrides = [f"data.root={args.root}", f"data.task={task}", f"model={model}",
                     f"trainer.max_epochs={args.epochs}", f"finetune.lr={lr}",
                     "early_stopping_patience=null",  # the recipe runs the whole one-cycle schedule
                     f"trainer.accelerator={args.accelerator}", "trainer.enable_progress_bar=false",
                     f"trainer.precision={args.precision}",
                     f"trainer.check_val_every_n_epoch={args.val_every}",
                     f"output_dir={run_path}", f"seed={args.seed}", f"data.num_workers={args.num_workers}"]
        last = run_path / "checkpoints" / "last.ckpt"
        if last.is_file() and not args.rerun:
            overrides.append(f"resume={last}")
            print(f"{model}-{task}: resuming from {last}")
        if args.max_minutes:
            overrides.append(f"+trainer.max_time=00:00:{int(args.max_minutes):02d}:00")
        t0 = time.perf_counter()
        m = train(compose("finetune", overrides))
        wall = time.perf_counter() - t0
    # fold 9 when the test fold is absent (the withheld-test copy): say which one the row is
    split = "test" if m.get("test/records") else "val"
    row = {k: m.get(f"{split}/{k}") for k in KEEP}
    row.update(model=model, task=task, split=split, records=m[f"{split}/records"],
               train_records=m["train/records"], val_macro_auroc=m["val/macro_auroc"],
               epochs=m["train/epochs"], train_wall_s=m["train/wall_s"],
               samples_per_s=m["train/samples_per_s"], total_wall_s=wall,
               precision=m.get("train/precision", args.precision), run_dir=str(run_path),
               published_val=published_val(model, task))
    return row


def ensemble(task: str, rows: list[dict], bootstrap: int, seed: int) -> dict | None:
    """The mean of ``task``'s runs' calibrated probabilities on their scored fold, scored like a
    run (same bootstrap draws as the members'), or None with fewer than two runs."""
    members = [r for r in rows if r["task"] == task]
    if len(members) < 2:
        return None
    split = members[0]["split"]
    frames = [pd.read_csv(Path(r["run_dir"]) / "predictions" / f"{split}.csv").set_index("record")
              for r in members]
    if any(not f.index.equals(frames[0].index) for f in frames):
        raise SystemExit(f"{task}: the runs scored different records; they cannot be averaged")
    classes = [c.removeprefix("true/") for c in frames[0].columns if c.startswith("true/")]
    y = frames[0][[f"true/{c}" for c in classes]].to_numpy()
    prob = np.mean([f[[f"prob/{c}" for c in classes]].to_numpy() for f in frames], axis=0)
    m = evaluate(y, prob, prefix="", classes=classes, bootstrap=bootstrap, seed=seed)
    return {**{k: m.get(k) for k in KEEP}, "task": task, "split": split, "records": len(y),
            "model": "ensemble: " + " + ".join(r["model"] for r in members),
            "train_records": members[0]["train_records"], "epochs": "-",
            "train_wall_s": sum(r["train_wall_s"] for r in members), "samples_per_s": None,
            "published_val": None}


def _table(rows: list[dict], header: str) -> str:
    md = [header, "",
          "| task | model | scored on | macro AUROC (90% CI) | published val | classes scored | F-max | "
          "epochs | train/scored records | train wall min | train samples/s |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = f"{r['macro_auroc']:.4f} ({r['macro_auroc/lower']:.4f}-{r['macro_auroc/upper']:.4f})"
        fold = "fold 10 (test)" if r["split"] == "test" else "fold 9 (val)"
        pub = f"{r['published_val']:.4f}" if r["published_val"] else "-"
        scored = f"{r['n_classes'] - r['auroc_skipped_classes']}/{r['n_classes']}"
        md.append(f"| {r['task']} | {r['model']} | {fold} | {ci} | {pub} | {scored} | {r['fmax']:.3f} | "
                  f"{r['epochs']} | {r['train_records']}/{r['records']} | {r['train_wall_s'] / 60:.1f} | "
                  f"{'-' if r['samples_per_s'] is None else format(r['samples_per_s'], '.0f')} |")
    return "\n".join(md) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_root = (shared_data() or Path("data")) / "ptb-xl"
    p.add_argument("--root", default=str(default_root),
                   help="a PTB-XL copy with records100/ (default: %(default)s)")
    p.add_argument("--models", nargs="*", default=["xresnet1d50", "vit1d"],
                   help="model configs (conf/model/); none: throughput only (default: %(default)s)")
    p.add_argument("--tasks", nargs="+", default=["superdiagnostic", "all"],
                   help="PTB-XL label sets (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=50, help="one-cycle length (default: %(default)s)")
    p.add_argument("--precision", default="auto",
                   help="Lightning precision; auto (the default): bf16-mixed where bf16 is native (ecgrisk/hardware.py)")
    p.add_argument("--val-every", type=int, default=1,
                   help="validate every N epochs (the best of those is kept; default: %(default)s)")
    p.add_argument("--max-minutes", type=int, default=0, help="per-run wall-clock cap (default 0: none)")
    p.add_argument("--accelerator", default="cpu", help="Lightning accelerator (default: %(default)s)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--rerun", action="store_true", help="train again even where a run finished or left a checkpoint")
    p.add_argument("--no-throughput", action="store_true",
                   help="skip the encoder throughput table (<out>/encoder_throughput.{json,md})")
    p.add_argument("--runs-dir", default="runs/benchmark_ptbxl", help="run directories (default: %(default)s)")
    p.add_argument("--out", default="results", help="folder of the tables (default: %(default)s)")
    p.add_argument("--name", default="benchmark_ptbxl",
                   help="<out>/<name>.{json,md}; a table another command wrote is never replaced "
                        "(default: %(default)s)")
    args = p.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    machine = describe()
    out = Path(args.out)
    command = command_line(__file__)
    for name, written in ((args.name, bool(args.models)), ("encoder_throughput", not args.no_throughput)):
        if written:
            _refuse_other_commands(out / f"{name}.json", command)
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_throughput:
        tp = {name: throughput(name) for name in list_encoders()}
        atomic_write_text(out / "encoder_throughput.json",
                          json.dumps({"started": started, "machine": machine, "command": command,
                                      "encoders": tp}, indent=1))
        md = [f"Encoder throughput at default size on {machine} (batch 64 of 2.5 s crops at 100 Hz, "
              f"median of 3; started {started}):", "",
              "| encoder | params | train samples/s | inference samples/s |", "|---|---|---|---|"]
        md += [f"| {n} | {t['params']:,} | {t['train_samples_per_s']:.0f} | {t['infer_samples_per_s']:.0f} |"
               for n, t in tp.items()]
        atomic_write_text(out / "encoder_throughput.md", "\n".join(md) + "\n")
        print("\n".join(md))
    if not args.models:
        return
    budget = (f"{args.epochs} epochs per run, {resolve_precision(args.precision, args.accelerator)}, validation every {args.val_every} epoch(s), "
              f"best validated epoch kept") + (f", {args.max_minutes} min cap" if args.max_minutes else "")
    header = (f"PTB-XL benchmark protocol on `{args.root}` ({machine}; {budget}; {args.accelerator}). "
              f"Started {started}. Command: `{command}`. "
              f"Where the test fold is absent the row is scored on fold 9, the fold the best epoch and the "
              f"calibration were chosen on.")
    meta = {"started": started, "root": str(args.root), "accelerator": args.accelerator,
            "machine": machine, "budget": budget, "command": command}
    rows = []
    for t in args.tasks:
        for m in args.models:
            rows.append(run(m, t, args, Path(args.runs_dir)))
            _write(out, args.name, rows, header, meta)
        ens = ensemble(t, rows, bootstrap=100, seed=args.seed)
        if ens is not None:
            rows.append(ens)
            _write(out, args.name, rows, header, meta)
    print(_table(rows, header))


def _refuse_other_commands(path: Path, command: str) -> None:
    """Stop before a table another command wrote is replaced: the results are records (a
    one-epoch smoke run once replaced the committed fifty-epoch table). The same command
    again resumes and rewrites its own table."""
    if not path.is_file():
        return
    before = json.loads(path.read_text()).get("command")
    if before != command:
        what = f"another command ({before})" if before else "an earlier run (its command was not recorded)"
        print(f"error: {path} holds the results of {what}; write elsewhere (--out DIR; --name for "
              f"the runs table, --no-throughput to skip the throughput one) or delete it to replace "
              f"it", file=sys.stderr)
        raise SystemExit(2)


def _write(out: Path, name: str, rows: list[dict], header: str, meta: dict) -> None:
    # written after every run, so a long sweep that is stopped keeps what finished
    atomic_write_text(out / f"{name}.json", json.dumps({**meta, "runs": rows}, indent=1))
    atomic_write_text(out / f"{name}.md", _table(rows, header) + ENSEMBLE_NOTE * any(
        r["model"].startswith("ensemble") for r in rows))


if __name__ == "__main__":
    main()
