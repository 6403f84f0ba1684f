"""Lead-wise patch transformer (ST-MEM style; Na et al. 2024, ICLR).

Each lead is cut into non-overlapping patches of ``patch_size`` samples; one shared linear map
embeds every patch; a learnable time-position embedding (one per patch position, up to
``max_patches``) and a learnable lead embedding are added, so the token grid is
``leads x time``. Tokens are ordered lead-major: token ``l * N + n`` is lead ``l``, patch ``n``.
Pre-norm transformer blocks and a final LayerNorm follow.

Defaults (chosen for CPU, the literature does not fix them at 100 Hz): ``patch_size=25``
(0.25 s at 100 Hz; a 2.5 s crop gives 12 x 10 = 120 tokens, 10 s gives 480),
``max_patches=64`` (16 s), ``dim=192``, ``depth=6``, ``heads=6``, ``mlp_ratio=4`` (~2.7 M
parameters, ViT-Tiny width).

The masked-autoencoder objective uses only the public pieces: `patch_size`, `tokenize`,
`encode_tokens`, `patchify` and `unpatchify`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ecgrisk.models.layers import Encoder, TransformerBlock

__all__ = ["ViT1d"]


class ViT1d(Encoder):
    """Transformer over per-lead 1D patches.

    Parameters
    ----------
    in_leads : int
        Number of leads (one lead embedding each).
    patch_size : int
        Samples per patch. Trailing samples that do not fill a patch are dropped.
    max_patches : int
        Time positions of the position embedding; longer inputs raise ValueError.
    dim, depth, heads, mlp_ratio, dropout
        Transformer width, number of blocks, attention heads, MLP expansion and dropout.

    Notes
    -----
    ``feature_dim = embed_dim = dim``; `forward_features` returns ``[B, dim, L * N]`` over
    all tokens, `embed` their mean.
    """

    def __init__(
        self,
        in_leads: int = 12,
        patch_size: int = 25,
        max_patches: int = 64,
        dim: int = 192,
        depth: int = 6,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if patch_size < 1 or max_patches < 1 or depth < 0:
            raise ValueError(
                f"ViT1d: need patch_size >= 1, max_patches >= 1, depth >= 0; got "
                f"patch_size={patch_size}, max_patches={max_patches}, depth={depth}"
            )
        self.in_leads = in_leads
        self.patch_size = patch_size
        self.max_patches = max_patches
        self.dim = dim
        self.feature_dim = dim
        self.embed_dim = dim
        self.patch_embed = nn.Linear(patch_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_patches, dim))
        self.lead_embed = nn.Parameter(torch.zeros(1, in_leads, dim))
        self.blocks = nn.ModuleList(
            [TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.lead_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def num_patches(self, n_samples: int) -> int:
        """Number of time patches ``N`` for an input of ``n_samples`` samples."""
        n = n_samples // self.patch_size
        if n < 1:
            raise ValueError(
                f"ViT1d: input of {n_samples} samples is shorter than one patch "
                f"(patch_size={self.patch_size})"
            )
        if n > self.max_patches:
            raise ValueError(
                f"ViT1d: input of {n_samples} samples gives {n} patches of {self.patch_size}, "
                f"more than max_patches={self.max_patches}; build the encoder with "
                f"max_patches >= {n} or crop the input to <= "
                f"{self.max_patches * self.patch_size} samples"
            )
        return n

    def patchify(self, x: Tensor) -> Tensor:
        """Cut each lead into patches.

        Parameters
        ----------
        x : Tensor
            ``[B, L, T]``.

        Returns
        -------
        Tensor
            ``[B, L * N, patch_size]`` with ``N = T // patch_size``, lead-major.
        """
        self.check_input(x)
        b, n_leads, t = x.shape
        n = self.num_patches(t)
        return x[..., : n * self.patch_size].reshape(b, n_leads * n, self.patch_size)

    def unpatchify(self, patches: Tensor, n_leads: int | None = None) -> Tensor:
        """Inverse of `patchify`: ``[B, L * N, patch_size] -> [B, L, N * patch_size]``.

        ``n_leads`` defaults to `in_leads`.
        """
        n_leads = self.in_leads if n_leads is None else n_leads
        if patches.dim() != 3 or patches.shape[2] != self.patch_size or patches.shape[1] % n_leads:
            raise ValueError(
                f"ViT1d.unpatchify: expected [B, {n_leads} * N, {self.patch_size}], "
                f"got {tuple(patches.shape)}"
            )
        b, k, p = patches.shape
        return patches.reshape(b, n_leads, (k // n_leads) * p)

    def tokenize(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch embedding plus time-position and lead embeddings.

        Parameters
        ----------
        x : Tensor
            ``[B, L, T]`` with ``L = in_leads``.

        Returns
        -------
        tokens : Tensor
            ``[B, L * N, dim]``, lead-major (token ``l * N + n``).
        grid : tuple of int
            ``(L, N)``.
        """
        patches = self.patchify(x)
        b, n_leads = x.shape[0], x.shape[1]
        n = patches.shape[1] // n_leads
        tokens = self.patch_embed(patches).reshape(b, n_leads, n, self.dim)
        tokens = tokens + self.pos_embed[:, None, :n, :] + self.lead_embed[:, :, None, :]
        return tokens.reshape(b, n_leads * n, self.dim), (n_leads, n)

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """Transformer blocks and final norm on any set of tokens: ``[B, K, dim] -> [B, K, dim]``."""
        if tokens.dim() != 3 or tokens.shape[2] != self.dim:
            raise ValueError(
                f"ViT1d.encode_tokens: expected [B, K, {self.dim}], got {tuple(tokens.shape)}"
            )
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward_features(self, x: Tensor) -> Tensor:
        """``x [B, L, T] -> [B, dim, L * (T // patch_size)]``."""
        tokens, _ = self.tokenize(x)
        return self.encode_tokens(tokens).transpose(1, 2)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """``[embeddings, block 1, ..., block depth]``; the final norm joins the last group."""
        groups = [[*self.patch_embed.parameters(), self.pos_embed, self.lead_embed]]
        groups += [list(b.parameters()) for b in self.blocks]
        groups[-1] += list(self.norm.parameters())
        return groups

    def pool(self, features: Tensor) -> Tensor:
        """Mean over tokens: ``[B, dim, K] -> [B, dim]``."""
        return features.mean(dim=-1)
