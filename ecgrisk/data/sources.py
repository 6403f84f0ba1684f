"""Build a RecordSet from a ``data`` config node (what the Hydra apps and the demo call)."""

from __future__ import annotations

from pathlib import Path

from ecgrisk.data.base import RecordSet

SOURCES = ("ptbxl", "challenge", "folder", "synthetic")


def load_source(source: str, root: str | Path | None, task: str = "superdiagnostic", fs: float = 100,
                n_records: int = 600, seed: int = 0, min_likelihood: float = 0,
                **_ignored) -> RecordSet:
    """One dataset by name. ``synthetic`` generates a PTB-XL-layout dataset at ``root`` if absent.

    ``min_likelihood`` is PTB-XL's statement likelihood: other sources have none, so they refuse
    a value above 0 rather than silently train on labels other than those asked for.
    """
    if root is None:
        raise ValueError(f"data.root is not set: source {source!r} needs the folder it reads "
                         f"(data.root=DIR)")
    if min_likelihood and source in ("challenge", "folder"):
        raise ValueError(f"data.min_likelihood={min_likelihood} needs PTB-XL's scp_codes "
                         f"likelihoods; source {source!r} has none (set it to 0)")
    if source == "ptbxl":
        from ecgrisk.data.ptbxl import PTBXL

        return PTBXL(root, task=task, fs=int(fs), min_likelihood=min_likelihood)
    if source == "synthetic":
        from ecgrisk.data.ptbxl import PTBXL
        from ecgrisk.data.synthetic import make_synthetic_ptbxl

        if not (Path(root) / "ptbxl_database.csv").is_file():
            make_synthetic_ptbxl(root, n_records=n_records, fs=(int(fs),), seed=seed)
        rs = PTBXL(root, task=task, fs=int(fs), min_likelihood=min_likelihood)
        rs.name = "synthetic"
        return rs
    if source == "challenge":
        from ecgrisk.data.challenge import ChallengeFolder

        return ChallengeFolder(root)
    if source == "folder":
        from ecgrisk.data.folder import ECGFolder

        return ECGFolder(root)
    raise ValueError(f"unknown data source {source!r}; choose one of {SOURCES}")
