"""Batch risk scoring of ECG files with a model bundle (``ecgrisk score``).

``predict_proba`` / ``Predictor`` evaluate a record as fine-tuning evaluated the test fold (the
same steps; the model's BatchNorms folded, which changes only rounding); ``score_files`` runs
that over many files into a CSV/Parquet table. Submodules are imported on use, so
``import ecgrisk.scoring`` stays cheap (no torch).
"""

from __future__ import annotations

__all__ = ["Predictor", "predict_proba", "score_files"]


def __getattr__(name: str):
    if name in ("Predictor", "predict_proba"):
        from ecgrisk.scoring import predict

        return getattr(predict, name)
    if name == "score_files":
        from ecgrisk.scoring.job import score_files

        return score_files
    raise AttributeError(f"module 'ecgrisk.scoring' has no attribute {name!r}")
