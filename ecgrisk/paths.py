"""Where ecgrisk finds its configs and data, without touching the filesystem at import time."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """The Hydra config folder: shipped inside the wheel, or the repository's top-level conf/."""
    packaged = Path(__file__).parent / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "conf"


def data_root() -> Path:
    """`$ECGRISK_DATA`, else `data/` under the working directory."""
    return Path(os.environ.get("ECGRISK_DATA", "data"))


def shared_data() -> Path | None:
    """The project's shared real-data folder (`../shared/data` beside the checkout), if present."""
    here = Path(__file__).resolve().parents[1]
    for cand in (here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None
