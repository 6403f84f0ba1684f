"""Multi-label ECG classifier: an `Encoder` plus a small head producing one logit per statement."""

from __future__ import annotations

from torch import Tensor, nn

from ecgrisk.models.layers import Encoder
from ecgrisk.models.registry import create_encoder

__all__ = ["ECGClassifier", "HEAD_TYPES"]

HEAD_TYPES = ("linear", "mlp", "benchmark")


def build_head(
    head: str, in_dim: int, num_classes: int, dropout: float = 0.5, hidden: int = 128
) -> nn.Sequential:
    """Classification head on pooled embeddings ``[B, in_dim] -> [B, num_classes]``.

    Parameters
    ----------
    head : {"linear", "mlp", "benchmark"}
        ``linear``: Dropout -> Linear. ``mlp``: Linear -> ReLU -> Dropout -> Linear.
        ``benchmark``: the PTB-XL benchmark head after concat pooling (fastai ``bn_drop_lin``
        twice): BN -> Dropout(p/2) -> Linear(in, hidden) -> ReLU -> BN -> Dropout(p) ->
        Linear(hidden, C).
    in_dim, num_classes : int
        Input embedding size and number of outputs.
    dropout : float
        Dropout probability ``p``.
    hidden : int
        Hidden width of ``mlp`` and ``benchmark`` heads (128 in the benchmark).
    """
    if head not in HEAD_TYPES:
        raise ValueError(f"head must be one of {HEAD_TYPES}, got {head!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if head == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))
    if head == "mlp":
        return nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
    return nn.Sequential(
        nn.BatchNorm1d(in_dim),
        nn.Dropout(dropout / 2),
        nn.Linear(in_dim, hidden),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(hidden),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class ECGClassifier(nn.Module):
    """Encoder + head, one logit per label (use with BCE-with-logits for multi-label tasks).

    Parameters
    ----------
    encoder : Encoder
        Any encoder from `create_encoder`.
    num_classes : int
        Number of outputs.
    dropout : float
        Head dropout.
    head : {"linear", "mlp", "benchmark"}
        Head type, see `build_head`.
    hidden : int
        Hidden width of ``mlp``/``benchmark`` heads.

    Attributes
    ----------
    encoder : Encoder
    head : nn.Sequential
        ``[B, encoder.embed_dim] -> [B, num_classes]``.
    """

    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        dropout: float = 0.5,
        head: str = "linear",
        hidden: int = 128,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, Encoder):
            raise TypeError(
                f"ECGClassifier: encoder must be an ecgrisk Encoder, got {type(encoder).__name__}"
            )
        self.encoder = encoder
        self.num_classes = num_classes
        self.dropout = dropout
        self.head_type = head
        self.hidden = hidden
        self.head = build_head(head, encoder.embed_dim, num_classes, dropout, hidden)

    @property
    def config(self) -> dict:
        """Head settings; ``ECGClassifier(create_encoder(**encoder.spec), **config)`` rebuilds
        the architecture."""
        return {
            "num_classes": self.num_classes,
            "dropout": self.dropout,
            "head": self.head_type,
            "hidden": self.hidden,
        }

    @property
    def spec(self) -> dict:
        """The architecture, ``{"encoder": <registry spec>, "head": <config>}``, as a bundle
        stores it; :meth:`from_spec` rebuilds it."""
        return {"encoder": dict(self.encoder.spec), "head": dict(self.config)}

    @classmethod
    def from_spec(cls, spec: dict) -> ECGClassifier:
        """A freshly initialised classifier of the architecture :attr:`spec` names."""
        encoder = dict(spec["encoder"])
        return cls(create_encoder(encoder.pop("name"), **encoder), **spec["head"])

    def embed(self, x: Tensor) -> Tensor:
        """``x [B, leads, T] -> [B, encoder.embed_dim]``."""
        return self.encoder.embed(x)

    def forward_head(self, embedding: Tensor) -> Tensor:
        """Logits from pooled embeddings: ``[B, embed_dim] -> [B, num_classes]``."""
        return self.head(embedding)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` for ``x [B, leads, T]``."""
        return self.head(self.encoder.embed(x))

    def reset_head(self, num_classes: int, head: str | None = None) -> None:
        """Replace the head with a freshly initialised one for a new label set.

        ``head`` changes the head type; by default the current one is kept. The new head is
        placed on the device and dtype of the old one.
        """
        old = next(self.head.parameters())
        head = self.head_type if head is None else head
        self.head = build_head(head, self.encoder.embed_dim, num_classes, self.dropout, self.hidden)
        self.head.to(device=old.device, dtype=old.dtype)
        self.num_classes = num_classes
        self.head_type = head
