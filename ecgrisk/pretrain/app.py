"""``ecgrisk-pretrain``: self-supervised pretraining of an encoder on unlabeled ECGs.

    ecgrisk-pretrain data.root=/data/ptb-xl model=vit1d ssl=masked ssl.masking=time
    python -m ecgrisk.pretrain model=xresnet1d50 ssl=contrastive probe.every_n_epochs=5
    ecgrisk-pretrain 'data.sources=[{source: ptbxl, root: /d/ptb-xl}, {source: challenge, root: /d/cinc}]'
    ecgrisk-pretrain ssl=cpc 'data.sources=[{source: ptbxl, root: /d/ptb-xl}, {source: folder, root: /d/holter, weight: 3}]'

The run directory receives ``.hydra/``, ``checkpoints/``, ``logs/metrics.csv``, ``curves.png``
(losses, and the probe AUROC when enabled), ``metrics.json`` and ``encoder.pt``, which
``ecgrisk-finetune model=<same encoder> model.pretrained=RUN/encoder.pt`` loads.
"""

from __future__ import annotations

import copy
import logging
import re
import time

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from ecgrisk.bundle import save_encoder
from ecgrisk.config import plain_errors, run_app
from ecgrisk.data.base import RecordSet
from ecgrisk.data.datamodule import ECGDataModule
from ecgrisk.data.sources import load_source
from ecgrisk.models import create_encoder
from ecgrisk.preprocess import Preprocessing
from ecgrisk.pretrain.module import PretrainModule
from ecgrisk.pretrain.objectives import build_objective
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

# accuracy (contrastive, cpc) and target_std (jepa: near 0 when its targets collapse) where logged
CURVE_KEYS = ("train/loss_epoch", "val/loss", "probe/val_macro_auroc", "train/accuracy",
              "train/target_std")
# data-node keys that describe the pretraining run, not one source
_RUN_KEYS = ("sources", "train_folds", "val_folds", "test_folds")


def unlabeled(records: RecordSet) -> RecordSet:
    """The same records and folds without labels (pooled sources must agree on label shape)."""
    return RecordSet(name=records.name, record_ids=list(records.record_ids),
                     paths=list(records.paths), folds=records.folds, missing=list(records.missing))


def _source_entries(data: DictConfig) -> tuple[dict, list[dict]]:
    """The fields every source shares, and the ``data.sources`` entries (``[{}]``: data alone)."""
    base = OmegaConf.to_container(data, resolve=True)
    entries = base.get("sources") or [{}]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"data.sources must be a list of data nodes (mappings), got {entries!r}")
    return {k: v for k, v in base.items() if k not in _RUN_KEYS}, entries


def build_sources(data: DictConfig) -> list[RecordSet]:
    """Unlabeled RecordSets of ``data`` (one) or of each ``data.sources`` entry over it (pooled),
    a Challenge source without the PTB-XL records it holds (:func:`without_ptbxl_records`)."""
    common, entries = _source_entries(data)
    sets = []
    for entry in entries:
        spec = {**common, **{k: v for k, v in entry.items() if k != "weight"}}
        records = unlabeled(load_source(**spec))
        sets.append(without_ptbxl_records(records) if spec.get("source") == "challenge" else records)
    return sets


_PTBXL_IN_CHALLENGE = re.compile(r"(^|/)HR\d{5}$")


def without_ptbxl_records(records: RecordSet) -> RecordSet:
    """The Challenge 2020/21 sets hold all of PTB-XL as ``HR<ecg_id>`` records, under folds of
    their own: read so, PTB-XL's test fold (10) reached pretraining (two records of the shared
    sample, HR06000 and HR06004, found in review). They are left out, with a warning."""
    keep = [i for i, rid in enumerate(records.record_ids) if not _PTBXL_IN_CHALLENGE.search(rid)]
    if len(keep) == len(records.record_ids):
        return records
    log.warning("%s: left out %d PTB-XL records the Challenge set holds as HR<ecg_id> (their PTB-XL "
                "folds, the test fold among them, are unknown here)", records.name,
                len(records.record_ids) - len(keep))
    return RecordSet(name=records.name, record_ids=[records.record_ids[i] for i in keep],
                     paths=[records.paths[i] for i in keep],
                     folds=None if records.folds is None else records.folds[keep],
                     missing=list(records.missing))


def source_weights(data: DictConfig) -> list[float]:
    """Each source's ``weight`` (default 1): how often each of its records is drawn, relative to
    a weight-1 source's (see `ECGDataModule`)."""
    weights = []
    for i, entry in enumerate(_source_entries(data)[1]):
        w = entry.get("weight", 1.0)
        if not isinstance(w, (int, float)) or not 0 < w < float("inf"):
            raise ValueError(f"data.sources[{i}].weight must be a number > 0, got {w!r}")
        weights.append(float(w))
    return weights


def _preprocessing(data: DictConfig) -> Preprocessing:
    return Preprocessing.from_dict(OmegaConf.to_container(data.preprocessing, resolve=True))


def pretraining_datamodule(cfg: DictConfig, progress: bool = True) -> ECGDataModule:
    """Unlabeled crops of ``ssl.segment_s`` (else ``data.crop_s``) seconds from every source."""
    data = cfg.data
    segment = cfg.ssl.get("segment_s") or data.crop_s
    return ECGDataModule(
        build_sources(data), cache_dir=data.cache_dir, preprocessing=_preprocessing(data),
        batch_size=data.batch_size, crop_s=float(segment), window_s=float(segment),
        stride_s=data.stride_s, num_workers=data.num_workers, seed=cfg.seed,
        train_folds=tuple(data.train_folds), val_folds=tuple(data.val_folds or ()),
        test_folds=tuple(data.test_folds), cache_workers=data.cache_workers, progress=progress,
        source_weights=source_weights(data))


def build_probe(cfg: DictConfig, scaler, progress: bool = True):
    """The `LinearProbe` callback, or None when ``probe.every_n_epochs`` is 0."""
    if not cfg.probe.every_n_epochs:
        return None
    from ecgrisk.data.splits import TEST_FOLDS, TRAIN_FOLDS, VAL_FOLDS
    from ecgrisk.pretrain.probe import LinearProbe

    if cfg.data.get("sources") and cfg.probe.get("data") is None:
        raise ValueError("probe.data is needed when data.sources pools several sources: "
                         "set probe.data to one labelled data node (e.g. {source: ptbxl, root: ...})")
    node = cfg.data
    if cfg.probe.get("data") is not None:
        node = OmegaConf.merge(cfg.data, cfg.probe.data)  # fields not given come from data
    spec = OmegaConf.to_container(node, resolve=True)
    if cfg.probe.get("task"):
        spec["task"] = cfg.probe.task
    records = load_source(**{k: v for k, v in spec.items() if k not in _RUN_KEYS})
    if records.labels is None or records.folds is None:
        raise ValueError(f"probe data {spec.get('source')!r} at {spec.get('root')} needs labels and "
                         f"folds (PTB-XL layout); set probe.data or probe.every_n_epochs=0")
    # the encoder sees inputs scaled as in pretraining, so the probe uses that scaler too
    dm = ECGDataModule(records, cache_dir=spec["cache_dir"], preprocessing=_preprocessing(node),
                       batch_size=spec["batch_size"], crop_s=spec["crop_s"],
                       window_s=spec["window_s"], stride_s=spec["stride_s"],
                       train_folds=TRAIN_FOLDS, val_folds=VAL_FOLDS, test_folds=TEST_FOLDS,
                       cache_workers=spec["cache_workers"], scaler=scaler, progress=progress)
    return LinearProbe(dm, every_n_epochs=int(cfg.probe.every_n_epochs), C=float(cfg.probe.C),
                       max_iter=int(cfg.probe.max_iter))


def build_module(cfg: DictConfig) -> PretrainModule:
    """Encoder (``cfg.model``) wrapped in the ``cfg.ssl`` objective, in the training module."""
    encoder = create_encoder(cfg.model.name, **OmegaConf.to_container(cfg.model.kwargs, resolve=True))
    objective = build_objective(OmegaConf.to_container(cfg.ssl, resolve=True), encoder,
                                fs=float(cfg.data.preprocessing.fs))
    return PretrainModule(objective, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                          warmup_pct=cfg.optim.warmup_pct, seed=cfg.seed)


def train(cfg: DictConfig) -> dict:
    """Pretrain, write ``encoder.pt``, ``metrics.json`` and the loss curves; return the metrics."""
    check_positive(cfg, "optim.lr", whole=("trainer.max_epochs", "data.batch_size"))
    out = run_dir(cfg)
    L.seed_everything(cfg.seed, workers=True)
    progress = bool(cfg.trainer.get("enable_progress_bar", True))
    dm = pretraining_datamodule(cfg, progress)
    dm.setup()
    n_val = sum(len(i) for i in dm.split["val"])
    module = build_module(cfg)

    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename="epoch{epoch:03d}",
                           auto_insert_metric_name=False, save_last=True)
    callbacks = [ckpt]
    probe = build_probe(cfg, dm.scaler, progress)
    if probe is not None:
        callbacks.append(probe)
    trainer_cfg = copy.deepcopy(cfg)
    if n_val == 0:
        # no validation folds: skip the (empty) validation loop instead of logging nothing
        OmegaConf.update(trainer_cfg, "trainer.limit_val_batches", 0)
    trainer = make_trainer(trainer_cfg, out, callbacks)

    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.resume)
    fit_s = time.perf_counter() - t0
    resumed_s = resumed_wall_s(trainer)  # read now: validating from a checkpoint resets it
    samples = torch.tensor([float(module.train_samples)], device=module.device)
    per_rank = (trainer.strategy.all_gather(samples).reshape(-1).tolist()
                if trainer.world_size > 1 else [samples.item()])
    if not trainer.is_global_zero:
        return {}

    losses = module.epoch_losses
    metrics = {
        "train/loss_start": losses[0] if losses else float("nan"),
        "train/loss_end": losses[-1] if losses else float("nan"),
        "train/loss_per_epoch": losses,
        "train/epochs": len(losses), "train/wall_s": resumed_s + fit_s,
        "train/resumed_wall_s": resumed_s,
        "train/samples_per_s": sum(per_rank) / max(fit_s, 1e-9),
        "train/samples_per_rank": per_rank,
        "train/records": int(sum(len(i) for i in dm.split["train"])), "val/records": int(n_val),
        "train/sources": [s.name for s in dm.sources], "train/source_weights": dm.source_weights,
        "train/records_per_source": [len(i) for i in dm.split["train"]],
        "world_size": trainer.world_size, "device": trainer.strategy.root_device.type,
        "train/precision": str(trainer.precision),
        "ssl/objective": type(module.objective).__name__, "encoder": dict(module.encoder.spec),
    }
    if "val/loss" in trainer.callback_metrics:
        metrics["val/loss_end"] = float(trainer.callback_metrics["val/loss"])
    if probe is not None and probe.history:
        metrics["probe/val_macro_auroc"] = probe.history[-1][1]
        metrics["probe/history"] = [[e, a] for e, a, _ in probe.history]

    encoder = module.encoder.cpu()
    save_encoder(out / "encoder.pt", encoder, extra={
        "objective": cfg.ssl.name, "objective_class": metrics["ssl/objective"],
        "preprocessing": dm.prep.to_dict(),
        "scaler": {"mean": float(dm.scaler.mean), "std": float(dm.scaler.std)},
        "epochs": len(losses), "sources": metrics["train/sources"],
        "source_weights": dm.source_weights,
        "train_folds": [int(f) for f in dm.folds["train"]],
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    write_metrics(out / "metrics.json", metrics)
    settle_logs(out / "logs")
    plot_curves(out, keys=CURVE_KEYS)
    log.info("pretraining done: loss %.4f -> %.4f over %d epochs; encoder at %s",
             metrics["train/loss_start"], metrics["train/loss_end"], len(losses), out / "encoder.pt")
    return metrics


@hydra.main(version_base="1.3", config_path=None, config_name="pretrain")
def _hydra_main(cfg: DictConfig) -> float:
    set_resume_hint(resume_hint(cfg, "ecgrisk-pretrain"))
    with plain_errors("ecgrisk-pretrain"):
        metrics = train(cfg)
    return float(metrics.get("val/loss_end", metrics.get("train/loss_end", float("nan"))))


def main() -> None:
    """Console entry point (``ecgrisk-pretrain``); SIGINT/SIGTERM keep the last finished epoch's
    checkpoint and exit with 130/143 naming the command that resumes from it."""
    with stop_on_signals(command="ecgrisk-pretrain"):
        run_app(_hydra_main, "pretrain", "ecgrisk-pretrain")


if __name__ == "__main__":
    main()
