"""Training speed on this CPU: fp32 vs bf16 autocast vs torch.compile, 1 vs 2 threads.

    python scripts/bench_train_speed.py                                   # speed table only
    python scripts/bench_train_speed.py --parity-root data/ptb-xl-full    # + fp32 vs bf16 AUROC

Each row is one encoder with the benchmark head, AdamW, batch 128 of 2.5 s crops at 100 Hz
(the PTB-XL protocol's training step), timed as the median of ``--steps`` steps after warm-up;
every setting is measured in this one process, side by side, so the ratios compare like with
like on a shared machine. ``torch.compile`` rows include neither compile time nor its warm-up
(the compile time is reported apart).

``--recipe-root`` runs whole (short) trainings through the CLIs, ``ecgrisk-pretrain ssl=cpc``
and ``ecgrisk-finetune``, each as one process on one thread, one process on two threads, and
Lightning DDP over two single-threaded CPU processes (64 per process, the same global batch of
128): which layout a 2-core machine should train in. Their samples/s are over the whole fit,
start-up included, of ``--recipe-batches`` batches.

``--parity-root`` fine-tunes the same model twice (fp32 and bf16-mixed, same seed, same data)
and reports fold-9 macro AUROC with bootstrap CIs: the check that the faster setting keeps
validation AUROC within noise.

Writes results/train_speed.{json,md} (``--name`` for another stem).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ecgrisk.files import atomic_write_text
from ecgrisk.hardware import describe
from ecgrisk.models import create_encoder
from ecgrisk.models.classifier import ECGClassifier
from ecgrisk.provenance import command_line

MODES = ("fp32", "bf16", "compile", "compile+bf16")
# stage -> (console script, its overrides)
RECIPE_STAGES = {"pretrain (cpc)": ("ecgrisk-pretrain", ["ssl=cpc"]),
                 "finetune (superdiagnostic)": ("ecgrisk-finetune", ["data.task=superdiagnostic",
                                                                     "trainer.limit_val_batches=2"])}
# layout -> (processes, threads per process)
RECIPE_LAYOUTS = {"1 process x 1 thread": (1, 1), "1 process x 2 threads": (1, 2),
                  "DDP 2 processes x 1 thread": (2, 1)}


def time_steps(model_name: str, mode: str, threads: int, steps: int, batch: int = 128,
               classes: int = 71) -> dict:
    """Median seconds per training step of one setting, and what it cost to compile."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ECGClassifier(create_encoder(model_name), classes, dropout=0.5, head="benchmark")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    fwd = torch.compile(model) if mode.startswith("compile") else model
    x, y = torch.randn(batch, 12, 250), (torch.rand(batch, classes) < 0.1).float()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode.endswith("bf16")):
            logits = fwd(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(2):
        step()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"model": model_name, "mode": mode, "threads": threads, "s_per_step": med,
            "samples_per_s": batch / med, "warmup_s": warm}


def recipe_rates(root: str, model: str, batches: int, out_root: Path) -> list[dict]:
    """Samples/s of each stage's CLI in each layout of ``RECIPE_LAYOUTS``, one after another."""
    rows = []
    for stage, (cli, overrides) in RECIPE_STAGES.items():
        for layout, (procs, threads) in RECIPE_LAYOUTS.items():
            run = out_root / f"recipe-{cli}-{procs}x{threads}"
            shutil.rmtree(run, ignore_errors=True)
            # the console script beside this interpreter: runs in its environment unactivated
            cmd = [str(Path(sys.executable).parent / cli), *overrides, f"model={model}", f"data.root={root}", "trainer.max_epochs=1",
                   f"trainer.limit_train_batches={batches}", "trainer.enable_progress_bar=false",
                   f"output_dir={run}"]
            if procs > 1:
                cmd += ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={procs}",
                        f"data.batch_size={128 // procs}"]
            # a process per run, not train() here: torch fixes its thread count at start-up and
            # DDP launches its own processes
            proc = subprocess.run(cmd, env=os.environ | {"OMP_NUM_THREADS": str(threads)},
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            m = json.loads((run / "metrics.json").read_text())
            rows.append({"stage": stage, "layout": layout, "processes": procs, "threads": threads,
                         "model": model, "batches": batches, "samples_per_s": m["train/samples_per_s"],
                         "wall_s": m["train/wall_s"]})
            print(f"{stage:28s} {layout:28s} {rows[-1]['samples_per_s']:7.1f} samples/s", flush=True)
    for r in rows:
        ref = next(x for x in rows if x["stage"] == r["stage"] and x["processes"] * x["threads"] == 1)
        r["vs_one_thread"] = r["samples_per_s"] / ref["samples_per_s"]
    return rows


def parity(root: str, model: str, task: str, epochs: int, out_root: Path) -> list[dict]:
    """fp32 vs bf16-mixed fine-tuning on the same data and seed; fold-9 macro AUROC and CIs."""
    from ecgrisk.config import compose
    from ecgrisk.finetune.app import train

    rows = []
    for precision in ("32-true", "bf16-mixed"):
        run = out_root / f"{model}-{task}-{precision}"
        m = train(compose("finetune", [
            f"data.root={root}", f"data.task={task}", f"model={model}", f"trainer.max_epochs={epochs}",
            f"trainer.precision={precision}", "early_stopping_patience=null", "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false", f"output_dir={run}", "seed=0"]))
        rows.append({"precision": precision, "model": model, "task": task, "epochs": epochs,
                     "val_macro_auroc": m["val/macro_auroc"], "lower": m.get("val/macro_auroc/lower"),
                     "upper": m.get("val/macro_auroc/upper"), "val_records": m["val/records"],
                     "train_records": m["train/records"], "train_wall_s": m["train/wall_s"],
                     "samples_per_s": m["train/samples_per_s"]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=["xresnet1d50", "xresnet1d101", "inception1d", "vit1d", "s4"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--compile-models", nargs="*", default=["xresnet1d101", "vit1d"],
                   help="encoders measured with torch.compile too (each compile costs minutes)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--recipe-root", default=None,
                   help="a PTB-XL root: also time whole trainings per layout (threads vs DDP processes)")
    p.add_argument("--recipe-model", default="xresnet1d101")
    p.add_argument("--recipe-batches", type=int, default=30)
    p.add_argument("--parity-root", default=None, help="a PTB-XL root: also run the fp32 vs bf16 AUROC check")
    p.add_argument("--parity-model", default="xresnet1d50")
    p.add_argument("--parity-task", default="superdiagnostic")
    p.add_argument("--parity-epochs", type=int, default=10)
    p.add_argument("--runs-dir", default="runs/train_speed")
    p.add_argument("--out", default="results")
    p.add_argument("--name", default="train_speed", help="<out>/<name>.{json,md}")
    args = p.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    machine = describe()
    rows = []
    for model in args.models:
        for threads in args.threads:
            for mode in args.modes:
                if mode.startswith("compile") and (threads != max(args.threads)
                                                   or model not in args.compile_models):
                    continue  # compile is measured at the thread count training uses
                r = time_steps(model, mode, threads, args.steps)
                rows.append(r)
                print(f"{model:14s} {mode:13s} {threads} threads: {r['samples_per_s']:7.1f} samples/s", flush=True)
    base = {(r["model"], r["threads"]): r["samples_per_s"] for r in rows if r["mode"] == "fp32"}
    for r in rows:
        ref = base.get((r["model"], max(args.threads)))
        r["vs_fp32_max_threads"] = r["samples_per_s"] / ref if ref else None
    recipes = recipe_rates(args.recipe_root, args.recipe_model, args.recipe_batches,
                           Path(args.runs_dir)) if args.recipe_root else []
    checks = parity(args.parity_root, args.parity_model, args.parity_task, args.parity_epochs,
                    Path(args.runs_dir)) if args.parity_root else []

    command = command_line(__file__)
    atomic_write_text(Path(args.out) / f"{args.name}.json", json.dumps(
        {"started": started, "machine": machine, "command": command, "speed": rows, "recipes": recipes,
         "parity": checks}, indent=1))
    md = [f"# Training speed on CPU\n\n`{command}` on {machine}, started {started}."]
    if rows:
        md += [f"One training step = forward + backward + AdamW on a batch of 128 crops [12 x 250] "
               f"(benchmark head, 71 outputs); median of {args.steps} steps after 2 warm-up steps, "
               f"all settings in one process. Ratios are against fp32 at {max(args.threads)} threads "
               "for the same encoder.", "",
               "| encoder | setting | threads | samples/s | x fp32 | warm-up s (compile) |",
               "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['model']} | {r['mode']} | {r['threads']} | {r['samples_per_s']:.0f} | "
                  f"{r['vs_fp32_max_threads']:.2f} | {r['warmup_s']:.1f} |")
    if recipes:
        md += ["", f"## Threads or processes: whole trainings through the CLIs\n\n{args.recipe_model} "
               f"on `{args.recipe_root}`, one epoch cut to {args.recipe_batches} batches of 128 "
               "(DDP: 64 per process), precision `auto`; samples/s over the whole fit, start-up "
               "included, one layout after another.", "",
               "| stage | layout | samples/s | x 1 thread | wall s |", "|---|---|---|---|---|"]
        for r in recipes:
            md.append(f"| {r['stage']} | {r['layout']} | {r['samples_per_s']:.1f} | "
                      f"{r['vs_one_thread']:.2f} | {r['wall_s']:.0f} |")
    if checks:
        c0 = checks[0]
        md += ["", f"## Does bf16 keep validation AUROC?\n\n{c0['model']} on PTB-XL `{c0['task']}` "
               f"(`{args.parity_root}`), {c0['epochs']} epochs, seed 0, {c0['train_records']} training "
               f"records, fold 9 ({c0['val_records']} records), macro AUROC with 90% bootstrap CI:", "",
               "| precision | fold-9 macro AUROC (90% CI) | train wall s | samples/s |", "|---|---|---|---|"]
        for c in checks:
            md.append(f"| {c['precision']} | {c['val_macro_auroc']:.4f} ({c['lower']:.4f}-{c['upper']:.4f}) | "
                      f"{c['train_wall_s']:.0f} | {c['samples_per_s']:.0f} |")
    atomic_write_text(Path(args.out) / f"{args.name}.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
