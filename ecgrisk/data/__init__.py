"""Datasets, preprocessing cache and the DataModule. Names load on first use (no lightning at import)."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RecordSet": "ecgrisk.data.base",
    "PTBXL": "ecgrisk.data.ptbxl",
    "ChallengeFolder": "ecgrisk.data.challenge",
    "ECGFolder": "ecgrisk.data.folder",
    "pool": "ecgrisk.data.folder",
    "download_ptbxl": "ecgrisk.data.download",
    "make_synthetic_ptbxl": "ecgrisk.data.synthetic",
    "ECGCache": "ecgrisk.data.cache",
    "get_or_build": "ecgrisk.data.cache",
    "ECGDataModule": "ecgrisk.data.datamodule",
    "load_source": "ecgrisk.data.sources",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ecgrisk.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
