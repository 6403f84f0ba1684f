"""The pretraining LightningModule: any self-supervised objective that returns ``(loss, info)``.

The objective (``ecgrisk.pretrain.masked``, ``.contrastive``, ``.cpc`` or ``.jepa``) owns the
encoder as ``objective.encoder``; this module owns the loop: AdamW with a one-cycle schedule,
seeded masks and augmentations, per-epoch mean losses (``epoch_losses``) for ``metrics.json``,
and, for an objective with a moving-average target (``update_target``), its step after each
training batch (one per optimiser step unless ``trainer.accumulate_grad_batches`` > 1, where
the target moves once per batch).
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

__all__ = ["PretrainModule"]


class PretrainModule(L.LightningModule):
    """Train ``objective(x [B, L, T], generator) -> (loss, info)`` on unlabeled crops.

    Parameters
    ----------
    objective : nn.Module with an ``encoder`` attribute.
    lr, weight_decay : AdamW peak learning rate and decoupled weight decay (biases, norms and
        embeddings, i.e. parameters with fewer than 2 dimensions, get none).
    warmup_pct : fraction of the steps spent warming up (one-cycle, cosine decay after).
    seed : seeds the masking/augmentation generator (per rank) and the fixed validation masks.

    Attributes
    ----------
    epoch_losses : mean training loss of every finished epoch, in order.
    train_samples : training samples seen on this rank.
    """

    def __init__(self, objective: nn.Module, lr: float = 1e-3, weight_decay: float = 0.05,
                 warmup_pct: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        if not hasattr(objective, "encoder"):
            raise TypeError(f"PretrainModule: objective {type(objective).__name__} has no .encoder")
        if not 0 < warmup_pct < 1:
            raise ValueError(f"PretrainModule: warmup_pct must be in (0, 1), got {warmup_pct}")
        self.objective = objective
        self.lr, self.weight_decay, self.warmup_pct, self.seed = lr, weight_decay, warmup_pct, seed
        self.epoch_losses: list[float] = []
        self.train_samples = 0
        self._generator: torch.Generator | None = None
        self._sum = self._count = 0.0

    @property
    def encoder(self) -> nn.Module:
        return self.objective.encoder

    def on_train_start(self) -> None:
        # created once the module sits on its device; re-seeding later would repeat masks
        state = self._generator.get_state() if self._generator is not None else None
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(self.seed * 7919 + self.global_rank)
        if state is not None:  # restored from a checkpoint: continue the mask stream
            self._generator.set_state(state)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ecgrisk"] = {"epoch_losses": list(self.epoch_losses),
                                 "generator": self._train_generator().get_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        from ecgrisk.runs import check_resumed_schedule

        if self._trainer is not None:
            check_resumed_schedule(checkpoint, self.trainer)
        saved = checkpoint.get("ecgrisk", {})
        self.epoch_losses = list(saved.get("epoch_losses", []))
        if "generator" in saved:
            self._generator = torch.Generator(device="cpu")
            self._generator.set_state(saved["generator"])

    def _train_generator(self) -> torch.Generator:
        if self._generator is None:  # training_step called outside a Trainer
            self.on_train_start()
        return self._generator

    # -- training -----------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._sum = self._count = 0.0

    def training_step(self, batch, batch_idx):
        x = batch[0]
        loss, info = self.objective(x, generator=self._train_generator())
        n = len(x)
        self.train_samples += n
        # summed as tensors: no device sync per step
        self._sum = self._sum + loss.detach().double() * n
        self._count += n
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        for key in ("accuracy", "target_std"):
            if key in info:
                self.log(f"train/{key}", info[key], on_step=False, on_epoch=True, batch_size=n)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        update = getattr(self.objective, "update_target", None)
        if update is not None:
            update(self.global_step / max(int(self.trainer.estimated_stepping_batches), 1))

    def on_train_epoch_end(self) -> None:
        total = torch.as_tensor(self._sum, dtype=torch.float64, device=self.device)
        totals = torch.stack([total, torch.tensor(float(self._count), dtype=torch.float64,
                                                  device=self.device)])
        if self.trainer.world_size > 1:
            totals = self.all_gather(totals).reshape(-1, 2).sum(0)
        if totals[1] > 0:
            self.epoch_losses.append(float(totals[0] / totals[1]))

    # -- validation: fixed masks/augmentations per batch, so epochs compare like for like ----
    def validation_step(self, batch, batch_idx):
        x = batch[0]
        g = torch.Generator(device=self.device)
        g.manual_seed(10_000_019 * (self.seed + 1) + batch_idx)
        loss, _ = self.objective(x, generator=g)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x),
                 sync_dist=True)

    def configure_optimizers(self):
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=self.lr, betas=(0.9, 0.95))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.lr, pct_start=self.warmup_pct,
            total_steps=max(int(self.trainer.estimated_stepping_batches), 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
