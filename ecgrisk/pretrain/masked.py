"""Masked reconstruction objectives (facebookresearch/mae shape: one stage per named method).

`MaskedAutoencoder` (MAE / ST-MEM, for `ViT1d`): the token grid is ``leads x time patches``;
a fraction of tokens is hidden (``random`` tokens, whole ``time`` columns across all leads, or
whole ``lead`` rows), the encoder sees only the visible ones, a light transformer decoder fills
in mask tokens, and the loss is the MSE on the masked patches only.

`MaskedSignalModel` (any encoder, CNNs included): random time spans of each lead are zeroed in
the input, the encoder's feature map is upsampled back to the input length by a light
convolutional decoder, and the loss is the MSE on the masked samples only.

Both wrap the encoder (``self.encoder``), whose weights are what pretraining hands over.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ecgrisk.models.layers import Encoder, TransformerBlock
from ecgrisk.models.vit1d import ViT1d

__all__ = ["MASKINGS", "MaskedAutoencoder", "MaskedSignalModel", "n_masked", "unit_mask"]

MASKINGS = ("random", "time", "lead")


def n_masked(n_units: int, ratio: float) -> int:
    """Units hidden per sample: ``round(ratio * n_units)``, kept within ``[1, n_units - 1]``."""
    if not 0 < ratio < 1:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    if n_units < 2:
        raise ValueError(f"masking needs at least 2 units to hide some and keep some, got {n_units}")
    return min(max(round(ratio * n_units), 1), n_units - 1)


def unit_mask(batch: int, n_units: int, ratio: float, generator: torch.Generator | None = None,
              device=None) -> Tensor:
    """Boolean ``[batch, n_units]``, exactly `n_masked` True per row, chosen uniformly at random."""
    k = n_masked(n_units, ratio)
    gen_device = generator.device if generator is not None else device
    noise = torch.rand(batch, n_units, generator=generator, device=gen_device)
    if device is not None:
        noise = noise.to(device)
    rank = noise.argsort(dim=1).argsort(dim=1)
    return rank < k


class MaskedAutoencoder(nn.Module):
    """MAE over the lead x time patch grid of a `ViT1d`.

    Parameters
    ----------
    encoder : ViT1d
        Used through ``patchify``, ``tokenize`` and ``encode_tokens`` only.
    masking : {'random', 'time', 'lead'}
        What one masking unit is: a token, a time position (all leads), or a lead (all times).
    mask_ratio : float
        Fraction of units hidden, in (0, 1); ``n_masked(units, ratio)`` per sample.
    decoder_dim, decoder_depth, decoder_heads : int
        Width, blocks and heads of the decoder transformer (kept light, as MAE's is).
    norm_target : bool
        Normalise each target patch to zero mean and unit variance (MAE's ``norm_pix_loss``).
    """

    def __init__(self, encoder: ViT1d, masking: str = "random", mask_ratio: float = 0.75,
                 decoder_dim: int = 64, decoder_depth: int = 2, decoder_heads: int = 4,
                 norm_target: bool = False) -> None:
        super().__init__()
        if not isinstance(encoder, ViT1d):
            raise TypeError(f"MaskedAutoencoder needs a ViT1d encoder, got {type(encoder).__name__}; "
                            f"use MaskedSignalModel (ssl.kind=signal) for other encoders")
        if masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}")
        n_masked(2, mask_ratio)  # validates the ratio early
        self.encoder = encoder
        self.masking, self.mask_ratio, self.norm_target = masking, mask_ratio, norm_target
        self.decoder_embed = nn.Linear(encoder.dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, encoder.max_patches, decoder_dim))
        self.decoder_lead = nn.Parameter(torch.zeros(1, encoder.in_leads, decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            [TransformerBlock(decoder_dim, decoder_heads) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, encoder.patch_size)
        for p in (self.mask_token, self.decoder_pos, self.decoder_lead):
            nn.init.trunc_normal_(p, std=0.02)

    def patchify(self, x: Tensor) -> Tensor:
        """``x [B, L, T] -> [B, L * N, patch_size]``, lead-major (the reconstruction targets)."""
        return self.encoder.patchify(x)

    def random_masking(self, tokens: Tensor, grid: tuple[int, int],
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Keep the visible tokens.

        Parameters
        ----------
        tokens : ``[B, K, D]`` with ``K = L * N`` (lead-major).
        grid : ``(L, N)``.

        Returns
        -------
        kept : ``[B, K_keep, D]`` visible tokens in their original order.
        mask : ``[B, K]`` float, 1 = masked. Per sample: ``n_masked(K, r)`` tokens (random),
            ``L * n_masked(N, r)`` (time) or ``N * n_masked(L, r)`` (lead).
        ids_restore : ``[B, K]`` long; ``cat(kept, masked)[ids_restore]`` is the original order.
        """
        b, k, d = tokens.shape
        n_leads, n = grid
        dev = tokens.device
        if self.masking == "random":
            mask = unit_mask(b, k, self.mask_ratio, generator, dev)
        elif self.masking == "time":
            mask = unit_mask(b, n, self.mask_ratio, generator, dev)[:, None, :].expand(b, n_leads, n)
        else:
            mask = unit_mask(b, n_leads, self.mask_ratio, generator, dev)[:, :, None].expand(b, n_leads, n)
        mask = mask.reshape(b, k)
        # stable sort: visible tokens first, each group in its original order
        ids_shuffle = mask.int().argsort(dim=1, stable=True)
        ids_restore = ids_shuffle.argsort(dim=1)
        n_keep = k - int(mask[0].sum())
        ids_keep = ids_shuffle[:, :n_keep]
        kept = tokens.gather(1, ids_keep[:, :, None].expand(b, n_keep, d))
        return kept, mask.to(tokens.dtype), ids_restore

    def forward_encoder(self, x: Tensor, generator: torch.Generator | None = None
                        ) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
        """``x [B, L, T]`` -> latent ``[B, K_keep, dim]``, mask ``[B, K]``, ids_restore ``[B, K]``, grid."""
        tokens, grid = self.encoder.tokenize(x)
        kept, mask, ids_restore = self.random_masking(tokens, grid, generator)
        return self.encoder.encode_tokens(kept), mask, ids_restore, grid

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor, grid: tuple[int, int]) -> Tensor:
        """latent ``[B, K_keep, dim]`` -> predicted patches ``[B, K, patch_size]`` (all tokens)."""
        h = self.decoder_embed(latent)
        b, n_keep, dd = h.shape
        k = ids_restore.shape[1]
        h = torch.cat([h, self.mask_token.expand(b, k - n_keep, dd)], dim=1)
        h = h.gather(1, ids_restore[:, :, None].expand(b, k, dd))
        n_leads, n = grid
        pos = self.decoder_pos[:, None, :n, :] + self.decoder_lead[:, :n_leads, None, :]
        h = h + pos.reshape(1, n_leads * n, dd)
        for block in self.decoder_blocks:
            h = block(h)
        return self.decoder_pred(self.decoder_norm(h))

    def forward_loss(self, x: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error over masked patches: x ``[B, L, T]``, pred ``[B, K, P]``, mask ``[B, K]``."""
        target = self.patchify(x)
        if self.norm_target:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (pred - target).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, x: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """``x [B, L, T]`` -> (loss, {"pred": [B, K, P], "mask": [B, K]})."""
        latent, mask, ids_restore, grid = self.forward_encoder(x, generator)
        pred = self.forward_decoder(latent, ids_restore, grid)
        return self.forward_loss(x, pred, mask), {"pred": pred, "mask": mask}


class MaskedSignalModel(nn.Module):
    """Masked-signal reconstruction for any `Encoder` (CNNs, hybrids, ViTs).

    Parameters
    ----------
    encoder : Encoder
        Used through ``forward_features`` only.
    mask_ratio : float
        Fraction of each lead's spans zeroed, in (0, 1).
    span : int
        Span length in samples (25 = 0.25 s at 100 Hz: about a QRS complex and its surroundings).
    decoder_channels : int
        Width of the upsampling decoder.
    """

    def __init__(self, encoder: Encoder, mask_ratio: float = 0.5, span: int = 25,
                 decoder_channels: int = 64) -> None:
        super().__init__()
        n_masked(2, mask_ratio)
        if span < 1:
            raise ValueError(f"MaskedSignalModel: span={span} must be >= 1")
        self.encoder, self.mask_ratio, self.span = encoder, mask_ratio, span
        c = decoder_channels
        self.decoder_in = nn.Conv1d(encoder.feature_dim, c, 1)
        self.decoder = nn.Sequential(
            nn.Conv1d(c, c, 5, padding=2), nn.GELU(), nn.Conv1d(c, c, 5, padding=2), nn.GELU(),
            nn.Conv1d(c, encoder.in_leads, 1))

    def patchify(self, x: Tensor) -> Tensor:
        """``x [B, L, T] -> [B, L, S, span]`` with ``S = ceil(T / span)`` (the tail zero-padded)."""
        b, n_leads, t = x.shape
        s = -(-t // self.span)
        return F.pad(x, (0, s * self.span - t)).reshape(b, n_leads, s, self.span)

    def random_masking(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Boolean ``[B, L, T]``: per lead, ``n_masked(S, ratio)`` of its ``S`` spans are True."""
        b, n_leads, t = x.shape
        s = -(-t // self.span)
        spans = unit_mask(b * n_leads, s, self.mask_ratio, generator, x.device)
        return spans.reshape(b, n_leads, s).repeat_interleave(self.span, dim=2)[..., :t]

    def forward_encoder(self, x: Tensor, mask: Tensor) -> Tensor:
        """Masked input ``[B, L, T]`` (masked samples set to 0, the scaled mean) -> ``[B, D, T']``."""
        return self.encoder.forward_features(x.masked_fill(mask, 0.0))

    def forward_decoder(self, features: Tensor, length: int) -> Tensor:
        """``[B, D, T'] -> [B, L, length]``: 1x1 projection, linear upsampling, two convs."""
        h = F.interpolate(self.decoder_in(features), size=length, mode="linear", align_corners=False)
        return self.decoder(h)

    def forward_loss(self, x: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error over masked samples: x, pred ``[B, L, T]``, mask ``[B, L, T]``."""
        m = mask.to(x.dtype)
        return ((pred - x).pow(2) * m).sum() / m.sum()

    def forward(self, x: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """``x [B, L, T]`` -> (loss, {"pred": [B, L, T], "mask": [B, L, T]})."""
        mask = self.random_masking(x, generator)
        pred = self.forward_decoder(self.forward_encoder(x, mask), x.shape[-1])
        return self.forward_loss(x, pred, mask), {"pred": pred, "mask": mask}
