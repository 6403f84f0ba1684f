"""Ship a fine-tuning run's bundle under a name, with a model card written from the run's files.

    python scripts/ship_bundle.py runs/benchmark_ptbxl/xresnet1d101-superdiagnostic \\
        --name ptbxl-superdiagnostic

Copies ``RUN/model.pt`` to ``ecgrisk/shipped/<name>.pt`` (refused above 25 MB; a bundle from a
run older than the split-conformal review flags gets them, and its reliability curves, from the
run's ``predictions/val.csv``) and writes
``ecgrisk/shipped/<name>.md``: data and release, folds, fold-9 metrics with bootstrap CIs,
calibration before and after, per-statement AUROC, the training command and budget, intended use
and limits, PTB-XL's CC BY 4.0 attribution. Every figure on the card is read from the run
(``metrics.json``, ``predictions/val.csv``, ``.hydra/config.yaml``), none is typed in.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ecgrisk.bundle import Bundle
from ecgrisk.calibration import prob_to_logit
from ecgrisk.conformal import fit_conformal, split_coverage
from ecgrisk.files import atomic_path, atomic_write_text, file_sha256
from ecgrisk.metrics import brier, ece, reliability
from ecgrisk.shipped import SHIPPED_DIR

MAX_MB = 25.0

ATTRIBUTION = (
    "Trained on PTB-XL (Wagner P, Strodthoff N, Bousseljot R-D, Kreiseler D, Lunze FI, Samek W, "
    "Schaeffter T. PTB-XL, a large publicly available electrocardiography dataset. Scientific Data "
    "7, 154 (2020); PhysioNet, Goldberger AL et al., Circulation 101(23):e215-e220 (2000)), "
    "released under the Creative Commons Attribution 4.0 International licence (CC BY 4.0). "
    "The weights are a derived work of PTB-XL and are shared under the same attribution.")


def _val_predictions(run: Path, classes: list[str]):
    val = pd.read_csv(run / "predictions" / "val.csv")
    return (val[[f"true/{c}" for c in classes]].to_numpy(),
            val[[f"prob/{c}" for c in classes]].to_numpy())


def review_flags(run: Path, bundle: Bundle, alpha: float) -> dict:
    """What fine-tuning now stores in a bundle, rebuilt from an older run's fold-9 predictions:
    split-conformal thresholds and the reliability curves before and after calibration."""
    y, p_cal = _val_predictions(run, list(bundle.classes))
    # undo sigmoid(z / T + b) to get the model's own probabilities back
    bias = bundle.bias if bundle.bias is not None else 0.0
    raw = (prob_to_logit(p_cal) - bias) * bundle.temperature
    return {"conformal": fit_conformal(y, p_cal, alpha).to_dict(),
            "reliability": {"uncalibrated, validation": reliability(y, 1 / (1 + np.exp(-raw))),
                            "calibrated, validation (fitted here)": reliability(y, p_cal)}}


def _fmt_ci(m: dict, key: str) -> str:
    lo, hi = m.get(f"{key}/lower"), m.get(f"{key}/upper")
    ci = f" (90% CI {lo:.4f}-{hi:.4f})" if lo is not None and hi is not None else ""
    return f"{m[key]:.4f}{ci}"


def card(run: Path, name: str, bundle: Bundle, target: Path) -> str:
    m = json.loads((run / "metrics.json").read_text())
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    classes = list(bundle.classes)
    y, p_cal = _val_predictions(run, classes)
    scored = "fold 10 (test)" if m.get("test/records") else "fold 9 (validation)"
    split = "test" if m.get("test/records") else "val"
    data, model, trainer, ft = cfg["data"], cfg["model"], cfg["trainer"], cfg["finetune"]
    # best first; statements fold 9 cannot score (no positives) last
    per_class = sorted(((c, m.get(f"{split}/auroc/{c}")) for c in classes),
                       key=lambda t: 2.0 if t[1] is None else -t[1])
    size_mb = target.stat().st_size / 2**20
    lines = [
        f"# Model card: `{name}`",
        "",
        f"`Bundle.load(\"{name}\")`, `ecgrisk score DIR --model {name}`. File "
        f"`ecgrisk/shipped/{name}.pt`, {size_mb:.1f} MB, SHA-256 `{file_sha256(target)}`; bundle "
        f"`{bundle.name}` version `{bundle.version}`.",
        "",
        "## What it does",
        f"Reads a 12-lead resting ECG (any length; resampled to {bundle.preprocessing.fs:g} Hz) and gives a "
        f"calibrated probability for each of {len(classes)} PTB-XL `{data['task']}` statements: "
        f"{', '.join(classes) if len(classes) <= 12 else ', '.join(classes[:12]) + ', ...'}. "
        f"Windows of {bundle.window_s:g} s at {bundle.stride_s:g} s stride, aggregated per ECG by "
        f"{bundle.aggregation}; risk bands low < {bundle.risk_bands[0]:g} <= moderate < "
        f"{bundle.risk_bands[1]:g} <= high.",
        "",
        "## Data",
        f"PTB-XL 1.0.1 at 100 Hz (the release of the published benchmark), labels built with the "
        f"benchmark's rules for task `{data['task']}`. Trained on strat_folds 1-8 "
        f"({m['train/records']:,} records); the best validated epoch and the calibration were chosen "
        f"on fold 9 ({m['val/records']:,} records). Fold 10, the benchmark's test fold, was withheld "
        f"from this project and is scored independently.",
        "",
        "## Training",
        f"{model['name']} ({sum(p.numel() for p in bundle.model.parameters()):,} parameters), head "
        f"`{model['head']}`, {ft['mode']} fine-tuning from {'`' + str(model['pretrained']) + '`' if model.get('pretrained') else 'random initialisation'}; "
        f"AdamW one-cycle, lr {ft['lr']:g}, weight decay {ft['weight_decay']:g}, batch {data['batch_size']}, "
        f"random {data['crop_s']:g} s crops, {trainer['max_epochs']} epochs, precision `{trainer['precision']}`, "
        f"best of the validated epochs (every {trainer.get('check_val_every_n_epoch', 1)}) kept: "
        f"`{Path(m['train/best_checkpoint']).name}`. {m['train/wall_s'] / 60:.1f} min of training on "
        f"{'the CPU' if trainer['accelerator'] == 'cpu' else trainer['accelerator']} "
        f"({m['train/samples_per_s']:.0f} samples/s).",
        "",
        f"## Performance on {scored}",
        "Ranking metrics on the model's own probabilities, as the benchmark computes them; "
        f"{m[f'{split}/records']:,} records, 100 bootstrap resamples.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| macro AUROC | {_fmt_ci(m, f'{split}/macro_auroc')} |",
        f"| F-max | {_fmt_ci(m, f'{split}/fmax')} |",
        f"| macro AUPRC | {m[f'{split}/macro_auprc']:.4f} |",
        "",
        "Per-statement AUROC: " + ", ".join(
            f"{c} {a:.3f}" if a is not None else f"{c} n/a" for c, a in per_class) + ".",
        "",
        "## Calibration",
        f"Per-statement temperature and bias fitted on fold 9 (temperatures "
        f"{bundle.temperature.min():.2f}-{bundle.temperature.max():.2f}). On fold 9 itself, "
        f"Brier {m['val/brier']:.4f} -> {brier(y, p_cal):.4f} and ECE {m['val/ece']:.4f} -> "
        f"{ece(y, p_cal):.4f} (uncalibrated -> calibrated). These are in-sample: the calibration was "
        f"fitted on the same records, so expect somewhat worse calibration elsewhere.",
        "",
        "## Which ECGs need review",
        *_review_lines(bundle, y, p_cal),
        "",
        "## Intended use and limits",
        "- Research use: benchmarking, triage research, a base for fine-tuning or refinement from "
        "cardiologist feedback. **Not a medical device; its outputs must not drive clinical decisions on "
        "their own.**",
        "- PTB-XL comes from one German centre (Schiller devices, 1989-1996) with labels from the "
        "original reports: other populations, devices, filters and label conventions will shift both "
        "discrimination and calibration. Re-check calibration on local data before using probabilities.",
        "- Figures are fold-9 (validation) figures on which the epoch and the calibration were "
        "chosen, so they are slightly optimistic; the test fold is scored outside the project.",
        "- Rare statements have few positives on fold 9; their AUROC intervals are wide.",
        "",
        "## Reproduce",
        f"`python scripts/benchmark_ptbxl.py --root <PTB-XL 1.0.1> --models {model['name']} --tasks "
        f"{data['task']} --val-every {trainer.get('check_val_every_n_epoch', 1)} --no-throughput`, then "
        f"`python scripts/ship_bundle.py <run> --name {name}`.",
        "",
        "## Licence and attribution",
        ATTRIBUTION,
    ]
    return "\n".join(lines) + "\n"


def _review_lines(bundle: Bundle, y, p_cal) -> list[str]:
    c = bundle.extra.get("conformal")
    if not c:
        return ["This bundle carries no split-conformal thresholds: `needs_review` follows the "
                "quality flags only."]
    cov = split_coverage(y, p_cal, c["alpha"])
    l0 = np.array(cov["coverage/label0"], dtype=float)
    l1 = np.array(cov["coverage/label1"], dtype=float)
    return [f"`needs_review` is set by a quality flag or by split-conformal prediction sets per "
            f"statement at alpha {c['alpha']:g} (nominal coverage {1 - c['alpha']:.0%} per statement "
            f"and label), calibrated on fold 9. Measured on fold-9 halves the thresholds were not "
            f"fitted on (two-way split, averaged): coverage of absent statements {np.nanmean(l0):.3f} "
            f"(lowest {np.nanmin(l0):.3f}), of present statements {np.nanmean(l1):.3f} (lowest "
            f"{np.nanmin(l1):.3f}); every statement covered in {cov['coverage/all_statements']:.1%} "
            f"of ECGs; {cov['review_rate']:.1%} of ECGs flagged for review by the sets alone."]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a fine-tuning run directory")
    p.add_argument("--name", required=True, help="the shipped name, e.g. ptbxl-superdiagnostic")
    args = p.parse_args()
    src = args.run / "model.pt"
    size = src.stat().st_size / 2**20
    if size > MAX_MB:
        raise SystemExit(f"{src}: {size:.1f} MB is over the {MAX_MB:g} MB a shipped bundle may take")
    bundle = Bundle.load(src)  # refuses a damaged file before it is shipped
    target = SHIPPED_DIR / f"{args.name}.pt"
    if "conformal" not in bundle.extra:
        cfg = yaml.safe_load((args.run / ".hydra" / "config.yaml").read_text())
        bundle.extra.update(review_flags(args.run, bundle, cfg.get("conformal_alpha", 0.1)))
        with atomic_path(target) as tmp:
            bundle.save(tmp)
    else:
        with atomic_path(target) as tmp:
            shutil.copyfile(src, tmp)
    atomic_write_text(SHIPPED_DIR / f"{args.name}.md", card(args.run, args.name, bundle, target))
    print(f"shipped {target} ({size:.1f} MB) and its card {target.with_suffix('.md')}")


if __name__ == "__main__":
    main()
