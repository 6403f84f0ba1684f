"""Label efficiency: does self-supervised pretraining help when few labels are available?

Protocol (PTB-XL superdiagnostic, official folds):
  1. pretrain one encoder per objective (masked, contrastive) on every record outside the test
     fold (folds 1-9, labels ignored) with ``ecgrisk.pretrain.train``;
  2. for each training fraction (seeded, stratified, by patient, of training folds 1-8), seed, start
     (random init or each pretrained encoder) and mode (``linear``: frozen encoder + head;
     ``full``: everything trains), fine-tune with ``ecgrisk.finetune.train`` (validation fold 9
     picks the epoch and calibrates) and read the test-fold (10) macro AUROC with its bootstrap
     90% CI;
  3. write ``<out>/label_efficiency.json`` (every run), ``.md`` (table) and ``.png`` (curves).

    python scripts/benchmark_label_efficiency.py                    # CPU-sized defaults
    python scripts/benchmark_label_efficiency.py --quick            # smoke run, ~2 minutes
    python scripts/benchmark_label_efficiency.py --model vit1d --width 64 --pretrain-epochs 50 \
        --finetune-epochs 30 --seeds 0 1 2 --root /data/ptb-xl

On the 500-record shared subset the test fold has 66 records: differences inside the CIs are
not wins. ``--quick`` numbers are a smoke test of the pipeline, never results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

WIDTH_KEY = {"xresnet1d18": "base_channels", "xresnet1d50": "base_channels",
             "xresnet1d101": "base_channels", "inception1d": "nb_filters", "vit1d": "dim",
             "hybrid": "dim"}
FRACTIONS = (0.05, 0.1, 0.25, 1.0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", type=Path, default=None,
                   help="PTB-XL folder (default: the shared subset, else $ECGRISK_DATA/ptb-xl)")
    p.add_argument("--out", type=Path, default=Path("results"), help="where the JSON/MD/PNG go")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="run directories (default runs/label-efficiency/<time>)")
    p.add_argument("--cache-dir", type=Path, default=None, help="signal cache (default: config's)")
    p.add_argument("--model", default="xresnet1d18", choices=sorted(WIDTH_KEY))
    p.add_argument("--width", type=int, default=16,
                   help="base_channels (xresnet), nb_filters (inception1d) or dim (vit1d, hybrid); 0: model default")
    p.add_argument("--objectives", nargs="+", default=["masked", "contrastive"],
                   choices=["masked", "contrastive"])
    p.add_argument("--modes", nargs="+", default=["linear", "full"], choices=["linear", "full"])
    p.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bootstrap", type=int, default=100, help="test bootstrap resamples")
    p.add_argument("--extra-pretrain", nargs="*", default=[], help="more pretrain overrides")
    p.add_argument("--extra-finetune", nargs="*", default=[], help="more finetune overrides")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: width 8, 1 epoch each, fractions 0.1 and 1.0, few batches")
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.pretrain_epochs, args.finetune_epochs = 8, 1, 1
        args.fractions, args.seeds, args.bootstrap = [0.1, 1.0], args.seeds[:1], 20
    if not all(0 < f <= 1 for f in args.fractions):
        raise SystemExit(f"--fractions must lie in (0, 1], got {args.fractions}")
    return args


def default_root() -> Path:
    from ecgrisk.paths import data_root, shared_data

    shared = shared_data()
    if shared is not None and (shared / "ptb-xl" / "ptbxl_database.csv").is_file():
        return shared / "ptb-xl"
    return data_root() / "ptb-xl"


def common_overrides(args, root: Path) -> list[str]:
    o = [f"data.root={root}", f"model={args.model}",
         f"data.batch_size={args.batch_size}", "trainer.enable_progress_bar=false",
         "trainer.log_every_n_steps=5"]
    if args.width:
        o.append(f"model.kwargs.{WIDTH_KEY[args.model]}={args.width}")
        if args.model in ("vit1d", "hybrid"):
            o.append(f"model.kwargs.heads={max(1, args.width // 32)}")
    if args.cache_dir:
        o.append(f"data.cache_dir={args.cache_dir}")
    return o


def pretrain(args, root: Path, runs: Path, objective: str) -> dict:
    from ecgrisk.config import compose
    from ecgrisk.pretrain.app import train

    out = runs / f"pretrain-{objective}"
    o = [*common_overrides(args, root), f"ssl={objective}", f"seed={args.seeds[0]}",
         f"trainer.max_epochs={args.pretrain_epochs}", f"output_dir={out}"]
    if args.quick:
        o.append("trainer.limit_train_batches=3")
    m = train(compose("pretrain", o + list(args.extra_pretrain)))
    return {"objective": objective, "encoder": str(out / "encoder.pt"), "run": str(out),
            "overrides": o, **{k: m[k] for k in ("train/loss_start", "train/loss_end", "train/wall_s",
                                                 "train/records", "train/samples_per_s")}}


def finetune(args, root: Path, out: Path, init: str, encoder: str | None, mode: str,
             fraction: float, seed: int) -> dict:
    from ecgrisk.config import compose
    from ecgrisk.finetune.app import train

    o = [*common_overrides(args, root), "data.task=superdiagnostic", f"finetune.mode={mode}", f"data.train_fraction={fraction}",
         f"seed={seed}", f"trainer.max_epochs={args.finetune_epochs}", f"bootstrap={args.bootstrap}",
         "early_stopping_patience=null", f"output_dir={out}"]
    if encoder:
        o.append(f"model.pretrained={encoder}")
    if args.quick:
        o += ["trainer.limit_train_batches=3"]
    t0 = time.perf_counter()
    m = train(compose("finetune", o + list(args.extra_finetune)))
    keys = ("test/macro_auroc", "test/macro_auroc/lower", "test/macro_auroc/upper", "val/macro_auroc",
            "test/fmax", "train/records", "val/records", "test/records", "train/wall_s")
    return {"init": init, "mode": mode, "fraction": fraction, "seed": seed, "run": str(out),
            "wall_s": time.perf_counter() - t0, **{k: m.get(k) for k in keys}}


def summarise(runs: list[dict]) -> list[dict]:
    """Mean over seeds per (init, mode, fraction); CI = mean of the runs' bootstrap bounds."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["init"], r["mode"], r["fraction"]), []).append(r)
    rows = []
    for (init, mode, frac), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        def mean(key, rs=rs):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None
        rows.append({"init": init, "mode": mode, "fraction": frac, "seeds": len(rs),
                     "train_records": rs[0]["train/records"], "test_macro_auroc": mean("test/macro_auroc"),
                     "ci_lower": mean("test/macro_auroc/lower"), "ci_upper": mean("test/macro_auroc/upper"),
                     "seed_std": float(np.std([r["test/macro_auroc"] for r in rs])) if len(rs) > 1 else None,
                     "val_macro_auroc": mean("val/macro_auroc")})
    return rows


def _fmt(v, nd=3):
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


def write_markdown(path: Path, result: dict) -> None:
    meta, rows = result["meta"], result["summary"]
    lines = []
    if meta["quick"]:
        lines += ["**SMOKE RUN (--quick): 1 epoch, a few batches, width 8. These numbers show that "
                  "the pipeline runs; they are not results.**", ""]
    lines += [f"Label efficiency on PTB-XL superdiagnostic ({meta['root']}): pretraining on folds 1-9 "
              f"({meta['pretrain_records']} records, labels ignored), fine-tuning on a stratified "
              f"fraction of folds 1-8, test fold 10 ({meta['test_records']} records), macro AUROC "
              f"with bootstrap 90% CI ({meta['bootstrap']} resamples; mean over {len(meta['seeds'])} "
              f"seed(s)). Encoder {meta['model']} width {meta['width'] or 'default'}; "
              f"{meta['pretrain_epochs']} pretraining / {meta['finetune_epochs']} fine-tuning epochs; "
              f"{meta['device']}; {meta['wall_s']:.0f} s in all.", "",
              "| mode | init | fraction | train records | test macro AUROC | 90% CI | val macro AUROC |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['init']} | {r['fraction']:g} | {r['train_records']} | "
                     f"{_fmt(r['test_macro_auroc'])} | {_fmt(r['ci_lower'])}-{_fmt(r['ci_upper'])} | "
                     f"{_fmt(r['val_macro_auroc'])} |")
    lines += ["", f"Command: `{meta['command']}`", ""]
    path.write_text("\n".join(lines))


def plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, modes = result["summary"], result["meta"]["modes"]
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 3.6), squeeze=False, sharey=True)
    for ax, mode in zip(axes[0], modes, strict=True):
        for init in result["meta"]["inits"]:
            rs = sorted((r for r in rows if r["mode"] == mode and r["init"] == init),
                        key=lambda r: r["fraction"])
            if not rs:
                continue
            x = np.array([r["fraction"] for r in rs])
            y = np.array([r["test_macro_auroc"] for r in rs], dtype=float)
            lo = np.array([r["ci_lower"] if r["ci_lower"] is not None else np.nan for r in rs], dtype=float)
            hi = np.array([r["ci_upper"] if r["ci_upper"] is not None else np.nan for r in rs], dtype=float)
            ax.errorbar(x, y, yerr=[np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)], marker="o",
                        capsize=3, label=init)
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["fraction"] for r in rows}))
        ax.set_xticklabels([f"{f:g}" for f in sorted({r["fraction"] for r in rows})])
        ax.set_xlabel("fraction of training-fold patients")
        ax.set_title(f"{mode} ({'frozen encoder' if mode == 'linear' else 'fine-tune'})")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("test macro AUROC (90% CI)")
    if result["meta"]["quick"]:
        fig.suptitle("SMOKE RUN (--quick): not results", color="red")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    root = args.root or default_root()
    if not (root / "ptbxl_database.csv").is_file():
        raise SystemExit(f"no PTB-XL at {root} (ptbxl_database.csv missing); pass --root")
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    runs_dir = args.runs_dir or Path("runs") / "label-efficiency" / stamp
    t0 = time.perf_counter()

    encoders: dict[str, str | None] = {"random": None}
    pretrained = []
    for obj in args.objectives:
        print(f"[pretrain] {obj} ...", flush=True)
        info = pretrain(args, root, runs_dir, obj)
        pretrained.append(info)
        encoders[obj] = info["encoder"]
        print(f"[pretrain] {obj}: loss {info['train/loss_start']:.4f} -> {info['train/loss_end']:.4f} "
              f"in {info['train/wall_s']:.0f} s", flush=True)

    runs = []
    for frac in args.fractions:
        for seed in args.seeds:
            for mode in args.modes:
                for init, enc in encoders.items():
                    out = runs_dir / f"ft-{init}-{mode}-f{frac:g}-s{seed}"
                    r = finetune(args, root, out, init, enc, mode, frac, seed)
                    runs.append(r)
                    print(f"[finetune] {init:11s} {mode:6s} fraction {frac:<5g} seed {seed}: "
                          f"test macro AUROC {_fmt(r['test/macro_auroc'])} "
                          f"({_fmt(r['test/macro_auroc/lower'])}-{_fmt(r['test/macro_auroc/upper'])}), "
                          f"{r['train/records']} train records, {r['wall_s']:.0f} s", flush=True)

    import torch

    result = {
        "meta": {"root": str(root), "model": args.model, "width": args.width,
                 "objectives": args.objectives, "inits": list(encoders), "modes": args.modes,
                 "fractions": args.fractions, "seeds": args.seeds,
                 "pretrain_epochs": args.pretrain_epochs, "finetune_epochs": args.finetune_epochs,
                 "batch_size": args.batch_size, "bootstrap": args.bootstrap, "quick": args.quick,
                 "pretrain_records": pretrained[0]["train/records"] if pretrained else None,
                 "test_records": runs[0]["test/records"] if runs else None,
                 "device": f"{'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}"
                           f" ({os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads, "
                           f"{platform.machine()})",
                 "runs_dir": str(runs_dir), "wall_s": time.perf_counter() - t0,
                 "command": " ".join(["python scripts/benchmark_label_efficiency.py",
                                      *(sys.argv[1:] if argv is None else argv)]),
                 "time": stamp},
        "pretrain": pretrained, "runs": runs, "summary": summarise(runs),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "label_efficiency_quick" if args.quick else "label_efficiency"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    write_markdown(args.out / f"{stem}.md", result)
    plot(args.out / f"{stem}.png", result)
    print((args.out / f"{stem}.md").read_text())
    print(f"wrote {args.out / stem}.json/.md/.png; runs under {runs_dir}")
    return result


if __name__ == "__main__":
    main()
