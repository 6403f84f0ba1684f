"""ECG encoders (xresnet1d, inception1d, ViT-1D, CNN+transformer hybrid, S4 state-space) and the
classifier.

Every encoder implements `Encoder`: ``forward_features(x [B, leads, T]) -> [B, D, T']`` and
``embed(x) -> [B, embed_dim]``; build them by name with `create_encoder`.
"""

from __future__ import annotations

from ecgrisk.models.classifier import ECGClassifier
from ecgrisk.models.hybrid import HybridEncoder
from ecgrisk.models.inception1d import Inception1d
from ecgrisk.models.layers import Encoder
from ecgrisk.models.registry import create_encoder, list_encoders
from ecgrisk.models.s4 import S4Encoder
from ecgrisk.models.vit1d import ViT1d
from ecgrisk.models.xresnet1d import XResNet1d

__all__ = [
    "ECGClassifier",
    "Encoder",
    "HybridEncoder",
    "Inception1d",
    "S4Encoder",
    "ViT1d",
    "XResNet1d",
    "create_encoder",
    "list_encoders",
]
