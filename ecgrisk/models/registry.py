"""Name -> encoder registry.

One explicit table, `_REGISTRY`, maps each name to an encoder class and the keyword arguments
that define the variant (timm style); `create_encoder` merges the caller's kwargs over them.
Nothing registers itself at import time.

Examples
--------
>>> enc = create_encoder("xresnet1d50", base_channels=16)
>>> enc.spec
{'name': 'xresnet1d50', 'base_channels': 16}
>>> same = create_encoder(**enc.spec)  # same architecture
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from ecgrisk.models.hybrid import HybridEncoder
from ecgrisk.models.inception1d import Inception1d
from ecgrisk.models.layers import Encoder
from ecgrisk.models.s4 import S4Encoder
from ecgrisk.models.vit1d import ViT1d
from ecgrisk.models.xresnet1d import XResNet1d

__all__ = ["create_encoder", "list_encoders"]

_REGISTRY: dict[str, tuple[type[Encoder], dict[str, Any]]] = {
    "xresnet1d18": (XResNet1d, {"layers": [2, 2, 2, 2], "expansion": 1}),
    "xresnet1d50": (XResNet1d, {"layers": [3, 4, 6, 3], "expansion": 4}),
    "xresnet1d101": (XResNet1d, {"layers": [3, 4, 23, 3], "expansion": 4}),
    "inception1d": (Inception1d, {}),
    "vit1d": (ViT1d, {}),
    "hybrid": (HybridEncoder, {}),
    "s4": (S4Encoder, {}),
}


def list_encoders() -> list[str]:
    """Names accepted by `create_encoder`, sorted."""
    return sorted(_REGISTRY)


def _plain(value: Any) -> Any:
    """Turn mappings/sequences (e.g. OmegaConf containers, tuples) into dicts/lists so that
    ``spec`` survives JSON and ``torch.load(weights_only=True)``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


def create_encoder(name: str, **kwargs: Any) -> Encoder:
    """Build a registered encoder.

    Parameters
    ----------
    name : str
        One of `list_encoders()`.
    **kwargs
        Constructor arguments overriding the variant's defaults (e.g. ``in_leads``,
        ``base_channels`` for xresnets, ``dim``/``depth`` for transformers).

    Returns
    -------
    Encoder
        With ``spec = {"name": name, **kwargs}``, so ``create_encoder(**enc.spec)`` rebuilds it.

    Raises
    ------
    ValueError
        Unknown ``name`` (the message lists the available ones) or a keyword the encoder does
        not accept.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(list_encoders())}")
    cls, variant = _REGISTRY[name]
    kwargs = _plain(kwargs)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"create_encoder({name!r}): unknown argument(s) {unknown}; accepted: {sorted(accepted)}"
        )
    encoder = cls(**{**variant, **kwargs})
    encoder.spec = {"name": name, **kwargs}
    return encoder
