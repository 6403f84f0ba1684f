"""Latent prediction (JEPA: Assran et al. 2023, I-JEPA; Kim 2024, ECG-JEPA; data2vec's EMA teacher).

Spans of time (all leads at once) are zeroed in the input the encoder sees. A target encoder,
an exponential moving average of the encoder that sees the whole signal, gives the feature map
to predict; a light convolutional predictor fills in the masked positions of the encoder's
feature map, and the loss is the MSE there, against the target features layer-normalised over
channels. Nothing is reconstructed in signal space, so the encoder is not asked for the noise
and baseline a sample-level target holds. The target encoder follows the encoder with a
momentum that rises from ``momentum`` to 1 over training (`update_target`), which is what keeps
the two from collapsing onto a constant together.

Works for any `Encoder` through ``forward_features``; the masked spans are mapped onto the
feature map's positions by the share of each position's input stretch they cover.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ecgrisk.models.layers import Encoder
from ecgrisk.pretrain.masked import n_masked, unit_mask

__all__ = ["LatentPredictionModel"]


class LatentPredictionModel(nn.Module):
    """Encoder + EMA target encoder + predictor, trained to predict masked latents.

    Parameters
    ----------
    encoder : Encoder
        Used through ``forward_features`` only; its weights are what pretraining hands over.
    mask_ratio : float
        Fraction of the input's spans zeroed, in (0, 1).
    span : int
        Span length in samples (the same spans in every lead).
    predictor_channels : int
        Width of the predictor.
    momentum : float
        The target encoder's starting EMA momentum, in [0, 1); it rises linearly to 1.
    """

    def __init__(self, encoder: Encoder, mask_ratio: float = 0.5, span: int = 50,
                 predictor_channels: int = 256, momentum: float = 0.996) -> None:
        super().__init__()
        n_masked(2, mask_ratio)  # validates the ratio early, as the masked objectives do
        if span < 1:
            raise ValueError(f"LatentPredictionModel: span={span} must be >= 1")
        if not 0 <= momentum < 1:
            raise ValueError(f"LatentPredictionModel: momentum must be in [0, 1), got {momentum}")
        self.encoder, self.mask_ratio, self.span, self.momentum = encoder, mask_ratio, span, momentum
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        d, c = encoder.feature_dim, predictor_channels
        self.mask_embedding = nn.Parameter(torch.zeros(1, c, 1))
        self.predictor_in = nn.Conv1d(d, c, 1)
        self.predictor = nn.Sequential(
            nn.GELU(), nn.Conv1d(c, c, 3, padding=1), nn.GELU(), nn.Conv1d(c, c, 3, padding=1),
            nn.GELU(), nn.Conv1d(c, d, 1))
        nn.init.trunc_normal_(self.mask_embedding, std=0.02)

    def random_masking(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Boolean ``[B, T]``: ``n_masked(S, ratio)`` of the ``S = ceil(T / span)`` spans True."""
        b, _, t = x.shape
        spans = unit_mask(b, -(-t // self.span), self.mask_ratio, generator, x.device)
        return spans.repeat_interleave(self.span, dim=1)[:, :t]

    @staticmethod
    def feature_mask(mask: Tensor, length: int) -> Tensor:
        """Input mask ``[B, T]`` -> ``[B, length]``: positions whose stretch is mostly masked.

        A sample with no such position keeps its most masked one, so every sample has a loss.
        """
        share = F.adaptive_avg_pool1d(mask[:, None].float(), length)[:, 0]
        top = share == share.amax(dim=1, keepdim=True)
        return (share > 0.5) | top

    def predict(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Context features of the masked input -> (predicted ``[B, D, T']``, feature mask ``[B, T']``)."""
        context = self.encoder.forward_features(x.masked_fill(mask[:, None], 0.0))
        at = self.feature_mask(mask, context.shape[-1])
        h = self.predictor_in(context) + self.mask_embedding * at[:, None].to(context.dtype)
        return self.predictor(h), at

    @torch.no_grad()
    def targets(self, x: Tensor) -> Tensor:
        """The target encoder's features of the whole input, layer-normalised over channels."""
        z = self.target_encoder.forward_features(x).float()
        return F.layer_norm(z.transpose(1, 2), z.shape[1:2]).transpose(1, 2)

    @torch.no_grad()
    def update_target(self, progress: float) -> None:
        """One EMA step after a training batch, ``progress`` in [0, 1] the share of training done."""
        m = self.momentum + (1.0 - self.momentum) * min(max(progress, 0.0), 1.0)
        for t, s in zip(self.target_encoder.parameters(), self.encoder.parameters(), strict=True):
            t.lerp_(s.detach(), 1.0 - m)
        for t, s in zip(self.target_encoder.buffers(), self.encoder.buffers(), strict=True):
            t.copy_(s)  # BatchNorm's running statistics and counts

    def forward(self, x: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """``x [B, L, T]`` -> (loss, {"pred", "target": [B, D, T'], "mask": [B, T'],
        "target_std": scalar, the targets' spread over the batch, near 0 if they collapse})."""
        mask = self.random_masking(x, generator)
        pred, at = self.predict(x, mask)
        target = self.targets(x)
        per_position = (pred.float() - target).pow(2).mean(dim=1)
        m = at.to(per_position.dtype)
        loss = (per_position * m).sum() / m.sum()
        return loss, {"pred": pred, "target": target, "mask": at,
                      "target_std": target.std(dim=0).mean()}
