"""CNN stem + transformer encoder.

Three strided ConvBNReLU blocks (stride 2 each, so ~8x downsampling: 250 samples at 100 Hz
-> 32 steps, 1000 -> 125) turn the ECG into a sequence of ``dim``-wide tokens, one per
80 ms at 100 Hz; position encodings are added and pre-norm transformer blocks with a final
LayerNorm mix them over time.

Positions are sinusoidal by default: they are defined for every length, so a model trained on
2.5 s crops still has meaningful positions on 10 s records; ``positions="learnable"`` gives
a learned table instead. Either way inputs longer than ``max_len`` tokens raise ValueError.
Defaults (``dim=128``, ``depth=4``, ``heads=4``; ~0.9 M parameters) are sized for CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ecgrisk.models.layers import ConvBNAct, Encoder, TransformerBlock, sinusoidal_positions

__all__ = ["HybridEncoder"]


class HybridEncoder(Encoder):
    """Strided CNN stem feeding a transformer encoder.

    Parameters
    ----------
    in_leads : int
        Input channels.
    stem_channels : sequence of int
        Widths of the stem convs before the last one, which outputs ``dim``; every stem conv
        has stride 2, so the stem downsamples by ``2 ** (len(stem_channels) + 1)``.
    stem_kernel : int
        Kernel size of the stem convs (odd).
    dim, depth, heads, mlp_ratio, dropout
        Transformer width, blocks, heads, MLP expansion and dropout.
    positions : {"sinusoidal", "learnable"}
        Kind of position encoding.
    max_len : int
        Maximum number of tokens (time steps after the stem).

    Notes
    -----
    ``feature_dim = embed_dim = dim``; `embed` is the mean over time.
    """

    def __init__(
        self,
        in_leads: int = 12,
        stem_channels: Sequence[int] = (64, 128),
        stem_kernel: int = 7,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        positions: str = "sinusoidal",
        max_len: int = 512,
    ) -> None:
        super().__init__()
        if positions not in ("sinusoidal", "learnable"):
            raise ValueError(
                f"HybridEncoder: positions must be 'sinusoidal' or 'learnable', got {positions!r}"
            )
        if stem_kernel % 2 == 0:
            raise ValueError(f"HybridEncoder: stem_kernel must be odd, got {stem_kernel}")
        self.in_leads = in_leads
        self.dim = dim
        self.max_len = max_len
        self.positions = positions
        self.feature_dim = dim
        self.embed_dim = dim
        widths = [in_leads, *stem_channels, dim]
        self.stem = nn.Sequential(
            *[
                ConvBNAct(widths[i], widths[i + 1], stem_kernel, stride=2)
                for i in range(len(widths) - 1)
            ]
        )
        if positions == "learnable":
            self.pos_embed = nn.Parameter(torch.zeros(1, max_len, dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            # not persistent: a fixed function of (max_len, dim), so checkpoints need not carry it
            self.register_buffer(
                "pos_table", sinusoidal_positions(max_len, dim)[None], persistent=False
            )
        self.blocks = nn.ModuleList(
            [TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)

    def forward_features(self, x: Tensor) -> Tensor:
        """``x [B, in_leads, T] -> [B, dim, T']`` with ``T' = ceil(T / 8)`` by default."""
        self.check_input(x)
        tokens = self.stem(x).transpose(1, 2)  # [B, T', dim]
        n = tokens.shape[1]
        if n > self.max_len:
            raise ValueError(
                f"HybridEncoder: input of {x.shape[-1]} samples gives {n} tokens, more than "
                f"max_len={self.max_len}; build the encoder with a larger max_len"
            )
        pos = self.pos_embed if self.positions == "learnable" else self.pos_table
        tokens = tokens + pos[:, :n].to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens).transpose(1, 2)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """``[stem (+ positions), block 1, ..., block depth]``; the final norm joins the last."""
        stem = list(self.stem.parameters())
        if self.positions == "learnable":
            stem.append(self.pos_embed)
        groups = [stem] + [list(b.parameters()) for b in self.blocks]
        groups[-1] += list(self.norm.parameters())
        return groups

    def pool(self, features: Tensor) -> Tensor:
        """Mean over time: ``[B, dim, T'] -> [B, dim]``."""
        return features.mean(dim=-1)
