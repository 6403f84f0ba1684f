"""What every stage's run directory gets: resolved config (and the command-line overrides),
loggers, metrics.json, curves PNG; and what makes a killed run resumable exactly
(:class:`ResumeState`, :func:`resume_hint`)."""

from __future__ import annotations

import json
import math
import random
import shlex
import signal
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector
from omegaconf import DictConfig, OmegaConf

from ecgrisk.files import atomic_write_text
from ecgrisk.hardware import resolve_precision
from ecgrisk.signals import raise_if_interrupted


def check_positive(cfg: DictConfig, *keys: str, whole: tuple[str, ...] = ()) -> None:
    """Refuse a config whose ``keys`` are not positive numbers (``whole``: positive integers)
    before any work: a negative learning rate otherwise trains to chance without a word, and a
    word where a number belongs fails deep inside Lightning without naming its key."""
    for key in (*keys, *whole):
        v = OmegaConf.select(cfg, key)
        kinds = (int,) if key in whole else (int, float)
        if isinstance(v, bool) or not isinstance(v, kinds) or v <= 0:
            raise ValueError(f"{key}={v!r}: expected a positive "
                             f"{'whole number' if key in whole else 'number'}")


def run_dir(cfg: DictConfig) -> Path:
    """``cfg.output_dir`` when set (tests, scripts), else Hydra's run directory."""
    if cfg.get("output_dir"):
        d = Path(cfg.output_dir)
    else:
        from hydra.core.hydra_config import HydraConfig

        d = Path(HydraConfig.get().runtime.output_dir)
    d.mkdir(parents=True, exist_ok=True)
    hydra_dir = d / ".hydra"
    hydra_dir.mkdir(exist_ok=True)
    if not (hydra_dir / "config.yaml").is_file():
        # runs started without Hydra's launcher still keep their resolved config
        atomic_write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    overrides = _command_line_overrides()
    if overrides is not None and not (hydra_dir / "overrides.yaml").is_file():
        # an output_dir run keeps the command that started it (a resume does not replace it)
        atomic_write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))
    return d


def _command_line_overrides() -> list[str] | None:
    """The overrides of the running Hydra app's command line; None outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def write_metrics(path: Path, metrics: dict) -> None:
    """metrics.json with flat keys; NaN becomes null so any JSON reader accepts it."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    atomic_write_text(path, json.dumps(clean, indent=1, sort_keys=True))


def make_loggers(cfg: DictConfig, out: Path) -> list:
    """CSV always (the curves PNG reads it); TensorBoard or MLflow on top when configured."""
    import warnings

    from lightning.pytorch.loggers import CSVLogger

    _keep_history(out / "logs")
    # a resumed run's logs folder is not empty, and Lightning warns that earlier logs will be
    # deleted; it deletes metrics.csv alone, which _keep_history has just set aside
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
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


def settle_logs(logs: Path) -> None:
    """At the end of a run: where the resumed part logged nothing (it was stopped after its last
    epoch, in its final test), put the log :func:`_keep_history` set aside back as
    ``metrics.csv``, which every run directory keeps."""
    parts = sorted(logs.glob("history-*.csv"), key=lambda f: int(f.stem.split("-")[1]))
    if parts and not (logs / "metrics.csv").exists():
        parts[-1].rename(logs / "metrics.csv")


def logged_metrics(logs: Path):
    """Every row the CSV logger wrote in ``logs``, earlier (resumed) parts first; None if none.

    A killed run may have logged part of the epoch it was killed in; the run resumed from its
    last checkpoint logs that epoch again, so rows of an earlier part from the epoch a later
    part starts at onwards are dropped: each epoch appears once.
    """
    import pandas as pd

    parts = sorted(logs.glob("history-*.csv"), key=lambda f: int(f.stem.split("-")[1]))
    parts += [logs / "metrics.csv"] if (logs / "metrics.csv").is_file() else []
    frames = []
    for f in parts:
        df = pd.read_csv(f)
        if "epoch" in df.columns and df["epoch"].notna().any():
            start = df["epoch"].min()
            frames = [d[d["epoch"] < start] if "epoch" in d.columns else d for d in frames]
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else None


def make_trainer(cfg: DictConfig, out: Path, callbacks: list, loggers: list | None = None) -> L.Trainer:
    kw = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None}
    kw["precision"] = resolve_precision(kw.get("precision", "32-true"), kw.get("accelerator", "auto"))
    return lightning_trainer(default_root_dir=str(out), callbacks=[*callbacks, ResumeState()],
                             logger=loggers if loggers is not None else make_loggers(cfg, out), **kw)


class _SignalsStayOurs(_SignalConnector):
    """Lightning's signal handling, less its SIGTERM handler: :func:`ecgrisk.signals.stop_on_signals`
    owns SIGINT/SIGTERM, and SLURM's requeue signal (``SIGUSR1``) stays Lightning's.

    Lightning's SIGTERM handler (2.5 and later) broadcasts a tensor from rank 0 inside the
    handler, a collective at whatever point the signal lands. When the other rank is then in a
    different collective (the backward's all-reduce, a checkpoint barrier) both wait for ever:
    seen as a killed two-rank fine-tune that never exited. Ours raises, rank 0 leaves, and the
    other ranks die with it (:func:`ecgrisk.signals.die_with_parent`).
    """

    def register_signal_handlers(self) -> None:
        super().register_signal_handlers()
        previous = self._original_handlers.get(signal.SIGTERM)
        if previous is not None:
            self._register_signal(signal.SIGTERM, previous)  # main thread only, as Lightning does


def lightning_trainer(**kwargs) -> L.Trainer:
    """``L.Trainer(**kwargs)`` that leaves SIGINT and SIGTERM to :mod:`ecgrisk.signals`."""
    trainer = L.Trainer(**kwargs)
    trainer._signal_connector = _SignalsStayOurs(trainer)
    return trainer


def resumed_wall_s(trainer: L.Trainer) -> float:
    """Seconds the earlier parts of a resumed fit trained for (0 for a fresh run): add this
    part's own to get the run's training time."""
    return next((c.resumed_wall_s for c in trainer.callbacks if isinstance(c, ResumeState)), 0.0)


def _rng_state() -> dict:
    # plain types and tensors: checkpoints stay loadable with torch.load(weights_only=True)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))


class ResumeState(Callback):
    """What a checkpoint needs beyond Lightning's own state for a resumed run to go on exactly
    as the uninterrupted run would have; and a killed run's log and stop kept in order.

    - The global random states (Python, NumPy, torch: data order, crops, dropout and DataLoader
      worker seeds draw from them) travel in every checkpoint and are put back when the first
      resumed epoch starts, after whatever the restart itself drew (the sanity check). With
      ``data.num_workers=0`` a CPU run resumes bit for bit; persistent DataLoader workers keep
      their own random state, which no checkpoint holds, and GPU kernels need not be
      deterministic.
    - The CSV log is written out at each epoch start, with each checkpoint and on an
      interruption (by default Lightning writes it every 100 steps).
    - A SIGINT/SIGTERM whose exception was dropped on its way stops the run at the next batch
      (:func:`~ecgrisk.signals.raise_if_interrupted`).
    - The seconds spent fitting travel too, so a run resumed (perhaps several times) reports
      its whole training time (:attr:`wall_s`), not only its last part's; the part of a killed
      epoch after its last checkpoint is lost with the epoch and not counted.
    """

    def __init__(self) -> None:
        self._restore: dict | None = None
        self.resumed_wall_s = 0.0
        """Fitting seconds of the earlier parts of a resumed run, up to its checkpoint."""
        self._t0: float | None = None

    @property
    def wall_s(self) -> float:
        """Fitting seconds so far, earlier parts of a resumed run included."""
        here = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
        return self.resumed_wall_s + here

    def state_dict(self) -> dict:
        return {"rng": _rng_state(), "wall_s": self.wall_s}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restore = state_dict.get("rng")
        # a checkpoint written before the clock travelled counts from this part on
        self.resumed_wall_s = float(state_dict.get("wall_s", 0.0))

    def on_fit_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    @staticmethod
    def _flush_logs(trainer: L.Trainer) -> None:
        for logger in trainer.loggers:
            logger.save()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        raise_if_interrupted()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:
        raise_if_interrupted()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                          dataloader_idx=0) -> None:
        raise_if_interrupted()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        raise_if_interrupted()
        if self._restore is not None:
            _set_rng_state(self._restore)
            self._restore = None
            # a restarted fit reads its first epoch from the iterator Lightning made while
            # setting up (before the checkpoint was restored, from other random states); an
            # uninterrupted run makes that epoch's iterator here, so make it again
            fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
            if fetcher is not None:
                iter(fetcher)
        self._flush_logs(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._flush_logs(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._flush_logs(trainer)


def resume_hint(cfg: DictConfig, command: str) -> Callable[[], str]:
    """The line an interrupted training run prints: the command that resumes it from
    ``checkpoints/last.ckpt`` in the same run directory (its logged history continues there),
    or that no epoch had finished. Call it inside the Hydra job (it reads the command line
    there); the line itself is made when the signal comes."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    out = Path(cfg.output_dir) if cfg.get("output_dir") else Path(hc.runtime.output_dir)
    args = [o for o in hc.overrides.task if not o.startswith(("resume=", "+resume="))]
    if not cfg.get("output_dir") and not any(o.startswith("hydra.run.dir=") for o in args):
        args.append(f"hydra.run.dir={out}")

    def hint() -> str:
        last = out / "checkpoints" / "last.ckpt"
        if not last.is_file():
            return "no epoch had finished: rerun the same command to start again"
        return "resume from the last finished epoch with: " + shlex.join(
            [command, *args, f"resume={last}"])

    return hint


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
