"""Contrastive pretraining (SimCLR, Chen et al. 2020; CLOCS, Kiyasseh et al. 2021).

Two augmented views of every recording in a batch; the positives are the two views of the same
recording (with a crop in the augmentations, two different segments of it, as CLOCS's
contrastive multi-segment coding does), the negatives every other view in the batch. The
encoder's pooled embedding goes through a projection head and NT-Xent with a temperature.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ecgrisk.models.layers import Encoder

__all__ = ["ContrastiveModel", "nt_xent"]


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> tuple[Tensor, Tensor]:
    """Normalised-temperature cross entropy over ``2B`` views.

    Parameters
    ----------
    z1, z2 : ``[B, d]`` projections of the two views; row ``i`` of each is the same recording.
    temperature : softmax temperature on cosine similarities.

    Returns
    -------
    loss : scalar, mean over the ``2B`` anchors of ``-log softmax(sim / t)[positive]``, the
        anchor itself excluded from the softmax.
    accuracy : scalar, fraction of anchors whose most similar other view is their positive.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent: expected two [B, d] tensors of one shape, got "
                         f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"nt_xent: temperature must be > 0, got {temperature}")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    loss = F.cross_entropy(sim, target)
    accuracy = (sim.argmax(dim=1) == target).float().mean()
    return loss, accuracy


class ContrastiveModel(nn.Module):
    """Encoder + projection head trained with NT-Xent on two augmented views.

    Parameters
    ----------
    encoder : Encoder
        Used through ``embed`` only (``[B, L, T] -> [B, embed_dim]``).
    augment : nn.Module
        ``augment(x [B, L, T], generator) -> [B, L, T']``, called once per view (e.g.
        `ecgrisk.pretrain.augment.Compose`); a random crop in it makes the CLOCS positive pair.
    proj_dim, hidden_dim : int
        Output and hidden width of the two-layer projection head (SimCLR's g).
    temperature : float
        NT-Xent temperature.
    """

    def __init__(self, encoder: Encoder, augment: nn.Module, proj_dim: int = 128,
                 hidden_dim: int = 256, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"ContrastiveModel: temperature must be > 0, got {temperature}")
        self.encoder, self.augment, self.temperature = encoder, augment, temperature
        self.projector = nn.Sequential(
            nn.Linear(encoder.embed_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, proj_dim))

    def views(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Two independent augmentations of ``x [B, L, T]``, each ``[B, L, T']``."""
        return self.augment(x, generator), self.augment(x, generator)

    def forward(self, x: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """``x [B, L, T]`` -> (loss, {"accuracy": scalar, "z1", "z2": [B, proj_dim]})."""
        if x.shape[0] < 2:
            raise ValueError("ContrastiveModel: a batch needs at least 2 recordings (negatives)")
        v1, v2 = self.views(x, generator)
        # one encoder pass over both views keeps BatchNorm statistics shared between them
        z = self.projector(self.encoder.embed(torch.cat([v1, v2])))
        z1, z2 = z.chunk(2)
        loss, acc = nt_xent(z1, z2, self.temperature)
        return loss, {"accuracy": acc, "z1": z1, "z2": z2}
