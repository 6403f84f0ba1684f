"""The fine-tuning LightningModule: encoder + multi-label head, BCE, window-aggregated evaluation.

The final evaluation (validation and test outside ``fit``: what calibration is fitted on and what
``predictions/`` and ``metrics.json`` report) runs the model with its BatchNorms folded, as
scoring runs it (:func:`~ecgrisk.models.layers.fold_batchnorm`), so ``ecgrisk score`` gives a
run's own probabilities exactly; the per-epoch validation that picks the checkpoint runs it
unfolded (the same function up to rounding).
"""

from __future__ import annotations

import logging

import lightning as L
import torch
import torch.nn.functional as F
from scipy.special import expit

from ecgrisk.metrics import macro_auroc
from ecgrisk.models.classifier import ECGClassifier
from ecgrisk.models.layers import fold_batchnorm
from ecgrisk.windowing import aggregate_windows

log = logging.getLogger(__name__)

FINETUNE_MODES = ("full", "partial", "linear")


class ClassifierModule(L.LightningModule):
    """Trains an :class:`ECGClassifier` on crops; evaluates per record on aggregated windows.

    Parameters
    ----------
    model : the classifier (encoder + head).
    lr, weight_decay : AdamW with a one-cycle schedule peaking at ``lr`` (benchmark: 1e-2, 1e-2).
    encoder_lr_mult : discriminative learning rate; the encoder trains at ``lr * encoder_lr_mult``.
    mode : 'full' trains everything; 'linear' freezes the encoder (a linear probe on the head);
        'partial' freezes all but the last ``partial_blocks`` of the encoder's layer groups.
    pos_weight : optional ``[C]`` BCE positive weights.
    aggregation : 'max' (benchmark) or 'mean' over a record's windows.
    """

    def __init__(self, model: ECGClassifier, lr: float = 1e-2, weight_decay: float = 1e-2,
                 encoder_lr_mult: float = 1.0, mode: str = "full", partial_blocks: int = 2,
                 pos_weight: torch.Tensor | None = None, aggregation: str = "max",
                 pct_start: float = 0.3):
        super().__init__()
        if mode not in FINETUNE_MODES:
            raise ValueError(f"finetune mode must be one of {FINETUNE_MODES}, got {mode!r}")
        self.model = model
        self.lr, self.weight_decay, self.encoder_lr_mult = lr, weight_decay, encoder_lr_mult
        self.mode, self.aggregation, self.pct_start = mode, aggregation, pct_start
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else torch.empty(0))
        self._freeze(partial_blocks)
        self._frozen_norms = [m for m in model.encoder.modules()
                              if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                              and not any(p.requires_grad for p in m.parameters())]
        self._eval_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._folded: tuple = ()  # a tuple, so the copy is no submodule (nor in checkpoints)
        self.eval_result: dict[str, dict] = {}  # split -> {"logits", "labels"} per record
        self.train_samples = 0

    def _freeze(self, partial_blocks: int) -> None:
        enc = self.model.encoder
        if self.mode == "full":
            return
        for p in enc.parameters():
            p.requires_grad_(False)
        if self.mode == "partial":
            groups = enc.layer_groups()
            if not 1 <= partial_blocks <= len(groups):
                raise ValueError(f"finetune.partial_blocks must be in 1..{len(groups)} for "
                                 f"{enc.spec.get('name')}, got {partial_blocks}")
            for group in groups[-partial_blocks:]:
                for p in group:
                    p.requires_grad_(True)

    def on_train_epoch_start(self) -> None:
        # frozen layers keep their BatchNorm statistics: a probe must not drift them
        for m in self._frozen_norms:
            m.eval()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        from ecgrisk.runs import check_resumed_schedule

        if self._trainer is not None:
            check_resumed_schedule(checkpoint, self.trainer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # -- training -----------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.binary_cross_entropy_with_logits(
            logits, y, pos_weight=self.pos_weight if self.pos_weight.numel() else None)
        self.train_samples += len(x)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def configure_optimizers(self):
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        enc = [p for p in self.model.encoder.parameters() if p.requires_grad]
        groups = [{"params": head, "lr": self.lr}]
        if enc:
            groups.append({"params": enc, "lr": self.lr * self.encoder_lr_mult})
        opt = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in groups], pct_start=self.pct_start,
            total_steps=max(int(self.trainer.estimated_stepping_batches), 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- evaluation ---------------------------------------------------------------------
    def _eval_step(self, batch):
        x, _, k = batch
        logits = self._folded[0](x) if self._folded else self(x)
        self._eval_outputs.append((k.detach(), logits.detach().float()))

    def on_validation_start(self) -> None:
        self._folded = () if self.trainer.state.fn == "fit" else (fold_batchnorm(self.model),)

    def on_test_start(self) -> None:
        self._folded = (fold_batchnorm(self.model),)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x)

    def _finish_eval(self, split: str) -> dict:
        """Gather every rank's windows, aggregate per record; identical on all ranks."""
        if self._eval_outputs:
            k = torch.cat([o[0] for o in self._eval_outputs])
            logits = torch.cat([o[1] for o in self._eval_outputs])
        else:
            k = torch.zeros(0, dtype=torch.long, device=self.device)
            logits = torch.zeros(0, self.model.num_classes, device=self.device)
        self._eval_outputs.clear()
        if self.trainer.world_size > 1:
            k = self.all_gather(k).reshape(-1)
            logits = self.all_gather(logits).reshape(-1, logits.shape[-1])
        ds = self._eval_dataset(split)
        rec_logits, seen = aggregate_windows(k, logits, ds.positions, len(ds.indices), self.aggregation)
        seen = seen.cpu().numpy()
        if not seen.all():
            log.warning("%s: %d of %d records evaluated (evaluation limited by the trainer settings)",
                        split, seen.sum(), len(seen))
        labels = ds.cache.labels[ds.indices][seen]
        result = {"logits": rec_logits.cpu().numpy()[seen], "labels": labels, "seen": seen,
                  "windows": int(torch.unique(k).numel())}
        self.eval_result[split] = result
        return result

    def _eval_dataset(self, split: str):
        loaders = self.trainer.val_dataloaders if split == "val" else self.trainer.test_dataloaders
        return loaders.dataset

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._eval_outputs.clear()
            return
        r = self._finish_eval("val")
        if self.trainer.state.fn != "fit":
            return  # the final re-evaluation of the best checkpoint is not another epoch's curve point
        auroc = macro_auroc(r["labels"], expit(r["logits"]), skip_degenerate=True)
        # every rank holds the same gathered value, so no further reduction is needed
        self.log("val/macro_auroc", auroc, prog_bar=True, sync_dist=False)

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

