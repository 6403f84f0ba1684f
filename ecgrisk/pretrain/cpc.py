"""Contrastive predictive coding (CPC; Oord et al. 2018), as Mehari & Strodthoff (2022) pretrain
12-lead ECG encoders with it, over any encoder of the package.

One stage per named method:

- `windows`: a segment ``x [B, L, T]`` is cut into ``T' = T // window`` non-overlapping windows;
- `forward_encoder`: each window is encoded on its own (the encoder's pooled ``embed``, then a
  linear projection) into one latent: ``z [B, T', proj_dim]``;
- `forward_context`: a GRU over the latents gives the context ``c [B, T', context_dim]``, causal
  by construction (``c_t`` sees ``z_1 .. z_t`` only);
- `forward_loss`: for each offset ``k = 1 .. steps`` a linear predictor ``W_k c_t`` picks
  ``z_{t+k}`` out of every latent of the batch at offset ``k`` (the other time steps of the same
  recording and all those of the other recordings) by InfoNCE (`info_nce`); the loss is the mean
  over all valid ``(recording, t, k)``.

Why windows encoded apart, rather than the time steps of one feature map of the whole segment:
the encoders here are not causal (a step of xresnet1d50's feature map sees about 8.6 s around
it; the transformers attend over the whole input), so such latents carry the future into
``c_t`` and the task is solved by copying. On white noise, whose future nothing predicts, that
variant reached 22% accuracy against 0.2% chance within 150 steps of a narrow xresnet1d18
(and was still climbing); with windows encoded apart it stays at chance. Windows also let every
encoder (ViTs included) serve alike. In training mode BatchNorm still pools statistics over all windows of the batch; being
shared by every candidate, they cannot single out the positive.

The encoder stays ``self.encoder``: its weights are what pretraining hands over; the projection,
context network and predictors are left behind.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ecgrisk.models.layers import Encoder

__all__ = ["CPCModel", "info_nce"]


def info_nce(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """InfoNCE over ``N`` candidates with dot-product scores.

    Parameters
    ----------
    pred : ``[N, d]`` predictions; row ``i``'s positive is ``target[i]``.
    target : ``[N, d]`` candidates: every row is a negative for every other row's prediction.

    Returns
    -------
    loss : scalar, mean over rows of ``-log softmax(pred @ target.T)[i, i]``.
    accuracy : scalar, fraction of rows whose highest-scoring candidate is their positive.
    """
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(f"info_nce: expected two [N, d] tensors of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    logits = pred @ target.T
    labels = torch.arange(len(pred), device=pred.device)
    loss = F.cross_entropy(logits.float(), labels)
    accuracy = (logits.argmax(dim=1) == labels).float().mean()
    return loss, accuracy


class CPCModel(nn.Module):
    """Encoder + GRU context + one linear predictor per offset, trained with InfoNCE.

    Parameters
    ----------
    encoder : Encoder
        Used through ``embed`` only (``[B', L, window] -> [B', embed_dim]``).
    window : int
        Samples per latent step.
    steps : int
        Offsets ``k = 1 .. steps`` predicted; a segment needs at least ``steps + 1`` windows.
    proj_dim : int
        Width of the latents ``z_t``.
    context_dim : int
        Width of the GRU context ``c_t``.
    """

    def __init__(self, encoder: Encoder, window: int, steps: int = 4, proj_dim: int = 128,
                 context_dim: int = 256) -> None:
        super().__init__()
        if window < 1 or steps < 1:
            raise ValueError(f"CPCModel: need window >= 1 and steps >= 1, got window={window}, "
                             f"steps={steps}")
        self.encoder, self.window, self.steps = encoder, window, steps
        self.project = nn.Linear(encoder.embed_dim, proj_dim)
        self.context = nn.GRU(proj_dim, context_dim, batch_first=True)
        self.predictors = nn.ModuleList(nn.Linear(context_dim, proj_dim, bias=False)
                                        for _ in range(steps))

    @property
    def min_length(self) -> int:
        """Shortest segment, in samples, with a target at every offset: ``(steps + 1) * window``."""
        return (self.steps + 1) * self.window

    def windows(self, x: Tensor) -> Tensor:
        """``x [B, L, T] -> [B, T', L, window]`` with ``T' = T // window`` (the tail dropped)."""
        b, n_leads, t = x.shape
        if t < self.min_length:
            raise ValueError(
                f"CPCModel: a segment of {t} samples holds {t // self.window} windows of "
                f"{self.window}; steps={self.steps} needs at least {self.steps + 1} "
                f"({self.min_length} samples): lengthen ssl.segment_s or shorten ssl.window_s")
        n = t // self.window
        return x[..., :n * self.window].reshape(b, n_leads, n, self.window).transpose(1, 2)

    def forward_encoder(self, x: Tensor) -> Tensor:
        """``x [B, L, T]`` -> latents ``z [B, T', proj_dim]``, every window encoded on its own."""
        w = self.windows(x)
        b, n = w.shape[:2]
        return self.project(self.encoder.embed(w.reshape(b * n, *w.shape[2:]))).reshape(b, n, -1)

    def forward_context(self, z: Tensor) -> Tensor:
        """Latents ``[B, T', proj_dim]`` -> context ``c [B, T', context_dim]``; ``c_t`` sees ``z_{<=t}``."""
        return self.context(z)[0]

    def forward_loss(self, z: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """InfoNCE of ``W_k c_t`` against ``z_{t+k}``, averaged over every valid ``(b, t, k)``.

        For offset ``k`` the candidates are the ``B * (T' - k)`` latents ``z[:, k:]``: each
        prediction's positive is its own recording's ``z_{t+k}``.

        Returns
        -------
        loss, accuracy : scalars, means over all ``sum_k B * (T' - k)`` predictions.
        """
        b, n, _ = z.shape
        loss = accuracy = z.new_zeros((), dtype=torch.float32)
        total = 0
        for k, predictor in enumerate(self.predictors, start=1):
            pred = predictor(c[:, :n - k]).reshape(b * (n - k), -1)
            target = z[:, k:].reshape(b * (n - k), -1)
            loss_k, acc_k = info_nce(pred, target)
            loss, accuracy = loss + loss_k * len(pred), accuracy + acc_k * len(pred)
            total += len(pred)
        return loss / total, accuracy / total

    def forward(self, x: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """``x [B, L, T]`` -> (loss, {"accuracy": scalar, "z": [B, T', proj_dim], "c": [B, T', context_dim]}).

        ``generator`` is unused (nothing here is random); it keeps the objectives' signature.
        """
        z = self.forward_encoder(x)
        c = self.forward_context(z)
        loss, accuracy = self.forward_loss(z, c)
        return loss, {"accuracy": accuracy, "z": z, "c": c}
