"""Batch augmentations for contrastive pretraining, on ECG batches ``x [B, L, T]``.

Each augmentation is a small function (``random_crop``, ``baseline_wander``, ``gaussian_noise``,
``amplitude_scale``, ``time_warp``, ``lead_dropout``) plus an ``nn.Module`` wrapper that applies
it to each sample with probability ``p``; `Compose` chains them. All randomness is drawn from
an optional ``torch.Generator``, so two calls with generators seeded alike give identical
views (the default RNG is used when ``generator`` is None). Shapes and dtypes are kept, except
by `random_crop`, which shortens ``T``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "AmplitudeScale",
    "BaselineWander",
    "Compose",
    "GaussianNoise",
    "LeadDropout",
    "RandomCrop",
    "TimeWarp",
    "amplitude_scale",
    "baseline_wander",
    "build_augment",
    "gaussian_noise",
    "lead_dropout",
    "random_crop",
    "time_warp",
]


def _check(x: Tensor, who: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{who}: expected a batch [B, leads, T], got {shape}")


def _rand(shape, x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) numbers in ``x``'s dtype and device, drawn from ``generator``'s device."""
    device = generator.device if generator is not None else x.device
    u = torch.rand(shape, generator=generator, device=device)
    return u.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)


def _randn(shape, x: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(shape, generator=generator, device=device).to(device=x.device, dtype=x.dtype)


# -- functions ----------------------------------------------------------------------------------
def random_crop(x: Tensor, length: int, generator: torch.Generator | None = None) -> Tensor:
    """A random window of ``length`` samples per sample: ``[B, L, T] -> [B, L, length]``.

    Every sample of the batch gets its own start, so two calls give two different crops of the
    same recording (the CLOCS positive pair). ``length`` must not exceed ``T``.
    """
    _check(x, "random_crop")
    b, n_leads, t = x.shape
    if not 1 <= length <= t:
        raise ValueError(f"random_crop: length={length} must be in [1, T={t}]")
    start = (_rand((b,), x, generator).float() * (t - length + 1)).long().clamp_(max=t - length)
    idx = start[:, None] + torch.arange(length, device=x.device)[None, :]
    return x.gather(2, idx[:, None, :].expand(b, n_leads, length))


def baseline_wander(x: Tensor, amplitude: float = 0.1, fs: float = 100.0, max_freq: float = 0.5,
                    generator: torch.Generator | None = None) -> Tensor:
    """Add one slow sinusoid per sample and lead (respiration-like drift below ``max_freq`` Hz).

    Amplitudes are uniform in ``[0, amplitude]`` (in the units of ``x``), frequencies uniform in
    ``[0.05, max_freq]`` Hz, phases uniform.
    """
    _check(x, "baseline_wander")
    b, n_leads, t = x.shape
    amp = _rand((b, n_leads, 1), x, generator) * amplitude
    freq = 0.05 + _rand((b, n_leads, 1), x, generator) * max(max_freq - 0.05, 0.0)
    phase = _rand((b, n_leads, 1), x, generator) * (2 * math.pi)
    time = torch.arange(t, device=x.device, dtype=x.dtype)[None, None, :] / fs
    return x + amp * torch.sin(2 * math.pi * freq * time + phase)


def gaussian_noise(x: Tensor, std: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    """Add white Gaussian noise of standard deviation ``std``: ``[B, L, T] -> [B, L, T]``."""
    _check(x, "gaussian_noise")
    return x + std * _randn(x.shape, x, generator)


def amplitude_scale(x: Tensor, low: float = 0.8, high: float = 1.2,
                    generator: torch.Generator | None = None) -> Tensor:
    """Multiply each sample (all leads alike, so lead ratios survive) by a factor in ``[low, high]``."""
    _check(x, "amplitude_scale")
    scale = low + (high - low) * _rand((x.shape[0], 1, 1), x, generator)
    return x * scale


def time_warp(x: Tensor, max_stretch: float = 0.1, generator: torch.Generator | None = None) -> Tensor:
    """Stretch or compress time about the centre by a factor in ``[1 - max_stretch, 1 + max_stretch]``.

    Linear interpolation on a per-sample grid; the output keeps ``T`` samples (edges are held
    where a compressed signal runs out), so a heart rate change of up to ``max_stretch`` is
    simulated. ``[B, L, T] -> [B, L, T]``.
    """
    _check(x, "time_warp")
    if not 0 <= max_stretch < 1:
        raise ValueError(f"time_warp: max_stretch={max_stretch} must be in [0, 1)")
    b, n_leads, t = x.shape
    factor = 1 + max_stretch * (2 * _rand((b, 1), x, generator).float() - 1)
    centre = (t - 1) / 2
    grid = torch.arange(t, device=x.device, dtype=torch.float32)[None, :]
    pos = (centre + (grid - centre) * factor).clamp(0, t - 1)  # [B, T] source positions
    lo = pos.floor().long().clamp(max=t - 1)
    hi = (lo + 1).clamp(max=t - 1)
    w = (pos - lo.float()).to(x.dtype)[:, None, :]
    take = lambda i: x.gather(2, i[:, None, :].expand(b, n_leads, t))  # noqa: E731
    return take(lo) * (1 - w) + take(hi) * w


def lead_dropout(x: Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> Tensor:
    """Zero each lead with probability ``p``; every sample keeps at least one lead."""
    _check(x, "lead_dropout")
    b, n_leads, _ = x.shape
    u = _rand((b, n_leads), x, generator)
    drop = u < p
    # the lead with the largest draw is never dropped, so no sample goes blank
    keep_one = torch.nn.functional.one_hot(u.argmax(dim=1), n_leads).bool()
    drop &= ~keep_one
    return x * (~drop).to(x.dtype)[:, :, None]


# -- modules ------------------------------------------------------------------------------------
class _PerSample(nn.Module):
    """Applies ``self.fn`` to a random subset of the batch (each sample with probability ``p``)."""

    def __init__(self, p: float = 1.0) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"{type(self).__name__}: p={p} must be in [0, 1]")
        self.p = p

    def fn(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``[B, L, T] -> [B, L, T]``."""
        if self.p == 0:
            return x
        y = self.fn(x, generator)
        if self.p == 1:
            return y
        apply = _rand((x.shape[0], 1, 1), x, generator) < self.p
        return torch.where(apply, y, x)


class BaselineWander(_PerSample):
    def __init__(self, amplitude: float = 0.1, fs: float = 100.0, max_freq: float = 0.5,
                 p: float = 1.0) -> None:
        super().__init__(p)
        self.amplitude, self.fs, self.max_freq = amplitude, fs, max_freq

    def fn(self, x, generator):
        return baseline_wander(x, self.amplitude, self.fs, self.max_freq, generator)


class GaussianNoise(_PerSample):
    def __init__(self, std: float = 0.05, p: float = 1.0) -> None:
        super().__init__(p)
        self.std = std

    def fn(self, x, generator):
        return gaussian_noise(x, self.std, generator)


class AmplitudeScale(_PerSample):
    def __init__(self, low: float = 0.8, high: float = 1.2, p: float = 1.0) -> None:
        super().__init__(p)
        if not 0 < low <= high:
            raise ValueError(f"AmplitudeScale: need 0 < low <= high, got low={low}, high={high}")
        self.low, self.high = low, high

    def fn(self, x, generator):
        return amplitude_scale(x, self.low, self.high, generator)


class TimeWarp(_PerSample):
    def __init__(self, max_stretch: float = 0.1, p: float = 1.0) -> None:
        super().__init__(p)
        self.max_stretch = max_stretch

    def fn(self, x, generator):
        return time_warp(x, self.max_stretch, generator)


class LeadDropout(_PerSample):
    def __init__(self, p_lead: float = 0.2, p: float = 1.0) -> None:
        super().__init__(p)
        self.p_lead = p_lead

    def fn(self, x, generator):
        return lead_dropout(x, self.p_lead, generator)


class RandomCrop(nn.Module):
    """`random_crop` as a module: ``[B, L, T] -> [B, L, length]``."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = int(length)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return random_crop(x, self.length, generator)


class Compose(nn.Module):
    """Apply augmentations in order, passing the same generator to each."""

    def __init__(self, augments: Sequence[nn.Module]) -> None:
        super().__init__()
        self.augments = nn.ModuleList(augments)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for aug in self.augments:
            x = aug(x, generator)
        return x


_BUILDERS = {
    "crop": lambda c, fs: RandomCrop(round(float(c["seconds"]) * fs)),
    "time_warp": lambda c, fs: TimeWarp(c.get("max_stretch", 0.1), c.get("p", 1.0)),
    "amplitude_scale": lambda c, fs: AmplitudeScale(c.get("low", 0.8), c.get("high", 1.2),
                                                    c.get("p", 1.0)),
    "baseline_wander": lambda c, fs: BaselineWander(c.get("amplitude", 0.1), fs,
                                                    c.get("max_freq", 0.5), c.get("p", 1.0)),
    "gaussian_noise": lambda c, fs: GaussianNoise(c.get("std", 0.05), c.get("p", 1.0)),
    "lead_dropout": lambda c, fs: LeadDropout(c.get("p_lead", 0.2), c.get("p", 1.0)),
}


def build_augment(spec: Mapping[str, Mapping | None], fs: float = 100.0) -> Compose:
    """A `Compose` from a mapping ``name -> settings`` (None or ``enabled: false`` skips one).

    Names: ``crop`` (``seconds``), ``time_warp`` (``max_stretch``), ``amplitude_scale``
    (``low``, ``high``), ``baseline_wander`` (``amplitude``, ``max_freq``), ``gaussian_noise``
    (``std``), ``lead_dropout`` (``p_lead``); each takes ``p``, the per-sample probability.
    Applied in the mapping's order.

    Examples
    --------
    >>> aug = build_augment({"crop": {"seconds": 2.5}, "gaussian_noise": {"std": 0.05}})
    >>> aug(torch.zeros(4, 12, 500), torch.Generator().manual_seed(0)).shape
    torch.Size([4, 12, 250])
    """
    mods = []
    for name, settings in spec.items():
        if name not in _BUILDERS:
            raise ValueError(f"unknown augmentation {name!r}; choose from {sorted(_BUILDERS)}")
        if settings is None or not settings.get("enabled", True):
            continue
        mods.append(_BUILDERS[name](settings, fs))
    return Compose(mods)
