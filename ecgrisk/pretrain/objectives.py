"""Self-supervised objectives on unlabeled ECGs: masked reconstruction, contrastive views,
contrastive predictive coding and latent prediction (JEPA).

`build_objective` turns an ``ssl`` config node (``conf/ssl/*.yaml``) and an encoder into the
objective module that :class:`ecgrisk.pretrain.module.PretrainModule` trains; every objective keeps the
encoder as ``.encoder`` and returns ``(loss, info)`` from ``forward(x [B, L, T], generator)``.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ecgrisk.models.vit1d import ViT1d
from ecgrisk.pretrain.augment import build_augment
from ecgrisk.pretrain.contrastive import ContrastiveModel
from ecgrisk.pretrain.cpc import CPCModel
from ecgrisk.pretrain.jepa import LatentPredictionModel
from ecgrisk.pretrain.masked import MASKINGS, MaskedAutoencoder, MaskedSignalModel

__all__ = ["OBJECTIVES", "build_objective"]

OBJECTIVES = ("masked", "contrastive", "cpc", "jepa")


def build_objective(ssl: Mapping, encoder: nn.Module, fs: float = 100.0) -> nn.Module:
    """The objective an ``ssl`` config node describes, wrapped around ``encoder``.

    Parameters
    ----------
    ssl : mapping
        ``name: masked`` with ``kind`` (``auto``: the patch MAE for ``vit1d``, masked signal
        spans otherwise; or ``patch``/``signal``), ``masking``, ``mask_ratio``, ``norm_target``,
        ``decoder`` {dim, depth, heads}, ``signal`` {mask_ratio, span_s, channels}; or
        ``name: contrastive`` with ``temperature``, ``proj_dim``, ``hidden_dim``, ``view_s``
        and ``augment`` (see `build_augment`); or ``name: cpc`` with ``segment_s``,
        ``window_s``, ``steps``, ``proj_dim``, ``context_dim``; or ``name: jepa`` with
        ``mask_ratio``, ``span_s``, ``predictor_channels``, ``momentum``.
    encoder : Encoder
    fs : sampling rate the encoder sees, for settings given in seconds.
    """
    name = ssl.get("name")
    if name == "masked":
        kind = ssl.get("kind", "auto")
        if kind == "auto":
            kind = "patch" if isinstance(encoder, ViT1d) else "signal"
        masking = ssl.get("masking", "random")
        if masking not in MASKINGS:
            raise ValueError(f"ssl.masking must be one of {', '.join(MASKINGS)}, got {masking!r}")
        if kind == "signal" and masking != "random":
            # said, not ignored: the other encoders hide time spans of each lead (ssl.signal.*)
            raise ValueError(f"ssl.masking={masking} chooses what the patch MAE of vit1d hides; "
                             f"{type(encoder).__name__} is pretrained by masked signal spans "
                             "(ssl.signal.mask_ratio, ssl.signal.span_s)")
        if kind == "patch":
            dec = ssl.get("decoder") or {}
            return MaskedAutoencoder(encoder, masking=masking,
                                     mask_ratio=float(ssl.get("mask_ratio", 0.75)),
                                     decoder_dim=int(dec.get("dim", 64)),
                                     decoder_depth=int(dec.get("depth", 2)),
                                     decoder_heads=int(dec.get("heads", 4)),
                                     norm_target=bool(ssl.get("norm_target", False)))
        if kind == "signal":
            sig = ssl.get("signal") or {}
            return MaskedSignalModel(encoder, mask_ratio=float(sig.get("mask_ratio", 0.5)),
                                     span=max(1, round(float(sig.get("span_s", 0.25)) * fs)),
                                     decoder_channels=int(sig.get("channels", 64)))
        raise ValueError(f"ssl.kind must be auto, patch or signal, got {kind!r}")
    if name == "contrastive":
        spec = {"crop": {"seconds": float(ssl.get("view_s", 2.5))}, **(ssl.get("augment") or {})}
        return ContrastiveModel(encoder, build_augment(spec, fs),
                                proj_dim=int(ssl.get("proj_dim", 128)),
                                hidden_dim=int(ssl.get("hidden_dim", 256)),
                                temperature=float(ssl.get("temperature", 0.1)))
    if name == "cpc":
        model = CPCModel(encoder, window=max(1, round(float(ssl.get("window_s", 1.0)) * fs)),
                         steps=int(ssl.get("steps", 4)), proj_dim=int(ssl.get("proj_dim", 128)),
                         context_dim=int(ssl.get("context_dim", 256)))
        segment_s = ssl.get("segment_s")
        # fail at start-up, in the config's own terms, rather than at the first batch
        if segment_s is not None and round(float(segment_s) * fs) < model.min_length:
            raise ValueError(f"ssl.segment_s={segment_s} is too short for CPC: steps={model.steps} "
                             f"needs {model.steps + 1} windows of ssl.window_s="
                             f"{ssl.get('window_s', 1.0)} s, so segment_s >= {model.min_length / fs:g}")
        return model
    if name == "jepa":
        return LatentPredictionModel(encoder, mask_ratio=float(ssl.get("mask_ratio", 0.5)),
                                     span=max(1, round(float(ssl.get("span_s", 0.5)) * fs)),
                                     predictor_channels=int(ssl.get("predictor_channels", 256)),
                                     momentum=float(ssl.get("momentum", 0.996)))
    raise ValueError(f"unknown ssl objective {name!r}; choose one of {OBJECTIVES}")
