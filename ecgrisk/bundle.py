"""Files that cross stage boundaries: the model bundle (``model.pt``) and the encoder file (``encoder.pt``).

Both are plain dicts of tensors, strings and numbers, so ``torch.load(path, weights_only=True)``
reads them: loading a bundle never runs code from the file. A SHA-256 digest over the weights
and the metadata is stored inside; a bundle whose tensors or metadata were altered after it was
written is refused. Finding a file by path or shipped name (:func:`resolve`) and
:class:`BundleError` live in :mod:`ecgrisk.bundle_files`, which does not import torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgrisk.bundle_files import KINDS, BundleError, check_kind, resolve
from ecgrisk.files import atomic_path
from ecgrisk.models.classifier import ECGClassifier
from ecgrisk.models.ensemble import EnsembleClassifier
from ecgrisk.preprocess import Preprocessing, Scaler

BUNDLE_FORMAT = 1
ENCODER_FORMAT = 1


def _digest(meta: dict, state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load(path: str | os.PathLike, kind: str) -> dict:
    """The verified contents of a ``kind`` ('bundle' or 'encoder') file, given by path or name."""
    label = KINDS[kind]
    path = resolve(path, kind)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise BundleError(f"{path}: refused: not loadable with weights_only=True, so it may run "
                          f"code on load ({str(e).splitlines()[0]})") from e
    except Exception as e:
        raise BundleError(f"{path}: not a readable {label} ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or "meta" not in obj or "state_dict" not in obj:
        raise BundleError(f"{path}: not an ecgrisk {label} (missing meta/state_dict)")
    if obj.get("sha256") != _digest(obj["meta"], obj["state_dict"]):
        raise BundleError(f"{path}: refused: its weights or metadata were altered after it was "
                          f"written (SHA-256 digest mismatch)")
    check_kind(path, obj["meta"].get("kind"), kind)
    return obj


# -- encoder files (pretraining -> fine-tuning) ----------------------------------------------
def save_encoder(path: str | os.PathLike, encoder: torch.nn.Module, extra: dict | None = None) -> None:
    """Write ``encoder.pt``: weights + the spec that rebuilds the architecture."""
    meta = {"kind": "encoder", "format": ENCODER_FORMAT, "spec": dict(encoder.spec), **(extra or {})}
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    _atomic_save({"meta": meta, "state_dict": state, "sha256": _digest(meta, state)}, Path(path))


def load_encoder_weights(encoder: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load ``encoder.pt`` into ``encoder``; a different architecture is a clear error."""
    obj = _load(path, "encoder")
    spec = obj["meta"].get("spec", {})
    if spec.get("name") != encoder.spec.get("name"):
        raise BundleError(f"{path}: holds a {spec.get('name')!r} encoder but the model is "
                          f"{encoder.spec.get('name')!r}; set model={spec.get('name')}")
    own = encoder.state_dict()
    theirs = obj["state_dict"]
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    bad = [f"{k} {tuple(theirs[k].shape)} vs {tuple(own[k].shape)}"
           for k in own if k in theirs and theirs[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise BundleError(f"{path}: encoder weights do not fit the model (spec in file {spec}, "
                          f"model {encoder.spec}); missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}, shape mismatches {bad[:3]}")
    encoder.load_state_dict(theirs)


def encoder_meta(path: str | os.PathLike) -> dict:
    """The metadata of ``encoder.pt`` (spec, objective, preprocessing, scaler, ...), verified."""
    return _load(path, "encoder")["meta"]


def config_value(config: str, key: str, default: Any = None) -> Any:
    """The dotted ``key`` of a bundle's stored run config (YAML); ``default`` where the config
    lacks it or cannot be read."""
    import yaml

    try:
        node = yaml.safe_load(config or "") or {}
    except yaml.YAMLError:
        return default
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return default if node is None else node


def _trained_precision(config: str) -> str:
    """A bundle saved before ``precision`` was stored: the one its fine-tuning config names."""
    return str(config_value(config, "trainer.precision", "32-true"))


# -- model bundles (fine-tuning/refinement -> scoring) -----------------------------------------
def _architecture(model: ECGClassifier | EnsembleClassifier) -> dict:
    return {"members": model.spec} if isinstance(model, EnsembleClassifier) else model.spec


def _build(meta: dict) -> ECGClassifier | EnsembleClassifier:
    """The architecture a bundle's metadata names, to load its state dict into."""
    if "members" in meta:
        return EnsembleClassifier.from_spec(meta["members"])
    return ECGClassifier.from_spec(meta)


@dataclass
class Bundle:
    """Everything scoring needs to turn an ECG into calibrated per-statement risk."""

    model: ECGClassifier | EnsembleClassifier
    classes: list[str]
    preprocessing: Preprocessing
    scaler: Scaler
    temperature: np.ndarray
    bias: np.ndarray | None = None  # per-label calibration bias; zeros when None
    window_s: float = 2.5
    stride_s: float = 1.25
    aggregation: str = "max"
    risk_bands: tuple[float, float] = (0.2, 0.5)
    name: str = "ecgrisk"
    version: str = "0"
    config: str = ""
    base: str = ""
    extra: dict = field(default_factory=dict)
    # the autocast its validation and calibration ran under ("bf16-mixed" or "32-true"): scoring
    # evaluates the same way, or its probabilities drift from the calibrated ones
    precision: str = "32-true"

    def __post_init__(self) -> None:
        self.temperature = np.asarray(self.temperature, dtype=np.float64)
        self.bias = (np.zeros_like(self.temperature) if self.bias is None
                     else np.asarray(self.bias, dtype=np.float64))

    def meta(self) -> dict:
        return {
            "kind": "bundle", "format": BUNDLE_FORMAT, **_architecture(self.model),
            "classes": list(self.classes), "preprocessing": self.preprocessing.to_dict(),
            "scaler": {"mean": self.scaler.mean, "std": self.scaler.std},
            "temperature": [float(t) for t in self.temperature],
            "bias": [float(b) for b in self.bias],
            "window_s": self.window_s, "stride_s": self.stride_s, "aggregation": self.aggregation,
            "risk_bands": list(self.risk_bands), "name": self.name, "version": self.version,
            "config": self.config, "base": self.base, "extra": self.extra,
            "precision": self.precision,
        }

    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def digest(self) -> str:
        """The SHA-256 the saved file would carry (weights and metadata)."""
        return _digest(self.meta(), self._state())

    def save(self, path: str | os.PathLike) -> None:
        meta, state = self.meta(), self._state()
        _atomic_save({"meta": meta, "state_dict": state, "sha256": _digest(meta, state)}, Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Bundle:
        obj = _load(path, "bundle")
        m = obj["meta"]
        if m.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{path}: bundle format {m.get('format')} is not supported "
                              f"(this ecgrisk reads format {BUNDLE_FORMAT})")
        try:
            model = _build(m)
            model.load_state_dict(obj["state_dict"])
        except (RuntimeError, ValueError, TypeError, KeyError) as e:
            raise BundleError(f"{path}: weights do not match the architecture it names: {e}") from e
        model.eval()
        return cls(model=model, classes=list(m["classes"]),
                   preprocessing=Preprocessing.from_dict(m["preprocessing"]),
                   scaler=Scaler(**m["scaler"]), temperature=np.asarray(m["temperature"], np.float64),
                   bias=np.asarray(m["bias"], np.float64),
                   window_s=m["window_s"], stride_s=m["stride_s"], aggregation=m["aggregation"],
                   risk_bands=tuple(m["risk_bands"]), name=m["name"], version=m["version"],
                   config=m["config"], base=m["base"], extra=m.get("extra", {}),
                   precision=m.get("precision") or _trained_precision(m["config"]))
