"""1D xresnet of the PTB-XL benchmark (Strodthoff et al. 2021, IEEE JBHI).

The benchmark adapts fastai's xresnet (He et al. 2019, "Bag of tricks") to 1D ECGs:

- stem of three ConvBNReLU layers (kernel 5, the first with stride 2, widths 32-32-64)
  followed by max-pooling (kernel 3, stride 2);
- four stages of residual blocks, the first at stride 1 and the others at stride 2; every stage
  is 64 channels wide (times the block expansion), unlike the 64-128-256-512 of the 2D model;
- bottleneck blocks (expansion 4) for depths >= 50, basic blocks (expansion 1) below;
- identity path = AvgPool(2) then 1x1 ConvBN when the shape changes;
- zero-initialised last BN in every residual branch; Kaiming-normal conv init.

At 100 Hz the total downsampling is 32x: 250 samples -> 8 steps, 1000 -> 32.
`embed` is the benchmark head's concat pooling (max and mean), so ``embed_dim = 2 * feature_dim``;
with ``pooling="stages"`` it concat-pools every stage's output, not only the last one's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ecgrisk.models.layers import AdaptiveConcatPool1d, ConvBNAct, Encoder, init_cnn

__all__ = ["XResNet1d", "ResBlock1d", "HalvingAvgPool1d"]


class HalvingAvgPool1d(nn.Module):
    """``nn.AvgPool1d(2, ceil_mode=True)`` as the mean of neighbouring pairs.

    ``[B, C, T] -> [B, C, ceil(T / 2)]``, also on a row image ``[B, C, 1, T]``.

    The same values bit for bit, in fp32 and bf16 (the pair's sum is exact before the one
    rounding, as in the pooling kernel), at 4-6x its speed on the CPU, where torch's pooling
    kernel took 13% of the shipped xresnet1d101's forward pass. A last odd sample is its own
    mean, as ceil mode pools it.
    """

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[-1]
        pairs = (x[..., 0 : n - 1 : 2] + x[..., 1::2]) * 0.5
        return torch.cat([pairs, x[..., n - 1 :]], dim=-1) if n % 2 else pairs


class ResBlock1d(nn.Module):
    """xresnet residual block.

    Parameters
    ----------
    expansion : int
        1 for basic blocks (two k-convs), 4 for bottlenecks (1x1, k, 1x1).
    c_in, width : int
        Input channels and inner width; output channels are ``width * expansion``.
    stride : int
        1 or 2: stride of the k-conv (and of the identity path's average pool).
    kernel_size : int
        Kernel size of the k-convs.
    """

    def __init__(
        self, expansion: int, c_in: int, width: int, stride: int = 1, kernel_size: int = 5
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ResBlock1d: stride must be 1 or 2, got {stride}")
        c_out = width * expansion
        if expansion == 1:
            layers = [
                ConvBNAct(c_in, width, kernel_size, stride=stride),
                ConvBNAct(width, c_out, kernel_size, act=False, zero_bn=True),
            ]
        else:
            layers = [
                ConvBNAct(c_in, width, 1),
                ConvBNAct(width, width, kernel_size, stride=stride),
                ConvBNAct(width, c_out, 1, act=False, zero_bn=True),
            ]
        self.convs = nn.Sequential(*layers)
        idpath: list[nn.Module] = []
        if stride == 2:
            # ceil(T / 2), the strided conv's length
            idpath.append(HalvingAvgPool1d())
        if c_in != c_out:
            idpath.append(ConvBNAct(c_in, c_out, 1, act=False))
        self.idpath = nn.Sequential(*idpath)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, c_in, T] -> [B, width * expansion, ceil(T / stride)]``."""
        return self.act(self.convs(x) + self.idpath(x))


class XResNet1d(Encoder):
    """The benchmark's xresnet1d as an `Encoder` (no head).

    Parameters
    ----------
    layers : sequence of int
        Blocks per stage, e.g. ``[3, 4, 6, 3]`` (xresnet1d50) or ``[3, 4, 23, 3]`` (101).
    expansion : int
        4 (bottleneck) or 1 (basic block).
    in_leads : int
        Input channels.
    base_channels : int
        Width of the stem output and of every stage before expansion (64 in the benchmark);
        the stem is ``base/2, base/2, base``. Lower it for narrow test/demo models.
    kernel_size : int
        Kernel of the residual blocks (5 in the benchmark).
    kernel_size_stem : int
        Kernel of the stem convs (5 in the benchmark).
    pooling : {"last", "stages"}
        What `embed` pools: the last stage's output (the benchmark), or every stage's, side by
        side (``embed_dim = 2 * len(layers) * feature_dim``: every stage is as wide as the
        last). Earlier stages hold features the last one has abstracted away: with 1% of
        PTB-XL's superdiagnostic labels, every stage under a linear head, windows averaged,
        scored about 0.02 above the benchmark's recipe on fold 9, from the contrastive encoder
        and from random init alike (``results/label_efficiency_1pct_stages.md``). Adds no
        weights, so an encoder pretrained with either pooling loads.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        expansion: int = 4,
        in_leads: int = 12,
        base_channels: int = 64,
        kernel_size: int = 5,
        kernel_size_stem: int = 5,
        pooling: str = "last",
    ) -> None:
        super().__init__()
        if expansion not in (1, 4):
            raise ValueError(f"XResNet1d: expansion must be 1 or 4, got {expansion}")
        if base_channels < 2 or len(layers) == 0 or min(layers) < 1:
            raise ValueError(
                f"XResNet1d: need base_channels >= 2 and >= 1 block per stage, got "
                f"base_channels={base_channels}, layers={list(layers)}"
            )
        if kernel_size % 2 == 0 or kernel_size_stem % 2 == 0:
            raise ValueError(
                f"XResNet1d: kernel sizes must be odd for 'same' padding, got "
                f"kernel_size={kernel_size}, kernel_size_stem={kernel_size_stem}"
            )
        if pooling not in ("last", "stages"):
            raise ValueError(f"XResNet1d: pooling must be 'last' or 'stages', got {pooling!r}")
        self.in_leads = in_leads
        self.pooling = pooling
        stem_widths = [in_leads, base_channels // 2, base_channels // 2, base_channels]
        self.stem = nn.Sequential(
            *[
                ConvBNAct(
                    stem_widths[i], stem_widths[i + 1], kernel_size_stem, stride=2 if i == 0 else 1
                )
                for i in range(3)
            ],
            nn.MaxPool2d(kernel_size=(1, 3), stride=(1, 2), padding=(0, 1)),
        )
        stages = []
        c_in = base_channels
        for i, n_blocks in enumerate(layers):
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(ResBlock1d(expansion, c_in, base_channels, stride, kernel_size))
                c_in = base_channels * expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.feature_dim = c_in
        # every stage ends at c_in channels: "stages" pools len(layers) outputs of that width
        self.embed_dim = 2 * c_in * (len(layers) if pooling == "stages" else 1)
        self.concat_pool = AdaptiveConcatPool1d()
        # init_cnn only touches conv/linear weights, so the zero-BN init above survives
        init_cnn(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """``x [B, in_leads, T] -> [B, feature_dim, ~T / 32]``."""
        return self.stages(self._stem(x)).squeeze(2)

    def _stem(self, x: Tensor) -> Tensor:
        self.check_input(x)
        # a row image [B, C, 1, T] in channels-last memory, which oneDNN convolves faster than
        # [B, C, T] (RowConv1d)
        return self.stem(x.unsqueeze(2).contiguous(memory_format=torch.channels_last))

    def embed(self, x: Tensor) -> Tensor:
        """``[B, in_leads, T] -> [B, embed_dim]``: the last stage pooled, or every stage."""
        if self.pooling == "last":
            return super().embed(x)
        h, pooled = self._stem(x), []
        for stage in self.stages:
            h = stage(h)
            pooled.append(self.pool(h.squeeze(2)))
        return torch.cat(pooled, dim=1)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """``[stem, stage 1, ..., stage n]`` parameters (the benchmark's layer split)."""
        return [list(self.stem.parameters())] + [list(st.parameters()) for st in self.stages]

    def pool(self, features: Tensor) -> Tensor:
        """Concat max+mean pooling: ``[B, D, T'] -> [B, 2D]``."""
        return self.concat_pool(features)
