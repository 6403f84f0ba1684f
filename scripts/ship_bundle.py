"""Ship a fine-tuning run's bundle, or a pretraining run's encoder, under a name, with a card
written from the run's files.

    python scripts/ship_bundle.py runs/benchmark_ptbxl/xresnet1d101-superdiagnostic \\
        --name ptbxl-superdiagnostic
    python scripts/ship_bundle.py runs/pretrain/cpc-xresnet1d101 --name cpc-xresnet1d101 \\
        --label-efficiency results/label_efficiency_full.json \\
        --source-attribution "folder=MIT-BIH Arrhythmia Database (Moody & Mark 2001), ODC-By 1.0"
    python scripts/ship_bundle.py --refresh-card cpc-xresnet1d101 \
        --label-efficiency results/label_efficiency_superdiagnostic.json results/label_efficiency_all.json
    python scripts/ship_bundle.py --refresh-card ptbxl-superdiagnostic \
        --subgroups results/subgroups/ptbxl-superdiagnostic/evaluation.json
    python scripts/ship_bundle.py --refresh-review ptbxl-superdiagnostic --scores fold9.csv \
        --labels data/ptb-xl-full --task superdiagnostic

A fine-tuning run: copies ``RUN/model.pt`` to ``ecgrisk/shipped/<name>.pt`` (a bundle from a run
older than the review band gets it, and its reliability curves, from the run's
``predictions/val.csv``) and writes ``ecgrisk/shipped/<name>.md``: data and release, folds, fold-9
metrics with bootstrap CIs, calibration before and after, per-statement AUROC, the training
command and budget, intended use and limits, PTB-XL's CC BY 4.0 attribution.

A pretraining run (``RUN/encoder.pt``): copies the encoder and writes its card: objective,
sources and their records, epochs, loss, wall time, and, with ``--label-efficiency``, what it
gave in that benchmark against random initialisation (the rows whose encoder digest is this
file's). ``--refresh-card`` rewrites only that section of a shipped encoder's card, for benchmarks
run after it shipped, or, with ``--subgroups``, a shipped bundle's "Performance by subgroup" from
an ``ecgrisk evaluate`` of its own scores. ``--refresh-review`` refits a shipped bundle's review
band on its own scores of its validation fold (where the band is fitted at training), saves it
under a new version and rewrites the card's review section. Either file is refused above 25 MB. Every figure on a card is read from the run
(``metrics.json``, ``predictions/val.csv``, ``.hydra/``) or the benchmark's JSON, none is typed in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from ecgrisk import conformal
from ecgrisk.bundle import Bundle, encoder_meta
from ecgrisk.calibration import prob_to_logit
from ecgrisk.conformal import fit_review, split_review
from ecgrisk.files import atomic_path, atomic_write_text, file_sha256
from ecgrisk.metrics import (
    bootstrap_ci,
    brier,
    ece,
    fmax,
    macro_auprc,
    macro_auroc,
    per_class_auroc,
    reliability,
)
from ecgrisk.scoring.compare import table_lines
from ecgrisk.scoring.evaluate import EvaluationError, groups_of, join_scores
from ecgrisk.scoring.recalibrate import check_own_scores
from ecgrisk.shipped import SHIPPED_DIR

MAX_MB = 25.0

ATTRIBUTION = (
    "Trained on PTB-XL (Wagner P, Strodthoff N, Bousseljot R-D, Kreiseler D, Lunze FI, Samek W, "
    "Schaeffter T. PTB-XL, a large publicly available electrocardiography dataset. Scientific Data "
    "7, 154 (2020); PhysioNet, Goldberger AL et al., Circulation 101(23):e215-e220 (2000)), "
    "released under the Creative Commons Attribution 4.0 International licence (CC BY 4.0). "
    "The weights are a derived work of PTB-XL and are shared under the same attribution.")

SOURCE_ATTRIBUTION = {
    "ptbxl": ATTRIBUTION.split(" The weights")[0],
    "challenge": ("PhysioNet/Computing in Cardiology Challenge 2021 training data (Reyna MA et al., "
                  "Will Two Do? Varying Dimensions in Electrocardiography: the PhysioNet/Computing in "
                  "Cardiology Challenge 2021), CC BY 4.0."),
}


LIMITS = [
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
]


def _precision(m: dict, trainer: dict) -> str:
    """The precision the run used (``auto`` resolves per machine), else the configured one."""
    return m.get("train/precision") or trainer["precision"]


def _val_predictions(run: Path, classes: list[str]):
    val = pd.read_csv(run / "predictions" / "val.csv")
    return (val[[f"true/{c}" for c in classes]].to_numpy(),
            val[[f"prob/{c}" for c in classes]].to_numpy())


def review_flags(run: Path, bundle: Bundle, alpha: float) -> dict:
    """The bundle's ``extra`` with what fine-tuning now stores, rebuilt from an older run's fold-9
    predictions: the review band and the reliability curves before and after calibration."""
    y, p_cal = _val_predictions(run, list(bundle.classes))
    # undo sigmoid(z / T + b) to get the model's own probabilities back
    bias = bundle.bias if bundle.bias is not None else 0.0
    raw = (prob_to_logit(p_cal) - bias) * bundle.temperature
    curves = {"uncalibrated, validation": reliability(y, 1 / (1 + np.exp(-raw))),
              "calibrated, validation (fitted here)": reliability(y, p_cal)}
    return conformal.with_band({**bundle.extra, "reliability": curves}, fit_review(y, p_cal, alpha))


def _device(name: str) -> str:
    return {"cpu": "the CPU", "cuda": "a GPU"}.get(name, f"accelerator `{name}`")


def _run_command(run: Path, program: str) -> str | None:
    """The command line that made ``run``, from the overrides its ``.hydra/`` recorded."""
    overrides = run / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        return None
    return "`" + shlex.join([program, *yaml.safe_load(overrides.read_text())]) + "`"


def _fmt_ci(m: dict, key: str) -> str:
    lo, hi = m.get(f"{key}/lower"), m.get(f"{key}/upper")
    ci = f" (90% CI {lo:.4f}-{hi:.4f})" if lo is not None and hi is not None else ""
    return f"{m[key]:.4f}{ci}"


def _usage_line(name: str, bundle: Bundle, target: Path) -> str:
    """A bundle card's third line: how to use it, and which file and version it describes."""
    return (f"`Bundle.load(\"{name}\")`, `ecgrisk score DIR --model {name}`. File "
            f"`ecgrisk/shipped/{name}.pt`, {target.stat().st_size / 2**20:.1f} MB, SHA-256 "
            f"`{file_sha256(target)}`; bundle `{bundle.name}` version `{bundle.version}`.")


def _what_it_does(bundle: Bundle, task: str) -> str:
    classes = list(bundle.classes)
    return (f"Reads a 12-lead resting ECG (any length; resampled to {bundle.preprocessing.fs:g} Hz) "
            f"and gives a calibrated probability for each of {len(classes)} PTB-XL `{task}` "
            f"statements: {', '.join(classes) if len(classes) <= 12 else ', '.join(classes[:12]) + ', ...'}. "
            f"Windows of {bundle.window_s:g} s at {bundle.stride_s:g} s stride, aggregated per ECG by "
            f"{bundle.aggregation}; risk bands low < {bundle.risk_bands[0]:g} <= moderate < "
            f"{bundle.risk_bands[1]:g} <= high.")


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
    reproduce = (f"`python scripts/benchmark_ptbxl.py --root <PTB-XL 1.0.1> --models {model['name']} --tasks "
                 f"{data['task']} --val-every {trainer.get('check_val_every_n_epoch', 1)} --no-throughput`")
    lines = [
        f"# Model card: `{name}`",
        "",
        _usage_line(name, bundle, target),
        "",
        "## What it does",
        _what_it_does(bundle, data["task"]),
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
        f"random {data['crop_s']:g} s crops, {trainer['max_epochs']} epochs, precision `{_precision(m, trainer)}`, "
        f"best of the validated epochs (every {trainer.get('check_val_every_n_epoch', 1)}) kept: "
        f"`{Path(m['train/best_checkpoint']).name}`. {m['train/wall_s'] / 60:.1f} min of training on "
        f"{_device(trainer['accelerator'])} "
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
        *LIMITS,
        "",
        "## Reproduce",
        f"{_run_command(run, 'ecgrisk-finetune') or reproduce}, then "
        f"`python scripts/ship_bundle.py <run> --name {name}`.",
        "",
        "## Licence and attribution",
        ATTRIBUTION,
    ]
    return "\n".join(lines) + "\n"


def _review_lines(bundle: Bundle, y, p_cal, groups: dict | None = None) -> list[str]:
    r = bundle.extra.get("review")
    if not r:
        return ["This bundle carries no review band: `needs_review` follows the quality flags only."]
    m = split_review(y, p_cal, r["alpha"], groups=groups)
    fitted = r.get("groups") or []
    held = ("" if "by_group" not in m else
            f" In each of those groups, on the halves: at most {m['worst_group'][1]:.1%} unflagged "
            f"and misread ({m['worst_group'][0]}).")
    return [f"`needs_review` is set by a quality flag, or when a statement's calibrated probability "
            f"lies in the band {r['low']:.3f}-{1 - r['low']:.3f}, too close to call: the band "
            f"conformal risk control fitted on fold 9 ({r['n']:,} ECGs) so that an ECG passes "
            f"unreviewed while its reading (statements at p >= 0.5) misreads a statement with "
            f"probability at most {r['alpha']:g}. Measured on fold-9 halves the band was not "
            f"fitted on ({m['splits']} random halvings, both ways, averaged): {m['review_rate']:.1%} "
            f"of ECGs flagged; {m['unreviewed_misread']:.1%} of ECGs unflagged and misread; of the "
            f"unflagged, {m['misread_among_unreviewed']:.1%} misread (of every ECG, "
            f"{m['misread']:.1%})."
            + (f" The band was fitted so that the bound holds within each group of fold 9 of at "
               f"least {conformal.MIN_GROUP} ECGs too: {', '.join(fitted)}; the widest band of those wins."
               + held if fitted else "")]


def _cell(row: dict) -> str:
    return (f"{row['macro_auroc']:.3f} ({row['ci_lower']:.3f}-{row['ci_upper']:.3f}), "
            f"{row['seeds']} seed(s)")


def _label_efficiency_lines(paths: list[Path], sha: str) -> list[str]:
    """What each label-efficiency benchmark in ``paths`` measured for the encoder whose file
    digest is ``sha``, or the line saying it was not measured yet."""
    if not paths:
        return ["Not yet measured in the label-efficiency benchmark: ship again with `--label-efficiency`."]
    return [line for i, path in enumerate(paths) for line in ([""] if i else []) + _benchmark_lines(path, sha)]


def _benchmark_lines(path: Path, sha: str) -> list[str]:
    """One benchmark's rows for the encoder ``sha``, each beside random initialisation at the
    same task, mode and fraction."""
    le = json.loads(path.read_text())
    inits = [e["init"] for e in le.get("encoders", []) if e.get("sha256") == sha]
    if not inits:
        raise SystemExit(f"{path}: no encoder in it has this file's digest {sha[:12]}...: pass the "
                         f"benchmark run that used this encoder")
    init, meta = inits[0], le["meta"]
    lines = [f"From `{path}` (`{meta['command']}`; {meta['finetune_epochs']} fine-tuning epochs, "
             f"seeds {meta['seeds']}, started {meta['started']}), where this encoder is `{init}`. "
             "Macro AUROC means over seeds, with the mean of the seeds' 90% bootstrap bounds:", "",
             "| task | mode | labels used | this encoder | random init | difference |",
             "|---|---|---|---|---|---|"]
    for task, t in le["tasks"].items():
        rows = {(r["init"], r["mode"], r["fraction"]): r for r in t["summary"]}
        for (i, mode, frac), r in rows.items():
            ref = rows.get(("random", mode, frac))
            if i != init or r["macro_auroc"] is None:
                continue
            diff = f"{r['macro_auroc'] - ref['macro_auroc']:+.3f}" if ref and ref["macro_auroc"] is not None else "-"
            lines.append(f"| {task} (fold {t.get('fold', 9)}) | {mode} | {frac:.0%} | {_cell(r)} | "
                         f"{_cell(ref) if ref and ref['macro_auroc'] is not None else '-'} | {diff} |")
    return lines


def encoder_card(run: Path, name: str, target: Path, m: dict, meta: dict,
                 label_efficiency: list[Path], attribution: dict[str, str]) -> str:
    """The card of the encoder shipped at ``target`` from pretraining run ``run`` (its
    ``metrics.json`` ``m``, the file's verified ``meta``)."""
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    spec, ssl, trainer = meta["spec"], cfg["ssl"], cfg["trainer"]
    params = sum(v.numel() for v in torch.load(target, weights_only=True)["state_dict"].values())
    sha = file_sha256(target)
    sources = m["train/sources"]
    counts = m.get("train/records_per_source") or [None] * len(sources)
    weights = m.get("train/source_weights") or [1.0] * len(sources)
    roots = [node.get("root") for node in (cfg["data"].get("sources") or [cfg["data"]])]
    listed = "; ".join(f"{s} (`{r}`, {f'{n:,} records, ' if n is not None else ''}weight {w:g})"
                       for s, r, n, w in zip(sources, roots, counts, weights, strict=True))
    command = _run_command(run, "ecgrisk-pretrain") or "the run's `.hydra/config.yaml`"
    wall_min = m["train/wall_s"] / 60
    resumed = m.get("train/resumed_wall_s")
    lines = [
        f"# Encoder card: `{name}`",
        "",
        f"`ecgrisk-finetune model={spec['name']} model.pretrained={name}`. File `ecgrisk/shipped/"
        f"{name}.pt`, {target.stat().st_size / 2**20:.1f} MB, SHA-256 `{sha}`.",
        "",
        "## What it is",
        f"A {spec['name']} encoder ({params:,} parameters; "
        f"{', '.join(f'{k}={v}' for k, v in spec.items() if k != 'name')}) pretrained without labels "
        f"by `{meta['objective']}` ({meta.get('objective_class', '')}: "
        f"{', '.join(f'{k} {v}' for k, v in ssl.items() if k != 'name')}). No head: fine-tune it "
        f"(`finetune.mode=full`) or probe it (`finetune.mode=linear`). Input: "
        f"{meta['preprocessing'].get('fs', 100):g} Hz, 12 leads, standardised with the pretraining "
        f"scaler (mean {meta['scaler']['mean']:.4f}, std {meta['scaler']['std']:.4f}).",
        "",
        "## Data",
        f"{m['train/records']:,} unlabeled ECGs: {listed}. Labels were never read. PTB-XL records "
        f"from strat_folds {meta['train_folds']}; fold 10, the benchmark's test fold, was withheld "
        f"from this project. The validation fold 9 is among the pretraining records, so fine-tuning "
        f"figures on fold 9 measure label efficiency, not generalisation to unseen signals.",
        "",
        "## Training",
        f"{m['train/epochs']} epochs, AdamW one-cycle (lr {cfg['optim']['lr']:g}, weight decay "
        f"{cfg['optim']['weight_decay']:g}), batch {cfg['data']['batch_size']}, precision "
        f"`{_precision(m, trainer)}`; loss {m['train/loss_start']:.3f} -> {m['train/loss_end']:.3f}. "
        f"{wall_min:.1f} min of training on {_device(m.get('device') or trainer['accelerator'])}"
        + (f" ({resumed / 60:.1f} min of it before the last resume)" if resumed
           else " in the run's last part (its metrics predate counting the parts before a resume)"
           if resumed is None else "")
        + f", {m['train/samples_per_s']:.1f} samples/s in the last part. Command: {command}.",
        "",
        "## What it gives",
        *_label_efficiency_lines(label_efficiency, sha),
        "",
        "## Intended use and limits",
        "- Research use: a starting point for fine-tuning ECG classifiers with few labels. Not a "
        "medical device, and not a classifier on its own.",
        "- Pretrained almost entirely on PTB-XL (one German centre, Schiller devices, 1989-1996, "
        "10 s resting ECGs at 100 Hz): other devices, filters, lengths and populations are outside "
        "what it has seen.",
        "",
        "## Licence and attribution",
        *[f"- {attribution[s]}" for s in dict.fromkeys(sources)],
        "The weights are a derived work of these data and are shared under the same attributions.",
    ]
    return "\n".join(lines) + "\n"


def ship_encoder(run: Path, name: str, label_efficiency: list[Path],
                 attribution: dict[str, str]) -> Path:
    src = run / "encoder.pt"
    meta = encoder_meta(src)  # refuses a damaged file before it is shipped
    m = json.loads((run / "metrics.json").read_text())
    sources = m["train/sources"]
    attribution = {**SOURCE_ATTRIBUTION, **attribution}
    missing = sorted({s for s in sources if s not in attribution})
    if missing:
        raise SystemExit(f"{run}: say whose data the source(s) {missing} held and under which licence: "
                         + " ".join(f"--source-attribution '{s}=...'" for s in missing))
    target = SHIPPED_DIR / f"{name}.pt"
    with atomic_path(target) as tmp:
        shutil.copyfile(src, tmp)
    atomic_write_text(SHIPPED_DIR / f"{name}.md", encoder_card(run, name, target, m, meta,
                                                                       label_efficiency, attribution))
    return target


def refresh_card(name: str, label_efficiency: list[Path], subgroups: Path | None = None) -> Path:
    """Rewrite one section of a shipped card from results made after it shipped; the rest of
    the card (read from a run that may be gone) stays as written. An encoder's "What it gives"
    comes from label-efficiency benchmarks, a bundle's "Performance by subgroup" from an
    ``ecgrisk evaluate`` of scores that bundle wrote."""
    target, card_path = _shipped(name)
    if subgroups is not None:
        body = _subgroup_lines(subgroups, Bundle.load(target))
        section, before = "Performance by subgroup", "Intended use and limits"
    elif label_efficiency:
        body = _label_efficiency_lines(label_efficiency, file_sha256(target))
        section, before = "What it gives", None
    else:
        raise SystemExit("--refresh-card wants what to read: --label-efficiency JSON ... or --subgroups JSON")
    atomic_write_text(card_path, _with_section(card_path, card_path.read_text(), section, body, before))
    return target


def _shipped(name: str) -> tuple[Path, Path]:
    target, card_path = SHIPPED_DIR / f"{name}.pt", SHIPPED_DIR / f"{name}.md"
    if not (target.is_file() and card_path.is_file()):
        raise SystemExit(f"no shipped file {name!r} with a card in {SHIPPED_DIR}")
    return target, card_path


def _with_section(card_path: Path, text: str, section: str, body: list[str], before: str | None) -> str:
    """The card ``text`` with section ``section`` holding ``body``: rewritten where it stands,
    else placed before section ``before``."""
    marker, body = f"\n## {section}\n", "\n".join(body)
    if marker in text:
        head, _, rest = text.partition(marker)
        _, nxt, tail = rest.partition("\n## ")
        return f"{head}{marker}{body}\n" + (f"\n## {tail}" if nxt else "")
    if before and f"\n## {before}\n" in text:
        head, _, rest = text.partition(f"\n## {before}\n")
        return f"{head}{marker}{body}\n\n## {before}\n{rest}"
    raise SystemExit(f"{card_path}: no '## {section}' section to rewrite")


def _own_validation_scores(bundle: Bundle, path: Path, scores: Path, labels: str, task: str | None):
    """``scores`` of ``bundle``'s validation fold joined to their labels; scores another bundle
    wrote are refused."""
    # a config from before the fold keys was trained with the benchmark's folds, fold 9 validating
    val_folds = yaml.safe_load(bundle.config)["data"].get("val_folds", [9])
    joined = join_scores(scores, labels, task, [f"fold={','.join(map(str, val_folds))}"])
    try:
        check_own_scores(joined, bundle, path)
    except EvaluationError as e:
        raise SystemExit(f"{scores}: {e}") from e
    return joined


def refresh_review(name: str, scores: Path, labels: str, task: str | None,
                   by: list[str] = ()) -> Path:
    """Refit shipped bundle ``name``'s review band on its own scores of its validation fold (the
    fold fine-tuning fits the band on), save it under a new version, and rewrite the card's file
    line and review section. The weights and calibration stay; ``needs_review`` moves. With
    ``by`` (``--by`` specs, as ``ecgrisk evaluate`` takes them) the band's bound holds in each
    of those groups too."""
    target, card_path = _shipped(name)
    bundle = Bundle.load(target)
    joined = _own_validation_scores(bundle, target, scores, labels, task)
    alpha = float(bundle.extra.get("review", {}).get("alpha", 0.1))
    groups = groups_of(joined, list(by))
    extra = conformal.with_band(bundle.extra, fit_review(joined.y, joined.p, alpha, groups))
    base_version = bundle.version.split("+review-")[0]  # a refit replaces the last one's stamp
    new = dataclasses.replace(bundle, version=f"{base_version}+review-{time.strftime('%Y%m%d-%H%M%S')}",
                              extra=extra)
    lines = card_path.read_text().split("\n")  # refused before the bundle is replaced
    usage = [n for n, line in enumerate(lines) if line.startswith("`Bundle.load(")]
    if not usage:
        raise SystemExit(f"{card_path}: no usage line to rewrite")
    with atomic_path(target) as tmp:
        new.save(tmp)
    lines[usage[0]] = _usage_line(name, new, target)
    text = _with_section(card_path, "\n".join(lines), "Which ECGs need review",
                         _review_lines(new, joined.y, joined.p, groups), None)
    atomic_write_text(card_path, text)
    return target


def _subgroup_lines(path: Path, bundle: Bundle) -> list[str]:
    result = json.loads(path.read_text())
    if result.get("models") != [f"{bundle.name} {bundle.version}"]:
        raise SystemExit(f"{path}: evaluates {result.get('models')}, not this bundle "
                         f"({bundle.name} {bundle.version})")
    only = f", only {' and '.join(result['only'])}" if result.get("only") else ""
    lines = [f"From `ecgrisk evaluate` of this bundle's scores against {result['labels']}{only} "
             f"({result['scored_and_labelled']:,} ECGs; `{path}`): macro AUROC with "
             f"{result['bootstrap']}-resample 90% intervals, Brier and ECE of the calibrated "
             f"probabilities. Groups differ in case mix, so their differences are not the model's "
             f"alone; groups under {result['min_group']} ECGs are left out.", "",
             "| by | group | ECGs | macro AUROC (90% CI) | Brier | ECE |", "|---|---|---|---|---|---|"]
    for g in result["groups"]:
        if g["by"] == "all" or g.get("macro_auroc") is None:
            continue
        lo, hi = g.get("macro_auroc/lower"), g.get("macro_auroc/upper")
        ci = f" ({lo:.3f}-{hi:.3f})" if lo is not None else ""
        lines.append(f"| {g['by'].split(':')[0]} | {' '.join(g['group'].split())} | {g['n']:,} | "
                     f"{g['macro_auroc']:.3f}{ci} | {g['brier']:.4f} | {g['ece']:.4f} |")
    return lines


def _member_lines(bundle: Bundle) -> list[str]:
    lines = []
    for m in bundle.extra["ensemble"]:
        member = Bundle.load(m["path"])
        cfg = yaml.safe_load(member.config)
        model, ft, trainer = cfg["model"], cfg["finetune"], cfg["trainer"]
        start = f"`{model['pretrained']}`" if model.get("pretrained") else "random initialisation"
        lines.append(f"- `{m['name']}` version `{m['version']}` (SHA-256 `{m['sha256'][:16]}...`): "
                     f"{model['name']} ({sum(q.numel() for q in member.model.parameters()):,} "
                     f"parameters), head `{model['head']}`, {ft['mode']} fine-tuning from {start}, "
                     f"lr {ft['lr']:g}, {trainer['max_epochs']} epochs, its calibration fitted on "
                     f"fold {', '.join(map(str, cfg['data'].get('val_folds', [9])))}.")
    return lines


def _comparison_lines(path: Path) -> list[str]:
    r = json.loads(path.read_text())
    return [f"Each member alone and the ensemble on the same {r['ecgs']:,} fold-9 ECGs "
            f"(`{path}`; {r['bootstrap']} resamples, the differences paired):", "", *table_lines(r)]


def ensemble_card(name: str, bundle: Bundle, target: Path, joined, task: str,
                  compare: Path | None) -> str:
    """The card of an ensemble bundle (``ecgrisk ensemble``, then ``ecgrisk recalibrate`` on
    fold 9), its figures read from its own fold-9 scores ``joined`` and its recalibration."""
    y, p = joined.y, joined.p
    auroc = bootstrap_ci(macro_auroc, y, p, n=100)
    f_max = bootstrap_ci(fmax, y, p, n=100)
    per_class = sorted(zip(bundle.classes, per_class_auroc(y, p), strict=True),
                       key=lambda t: 2.0 if np.isnan(t[1]) else -t[1])
    r = bundle.extra["recalibration"]
    members = bundle.extra["ensemble"]
    lines = [
        f"# Model card: `{name}`", "", _usage_line(name, bundle, target), "",
        "## What it does", _what_it_does(bundle, task), "",
        "## Members",
        f"An ensemble of {len(members)} fine-tuned models (`ecgrisk ensemble`): each window's "
        f"logits are each member's calibrated logits (its own temperature and bias), averaged; "
        f"then aggregated per ECG by {bundle.aggregation} and calibrated again as one model. "
        f"Scoring runs every member on every window. Every member was trained on "
        f"PTB-XL 1.0.1 strat_folds 1-8 at 100 Hz with the benchmark's label rules; fold 10 was "
        f"withheld from this project and is scored independently.",
        *_member_lines(bundle), "",
        "## Performance on fold 9 (validation)",
        f"{len(joined.keys):,} records, 100 bootstrap resamples; ranking metrics on the bundle's "
        f"calibrated probabilities (a monotone map per statement, so AUROC is the model's own).", "",
        "| metric | value |", "|---|---|",
        f"| macro AUROC | {auroc['point']:.4f} (90% CI {auroc['lower']:.4f}-{auroc['upper']:.4f}) |",
        f"| F-max | {f_max['point']:.4f} (90% CI {f_max['lower']:.4f}-{f_max['upper']:.4f}) |",
        f"| macro AUPRC | {macro_auprc(y, p):.4f} |", "",
        *(_comparison_lines(compare) + [""] if compare else []),
        "Per-statement AUROC: " + ", ".join(
            f"{c} {a:.3f}" if not np.isnan(a) else f"{c} n/a" for c, a in per_class) + ".", "",
        "## Calibration",
        f"The ensemble's per-statement calibration ({r['form']}, chosen on held-out halves of "
        f"fold 9 by `ecgrisk recalibrate`) fitted on fold 9 ({r['ecgs']:,} ECGs) on top of the mean "
        f"of the members' calibrated logits. On fold 9 itself, Brier {r['brier_before']:.4f} -> "
        f"{r['brier_after']:.4f} and ECE {r['ece_before']:.4f} -> {r['ece_after']:.4f} (before -> "
        f"after that refit). In-sample: expect somewhat worse calibration elsewhere. On held-out "
        f"halves ({r['held_out']['splits']} draws) the refit gave Brier "
        f"{r['held_out']['forms'][r['form']]['brier']:.4f} against "
        f"{r['held_out']['brier_bundle']:.4f} for the mean as it stood (lower in "
        f"{r['held_out']['forms'][r['form']]['better_in']} draws).", "",
        "## Which ECGs need review",
        *_review_lines(bundle, y, p, groups_of(joined, list(bundle.extra["review"].get("by", [])))),
        "", *LIMITS, "",
        "## Reproduce",
        f"`ecgrisk ensemble {' '.join(m['path'] for m in members)} --out ensemble.pt`; score fold 9 "
        f"with it; `ecgrisk recalibrate SCORES --labels <PTB-XL 1.0.1> --task {task} --only fold=9 "
        f"--model ensemble.pt "
        + " ".join(f"--by {b}" for b in bundle.extra["review"].get("by", []))
        + f" --out {name}.pt`; `python scripts/ship_bundle.py --ensemble {name}.pt --name {name} "
          f"--scores SCORES --labels <PTB-XL 1.0.1> --task {task}`.", "",
        "## Licence and attribution", ATTRIBUTION,
    ]
    return "\n".join(lines) + "\n"


def ship_ensemble(path: Path, name: str, scores: Path, labels: str, task: str,
                  compare: Path | None) -> Path:
    bundle = Bundle.load(path)
    if "ensemble" not in bundle.extra or "recalibration" not in bundle.extra:
        raise SystemExit(f"{path}: not an ensemble recalibrated on its validation fold (`ecgrisk "
                         f"ensemble`, then `ecgrisk recalibrate`)")
    joined = _own_validation_scores(bundle, path, scores, labels, task)
    target = SHIPPED_DIR / f"{name}.pt"
    with atomic_path(target) as tmp:
        shutil.copyfile(path, tmp)
    atomic_write_text(SHIPPED_DIR / f"{name}.md", ensemble_card(name, bundle, target, joined, task, compare))
    return target


def ship_bundle(run: Path, name: str) -> Path:
    src = run / "model.pt"
    bundle = Bundle.load(src)  # refuses a damaged file before it is shipped
    target = SHIPPED_DIR / f"{name}.pt"
    if "review" not in bundle.extra:
        cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        bundle = dataclasses.replace(bundle, extra=review_flags(run, bundle, cfg.get("review_alpha", 0.1)))
        with atomic_path(target) as tmp:
            bundle.save(tmp)
    else:
        with atomic_path(target) as tmp:
            shutil.copyfile(src, tmp)
    atomic_write_text(SHIPPED_DIR / f"{name}.md", card(run, name, bundle, target))
    return target


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, nargs="?",
                   help="a fine-tuning run (model.pt) or pretraining run (encoder.pt)")
    p.add_argument("--name", help="the shipped name, e.g. ptbxl-superdiagnostic")
    p.add_argument("--label-efficiency", type=Path, nargs="+", default=[],
                   help="an encoder's card: the label-efficiency benchmark JSON(s) that used it")
    p.add_argument("--refresh-card", metavar="NAME",
                   help="only rewrite one section of shipped NAME's card (no run needed): an "
                        "encoder's 'What it gives' from --label-efficiency, a bundle's "
                        "'Performance by subgroup' from --subgroups")
    p.add_argument("--subgroups", type=Path, default=None,
                   help="a bundle's card: the evaluation.json `ecgrisk evaluate` wrote for its scores")
    p.add_argument("--refresh-review", metavar="NAME",
                   help="refit shipped bundle NAME's review band on --scores it wrote for its "
                        "validation fold, with --labels (and --task for a PTB-XL root)")
    p.add_argument("--ensemble", type=Path, metavar="BUNDLE",
                   help="ship an ensemble bundle (`ecgrisk ensemble`, recalibrated on its "
                        "validation fold) as --name, its card from its --scores of that fold")
    p.add_argument("--compare", type=Path, default=None,
                   help="with --ensemble: scripts/compare_scores.py's JSON of its members and it")
    p.add_argument("--scores", type=Path,
                   help="with --refresh-review or --ensemble: the bundle's scores table")
    p.add_argument("--labels", help="with --refresh-review or --ensemble: a labels CSV or a PTB-XL root")
    p.add_argument("--task", default=None, help="with --refresh-review or --ensemble and a PTB-XL root")
    p.add_argument("--by", action="append", default=[], metavar="COLUMN[:EDGES]",
                   help="with --refresh-review: groups the band's bound must hold in too, as "
                        "`ecgrisk evaluate --by` takes them (repeatable)")
    p.add_argument("--source-attribution", action="append", default=[], metavar="SOURCE=TEXT",
                   help="an encoder's card: the citation and licence of a pretraining source "
                        f"(needed for sources other than {', '.join(SOURCE_ATTRIBUTION)}); repeatable")
    args = p.parse_args(argv)
    if args.refresh_review:
        if args.scores is None or args.labels is None:
            p.error("--refresh-review NAME needs --scores and --labels")
        target = refresh_review(args.refresh_review, args.scores, args.labels, args.task, args.by)
        print(f"refitted the review band of {target} and rewrote its card")
        return target
    if args.ensemble:
        if args.name is None or args.scores is None or args.labels is None or args.task is None:
            p.error("--ensemble BUNDLE needs --name, --scores, --labels and --task")
        target = ship_ensemble(args.ensemble, args.name, args.scores, args.labels, args.task,
                               args.compare)
        print(f"shipped {target} and its card {target.with_suffix('.md')}")
        return target
    if args.refresh_card:
        target = refresh_card(args.refresh_card, args.label_efficiency, args.subgroups)
        print(f"rewrote a section of {target.with_suffix('.md')}")
        return target
    if args.run is None or args.name is None:
        p.error("RUN and --name are needed to ship (or --refresh-card NAME)")
    attribution = dict(a.split("=", 1) for a in args.source_attribution if "=" in a)
    if len(attribution) != len(args.source_attribution):
        raise SystemExit("--source-attribution wants SOURCE=TEXT")
    is_encoder = (args.run / "encoder.pt").is_file()
    src = args.run / ("encoder.pt" if is_encoder else "model.pt")
    if not src.is_file():
        raise SystemExit(f"{args.run}: neither model.pt nor encoder.pt: not a finished run")
    size = src.stat().st_size / 2**20
    if size > MAX_MB:
        raise SystemExit(f"{src}: {size:.1f} MB is over the {MAX_MB:g} MB a shipped file may take")
    if is_encoder:
        target = ship_encoder(args.run, args.name, args.label_efficiency, attribution)
    else:
        target = ship_bundle(args.run, args.name)
    print(f"shipped {target} ({size:.1f} MB) and its card {target.with_suffix('.md')}")
    return target


if __name__ == "__main__":
    main()
