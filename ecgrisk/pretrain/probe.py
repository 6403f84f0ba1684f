"""Linear probe during pretraining: does the representation separate the labels yet?

Every ``every_n_epochs`` epochs the current encoder embeds a labelled dataset's training and
validation records (mean of `Encoder.embed` over each record's evaluation windows), a
one-vs-rest logistic regression is fitted on the training embeddings, and its macro AUROC on
the validation records is logged as ``probe/val_macro_auroc``.
"""

from __future__ import annotations

import logging
import time

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from ecgrisk.data.datamodule import ECGDataModule
from ecgrisk.data.windows import WindowDataset
from ecgrisk.metrics import macro_auroc

log = logging.getLogger(__name__)

__all__ = ["LinearProbe", "embed_records", "probe_auroc", "probe_scores"]


@torch.no_grad()
def embed_records(encoder: torch.nn.Module, ds: WindowDataset, batch_size: int = 256) -> np.ndarray:
    """Per-record embeddings ``[n_records, embed_dim]``: the mean over each record's windows.

    The encoder runs in eval mode on its own device and is returned to its previous mode.
    """
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    n = len(ds.indices)
    total = counts = None
    try:
        for x, _, k in DataLoader(ds, batch_size=batch_size, shuffle=False):
            e = encoder.embed(x.to(device)).float().cpu()
            if total is None:
                total, counts = torch.zeros(n, e.shape[1]), torch.zeros(n)
            pos = torch.from_numpy(ds.positions[k.numpy()])
            total.index_add_(0, pos, e)
            counts.index_add_(0, pos, torch.ones(len(pos)))
    finally:
        encoder.train(was_training)
    if total is None:
        raise ValueError("embed_records: the dataset has no windows")
    return (total / counts.clamp(min=1)[:, None]).numpy()


def probe_scores(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, C: float = 1.0,
                 max_iter: int = 500) -> np.ndarray:
    """Decision scores ``[val, classes]`` of one L2 logistic regression per class on the given
    features (scale them first); a class with one label value in training scores constant."""
    from sklearn.linear_model import LogisticRegression

    scores = np.zeros((len(x_val), y_train.shape[1]), dtype=np.float64)
    for j in range(y_train.shape[1]):
        if y_train[:, j].min() != y_train[:, j].max():
            model = LogisticRegression(C=C, max_iter=max_iter).fit(x_train, y_train[:, j])
            scores[:, j] = model.decision_function(x_val)
    return scores


def probe_auroc(encoder: torch.nn.Module, dm: ECGDataModule, C: float = 1.0, max_iter: int = 500,
                batch_size: int = 256) -> float:
    """Fit one-vs-rest logistic regression on ``dm``'s training records, return val macro AUROC.

    ``dm`` must be labelled and set up. Embeddings are standardised with the training records'
    mean and spread. Classes with a single label value in the training records get a constant
    score; classes without both values in validation are left out.
    """
    from sklearn.preprocessing import StandardScaler

    if not dm.labelled:
        raise ValueError("linear probe: the probe dataset has no labels")
    emb = {s: embed_records(encoder, dm.eval_dataset(s) if s != "train" else WindowDataset(
        dm.caches[0], dm.split["train"][0], dm.window, dm.stride, dm.scaler), batch_size)
        for s in ("train", "val")}
    scale = StandardScaler().fit(emb["train"])
    scores = probe_scores(scale.transform(emb["train"]), dm.labels("train"),
                          scale.transform(emb["val"]), C, max_iter)
    return macro_auroc(dm.labels("val"), scores, skip_degenerate=True)


class LinearProbe(Callback):
    """Logs ``probe/val_macro_auroc`` every ``every_n_epochs`` training epochs.

    Parameters
    ----------
    datamodule : a labelled `ECGDataModule` (train and val folds are used; set up lazily).
    every_n_epochs : probe after epochs ``n, 2n, ...`` and after the last one; 0 disables.
    C, max_iter : logistic regression inverse regularisation and iteration cap.
    encoder_attr : attribute of the LightningModule holding the encoder.

    Attributes
    ----------
    history : list of ``(epoch, auroc, seconds)``.
    """

    def __init__(self, datamodule: ECGDataModule, every_n_epochs: int = 1, C: float = 1.0,
                 max_iter: int = 500, batch_size: int = 256, encoder_attr: str = "encoder") -> None:
        if every_n_epochs < 0:
            raise ValueError(f"probe.every_n_epochs must be >= 0, got {every_n_epochs}")
        self.dm, self.every = datamodule, every_n_epochs
        self.C, self.max_iter, self.batch_size, self.encoder_attr = C, max_iter, batch_size, encoder_attr
        self.history: list[tuple[int, float, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.every:
            return
        epoch = trainer.current_epoch + 1
        last = epoch >= (trainer.max_epochs or 0) or trainer.should_stop
        if epoch % self.every and not last:
            return
        if trainer.is_global_zero:
            t0 = time.perf_counter()
            self.dm.setup()
            auroc = probe_auroc(getattr(pl_module, self.encoder_attr), self.dm, self.C,
                                self.max_iter, self.batch_size)
            dt = time.perf_counter() - t0
            self.history.append((epoch, auroc, dt))
            log.info("epoch %d: linear probe val macro AUROC %.4f (%.1f s)", epoch, auroc, dt)
            pl_module.log("probe/val_macro_auroc", auroc, rank_zero_only=True)
