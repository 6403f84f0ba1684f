"""Which ECGs to show a cardiologist next, and which candidate readings to show.

Rules:

- ``uncertainty``: highest mean per-statement binary entropy of the model's probabilities;
- ``margin``: smallest distance of any statement's probability to 0.5;
- ``disagreement``: largest mean ``|p_a - p_b|`` between two model versions;
- ``random``: a seeded uniform draw (the baseline every other rule must beat).
"""

from __future__ import annotations

import numpy as np

RULES = ("uncertainty", "margin", "disagreement", "random")


def _probs(name: str, probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"{name} must be [n, C], got shape {probs.shape}")
    if not np.all((probs >= 0) & (probs <= 1)):
        raise ValueError(f"{name} must hold probabilities in [0, 1]")
    return probs


def binary_entropy(probs: np.ndarray) -> np.ndarray:
    """Per-element entropy in nats of Bernoulli(p); 0 at p = 0 or 1. Same shape as ``probs``."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def acquisition_scores(probs: np.ndarray, rule: str = "uncertainty",
                       probs_b: np.ndarray | None = None) -> np.ndarray:
    """Score of each ECG under a deterministic rule (higher: ask sooner).

    Returns
    -------
    np.ndarray
        ``[n]`` float64.
    """
    probs = _probs("probs", probs)
    if rule == "uncertainty":
        return binary_entropy(probs).mean(1)
    if rule == "margin":
        return -np.abs(probs - 0.5).min(1)
    if rule == "disagreement":
        if probs_b is None:
            raise ValueError("rule='disagreement' needs probs_b (the other model's probs)")
        probs_b = _probs("probs_b", probs_b)
        if probs_b.shape != probs.shape:
            raise ValueError(f"probs_b must match probs {probs.shape}, got {probs_b.shape}")
        return np.abs(probs - probs_b).mean(1)
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


def select(probs: np.ndarray, k: int, rule: str = "uncertainty", seed: int = 0,
           probs_b: np.ndarray | None = None, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` ECGs to ask about next.

    Parameters
    ----------
    probs
        ``[n, C]`` model probabilities.
    k
        How many; fewer come back when fewer are eligible.
    rule
        One of :data:`RULES`.
    seed
        Seeds ``random``.
    probs_b
        ``[n, C]`` probabilities of a second model version (``disagreement``).
    exclude
        Indices never to pick (already asked).

    Returns
    -------
    np.ndarray
        ``[min(k, eligible)]`` int64, best first (ties by lower index).
    """
    probs = _probs("probs", probs)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    eligible = np.ones(len(probs), dtype=bool)
    if exclude is not None:
        eligible[np.asarray(exclude, dtype=np.int64)] = False
    candidates = np.flatnonzero(eligible)
    k = min(k, len(candidates))
    if rule == "random":
        rng = np.random.default_rng(seed)
        return rng.choice(candidates, size=k, replace=False).astype(np.int64)
    scores = acquisition_scores(probs, rule, probs_b)[candidates]
    order = np.argsort(-scores, kind="stable")
    return candidates[order[:k]].astype(np.int64)


def threshold_reading(probs: np.ndarray, thresholds: float | np.ndarray = 0.5) -> np.ndarray:
    """The model's reading: statements whose probability reaches the threshold.

    Parameters
    ----------
    probs
        ``[..., C]`` probabilities.
    thresholds
        A scalar or ``[C]`` per-statement thresholds.

    Returns
    -------
    np.ndarray
        ``[..., C]`` float32 0/1.
    """
    probs = np.asarray(probs, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim not in (0, 1) or (thresholds.ndim == 1
                                         and thresholds.shape[0] != probs.shape[-1]):
        raise ValueError(f"thresholds must be a scalar or [C={probs.shape[-1]}], "
                         f"got shape {thresholds.shape}")
    return (probs >= thresholds).astype(np.float32)


def sample_readings(probs: np.ndarray, k: int, rng: np.random.Generator | int | None = None
                    ) -> np.ndarray:
    """``k`` candidate readings per ECG drawn from the model's independent Bernoullis.

    Returns
    -------
    np.ndarray
        ``[k, n, C]`` float32 0/1.
    """
    probs = _probs("probs", probs)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return (rng.random((k, *probs.shape)) < probs).astype(np.float32)
