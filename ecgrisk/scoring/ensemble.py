"""Fine-tuned bundles combined into one bundle that scores as their ensemble (``ecgrisk ensemble``).

The members must read an ECG the same way: the same statements in the same order, the same
preprocessing, windows, aggregation over windows and autocast. The new bundle's model is an
:class:`~ecgrisk.models.ensemble.EnsembleClassifier` (the mean of the members' calibrated
logits) and its own calibration starts as the identity, so its probabilities are the sigmoid of
that mean. Refit it, and the review band, on the validation fold the members were calibrated on
with ``ecgrisk recalibrate``: until then the bundle has no review band.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import yaml

from ecgrisk.bundle import Bundle
from ecgrisk.bundle_files import BundleError, resolve
from ecgrisk.files import file_sha256
from ecgrisk.models.classifier import ECGClassifier
from ecgrisk.models.ensemble import EnsembleClassifier

__all__ = ["ensemble_bundles"]

# what each member must share with the first, and how a difference is named
_SAME = {
    "classes": lambda b: list(b.classes),
    "preprocessing": lambda b: b.preprocessing.to_dict(),
    "windows (window_s, stride_s)": lambda b: (b.window_s, b.stride_s),
    "aggregation": lambda b: b.aggregation,
    "precision": lambda b: b.precision,
}


def ensemble_bundles(paths: list[str | Path], name: str | None = None) -> Bundle:
    """One bundle that scores as the ensemble of the bundles at ``paths`` (files or shipped
    names, each a single fine-tuned model).

    Raises :class:`BundleError` naming the member and what differs where they would read an
    ECG differently.
    """
    if len(paths) < 2:
        raise BundleError(f"an ensemble needs at least 2 bundles, got {len(paths)}")
    members = [Bundle.load(p) for p in paths]
    first = members[0]
    for path, b in zip(paths, members, strict=True):
        if not isinstance(b.model, ECGClassifier):
            raise BundleError(f"{path}: is an ensemble already; list its members instead")
        for what, get in _SAME.items():
            if get(b) != get(first):
                raise BundleError(f"{path}: {what} {get(b)} against {get(first)} in {paths[0]}: "
                                  f"the members must read an ECG the same way")
    # member i sees its own scaling of the ECG the bundle scales with the first's scaler
    s0 = first.scaler
    scale = [s0.std / b.scaler.std for b in members]
    shift = [(s0.mean - b.scaler.mean) / b.scaler.std for b in members]
    model = EnsembleClassifier([b.model for b in members],
                               np.stack([b.temperature for b in members]),
                               np.stack([b.bias for b in members]), scale, shift).eval()
    listed = [{"path": str(p), "sha256": file_sha256(resolve(p, "bundle")), "name": b.name,
               "version": b.version} for p, b in zip(paths, members, strict=True)]
    # the first member's data section: its task, folds and label rules are the members' own
    data = (yaml.safe_load(first.config) or {}).get("data", {}) if first.config else {}
    config = yaml.safe_dump({"ensemble": {"members": listed}, "data": data,
                             "trainer": {"precision": first.precision}}, sort_keys=False)
    extra = {"ensemble": listed}
    if all("train_records" in b.extra for b in members):
        # every record a member learned from: a self-training run refuses the ensemble as a
        # teacher of any of them, as it refuses a single model
        extra["train_records"] = sorted({str(r) for b in members for r in b.extra["train_records"]})
    return Bundle(model=model, classes=list(first.classes), preprocessing=first.preprocessing,
                  scaler=s0, temperature=np.ones(len(first.classes)),
                  bias=np.zeros(len(first.classes)), window_s=first.window_s,
                  stride_s=first.stride_s, aggregation=first.aggregation,
                  risk_bands=first.risk_bands,
                  name=name or "+".join(b.name for b in members),
                  version=time.strftime("%Y%m%d-%H%M%S"), config=config,
                  extra=extra, precision=first.precision)

