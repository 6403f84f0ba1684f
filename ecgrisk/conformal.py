"""Which readings need a human: split-conformal prediction sets per statement.

For each statement, label-conditional (Mondrian) split conformal prediction on a calibration
fold (the validation fold the bundle's calibration was fitted on): with ``n1`` positives and
``n0`` negatives there, label 1 is in an ECG's set when ``1 - p <= q1`` and label 0 when
``p <= q0``, where ``q1``/``q0`` are the ``ceil((n + 1)(1 - alpha)) / n`` empirical quantiles of
``1 - p`` over the positives and of ``p`` over the negatives. For a new ECG exchangeable with
the calibration fold, each statement's true label is in its set with probability at least
``1 - alpha``, whichever the label (Vovk et al. 2005; Angelopoulos & Bates 2021). A set holding
both labels says the model cannot tell at that level; an empty one says the ECG is unlike the
calibration fold. Either sends the ECG to review, naming the statements.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["ConformalSets", "coverage", "fit_conformal"]


def _quantile(scores: np.ndarray, alpha: float) -> float:
    """The conformal quantile; inf (every label kept) when too few scores for this ``alpha``."""
    n = len(scores)
    rank = int(np.ceil((n + 1) * (1 - alpha)))
    if n == 0 or rank > n:
        return float("inf")
    return float(np.sort(scores)[rank - 1])


@dataclass
class ConformalSets:
    """Per-statement thresholds of a fitted split-conformal predictor (stored in a bundle)."""

    alpha: float
    q0: list[float]
    q1: list[float]
    n0: list[int]
    n1: list[int]

    def sets(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``probs [N, C]`` calibrated -> (label 0 in set, label 1 in set), bool ``[N, C]`` each."""
        p = np.asarray(probs, dtype=np.float64)
        return p <= np.asarray(self.q0), 1.0 - p <= np.asarray(self.q1)

    def review(self, probs: np.ndarray, classes: list[str]) -> list[str]:
        """Per ECG, ``""`` when every statement's set is a single label, else the reason."""
        has0, has1 = self.sets(np.atleast_2d(probs))
        out = []
        for both, none in zip(has0 & has1, ~has0 & ~has1, strict=True):
            parts = []
            if both.any():
                parts.append("uncertain " + " ".join(c for c, b in zip(classes, both, strict=True) if b))
            if none.any():
                parts.append("atypical " + " ".join(c for c, b in zip(classes, none, strict=True) if b))
            out.append("; ".join(parts))
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ConformalSets:
        return cls(alpha=float(d["alpha"]), q0=[float(x) for x in d["q0"]],
                   q1=[float(x) for x in d["q1"]], n0=[int(x) for x in d["n0"]],
                   n1=[int(x) for x in d["n1"]])


def fit_conformal(labels: np.ndarray, probs: np.ndarray, alpha: float = 0.1) -> ConformalSets:
    """Fit on a calibration fold: ``labels`` 0/1 and calibrated ``probs``, both ``[N, C]``."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"labels {y.shape} and probs {p.shape} must both be [N, C]")
    q0 = [_quantile(p[~y[:, c], c], alpha) for c in range(y.shape[1])]
    q1 = [_quantile(1.0 - p[y[:, c], c], alpha) for c in range(y.shape[1])]
    return ConformalSets(alpha=float(alpha), q0=q0, q1=q1, n0=(~y).sum(0).tolist(),
                         n1=y.sum(0).tolist())


def coverage(sets: ConformalSets, labels: np.ndarray, probs: np.ndarray) -> dict:
    """Empirical coverage on held-out ECGs: per statement and label, over all, and how many
    ECGs would go to review. Keys: ``coverage/label0``, ``coverage/label1`` ``[C]`` lists (NaN
    where the label never occurs), ``coverage/all_statements`` (share of ECGs whose every
    statement is covered), ``review_rate``, ``nominal`` (1 - alpha)."""
    y = np.asarray(labels).astype(bool)
    has0, has1 = sets.sets(probs)
    covered = np.where(y, has1, has0)
    with np.errstate(invalid="ignore"):
        cov1 = np.where(y.sum(0) > 0, (covered & y).sum(0) / y.sum(0), np.nan)
        cov0 = np.where((~y).sum(0) > 0, (covered & ~y).sum(0) / (~y).sum(0), np.nan)
    ambiguous = (has0 == has1).any(axis=1)
    return {"nominal": 1 - sets.alpha, "coverage/label0": _json_list(cov0),
            "coverage/label1": _json_list(cov1), "coverage/all_statements": float(covered.all(1).mean()),
            "review_rate": float(ambiguous.mean()), "records": int(len(y))}


def split_coverage(labels: np.ndarray, probs: np.ndarray, alpha: float = 0.1,
                   seed: int = 0) -> dict:
    """Coverage measured honestly on one fold: fit on a random half, measure on the other, and
    the other way round; the two measurements averaged (lists per statement, means of scalars)."""
    y, p = np.asarray(labels), np.asarray(probs)
    idx = np.random.default_rng(seed).permutation(len(y))
    halves = (idx[: len(y) // 2], idx[len(y) // 2:])
    runs = [coverage(fit_conformal(y[a], p[a], alpha), y[b], p[b]) for a, b in (halves, halves[::-1])]
    out = {}
    for k in runs[0]:
        v = [r[k] for r in runs]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a label absent from both halves
            out[k] = (_json_list(np.nanmean(np.array(v, dtype=float), axis=0))
                      if isinstance(v[0], list) else float(np.mean(v)))
    return out


def _json_list(a: np.ndarray) -> list:
    """NaN (a label that never occurs) as None, so metrics.json stays plain JSON."""
    return [None if not np.isfinite(x) else float(x) for x in a]
