"""What every stage's run directory gets: resolved config, loggers, metrics.json, curves PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from ecgrisk.files import atomic_write_text


def run_dir(cfg: DictConfig) -> Path:
    """``cfg.output_dir`` when set (tests, scripts), else Hydra's run directory."""
    if cfg.get("output_dir"):
        d = Path(cfg.output_dir)
    else:
        from hydra.core.hydra_config import HydraConfig

        d = Path(HydraConfig.get().runtime.output_dir)
    d.mkdir(parents=True, exist_ok=True)
    hydra_dir = d / ".hydra"
    if not (hydra_dir / "config.yaml").is_file():
        # runs started without Hydra's launcher still keep their resolved config
        hydra_dir.mkdir(exist_ok=True)
        atomic_write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    return d


def write_metrics(path: Path, metrics: dict) -> None:
    """metrics.json with flat keys; NaN becomes null so any JSON reader accepts it."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    atomic_write_text(path, json.dumps(clean, indent=1, sort_keys=True))


def make_loggers(cfg: DictConfig, out: Path) -> list:
    """CSV always (the curves PNG reads it); TensorBoard or MLflow on top when configured."""
    from lightning.pytorch.loggers import CSVLogger

    _keep_history(out / "logs")
    loggers = [CSVLogger(save_dir=str(out), name="logs", version="")]
    extra = cfg.logger.get("extra")
    if extra == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(out), name="tensorboard", version=""))
    elif extra == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        loggers.append(MLFlowLogger(experiment_name=cfg.logger.experiment,
                                    tracking_uri=cfg.logger.tracking_uri))
    elif extra:
        raise ValueError(f"unknown logger {extra!r}: use csv, tensorboard or mlflow")
    return loggers


def _keep_history(logs: Path) -> None:
    """Set an earlier ``metrics.csv`` aside as ``history-<k>.csv`` (a resumed run writes into the
    same folder, and Lightning's CSV logger would replace it); :func:`plot_curves` reads both."""
    current = logs / "metrics.csv"
    if current.is_file():
        k = len(list(logs.glob("history-*.csv")))
        current.rename(logs / f"history-{k}.csv")


def logged_metrics(logs: Path):
    """Every row the CSV logger wrote in ``logs``, earlier (resumed) parts first; None if none."""
    import pandas as pd

    parts = sorted(logs.glob("history-*.csv"), key=lambda f: int(f.stem.split("-")[1]))
    parts += [logs / "metrics.csv"] if (logs / "metrics.csv").is_file() else []
    return pd.concat([pd.read_csv(f) for f in parts], ignore_index=True) if parts else None


def make_trainer(cfg: DictConfig, out: Path, callbacks: list, loggers: list | None = None) -> L.Trainer:
    kw = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None}
    return L.Trainer(default_root_dir=str(out), callbacks=callbacks,
                     logger=loggers if loggers is not None else make_loggers(cfg, out), **kw)


def plot_curves(out: Path, keys=("train/loss_epoch", "val/macro_auroc")) -> Path | None:
    """``curves.png``: one panel per logged key, by epoch, from the CSV logger's files."""
    df = logged_metrics(out / "logs")
    if df is None:
        return None
    keys = [k for k in keys if k in df.columns and df[k].notna().any()]
    if not keys or "epoch" not in df.columns:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys, strict=True):
        s = df[["epoch", k]].dropna().groupby("epoch")[k].mean()
        ax.plot(s.index, s.values, marker="o", ms=3)
        ax.set_xlabel("epoch")
        ax.set_title(k)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def check_resumed_schedule(checkpoint: dict, trainer: L.Trainer) -> None:
    """Raise a clear error when a checkpoint's one-cycle schedule does not fit this run.

    ``OneCycleLR`` restores its ``total_steps`` from the checkpoint; a run resumed with more
    epochs (or another batch size) would otherwise fail deep inside the scheduler.
    """
    for state in checkpoint.get("lr_schedulers", []):
        total = state.get("total_steps")
        expected = int(trainer.estimated_stepping_batches)
        if total is not None and total != expected:
            raise ValueError(
                f"cannot resume: the checkpoint's one-cycle schedule spans {total} steps but this "
                f"run needs {expected}; resume with the same trainer.max_epochs, data and "
                f"batch size as the interrupted run")
