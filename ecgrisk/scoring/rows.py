"""Output rows: the columns of the scores table and one row per read record.

Columns (see :func:`output_columns`): ``record``, ``path``, ``age`` and ``sex`` where the file
states them (to check scores by subgroup, ``ecgrisk evaluate --by sex``), ``acquired`` where a
clinical export states when it was recorded (ISO 8601: to order a patient's ECGs, or join them
to other records by time), ``prob/<class>`` per statement
(calibrated), ``risk`` (1 - P(NORM) when NORM is a class, else the max probability),
``risk_band``, ``reading`` (the statements at p >= 0.5, most probable first: the reading the
review band's bound speaks of, as the review app shows it), ``needs_review`` and ``review_reason``, the quality columns of
:mod:`ecgrisk.scoring.quality`, ``n_windows``, ``model_name``, ``model_version``, ``error``
(empty when the record scored; otherwise ``"<ErrorClass>: <reason>"`` and empty probabilities).

``needs_review`` is true when a quality flag is raised (flat, noisy, saturated or missing
leads, or a record far from 10 s long; leads derived from I and II are listed, not a reason)
or, for a bundle that carries a review band (:mod:`ecgrisk.conformal`), when a statement's
probability is inside it, too close to call; ``review_reason`` names them. Records that failed
to read are not scored and have no review flag: their ``error`` says why.
"""

from __future__ import annotations

import logging

import numpy as np

from ecgrisk.conformal import READ_AT, ReviewBand
from ecgrisk.input_spec import InputSpec
from ecgrisk.scoring.quality import NOT_FOR_REVIEW, QUALITY_COLUMNS
from ecgrisk.scoring.reading import ReadRecord
from ecgrisk.scoring.report import risk_band
from ecgrisk.windowing import evaluation_windows

__all__ = ["check_bands", "make_rows", "output_columns", "review_band"]

log = logging.getLogger(__name__)
_WARNED: set = set()  # bundles already warned about, once per process


def output_columns(classes: list[str]) -> list[str]:
    """Column order of the output table for a bundle with ``classes``."""
    return ["record", "path", "age", "sex", "acquired", *[f"prob/{c}" for c in classes], "risk",
            "risk_band", "reading", "needs_review", "review_reason", *QUALITY_COLUMNS, "n_windows",
            "model_name", "model_version", "error"]


def check_bands(bands) -> tuple[float, float]:
    b = tuple(float(v) for v in bands)
    if len(b) != 2 or not 0.0 <= b[0] <= b[1] <= 1.0:
        raise ValueError(f"risk bands must be two thresholds 0 <= low <= high <= 1, got {bands}")
    return b


def review_band(bundle) -> ReviewBand | None:
    """The bundle's review band; None, with a warning, for a bundle made before it existed
    (its per-statement conformal sets are no longer read) or not yet given one (an ensemble
    before ``ecgrisk recalibrate``)."""
    if "review" in bundle.extra:
        return ReviewBand.from_dict(bundle.extra["review"])
    why = ("carries the per-statement review sets of an earlier ecgrisk, no longer read"
           if "conformal" in bundle.extra else
           "is an ensemble not yet recalibrated" if "ensemble" in bundle.extra else None)
    if why and (bundle.name, bundle.version) not in _WARNED:
        _WARNED.add((bundle.name, bundle.version))
        log.warning("%s %s %s: needs_review follows the quality flags only. `ecgrisk recalibrate` "
                    "on labelled ECGs it scored gives it a review band.", bundle.name,
                    bundle.version, why)
    return None


def make_rows(records: list[ReadRecord], probs: np.ndarray | None, spec: InputSpec,
              bands: tuple[float, float], bundle) -> list[dict]:
    """Output rows for read records; ``probs [n_ok, C]`` belong, in order, to the scored records.

    A record scored when it has a ``length`` (its prepared signal may already be dropped).
    """
    classes = list(bundle.classes)
    norm = classes.index("NORM") if "NORM" in classes else None
    band = review_band(bundle)
    rows, k = [], 0
    for rec in records:
        row = {"record": rec.record, "path": rec.path, "age": rec.patient.get("age"),
               "sex": rec.patient.get("sex"), "acquired": rec.patient.get("acquired"),
               "model_name": bundle.name, "model_version": bundle.version, "error": rec.error}
        row.update({c: rec.flags.get(c) for c in QUALITY_COLUMNS})
        if rec.length is None:
            row.update({f"prob/{c}": None for c in classes}, risk=None, risk_band="", reading="",
                       n_windows=0, needs_review=None, review_reason="")
        else:
            p = probs[k]
            k += 1
            risk = float(1.0 - p[norm]) if norm is not None else float(p.max())
            n_win = len(evaluation_windows([rec.length], spec.window, spec.stride)[0])
            issues = [q for q in str(rec.flags.get("quality", "ok")).split(",")
                      if q not in ("ok", *NOT_FOR_REVIEW)]
            reasons = [f"quality {','.join(issues)}"] if issues else []
            if band is not None:
                reasons += [r for r in band.review(p, classes) if r]
            reading = " ".join(classes[i] for i in np.argsort(-p, kind="stable") if p[i] >= READ_AT)
            row.update({f"prob/{c}": float(v) for c, v in zip(classes, p, strict=True)},
                       risk=risk, risk_band=risk_band(risk, bands), reading=reading, n_windows=n_win,
                       needs_review=bool(reasons), review_reason="; ".join(reasons))
        rows.append(row)
    return rows
