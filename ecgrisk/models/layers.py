"""Building blocks shared by the encoders: the `Encoder` base class, pooling, conv and
transformer blocks.

Every encoder maps an ECG batch ``x [B, leads, T]`` to a feature map ``[B, feature_dim, T']``
(`Encoder.forward_features`) and to a fixed-size vector ``[B, embed_dim]`` (`Encoder.embed`).
"""

from __future__ import annotations

import copy
import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = [
    "Encoder",
    "AdaptiveConcatPool1d",
    "ConvBNAct",
    "RowBatchNorm1d",
    "RowConv1d",
    "TransformerBlock",
    "fold_batchnorm",
    "init_cnn",
    "sinusoidal_positions",
]


class Encoder(nn.Module):
    """Abstract base of all ECG encoders.

    Subclasses set `in_leads`, `feature_dim` and `embed_dim` in ``__init__`` and implement
    `forward_features` and `pool`; `create_encoder` sets `spec`.

    Attributes
    ----------
    in_leads : int
        Number of input leads (channels) the encoder expects.
    feature_dim : int
        Channel count ``D`` of `forward_features` output ``[B, D, T']``.
    embed_dim : int
        Size of the pooled vector returned by `embed`.
    spec : dict
        ``{"name": ..., **kwargs}``; ``create_encoder(**encoder.spec)`` rebuilds the
        same architecture (weights aside).
    """

    in_leads: int
    feature_dim: int
    embed_dim: int

    def __init__(self) -> None:
        super().__init__()
        self.spec: dict = {}

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError unless ``x`` is a float tensor ``[B, in_leads, T]``."""
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{type(self).__name__}: expected a torch.Tensor, got {type(x).__name__}"
            )
        if x.dim() != 3 or x.shape[1] != self.in_leads:
            raise ValueError(
                f"{type(self).__name__}: expected input [batch, {self.in_leads} leads, samples], "
                f"got shape {tuple(x.shape)}"
            )

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature map.

        Parameters
        ----------
        x : Tensor
            ``[B, in_leads, T]`` ECG batch.

        Returns
        -------
        Tensor
            ``[B, feature_dim, T']``.
        """
        raise NotImplementedError

    def pool(self, features: Tensor) -> Tensor:
        """Pool ``[B, feature_dim, T']`` features to ``[B, embed_dim]``."""
        raise NotImplementedError

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters in groups ordered from input to output (stem ... last block).

        For partial fine-tuning (unfreeze the last k groups) and discriminative learning
        rates. This default gives one group per top-level child module; encoders override it
        with their natural stages.
        """
        groups = [list(child.parameters()) for child in self.children()]
        own = list(self._parameters.values())
        return [g for g in [own, *groups] if g]

    def embed(self, x: Tensor) -> Tensor:
        """Pooled embedding ``[B, embed_dim]`` of an ECG batch ``x [B, in_leads, T]``."""
        return self.pool(self.forward_features(x))

    def forward(self, x: Tensor) -> Tensor:
        """Same as `embed`: ``[B, in_leads, T] -> [B, embed_dim]``."""
        return self.embed(x)


class AdaptiveConcatPool1d(nn.Module):
    """Concatenate global max and mean pooling (max first, as the PTB-XL benchmark head does).

    ``[B, C, T] -> [B, 2C]``.
    """

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x.amax(dim=-1), x.mean(dim=-1)], dim=1)


class RowConv1d(nn.Conv1d):
    """``nn.Conv1d`` that also takes a row image ``[B, C, 1, T]``, as the same 2-D convolution.

    On the CPU, oneDNN runs a row image in channels-last memory faster than ``[B, C, T]``, which
    it reorders around every call: the xresnet1d101 1.15-1.5x, inference and training, bf16 and
    fp32 (``results/bench_model_layout.md``), so :class:`XResNet1d` passes its blocks that. Parameters and state dict are those of ``nn.Conv1d``; ``[B, C, T]`` input runs
    as before.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(f"RowConv1d pads with zeros only, got padding_mode={self.padding_mode!r}")

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            return super().forward(x)
        padding = self.padding if isinstance(self.padding, str) else (0, self.padding[0])
        return F.conv2d(x, self.weight.unsqueeze(2), self.bias, (1, self.stride[0]), padding,
                        (1, self.dilation[0]), self.groups)


class RowBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that also takes a row image ``[B, C, 1, T]`` (see :class:`RowConv1d`)."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2D, 3D or 4D input (got {x.dim()}D input)")


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` in eval mode, each BatchNorm that directly follows a
    convolution in an ``nn.Sequential`` folded into that convolution's weight and bias.

    In eval mode such a BatchNorm is a fixed per-channel affine map, so the fold changes the
    function only by rounding (fp32: within 1e-5 of the logits). It saves one pass over every
    feature map: the shipped xresnet1d101 infers 1.13-1.29x as fast on the CPU
    (``results/bench_model_layout.md``). ``model`` itself is left as it is; the copy is for
    inference only (the folded convolutions no longer match a training-mode BatchNorm).
    """
    folded = copy.deepcopy(model).eval()
    for seq in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        for a, b in pairwise(list(seq._modules)):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv1d) and isinstance(bn, nn.BatchNorm1d) \
                    and bn.running_mean is not None and bn.num_features == conv.out_channels:
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    return folded


class ConvBNAct(nn.Sequential):
    """Conv1d (no bias) -> BatchNorm1d -> optional ReLU, 'same' padding for odd kernels; on
    ``[B, C, T]`` or a row image ``[B, C, 1, T]`` (:class:`RowConv1d`).

    ``zero_bn`` initialises the BN scale at 0, so a residual branch ending in this layer starts
    as the identity (the xresnet trick that stabilises deep nets early in training).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: bool = True,
        zero_bn: bool = False,
    ) -> None:
        conv = RowConv1d(
            c_in, c_out, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, bias=False
        )
        bn = RowBatchNorm1d(c_out)
        # fastai's BN init: small positive bias, scale 1 (0 for the last BN of a residual branch)
        with torch.no_grad():
            bn.weight.fill_(0.0 if zero_bn else 1.0)
            bn.bias.fill_(1e-3)
        layers: list[nn.Module] = [conv, bn]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def init_cnn(module: nn.Module) -> None:
    """Kaiming-normal init of every Conv1d/Linear weight and zero biases (fastai ``init_cnn``)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x + MHSA(LN(x))`` then ``x + MLP(LN(x))``.

    Parameters
    ----------
    dim : int
        Token width.
    heads : int
        Attention heads; must divide ``dim``.
    mlp_ratio : float
        Hidden width of the MLP relative to ``dim``.
    dropout : float
        Dropout on attention weights and after each residual branch.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"TransformerBlock: dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, K, dim] -> [B, K, dim]``."""
        b, k, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, k, 3, self.heads, d // self.heads)
        q, kk, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, K, d_head]
        attn = F.scaled_dot_product_attention(
            q, kk, v, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(attn.transpose(1, 2).reshape(b, k, d)))
        return x + self.drop(self.mlp(self.norm2(x)))


def sinusoidal_positions(n: int, dim: int, device=None, dtype=None) -> Tensor:
    """Fixed sine/cosine position table ``[n, dim]`` (Vaswani et al. 2017); ``dim`` must be even."""
    if dim % 2 != 0:
        raise ValueError(f"sinusoidal_positions: dim={dim} must be even")
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    table = torch.zeros(n, dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table if dtype is None else table.to(dtype)
