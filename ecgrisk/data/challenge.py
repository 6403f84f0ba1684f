"""PhysioNet/CinC Challenge 2020-2021 folders: ``.hea`` + ``.mat`` records with SNOMED CT labels."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ecgrisk.data.base import RecordSet
from ecgrisk.io.ecg import SEX_WORDS
from ecgrisk.io.header import parse_comments, parse_header

log = logging.getLogger(__name__)


def parse_challenge_header(path: str | Path) -> dict:
    """Labels and demographics of a Challenge header, as :func:`ecgrisk.read_ecg` reads them.

    Returns
    -------
    dict
        ``{"dx": [SNOMED CT codes as str], "age": float | None, "sex": "M" | "F" | None}``;
        ``dx`` is empty when the header has no ``# Dx:`` line.
    """
    meta = parse_comments(parse_header(Path(path)).comments)
    return {"dx": meta["dx"], "age": meta["age"], "sex": meta["sex"]}


class ChallengeFolder(RecordSet):
    """Every Challenge record under ``root`` (recursive), labelled by its ``# Dx:`` codes.

    Parameters
    ----------
    root : folder holding ``<id>.hea`` + ``<id>.mat`` pairs, possibly in sub-folders (one per
        source database, as the Challenge distributes them).
    classes : SNOMED CT codes to use as label columns, in this order; codes outside it are
        ignored. Default: the sorted set of codes seen.

    Attributes
    ----------
    record_ids : ``[n]`` file stems (``E07500``).
    paths : ``[n]`` record paths without extension.
    labels : ``[n, C]`` uint8 multi-hot over ``classes``.
    meta : ``[n]`` rows: record_id, age, sex, dx (the header's codes, all of them).
    missing : stems whose ``.hea`` has no ``.mat`` beside it.
    """

    def __init__(self, root: str | Path, classes: Sequence[str] | None = None):
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"Challenge folder {root} does not exist")
        headers = sorted(root.rglob("*.hea"))
        ids, paths, rows, missing = [], [], [], []
        seen: dict[str, Path] = {}
        for hea in headers:
            stem = hea.stem
            if not hea.with_suffix(".mat").is_file():
                missing.append(stem)
                continue
            if stem in seen:
                raise ValueError(
                    f"Challenge folder {root}: record id {stem!r} appears twice "
                    f"({seen[stem]} and {hea})"
                )
            seen[stem] = hea
            info = parse_challenge_header(hea)
            ids.append(stem)
            paths.append(str(hea.with_suffix("")))
            rows.append({"record_id": stem, "age": info["age"], "sex": info["sex"],
                         "dx": info["dx"]})
        if not ids:
            raise FileNotFoundError(
                f"Challenge folder {root}: no record found (looked for <id>.hea with <id>.mat "
                f"beside it, recursively; {len(headers)} .hea files seen)"
            )
        if missing:
            log.warning("Challenge folder %s: %d headers lack their .mat file", root, len(missing))

        if classes is None:
            classes = sorted({c for r in rows for c in r["dx"]})
        classes = [str(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes has duplicates: {classes}")
        col = {c: j for j, c in enumerate(classes)}
        labels = np.zeros((len(ids), len(classes)), dtype=np.uint8)
        for i, r in enumerate(rows):
            hits = [col[c] for c in r["dx"] if c in col]
            labels[i, hits] = 1

        self.root = root
        self.meta = pd.DataFrame(rows)
        super().__init__(name="challenge", record_ids=ids, paths=paths, classes=classes,
                         labels=labels, folds=None, missing=missing,
                         attributes={"age": [r["age"] for r in rows],
                                     "sex": [SEX_WORDS.get(r["sex"]) for r in rows]})
