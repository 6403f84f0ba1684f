"""Label efficiency: does self-supervised pretraining help when few labels are available?

Protocol (PTB-XL, official folds; tasks ``superdiagnostic`` and ``all`` by default):
  1. one encoder per objective (masked, contrastive, cpc): pretrained here on every record outside
     the test fold (folds 1-9, labels ignored) with ``ecgrisk.pretrain.train``, or given with
     ``--encoder NAME=PATH`` (a pretraining run's ``encoder.pt`` or a shipped encoder's name),
     whose architecture must be ``--model``/``--width``'s;
  2. for each task, training fraction (of the folds 1-8 patients: stratified by each patient's
     rarest class, nested, fixed by the seed; ``data.train_fraction``), seed, mode (``linear``:
     frozen encoder + head; ``full``: everything trains; ``discriminative``, pretrained inits
     only: everything trains, the encoder at ``--encoder-lr-mult`` of the rate; ``selftrained``,
     pretrained inits and fractions below 1 only: the discriminative run of the same init,
     fraction and seed is the teacher (``finetune.teacher``) that labels the folds 1-8 records
     the fraction leaves out, and a discriminative run trains on all of them) and init (random
     or each encoder),
     fine-tune with ``ecgrisk.finetune.train``; fold 9 picks the epoch and calibrates;
  3. score each run's macro AUROC with its bootstrap 90% CI on the test fold (10) when the data
     has it, else on fold 9 (the full data here withholds fold 10), which is then the fold the
     epoch was chosen on: every table names its fold;
  4. write ``<out>/<name>.json`` (every run), ``.md`` (a table per task and the two targets) and
     ``.png`` (curves) after every finished run.

Targets, per task, on the means over seeds of the scored fold's macro AUROC:
  * 10%: max over pretrained inits and both modes of AUROC(init, mode, 0.1)
    >= 0.97 x AUROC(random, full, 1.0);
  * 1%: max over pretrained inits and modes of AUROC(init, mode, 0.01) minus max over modes of
    AUROC(random, mode, 0.01) >= 0.05: the best use of the encoder against the best training from
    scratch, since a frozen random encoder is no baseline a user would pick. Each mode's own margin
    is listed beside it.

Each fine-tuning and pretraining run has its own directory under ``--runs-dir``; one that holds a
finished ``metrics.json`` is read back ("reused"), one with ``checkpoints/last.ckpt`` resumes, so
rerunning a killed benchmark with the same ``--runs-dir`` continues where it stopped. A run
directory made with other settings is refused rather than mixed in. Run directories are not kept
with the code; ``--recorded results/<name>.json`` takes a run whose directory is gone from the
result JSON that recorded it (same model, epochs and validation interval; pretrained inits only
with the same encoder file), so a sweep continues on a fresh checkout. An encoder whose file is
gone as well is named in ``--inits`` alone: its recorded runs count, its missing ones are listed,
not trained.

    python scripts/benchmark_label_efficiency.py --quick            # smoke run, ~2 minutes
    python scripts/benchmark_label_efficiency.py                    # CPU-sized, shared subset
    python scripts/benchmark_label_efficiency.py --root data/ptb-xl-full --name label_efficiency_full \\
        --runs-dir runs/label-efficiency-full --model xresnet1d18 --width 0 \\
        --pretrain-epochs 50 --finetune-epochs 30 --eval-every 5     # the same command resumes
    ... --encoder cpc=runs/pretrain/<run>/encoder.pt                 # use, not pretrain, cpc

On the 500-record shared subset the scored fold has ~60 records: differences inside the CIs are
not wins. ``--quick`` numbers are a smoke test of the pipeline, never results.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from ecgrisk.bundle import encoder_meta
from ecgrisk.bundle_files import BundleError, resolve
from ecgrisk.config import compose
from ecgrisk.data.splits import TEST_FOLDS, VAL_FOLDS
from ecgrisk.files import atomic_path, atomic_write_text, file_sha256
from ecgrisk.finetune.app import train as finetune_train
from ecgrisk.hardware import describe
from ecgrisk.models import create_encoder
from ecgrisk.pretrain.app import train as pretrain_train
from ecgrisk.pretrain.objectives import OBJECTIVES
from ecgrisk.provenance import command_line

WIDTH_KEY = {"xresnet1d18": "base_channels", "xresnet1d50": "base_channels",
             "xresnet1d101": "base_channels", "inception1d": "nb_filters", "vit1d": "dim",
             "hybrid": "dim"}
# benchmark mode -> finetune.mode; discriminative keeps a pretrained encoder close to where it
# started (a frozen random encoder is a baseline, a slowed one is not: random init skips it)
MODES = {"linear": "linear", "full": "full", "discriminative": "full", "selftrained": "full"}
SLOWED = ("discriminative", "selftrained")  # the modes that train the encoder at --encoder-lr-mult
FRACTIONS = (0.01, 0.1, 1.0)
QUICK = {"width": 8, "pretrain_epochs": 1, "finetune_epochs": 1, "fractions": [0.1, 1.0],
         "seeds": [0], "bootstrap": 20, "tasks": ["superdiagnostic"]}
STAMP = "benchmark_run.json"  # a run directory's settings, checked before it is reused
# the targets (issue "Self-supervised pretraining that pays")
MID, FULL, LOW, RATIO, MARGIN = 0.1, 1.0, 0.01, 0.97, 0.05
FOLD_KEYS = ("data.train_folds", "data.val_folds", "data.test_folds")
SCORED = {"test": f"fold {TEST_FOLDS[0]} (test)",
          "val": f"fold {VAL_FOLDS[0]} (validation; the epoch and the calibration were chosen on it)"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", type=Path, default=None,
                   help="PTB-XL folder (default: the shared subset, else $ECGRISK_DATA/ptb-xl)")
    p.add_argument("--out", type=Path, default=Path("results"), help="where the JSON/MD/PNG go")
    p.add_argument("--name", default=None, help="<out>/<name>.{json,md,png} (default label_efficiency, "
                                                "label_efficiency_quick with --quick)")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="run directories; rerun with the same one to continue (default "
                        "runs/label-efficiency, runs/label-efficiency-quick with --quick)")
    p.add_argument("--cache-dir", type=Path, default=None, help="signal cache (default: config's)")
    p.add_argument("--tasks", nargs="+", default=["superdiagnostic", "all"])
    p.add_argument("--model", default="xresnet1d18", choices=sorted(WIDTH_KEY))
    p.add_argument("--width", type=int, default=16,
                   help="base_channels (xresnet), nb_filters (inception1d) or dim (vit1d, hybrid); 0: model default")
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES,
                   help="pretrained here unless --encoder gives them")
    p.add_argument("--encoder", action="append", default=[], metavar="NAME=PATH",
                   help="a pretrained encoder to use as init NAME instead of pretraining it here "
                        "(encoder.pt or a shipped encoder's name); repeatable")
    p.add_argument("--inits", nargs="+", default=None,
                   help="fine-tune only these inits ('random' and/or encoder names; default all), "
                        "tabled in this order, e.g. the random-init baseline at 100%% on its own")
    p.add_argument("--modes", nargs="+", default=["linear", "full"], choices=list(MODES),
                   help="linear: frozen encoder; full: everything at one rate; discriminative "
                        "(pretrained inits only): full, the encoder at --encoder-lr-mult of the rate; "
                        "selftrained (pretrained inits, fractions < 1): discriminative on every "
                        "folds 1-8 record, the discriminative run's probabilities standing in for "
                        "the labels the fraction leaves out (list it after discriminative)")
    p.add_argument("--encoder-lr-mult", type=float, default=0.1,
                   help="discriminative and selftrained modes: the encoder's share of the learning rate")
    p.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=15)
    p.add_argument("--eval-every", type=int, default=1,
                   help="validate every N fine-tuning epochs (trainer.check_val_every_n_epoch); the "
                        "best validated epoch is kept, so let N divide --finetune-epochs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for the CIs")
    p.add_argument("--extra-pretrain", nargs="*", default=[], help="more pretrain overrides")
    p.add_argument("--extra-finetune", nargs="*", default=[], help="more finetune overrides")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: summarise the finished runs under --runs-dir (e.g. of sweeps "
                        "split over cores), listing the unfinished ones")
    p.add_argument("--recorded", nargs="*", type=Path, default=[], metavar="JSON",
                   help="earlier result JSONs: a run whose directory is gone (a fresh checkout) is "
                        "taken from them instead of trained again, where the model, fine-tuning "
                        "epochs, validation interval and (pretrained inits) encoder SHA-256 match")
    p.add_argument("--quick", action="store_true",
                   help="smoke run defaults: width 8, 1 epoch each, fractions 0.1 and 1.0, one seed, "
                        "one task, a few batches (explicit options still win)")
    args = p.parse_args(argv)
    if args.quick:  # defaults only: what the command line says explicitly still holds
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    if not all(0 < f <= 1 for f in args.fractions):
        raise SystemExit(f"--fractions must lie in (0, 1], got {args.fractions}")
    if any(o.split("=")[0].lstrip("+~") in FOLD_KEYS for o in args.extra_finetune):
        raise SystemExit(f"--extra-finetune: the benchmark trains on folds 1-8 and scores fold 9 or 10; "
                         f"for other folds sweep ecgrisk-finetune -m with {', '.join(FOLD_KEYS)}")
    if args.eval_every < 1:
        raise SystemExit(f"--eval-every must be >= 1, got {args.eval_every}")
    args.encoders = {}
    for item in args.encoder:
        name, sep, path = item.partition("=")
        if not sep or not path or not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name == "random":
            raise SystemExit(f"--encoder wants NAME=PATH with NAME letters, digits, _.- (not 'random'), got {item!r}")
        args.encoders[name] = path
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
    if args.quick:
        o.append("trainer.limit_train_batches=3")
    return o


# -- encoders: architecture check, inline pretraining ------------------------------------------
def architecture(spec: dict) -> dict:
    """``spec`` with every constructor argument filled in (class defaults where not given), so
    two specs that build the same network compare equal; dropout rates and the pooling are left
    out (they change no weight: an encoder pretrained with one pooling fine-tunes with another).
    Variant arguments (an xresnet's ``layers``) are the same on both sides by name."""
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    cls = type(create_encoder(spec["name"], **kwargs))
    full = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}
    full.update(kwargs)
    plain = json.loads(json.dumps(full, default=list))  # tuples and lists alike
    return {"name": spec["name"], **{k: v for k, v in plain.items()
                                     if "dropout" not in k and k != "pooling"}}


def _describe(spec: dict) -> str:
    return f"{spec['name']}({', '.join(f'{k}={v}' for k, v in spec.items() if k != 'name')})"


def check_encoder(init: str, path: str, model_spec: dict) -> dict:
    """The encoder file's metadata and digest; SystemExit when it is unreadable or its
    architecture is not ``model_spec`` (both named)."""
    try:
        file = resolve(path, "encoder")
        meta = encoder_meta(file)
    except BundleError as e:
        raise SystemExit(f"--encoder {init}={path}: {e}") from e
    spec = dict(meta.get("spec") or {})
    try:
        same = architecture(spec) == architecture(model_spec)
    except (ValueError, TypeError, KeyError):  # a spec this version cannot build
        same = False
    if not same:
        raise SystemExit(f"encoder {init} ({file}) is {_describe(spec)} but --model/--width ask for "
                         f"{_describe(model_spec)}: pass the --model and --width it was pretrained "
                         f"with, or an encoder pretrained for this model")
    return {"init": init, "encoder": str(file), "sha256": file_sha256(file), "spec": spec,
            "objective": meta.get("objective"), "epochs": meta.get("epochs"),
            "train_folds": meta.get("train_folds"), "sources": meta.get("sources"),
            "created": meta.get("created")}


def run_or_reuse(out: Path, config: str, overrides: list[str], identity: dict, train) -> tuple[dict, str]:
    """``train(compose(config, overrides))`` in ``out``, or its earlier result: a finished
    ``metrics.json`` is read ("reused"), a ``last.ckpt`` resumed ("resumed"); a directory left by
    other settings is refused. Returns (metrics, "reused" | "resumed" | "trained")."""
    done, last = out / "metrics.json", out / "checkpoints" / "last.ckpt"
    old = stamp_of(out)
    if old != identity and (done.is_file() or last.is_file()):
        diff = sorted(set(map(str, (old or {}).get("overrides", []))) ^ set(identity["overrides"]))
        raise SystemExit(f"{out} holds a run made with other settings (differing: {diff or 'the encoder'}"
                         f"); use another --runs-dir or remove that directory")
    if done.is_file():
        return json.loads(done.read_text()), "reused"
    atomic_write_text(out / STAMP, json.dumps(identity, indent=1))
    resume = last.is_file()
    o = [*overrides, f"output_dir={out}"] + ([f"resume={last}"] if resume else [])
    return train(compose(config, o)), "resumed" if resume else "trained"


def stamp_of(out: Path) -> dict | None:
    """The settings a run directory was made with, or None before its first run."""
    stamp = out / STAMP
    return json.loads(stamp.read_text()) if stamp.is_file() else None


def identity_of(overrides: list[str], encoder_sha: str | None = None) -> dict:
    """What makes two runs the same run: the overrides, bar paths that may move, and the encoder."""
    skip = ("data.cache_dir=", "trainer.enable_progress_bar=")
    return {"overrides": [o for o in overrides if not o.startswith(skip)], "encoder_sha256": encoder_sha}


def pretrain(args, root: Path, runs: Path, objective: str) -> dict:
    out = runs / f"pretrain-{objective}"
    o = [*common_overrides(args, root), f"ssl={objective}", f"seed={args.seeds[0]}",
         f"trainer.max_epochs={args.pretrain_epochs}", *args.extra_pretrain]
    m, status = run_or_reuse(out, "pretrain", o, identity_of(o), pretrain_train)
    return {"status": status, "run": str(out), "overrides": o,
            **{k: m.get(k) for k in ("train/loss_start", "train/loss_end", "train/wall_s", "train/records")}}


# -- fine-tuning -------------------------------------------------------------------------------
def finetune(args, root: Path, out: Path, task: str, init: str, enc: dict | None, mode: str,
             fraction: float, seed: int) -> dict:
    o = [*common_overrides(args, root), f"data.task={task}", f"finetune.mode={MODES[mode]}",
         f"data.train_fraction={fraction}", f"seed={seed}", f"trainer.max_epochs={args.finetune_epochs}",
         f"trainer.check_val_every_n_epoch={args.eval_every}", f"bootstrap={args.bootstrap}",
         "early_stopping_patience=null",
         *([f"finetune.encoder_lr_mult={args.encoder_lr_mult:g}"] if mode in SLOWED else []),
         *args.extra_finetune]
    ident = identity_of(o, enc["sha256"] if enc else None)
    if enc:
        o.append(f"model.pretrained={enc['encoder']}")
    if mode == "selftrained":
        teacher = teacher_of(out)
        # a finished run stays reusable after its teacher's file is gone: the stamp knows it
        ident["teacher_sha256"] = (file_sha256(teacher) if teacher.is_file()
                                   else (stamp_of(out) or {}).get("teacher_sha256"))
        o.append(f"finetune.teacher={teacher}")
    m, status = run_or_reuse(out, "finetune", o, ident, finetune_train)
    split = "test" if m.get("test/records") else "val"  # fold 9 when the test fold is absent
    fold = (TEST_FOLDS if split == "test" else VAL_FOLDS)[0]
    return {"task": task, "init": init, "mode": mode, "fraction": fraction, "seed": seed,
            "split": split, "fold": fold, "records": m.get(f"{split}/records"),
            "macro_auroc": m.get(f"{split}/macro_auroc"), "lower": m.get(f"{split}/macro_auroc/lower"),
            "upper": m.get(f"{split}/macro_auroc/upper"), "fmax": m.get(f"{split}/fmax"),
            "val_macro_auroc": m.get("val/macro_auroc"), "train_records": m.get("train/records"),
            "epochs": m.get("train/epochs"), "train_wall_s": m.get("train/wall_s"),
            "eval_wall_s": m.get("eval/wall_s"), "precision": m.get("train/precision"),
            "status": status, "run": str(out)}


def teacher_of(out: Path) -> Path:
    """The bundle that labels a selftrained run's left-out records: the discriminative run of
    the same task, init, fraction and seed."""
    return out.with_name(out.name.replace("-selftrained-", "-discriminative-", 1)) / "model.pt"


def recorded_runs(earlier_results: list[tuple[Path, dict]], meta: dict, encoders: dict) -> dict[tuple, dict]:
    """Finished runs of earlier result JSONs (path, contents) made with the same settings, by
    ``(task, init, mode, fraction, seed)``; later files win."""
    found = {}
    for path, earlier in earlier_results:
        same = ("model_spec", "finetune_epochs", "eval_every")
        differ = [f"{k} {earlier['meta'].get(k)} vs {meta[k]}" for k in same
                  if earlier["meta"].get(k) != meta[k]]
        if differ:
            raise SystemExit(f"--recorded {path}: made with other settings ({', '.join(differ)})")
        shas = {e["init"]: e.get("sha256") for e in earlier.get("encoders", [])}
        for r in earlier["runs"]:
            if r["init"] != "random" and (r["init"] not in encoders
                                          or shas.get(r["init"]) != encoders[r["init"]].get("sha256")):
                continue  # another encoder under the same name
            if r["mode"] in SLOWED and earlier["meta"].get("encoder_lr_mult") != meta["encoder_lr_mult"]:
                continue  # the encoder trained at another rate
            key = (r["task"], r["init"], r["mode"], float(r["fraction"]), int(r["seed"]))
            found[key] = {**r, "status": f"recorded in {path.name}"}
    return found


# -- summary and targets -----------------------------------------------------------------------
def summarise(runs: list[dict], inits: list[str], modes: list[str]) -> list[dict]:
    """One row per (mode, init, fraction): mean over seeds, CI = mean of the seeds' bootstrap
    bounds, seed std (ddof 1)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["mode"], r["init"], r["fraction"]), []).append(r)
    rows = []
    for (mode, init, frac), rs in sorted(groups.items(), key=lambda kv: (
            modes.index(kv[0][0]), inits.index(kv[0][1]), kv[0][2])):
        def mean(key, rs=rs):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None
        aurocs = [r["macro_auroc"] for r in rs if r["macro_auroc"] is not None]
        rows.append({"mode": mode, "init": init, "fraction": frac, "seeds": len(rs),
                     "train_records": sorted({r["train_records"] for r in rs}),
                     "macro_auroc": mean("macro_auroc"), "ci_lower": mean("lower"),
                     "ci_upper": mean("upper"),
                     "seed_std": float(np.std(aurocs, ddof=1)) if len(aurocs) > 1 else None})
    return rows


def _pick(rows: list[dict], init: str | None, mode: str | None, fraction: float) -> list[dict]:
    """Rows at ``fraction`` with an AUROC; ``init`` None: every pretrained init; ``mode`` None: both."""
    return [r for r in rows if math.isclose(r["fraction"], fraction) and r["macro_auroc"] is not None
            and (r["init"] != "random" if init is None else r["init"] == init)
            and (mode is None or r["mode"] == mode)]


def targets(rows: list[dict]) -> list[dict]:
    """The two targets (module docstring) from the summary rows of one task."""
    def brief(r):
        return {k: r[k] for k in ("init", "mode", "fraction", "macro_auroc", "ci_lower", "ci_upper", "seeds")}

    out = []
    best, ref = _pick(rows, None, None, MID), _pick(rows, "random", "full", FULL)
    t = {"name": "10% vs random init on 100%",
         "formula": f"max over pretrained inits and modes of AUROC(init, mode, {MID:g}) >= "
                    f"{RATIO} x AUROC(random, full, {FULL:g})"}
    if best and ref:
        b = max(best, key=lambda r: r["macro_auroc"])
        thr = RATIO * ref[0]["macro_auroc"]
        t.update(best=brief(b), reference=brief(ref[0]), threshold=thr,
                 ratio=b["macro_auroc"] / ref[0]["macro_auroc"], passed=bool(b["macro_auroc"] >= thr))
    out.append(t)
    t = {"name": "1%: margin over random init",
         "formula": f"max over pretrained inits and modes of AUROC(init, mode, {LOW:g}) - "
                    f"max over modes of AUROC(random, mode, {LOW:g}) >= {MARGIN}"}
    best, ref = _pick(rows, None, None, LOW), _pick(rows, "random", None, LOW)
    if best:
        b = max(best, key=lambda r: r["macro_auroc"])
        per_mode = {}
        for mode in sorted({r["mode"] for r in best}):
            p, q = _pick(rows, None, mode, LOW), _pick(rows, "random", mode, LOW)
            if q:
                pb = max(p, key=lambda r: r["macro_auroc"])
                per_mode[mode] = {"best": pb["init"], "margin": pb["macro_auroc"] - q[0]["macro_auroc"]}
        t["per_mode"] = per_mode
        if ref:
            base = max(ref, key=lambda x: x["macro_auroc"])
            margin = b["macro_auroc"] - base["macro_auroc"]
            t.update(best=brief(b), reference=brief(base), margin=margin, passed=bool(margin >= MARGIN))
    out.append(t)
    return out


def _fmt(v, nd=3):
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


def _folds(folds) -> str:
    folds = sorted(folds or [])
    if len(folds) > 1 and folds == list(range(folds[0], folds[-1] + 1)):
        return f"{folds[0]}-{folds[-1]}"
    return ", ".join(map(str, folds)) or "unknown"


def _records(r) -> str:
    lo, hi = min(r["train_records"]), max(r["train_records"])
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def target_lines(ts: list[dict], split: str) -> list[str]:
    where = SCORED[split].split(" (")[0]
    lines = [f"Targets ({where} macro AUROC, means over seeds; computed from the rows above):", ""]
    for t in ts:
        head = f"- **{t['name']}** (`{t['formula']}`): "
        if "passed" not in t:
            lines.append(head + "not measured (a fraction, mode or init it needs was not run)")
            continue
        b, r = t["best"], t["reference"]
        verdict = "PASS" if t["passed"] else "FAIL"
        if "ratio" in t:
            lines.append(head + f"best pretrained at {b['fraction']:g}: {b['init']} {b['mode']} "
                         f"{_fmt(b['macro_auroc'])} ({_fmt(b['ci_lower'])}-{_fmt(b['ci_upper'])}) vs "
                         f"{RATIO} x random full at {r['fraction']:g} {_fmt(r['macro_auroc'])} = "
                         f"{_fmt(t['threshold'])}; ratio {_fmt(t['ratio'])}: **{verdict}**")
        else:
            modes = "; ".join(f"{m}: {d['best']} {d['margin']:+.3f}" for m, d in t["per_mode"].items())
            lines.append(head + f"best pretrained at {b['fraction']:g}: {b['init']} {b['mode']} "
                         f"{_fmt(b['macro_auroc'])} ({_fmt(b['ci_lower'])}-{_fmt(b['ci_upper'])}) vs "
                         f"random {r['mode']} {_fmt(r['macro_auroc'])} ({_fmt(r['ci_lower'])}-"
                         f"{_fmt(r['ci_upper'])}): margin {t['margin']:+.3f} (needs >= {MARGIN}; "
                         f"per mode {modes}): **{verdict}**")
    return lines


def by_task(runs: list[dict], tasks: list[str], inits: list[str], modes: list[str]) -> dict:
    """``{task: {split, fold, scored_on, records, summary, targets}}``; a task scored on two
    folds (data changed under a reused --runs-dir) is refused, never mixed."""
    out = {}
    for task in tasks:
        rs = [r for r in runs if r["task"] == task]
        if not rs:
            continue
        splits = {r["split"] for r in rs}
        if len(splits) > 1:
            raise SystemExit(f"task {task}: runs scored on {sorted(splits)}; the data changed under "
                             f"this --runs-dir, use a new one")
        rows = summarise(rs, inits, modes)
        out[task] = {"split": rs[0]["split"], "fold": rs[0]["fold"], "scored_on": SCORED[rs[0]["split"]],
                     "records": rs[0]["records"], "summary": rows, "targets": targets(rows)}
    return out


# -- outputs -----------------------------------------------------------------------------------
def write_markdown(path: Path, result: dict) -> None:
    meta = result["meta"]
    lines = []
    if meta["quick"]:
        lines += ["**SMOKE RUN (--quick): 1 epoch, a few batches, width 8. These numbers show that "
                  "the pipeline runs; they are not results.**", ""]
    lines += [f"Label efficiency on PTB-XL ({meta['root']}): fine-tuning on {', '.join(f'{f:g}' for f in meta['fractions'])} "
              f"of the folds 1-8 labels (patients drawn stratified by their rarest class, nested, fixed "
              f"by the seed), linear probe (frozen encoder + head) and full fine-tuning, pretrained "
              f"encoders vs random init. Encoder {meta['model']} width {meta['width'] or 'default'}; "
              f"{meta['finetune_epochs']} fine-tuning epochs, validation every {meta['eval_every']}, "
              f"best validated epoch kept; bootstrap {meta['bootstrap']} resamples; seeds "
              f"{meta['seeds']}; {meta['device']}.", "", "Encoders:", ""]
    for e in result["encoders"]:
        if e["source"] == "pretrained here":
            where = (f"pretrained here ({e['run']}, objective {e['objective']}, {e['epochs']} epoch(s), "
                     f"{e['train/records']} records of folds {_folds(e['train_folds'])}, labels ignored)")
        else:
            known = [f"{k} {e[key]}" for k, key in (("objective", "objective"), ("epoch(s)", "epochs"),
                                                    ("made", "created")) if e.get(key) is not None]
            if e.get("train_folds"):
                known.append(f"folds {_folds(e['train_folds'])}")
            where = f"{e['source']}: `{e['encoder']}` ({', '.join(known) or 'its file records no pretraining details'})"
        lines.append(f"- {e['init']}: {where}")
    saw = [e["init"] for e in result["encoders"] if VAL_FOLDS[0] in (e.get("train_folds") or [])]
    if saw and any(t["split"] == "val" for t in result["tasks"].values()):
        lines += ["", f"Pretraining of {', '.join(saw)} read fold {VAL_FOLDS[0]}'s signals (never its "
                  f"labels), the fold scored below."]
    lines.append("")
    for task, t in result["tasks"].items():
        lines += [f"## {task}: scored on {t['scored_on']}, {t['records']} records", "",
                  "| mode | init | fraction | train records | macro AUROC | 90% CI | seed std | seeds |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in t["summary"]:
            lines.append(f"| {r['mode']} | {r['init']} | {r['fraction']:g} | {_records(r)} | "
                         f"{_fmt(r['macro_auroc'])} | {_fmt(r['ci_lower'])}-{_fmt(r['ci_upper'])} | "
                         f"{_fmt(r['seed_std'])} | {r['seeds']} |")
        lines += ["", "Macro AUROC: mean over the seeds. 90% CI: the mean of the seeds' own bootstrap "
                  "5% and 95% bounds (resampling the scored records, not the seeds). Seed std: standard "
                  "deviation of the seeds' macro AUROC (ddof 1)."
                  + (" Selftrained rows count the labelled records; their teacher (the discriminative "
                     "run of the same seed) labelled the rest of folds 1-8, which they train on too, "
                     "as the pretraining read them: the unlabelled ECGs used a second way."
                     if any(r["mode"] == "selftrained" for r in t["summary"]) else ""),
                  "", *target_lines(t["targets"], t["split"]), ""]
    lines += [f"Command: `{meta['command']}`", "",
              f"Wall time: {meta['wall_s']:.0f} s this invocation ({meta['reused']} of {meta['runs']} "
              f"fine-tuning runs reused from earlier ones); fine-tuning fit + evaluation summed over "
              f"all runs {meta['finetune_s']:.0f} s, inline pretraining {meta['pretrain_s']:.0f} s.", ""]
    runs = result["runs"]
    recorded = Counter(r["status"] for r in runs if r["status"].startswith("recorded"))
    if recorded:
        lines += ["Taken from earlier results (`--recorded`, their run directories gone): "
                  + ", ".join(f"{n} runs {st}" for st, n in recorded.items()) + ".", ""]
    precisions = Counter(r.get("precision") or "not recorded" for r in runs)
    if len(precisions) > 1:
        lines += ["Training precision: " + ", ".join(f"{n} runs {pr}" for pr, n in precisions.items())
                  + " (chosen per machine, `trainer.precision=auto`).", ""]
    if meta.get("missing"):
        lines += [f"Not finished, left out ({len(meta['missing'])} of {meta['runs'] + len(meta['missing'])} "
                  f"runs; `--no-train`): " + ", ".join(f"`{Path(m).parent.name}/{Path(m).name}`"
                                                        for m in meta["missing"]), ""]
    atomic_write_text(path, "\n".join(lines))


def plot(path: Path, result: dict) -> None:
    import matplotlib  # here, not at the top: the Agg backend must be chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, modes = result["tasks"], result["meta"]["modes"]
    fig, axes = plt.subplots(max(1, len(tasks)), len(modes), figsize=(5 * len(modes), 3.6 * max(1, len(tasks))),
                             squeeze=False, sharey="row")
    for row, (task, t) in zip(axes, tasks.items(), strict=False):
        ref = _pick(t["summary"], "random", "full", FULL)
        for ax, mode in zip(row, modes, strict=True):
            for i, init in enumerate(result["meta"]["inits"]):  # i: one colour per init in every panel
                rs = [r for r in t["summary"] if r["mode"] == mode and r["init"] == init
                      and r["macro_auroc"] is not None]
                if not rs:
                    continue
                x = np.array([r["fraction"] for r in rs])
                y = np.array([r["macro_auroc"] for r in rs], dtype=float)
                lo = np.array([np.nan if r["ci_lower"] is None else r["ci_lower"] for r in rs], dtype=float)
                hi = np.array([np.nan if r["ci_upper"] is None else r["ci_upper"] for r in rs], dtype=float)
                ax.errorbar(x, y, yerr=[np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)], marker="o",
                            capsize=3, label=init, color=f"C{i}", ls="--" if init == "random" else "-")
            if ref:
                ax.axhline(RATIO * ref[0]["macro_auroc"], color="grey", lw=0.8, ls=":",
                           label=f"{RATIO} x random full @ {FULL:g}")
            fracs = sorted({r["fraction"] for r in t["summary"]})
            ax.set_xscale("log")
            ax.set_xticks(fracs)
            ax.set_xticklabels([f"{f:g}" for f in fracs])
            ax.set_xlabel("fraction of the folds 1-8 patients")
            what = {"linear": "frozen encoder", "full": "fine-tune",
                    "discriminative": f"fine-tune, encoder lr x{result['meta']['encoder_lr_mult']:g}",
                    "selftrained": "discriminative, + teacher-labelled records"}
            ax.set_title(f"{task}, {mode} ({what[mode]})")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        row[0].set_ylabel(f"{SCORED[t['split']].split(' (')[0]} macro AUROC (90% CI)")
    if result["meta"]["quick"]:
        fig.suptitle("SMOKE RUN (--quick): not results", color="red")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_outputs(args, result: dict, stem: str) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{stem}.json", json.dumps(result, indent=1, default=str))
    write_markdown(args.out / f"{stem}.md", result)
    plot(args.out / f"{stem}.png", result)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    root = (args.root or default_root()).resolve()
    if not (root / "ptbxl_database.csv").is_file():
        raise SystemExit(f"no PTB-XL at {root} (ptbxl_database.csv missing); pass --root")
    suffix = "_quick" if args.quick else ""
    runs_dir = args.runs_dir or Path("runs") / f"label-efficiency{suffix.replace('_', '-')}"
    stem = args.name or f"label_efficiency{suffix}"
    t0 = time.perf_counter()

    # every given encoder is checked before anything trains
    model_cfg = compose("finetune", [*common_overrides(args, root), *args.extra_finetune]).model
    model_spec = {"name": model_cfg.name, **OmegaConf.to_container(model_cfg.kwargs, resolve=True)}
    encoders = {name: {**check_encoder(name, path, model_spec), "source": "given"}
                for name, path in args.encoders.items()}
    for obj in args.objectives:
        if obj in encoders:
            continue
        if args.no_train and not (runs_dir / f"pretrain-{obj}" / "metrics.json").is_file():
            raise SystemExit(f"--no-train: no finished {obj} pretraining under {runs_dir}; pass --encoder {obj}=...")
        print(f"[pretrain] {obj} ...", flush=True)
        info = pretrain(args, root, runs_dir, obj)
        enc = check_encoder(obj, str(runs_dir / f"pretrain-{obj}" / "encoder.pt"), model_spec)
        encoders[obj] = {**enc, **info, "source": "pretrained here"}
        print(f"[pretrain] {obj} ({info['status']}): loss {_fmt(info['train/loss_start'], 4)} -> "
              f"{_fmt(info['train/loss_end'], 4)} in {_fmt(info['train/wall_s'], 0)} s", flush=True)
    # an encoder that --inits asks for and a --recorded JSON used, but no file is given for (it went
    # with the machine that made it): its recorded runs still count; nothing more trains with it
    # later files win, as for the runs (recorded_runs)
    earlier_results = [(path, json.loads(path.read_text())) for path in args.recorded]
    recorded_encoders = {e["init"]: {**e, "source": f"recorded in {path.name}"}
                         for path, earlier in earlier_results for e in earlier.get("encoders", [])}
    for init, e in recorded_encoders.items():
        if init in (args.inits or []) and init not in encoders:
            encoders[init] = e
    inits = ["random", *[o for o in args.objectives if o in encoders],
             *[n for n in encoders if n not in args.objectives]]
    if args.inits:
        unknown = sorted(set(args.inits) - set(inits))
        if unknown:
            raise SystemExit(f"--inits {unknown}: not among {inits}")
        inits = [i for i in dict.fromkeys(args.inits) if i in inits]  # in the order asked for

    device = describe()
    meta = {"root": str(root), "model": args.model, "width": args.width, "model_spec": model_spec,
            "tasks": args.tasks, "objectives": args.objectives, "inits": inits, "modes": args.modes,
            "encoder_lr_mult": args.encoder_lr_mult,
            "fractions": args.fractions, "seeds": args.seeds, "pretrain_epochs": args.pretrain_epochs,
            "finetune_epochs": args.finetune_epochs, "eval_every": args.eval_every,
            "batch_size": args.batch_size, "bootstrap": args.bootstrap, "quick": args.quick,
            "device": device, "runs_dir": str(runs_dir),
            "command": command_line(__file__, argv),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "targets": {"mid": MID, "full": FULL, "low": LOW, "ratio": RATIO, "margin": MARGIN}}
    pretrain_s = sum(e.get("train/wall_s") or 0.0 for e in encoders.values())
    runs: list[dict] = []
    missing: list[str] = []  # --no-train: runs not finished, left out
    recorded = recorded_runs(earlier_results, meta, encoders)

    def collect() -> dict:
        meta.update(wall_s=time.perf_counter() - t0, runs=len(runs),
                    reused=sum(x["status"] not in ("trained", "resumed") for x in runs),
                    pretrain_s=pretrain_s,
                    finetune_s=sum((x["train_wall_s"] or 0) + (x["eval_wall_s"] or 0) for x in runs))
        return {"meta": meta, "encoders": list(encoders.values()), "runs": runs,
                "tasks": by_task(runs, args.tasks, inits, args.modes)}

    for task in args.tasks:
        for frac in args.fractions:
            for seed in args.seeds:
                for mode in args.modes:
                    for init in inits:
                        if (mode in SLOWED and init == "random") or (mode == "selftrained" and frac == 1):
                            continue
                        out = runs_dir / task / f"ft-{init}-{mode}-f{frac:g}-s{seed}"
                        earlier = recorded.get((task, init, mode, float(frac), int(seed)))
                        finished = (out / "metrics.json").is_file()
                        if earlier and not finished:
                            runs.append(earlier)
                            continue
                        no_file = init != "random" and encoders[init]["source"].startswith("recorded")
                        no_teacher = mode == "selftrained" and not teacher_of(out).is_file()
                        if (args.no_train or no_file or no_teacher) and not finished:
                            missing.append(str(out) + (" (encoder file not given)" if no_file else
                                                       " (its teacher has not finished)" if no_teacher else ""))
                            continue
                        r = finetune(args, root, out, task, init, encoders.get(init), mode, frac, seed)
                        runs.append(r)
                        print(f"[finetune] {task} {init:11s} {mode:6s} fraction {frac:<5g} seed {seed}: "
                              f"fold {r['fold']} macro AUROC {_fmt(r['macro_auroc'])} "
                              f"({_fmt(r['lower'])}-{_fmt(r['upper'])}), {r['train_records']} train "
                              f"records ({r['status']})", flush=True)
                        if r["status"] in ("trained", "resumed"):  # a stopped sweep keeps it
                            write_outputs(args, collect(), stem)
    if not runs:
        raise SystemExit(f"no finished fine-tuning run under {runs_dir} for these settings")
    meta["missing"] = missing
    result = collect()
    write_outputs(args, result, stem)
    print((args.out / f"{stem}.md").read_text())
    print(f"wrote {args.out / stem}.json/.md/.png; runs under {runs_dir}")
    return result


if __name__ == "__main__":
    main()
