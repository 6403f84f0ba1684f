"""``ecgrisk-finetune``: fine-tune an encoder on labelled ECGs into a calibrated model bundle.

    ecgrisk-finetune data.root=/data/ptb-xl model=xresnet1d101 data.task=all
    python -m ecgrisk.finetune model=vit1d finetune.mode=linear model.pretrained=RUN/encoder.pt

The run directory receives ``.hydra/``, ``checkpoints/``, ``logs/metrics.csv``, ``curves.png``,
``metrics.json``, ``predictions/test.csv`` and ``model.pt`` (the bundle scoring uses).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from scipy.special import expit

from ecgrisk.bundle import Bundle, encoder_meta, load_encoder_weights
from ecgrisk.bundle_files import resolve
from ecgrisk.calibration import apply_temperature, fit_calibration
from ecgrisk.config import plain_errors, run_app
from ecgrisk.conformal import fit_review, split_review
from ecgrisk.data.datamodule import ECGDataModule, build_datamodule
from ecgrisk.files import atomic_path, file_sha256
from ecgrisk.finetune.module import ClassifierModule
from ecgrisk.groups import record_groups, usable_specs
from ecgrisk.metrics import evaluate, reliability
from ecgrisk.models import create_encoder
from ecgrisk.models.classifier import ECGClassifier
from ecgrisk.plotting import plot_reliability
from ecgrisk.preprocess import Preprocessing, Scaler
from ecgrisk.runs import (
    check_positive,
    make_trainer,
    plot_curves,
    resume_hint,
    resumed_wall_s,
    run_dir,
    settle_logs,
    write_metrics,
)
from ecgrisk.signals import set_resume_hint, stop_on_signals

log = logging.getLogger(__name__)


def build_classifier(model_cfg: DictConfig, num_classes: int) -> ECGClassifier:
    encoder = create_encoder(model_cfg.name, **OmegaConf.to_container(model_cfg.kwargs, resolve=True))
    if model_cfg.get("pretrained"):
        load_encoder_weights(encoder, model_cfg.pretrained)
        log.info("encoder weights from %s", model_cfg.pretrained)
    return ECGClassifier(encoder, num_classes, dropout=model_cfg.dropout, head=model_cfg.get("head", "linear"))


def train(cfg: DictConfig) -> dict:
    """Fit, pick the best epoch on validation, calibrate on validation, test once, write the run."""
    check_positive(cfg, "finetune.lr", whole=("trainer.max_epochs", "data.batch_size"))
    # a pretrained encoder learnt on inputs scaled by its own scaler: keep it, rather than
    # refitting one on what may be a small labelled fraction
    scaler = None
    if cfg.model.get("pretrained"):
        meta = encoder_meta(cfg.model.pretrained)
        _check_encoder_input(cfg, meta)
        scaler = Scaler(**meta["scaler"]) if meta.get("scaler") else None
    out = run_dir(cfg)
    L.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg.data, cfg.seed, scaler=scaler)
    dm.setup()
    classes = dm.classes
    review_by = usable_specs(dm.sources[0], list(cfg.review_by))
    ft = cfg.finetune
    teacher = _label_with_teacher(dm, ft.teacher, cfg.trainer.enable_progress_bar) if ft.get("teacher") else {}
    model = build_classifier(cfg.model, len(classes))
    pos_weight = None
    if ft.pos_weight:
        y = dm.labels("train").astype(np.float64)
        pos_weight = torch.tensor((len(y) - y.sum(0)) / np.maximum(y.sum(0), 1), dtype=torch.float32)
    module = ClassifierModule(model, lr=ft.lr, weight_decay=ft.weight_decay,
                              encoder_lr_mult=ft.encoder_lr_mult, mode=ft.mode,
                              partial_blocks=ft.partial_blocks, pos_weight=pos_weight,
                              aggregation=ft.aggregation, pct_start=ft.pct_start)
    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename="best-{epoch:02d}",
                           monitor="val/macro_auroc", mode="max")
    # last.ckpt after every epoch, so a killed run loses at most one epoch however rarely it
    # validates (trainer.check_val_every_n_epoch). Lightning 2.6 writes save_last only in a step
    # where another checkpoint was saved, so this is a top-1 checkpoint without a monitor: the
    # newest epoch, named last.ckpt
    last = ModelCheckpoint(dirpath=out / "checkpoints", filename="last", save_top_k=1,
                           save_on_train_epoch_end=True, enable_version_counter=False)
    callbacks = [ckpt, last]
    if cfg.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor="val/macro_auroc", mode="max",
                                       patience=cfg.early_stopping_patience))
    trainer = make_trainer(cfg, out, callbacks)

    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.resume)
    fit_s = time.perf_counter() - t0
    resumed_s = resumed_wall_s(trainer)  # read now: validating from a checkpoint resets it
    samples = torch.tensor([float(module.train_samples)], device=module.device)
    per_rank = trainer.strategy.all_gather(samples).reshape(-1).tolist() if trainer.world_size > 1 else [samples.item()]

    best = ckpt.best_model_path or None
    has_test = len(dm.split["test"][0]) > 0
    if not has_test:
        log.warning("the test fold %s is absent from %s: reporting validation (fold %s) figures only",
                    dm.folds["test"], cfg.data.root, dm.folds["val"])
    t1 = time.perf_counter()
    trainer.validate(module, datamodule=dm, ckpt_path=best, verbose=False)
    if has_test:
        trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)
    eval_s = time.perf_counter() - t1
    if not trainer.is_global_zero:
        return {}

    val = module.eval_result["val"]
    temps, bias = (fit_calibration(val["logits"], val["labels"]) if cfg.calibrate
                   else (np.ones(len(classes)), np.zeros(len(classes))))
    # ranking metrics and F-max on the model's own probabilities, as the benchmark reports them
    # (F-max compares labels across a record, so calibration would change it); validation
    # metrics stay uncalibrated because the calibration was fitted there
    metrics = evaluate(val["labels"], expit(val["logits"]), prefix="val/", classes=classes,
                       bootstrap=cfg.bootstrap, seed=cfg.seed)
    metrics.update({"train/records": int(len(dm.split["train"][0]) - len(dm.teacher_labelled)),
                    **teacher,
                    "val/records": int(len(val["labels"])), "test/records": 0,
                    **{f"{k}/folds": [int(f) for f in v] for k, v in dm.folds.items()}})
    val_prob = apply_temperature(val["logits"], temps, bias)
    val_ids = _seen_ids(dm, "val", val)
    _write_predictions(out / "predictions" / "val.csv", val_ids, classes, val["labels"], val_prob)
    # which readings need a human: the band fitted on the whole fold (and within each group of
    # review_by) goes into the bundle; what it does is measured on halves it was not fitted on
    groups = record_groups(dm.sources[0], val_ids, review_by)
    review = fit_review(val["labels"], val_prob, cfg.review_alpha, groups)
    metrics.update({f"val/review/{k}": v for k, v in split_review(
        val["labels"], val_prob, cfg.review_alpha, cfg.seed, groups=groups).items()})
    curves = {"uncalibrated, validation": reliability(val["labels"], expit(val["logits"])),
              "calibrated, validation (fitted here)": reliability(val["labels"], val_prob)}
    if has_test:
        test = module.eval_result["test"]
        metrics.update(evaluate(test["labels"], expit(test["logits"]), prefix="test/", classes=classes,
                                bootstrap=cfg.bootstrap, seed=cfg.seed))
        test_prob = apply_temperature(test["logits"], temps, bias)
        calibrated = evaluate(test["labels"], test_prob, prefix="test/", classes=classes)
        for k in ("brier", "ece", "nll"):  # the probabilities the bundle reports are the calibrated ones
            metrics[f"test/{k}_uncalibrated"] = metrics[f"test/{k}"]
            metrics[f"test/{k}"] = calibrated[f"test/{k}"]
        metrics.update({"test/records": int(len(test["labels"])), "test/windows": test["windows"]})
        _write_predictions(out / "predictions" / "test.csv", _seen_ids(dm, "test", test), classes,
                           test["labels"], test_prob)
        curves.update({"uncalibrated, test": reliability(test["labels"], expit(test["logits"])),
                       "calibrated, test": reliability(test["labels"], test_prob)})
    plot_reliability(curves, path=out / "reliability.png",
                     title=f"{cfg.model.name} {cfg.data.task}: reliability, all statements pooled")
    metrics.update({
        "train/epochs": int(trainer.current_epoch), "train/best_checkpoint": str(best or ""),
        "train/wall_s": resumed_s + fit_s, "train/resumed_wall_s": resumed_s,
        "train/precision": str(trainer.precision),
        "train/samples_per_s": sum(per_rank) / max(fit_s, 1e-9),
        "train/samples_per_rank": per_rank, "eval/wall_s": eval_s,
        "eval/windows_per_s": sum(module.eval_result[s]["windows"] for s in module.eval_result)
                              / max(eval_s, 1e-9),
        "world_size": trainer.world_size, "classes": classes,
    })
    # trainer.test(ckpt_path=best) restored the best epoch's weights into the module
    bundle = Bundle(model=module.model.cpu().eval(), classes=classes, preprocessing=dm.prep,
                    scaler=dm.scaler, temperature=temps, bias=bias, window_s=cfg.data.window_s,
                    stride_s=cfg.data.stride_s, aggregation=ft.aggregation,
                    risk_bands=tuple(cfg.risk_bands), name=f"{cfg.model.name}-{cfg.data.task}",
                    version=time.strftime("%Y%m%d-%H%M%S"), config=OmegaConf.to_yaml(cfg, resolve=True),
                    precision=str(trainer.precision),
                    extra={"review": review.to_dict(), "reliability": curves,
                           # refinement asks only about ECGs the model never trained on
                           "train_records": dm.record_ids("train"),
                           # of those, the ones it never saw labels of: a self-trained bundle
                           # can teach the next round
                           "teacher_records": [dm.caches[0].record_ids[i] for i in dm.teacher_labelled]})
    bundle.save(out / "model.pt")
    write_metrics(out / "metrics.json", metrics)
    settle_logs(out / "logs")
    plot_curves(out)
    _print_table(metrics, classes, out)
    return metrics


def _check_encoder_input(cfg: DictConfig, meta: dict) -> None:
    """Refuse an encoder pretrained on other input (rate, band-pass, notch) than this run feeds
    it: it would be fine-tuned, without a word, on signals it never learnt (found in review)."""
    if meta.get("preprocessing") is None:
        return
    theirs = Preprocessing.from_dict(meta["preprocessing"]).to_dict()
    ours = Preprocessing.from_dict(OmegaConf.to_container(cfg.data.preprocessing, resolve=True)).to_dict()
    if theirs != ours:
        raise ValueError(f"model.pretrained={cfg.model.pretrained} was pretrained on input "
                         f"{theirs}, but data.preprocessing is {ours}: set data.preprocessing "
                         "to the encoder's")


def _label_with_teacher(dm: ECGDataModule, ref: str, progress: bool) -> dict:
    """Self-training (:mod:`ecgrisk.finetune.teacher`): the bundle ``ref`` labels the training
    records ``data.train_fraction`` leaves out, and the run trains on them too."""
    from ecgrisk.finetune.teacher import teacher_targets

    left = dm.left_out()
    if not len(left):
        raise ValueError(f"finetune.teacher={ref} labels the training-fold records that "
                         f"data.train_fraction leaves out, and this run leaves out none")
    path = resolve(ref)
    dm.add_teacher_targets(left, teacher_targets(Bundle.load(path), dm, left, str(path), progress))
    log.info("teacher %s labelled %d training records", path, len(left))
    return {"train/teacher": str(path), "train/teacher_sha256": file_sha256(path),
            "train/teacher_records": int(len(left))}


def _seen_ids(dm: ECGDataModule, split: str, result: dict) -> list[str]:
    return [r for r, seen in zip(dm.record_ids(split), result["seen"], strict=True) if seen]


def _write_predictions(path: Path, ids, classes, labels, probs) -> None:
    df = pd.DataFrame({"record": ids})
    for j, c in enumerate(classes):
        df[f"true/{c}"] = labels[:, j]
    for j, c in enumerate(classes):
        df[f"prob/{c}"] = probs[:, j]
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _print_table(m: dict, classes: list[str], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    split = "test" if m["test/records"] else "val"
    title = (f"test fold: {m['test/records']} records" if split == "test" else
             f"validation fold: {m['val/records']} records (the test fold is absent; calibration "
             f"was fitted on this fold, so Brier/ECE here are uncalibrated)")
    t = Table(title=title)
    for col in ("metric", "value", "90% CI"):
        t.add_column(col)
    ci = (f"{m[f'{split}/macro_auroc/lower']:.3f}-{m[f'{split}/macro_auroc/upper']:.3f}"
          if f"{split}/macro_auroc/lower" in m else "")
    t.add_row("macro AUROC", f"{m[f'{split}/macro_auroc']:.3f}", ci)
    for k in ("macro_auprc", "fmax", "brier", "ece"):
        t.add_row(k, f"{m[f'{split}/{k}']:.3f}", "")
    for c in classes:
        v = m.get(f"{split}/auroc/{c}")
        t.add_row(f"AUROC {c}", "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}", "")
    Console().print(t)
    Console().print(f"run directory: {out}")


@hydra.main(version_base="1.3", config_path=None, config_name="finetune")
def _hydra_main(cfg: DictConfig) -> float:
    set_resume_hint(resume_hint(cfg, "ecgrisk-finetune"))
    with plain_errors("ecgrisk-finetune"):
        metrics = train(cfg)
    return float(metrics.get("val/macro_auroc", float("nan")))


def main() -> None:
    """Console entry point (``ecgrisk-finetune``); SIGINT/SIGTERM keep the last finished epoch's
    checkpoint and exit with 130/143 naming the command that resumes from it."""
    with stop_on_signals(command="ecgrisk-finetune"):
        run_app(_hydra_main, "finetune", "ecgrisk-finetune")


if __name__ == "__main__":
    main()
