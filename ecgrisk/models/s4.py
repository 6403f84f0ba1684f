"""A structured state-space encoder: S4D layers (Gu et al. 2022, "On the parameterization and
initialization of diagonal state space models") in plain PyTorch, no custom kernels.

Each channel ``h`` of an S4D layer is a linear state-space model
``x'(t) = A x(t) + B u(t), y(t) = Re(C x(t)) + D u(t)`` with a diagonal complex ``A`` of
``d_state / 2`` modes (their conjugates are implied, hence the factor 2 below), discretised with
step ``dt_h`` by zero-order hold. Unrolled over ``L`` samples it is a convolution with the kernel

    K[h, l] = 2 Re( sum_n C[h, n] (exp(dt A[h, n]) - 1) / A[h, n] * exp(dt A[h, n] l) ),

computed at once from a Vandermonde product and applied by FFT, so a layer sees the whole
recording at O(L log L) cost. Bidirectional layers add a second kernel run backwards in time
(a classifier may look both ways). S4D-Lin initialisation: ``A = -1/2 + i pi n``, ``B = 1``
(folded into ``C``), ``log dt`` uniform in [log 1e-3, log 1e-1].

Block: S4D -> GELU -> dropout -> pointwise linear to 2H -> GLU -> residual -> LayerNorm. The
encoder is a 1x1 convolution from the leads to ``d_model`` channels, ``n_layers`` blocks at the
input's own sample rate (``T' = T``), and mean pooling; the PTB-XL state-space models
(Mehari & Strodthoff 2023) use 4 layers, ``d_state`` 8 and ``d_model`` 512.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ecgrisk.models.layers import Encoder

__all__ = ["S4D", "S4Encoder"]


class S4D(nn.Module):
    """Diagonal state-space convolution over time, one SSM per channel.

    ``[B, H, L] -> [B, H, L]``; runs in float32 whatever the autocast (FFTs have no bf16).
    """

    def __init__(self, d_model: int, d_state: int = 8, bidirectional: bool = True,
                 dt_min: float = 1e-3, dt_max: float = 1e-1) -> None:
        super().__init__()
        if d_state < 2 or d_state % 2:
            raise ValueError(f"S4D: d_state must be even and >= 2 (conjugate pairs), got {d_state}")
        self.bidirectional = bidirectional
        kernels, modes = (2 if bidirectional else 1) * d_model, d_state // 2
        self.log_dt = nn.Parameter(
            torch.rand(kernels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.log_neg_a_real = nn.Parameter(torch.full((kernels, modes), math.log(0.5)))
        self.a_imag = nn.Parameter(math.pi * torch.arange(modes, dtype=torch.float32).repeat(kernels, 1))
        self.c = nn.Parameter(torch.randn(kernels, modes, 2) * math.sqrt(0.5))  # real, imaginary
        self.d = nn.Parameter(torch.randn(d_model))

    def kernel(self, length: int) -> Tensor:
        """``[kernels, length]``: the SSM's response to a unit impulse, per channel (and direction)."""
        dt = self.log_dt.exp()[:, None]
        a = torch.complex(-self.log_neg_a_real.exp(), self.a_imag)
        dt_a = a * dt
        c = torch.view_as_complex(self.c) * (dt_a.exp() - 1) / a  # ZOH: B-bar folded into C
        steps = torch.arange(length, device=a.device, dtype=torch.float32)
        vandermonde = torch.exp(dt_a[..., None] * steps)  # [kernels, modes, length]
        return 2 * torch.einsum("kn,knl->kl", c, vandermonde).real

    def forward(self, u: Tensor) -> Tensor:
        with torch.autocast(device_type=u.device.type, enabled=False):
            u = u.float()
            length = u.shape[-1]
            k = self.kernel(length)
            if self.bidirectional:
                causal, anticausal = k.chunk(2, dim=0)
                # causal part at lags 0..L-1, anti-causal part (time-reversed) at lags -L..-1
                k = (nn.functional.pad(causal, (0, length))
                     + nn.functional.pad(anticausal.flip(-1), (length, 0)))
            n = 2 * length
            y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :length]
            return y + u * self.d[:, None]


class S4Block(nn.Module):
    """S4D -> GELU -> dropout -> linear to 2H -> GLU, added to the input, then LayerNorm."""

    def __init__(self, d_model: int, d_state: int, bidirectional: bool, dropout: float) -> None:
        super().__init__()
        self.ssm = S4D(d_model, d_state, bidirectional)
        self.mix = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Conv1d(d_model, 2 * d_model, 1),
                                 nn.GLU(dim=1))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mix(self.ssm(x))
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class S4Encoder(Encoder):
    """Leads -> 1x1 conv to ``d_model`` -> ``n_layers`` S4 blocks -> mean over time.

    ``forward_features``: ``[B, in_leads, T] -> [B, d_model, T]``; ``embed_dim = d_model``.
    """

    def __init__(self, in_leads: int = 12, d_model: int = 256, d_state: int = 8, n_layers: int = 4,
                 bidirectional: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_leads = in_leads
        self.feature_dim = self.embed_dim = d_model
        self.stem = nn.Conv1d(in_leads, d_model, 1)
        self.blocks = nn.ModuleList(
            [S4Block(d_model, d_state, bidirectional, dropout) for _ in range(n_layers)])

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.stem.parameters()), *[list(b.parameters()) for b in self.blocks]]

    def pool(self, features: Tensor) -> Tensor:
        return features.mean(-1)
