"""Inception1d of the PTB-XL benchmark (Strodthoff et al. 2021), after InceptionTime
(Fawaz et al. 2020).

Each inception block runs a 1x1 bottleneck (32 channels) into three parallel convolutions and
adds a max-pool -> 1x1 conv branch; the four branches of ``nb_filters`` channels are
concatenated and passed through BN + ReLU. A residual shortcut (1x1 conv + BN, then ReLU) spans
every three blocks. The benchmark passes ``kernel_size=40`` at 100 Hz, which gives branch
kernels 39, 19 and 9 (even sizes are decremented to keep 'same' padding).

There is no downsampling: ``T' = T``. `embed` is concat max+mean pooling, as in the benchmark
head, so ``embed_dim = 2 * feature_dim = 2 * 4 * nb_filters``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ecgrisk.models.layers import AdaptiveConcatPool1d, Encoder

__all__ = ["Inception1d", "InceptionBlock1d"]


def _conv(c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> nn.Conv1d:
    return nn.Conv1d(
        c_in, c_out, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, bias=False
    )


class InceptionBlock1d(nn.Module):
    """Bottleneck -> parallel convs with ``kernel_sizes`` + maxpool branch -> BN -> ReLU.

    ``[B, c_in, T] -> [B, (len(kernel_sizes) + 1) * nb_filters, T]``.
    """

    def __init__(
        self, c_in: int, nb_filters: int, kernel_sizes: tuple[int, ...], bottleneck_size: int = 32
    ) -> None:
        super().__init__()
        if bottleneck_size > 0:
            self.bottleneck: nn.Module = _conv(c_in, bottleneck_size, 1)
            c_branch = bottleneck_size
        else:
            self.bottleneck = nn.Identity()
            c_branch = c_in
        self.convs = nn.ModuleList([_conv(c_branch, nb_filters, k) for k in kernel_sizes])
        self.pool_branch = nn.Sequential(
            nn.MaxPool1d(3, stride=1, padding=1), _conv(c_in, nb_filters, 1)
        )
        self.bn_relu = nn.Sequential(
            nn.BatchNorm1d((len(kernel_sizes) + 1) * nb_filters), nn.ReLU()
        )

    def forward(self, x: Tensor) -> Tensor:
        bottled = self.bottleneck(x)
        branches = [conv(bottled) for conv in self.convs] + [self.pool_branch(x)]
        return self.bn_relu(torch.cat(branches, dim=1))


class _Shortcut1d(nn.Module):
    """Residual connection: ``ReLU(out + BN(conv1x1(inp)))``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = _conv(c_in, c_out, 1)
        self.bn = nn.BatchNorm1d(c_out)
        self.act = nn.ReLU()

    def forward(self, inp: Tensor, out: Tensor) -> Tensor:
        return self.act(out + self.bn(self.conv(inp)))


class Inception1d(Encoder):
    """The benchmark's inception1d backbone as an `Encoder`.

    Parameters
    ----------
    in_leads : int
        Input channels.
    kernel_size : int
        Largest branch kernel before the odd-size adjustment; branches use ``kernel_size``,
        ``kernel_size // 2``, ``kernel_size // 4`` (40 -> 39, 19, 9 at 100 Hz).
    depth : int
        Number of inception blocks; a multiple of 3 when ``use_residual``.
    nb_filters : int
        Channels per branch; ``feature_dim = 4 * nb_filters``.
    bottleneck_size : int
        Width of the 1x1 bottleneck (0 disables it).
    use_residual : bool
        Add a shortcut every three blocks.
    """

    def __init__(
        self,
        in_leads: int = 12,
        kernel_size: int = 40,
        depth: int = 6,
        nb_filters: int = 32,
        bottleneck_size: int = 32,
        use_residual: bool = True,
    ) -> None:
        super().__init__()
        if depth < 1 or (use_residual and depth % 3 != 0):
            raise ValueError(
                f"Inception1d: depth must be >= 1 and a multiple of 3 with use_residual, got {depth}"
            )
        if kernel_size < 4:
            raise ValueError(f"Inception1d: kernel_size must be >= 4, got {kernel_size}")
        self.in_leads = in_leads
        self.depth = depth
        self.use_residual = use_residual
        self.kernel_sizes = tuple(
            k - 1 if k % 2 == 0 else k for k in (kernel_size, kernel_size // 2, kernel_size // 4)
        )
        width = (len(self.kernel_sizes) + 1) * nb_filters
        self.blocks = nn.ModuleList(
            [
                InceptionBlock1d(
                    in_leads if d == 0 else width, nb_filters, self.kernel_sizes, bottleneck_size
                )
                for d in range(depth)
            ]
        )
        n_short = depth // 3 if use_residual else 0
        self.shortcuts = nn.ModuleList(
            [_Shortcut1d(in_leads if i == 0 else width, width) for i in range(n_short)]
        )
        self.feature_dim = width
        self.embed_dim = 2 * width
        self.concat_pool = AdaptiveConcatPool1d()

    def forward_features(self, x: Tensor) -> Tensor:
        """``x [B, in_leads, T] -> [B, feature_dim, T]``."""
        self.check_input(x)
        residual = x
        for d, block in enumerate(self.blocks):
            x = block(x)
            if self.use_residual and d % 3 == 2:
                x = self.shortcuts[d // 3](residual, x)
                residual = x
        return x

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """One group per residual unit of three blocks (with its shortcut), input first."""
        groups = []
        for start in range(0, self.depth, 3):
            params = [p for b in self.blocks[start : start + 3] for p in b.parameters()]
            if self.use_residual:
                params += list(self.shortcuts[start // 3].parameters())
            groups.append(params)
        return groups

    def pool(self, features: Tensor) -> Tensor:
        """Concat max+mean pooling: ``[B, D, T] -> [B, 2D]``."""
        return self.concat_pool(features)
