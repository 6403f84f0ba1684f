"""Multi-label evaluation metrics shared by every stage: AUROC, AUPRC, F-max, Brier, ECE, bootstrap.

All functions take numpy arrays ``y_true`` [N, C] (0/1) and scores or probabilities [N, C] and
return plain floats (or a float array for the per-class variants). The conventions follow the
published PTB-XL benchmark (Strodthoff et al., IEEE JBHI 2021; helme/ecg_ptbxl_benchmarking):

- macro AUROC is the unweighted mean of per-class AUROCs (scikit-learn ``roc_auc_score(average=
  "macro")``);
- F-max is sample-centric on the threshold grid 0.00, 0.01, ..., 1.00;
- bootstrap CIs use resamples in which every class keeps a positive example, and report the
  5% and 95% percentiles (numpy's default linear interpolation).

With the benchmark's own arrays (task ``all``, xresnet1d101) these reproduce the published test
macro AUROC, its bootstrap mean and 5-95% interval, and the validation F-max (tests/test_metrics.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

FMAX_THRESHOLDS = np.linspace(0.0, 1.0, 101)
"""The benchmark's F-max threshold grid, 0.00 to 1.00 in steps of 0.01 (101 values)."""

__all__ = [
    "FMAX_THRESHOLDS",
    "binary_cross_entropy",
    "bootstrap_ci",
    "brier",
    "ece",
    "evaluate",
    "fmax",
    "macro_auprc",
    "macro_auroc",
    "per_class_auprc",
    "per_class_auroc",
]


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------


def _as_2d(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 1:
        arr = arr[:, None]  # a single label given as a vector
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be [n_samples, n_classes] (or a 1-D vector); got shape {arr.shape}"
        )
    return arr


def _check(y_true, y_score, score_name: str = "y_score", probabilities: bool = False):
    """Validate and return (y_true as float64 0/1 [N, C], scores as float64 [N, C])."""
    yt = _as_2d(y_true, "y_true")
    ys = _as_2d(y_score, score_name)
    if yt.shape != ys.shape:
        raise ValueError(f"y_true has shape {yt.shape} but {score_name} has shape {ys.shape}")
    if yt.shape[0] == 0 or yt.shape[1] == 0:
        raise ValueError(f"y_true is empty (shape {yt.shape})")
    if yt.dtype == bool:
        yt = yt.astype(np.float64)
    yt = yt.astype(np.float64, copy=False)
    if not np.all((yt == 0) | (yt == 1)):
        bad = np.unique(yt[(yt != 0) & (yt != 1)])[:5]
        raise ValueError(f"y_true must hold only 0 and 1; found {bad.tolist()}")
    ys = ys.astype(np.float64, copy=False)
    if not np.all(np.isfinite(ys)):
        raise ValueError(
            f"{score_name} holds {int(np.sum(~np.isfinite(ys)))} NaN or infinite values"
        )
    if probabilities and (ys.min() < 0 or ys.max() > 1):
        raise ValueError(
            f"{score_name} must be probabilities in [0, 1]; found range [{ys.min():g}, {ys.max():g}]"
        )
    return yt, ys


def _degenerate(yt: np.ndarray) -> np.ndarray:
    """[C] bool: classes whose labels take a single value (AUROC undefined)."""
    pos = yt.sum(axis=0)
    return (pos == 0) | (pos == yt.shape[0])


# ---------------------------------------------------------------------------------------------
# ranking metrics
# ---------------------------------------------------------------------------------------------


def per_class_auroc(y_true, y_score) -> np.ndarray:
    """AUROC of each class; NaN for a class whose labels take one value only.

    Computed as the Mann-Whitney statistic with mid-ranks for ties, which equals the area under
    the ROC curve exactly as scikit-learn's ``roc_auc_score`` computes it.

    Parameters
    ----------
    y_true : array [N, C] of 0/1
    y_score : array [N, C] of scores (any monotone scale: probabilities or logits)

    Returns
    -------
    np.ndarray [C] float64
    """
    from scipy.stats import rankdata  # lazy: keeps ``import ecgrisk.metrics`` cheap

    yt, ys = _check(y_true, y_score)
    ranks = rankdata(ys, axis=0)  # mid-ranks: a tie between a positive and a negative counts 1/2
    n_pos = yt.sum(axis=0)
    n_neg = yt.shape[0] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * yt).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc[_degenerate(yt)] = np.nan
    return auc


def macro_auroc(y_true, y_score, skip_degenerate: bool = False) -> float:
    """Unweighted mean of per-class AUROCs (scikit-learn ``average="macro"``).

    Parameters
    ----------
    y_true : array [N, C] of 0/1
    y_score : array [N, C]
    skip_degenerate : bool
        If False (default), a class whose labels take one value only raises ``ValueError``
        naming it. If True, such classes are left out of the mean (small folds can lack a rare
        class); when no class is left the result is NaN.

    Returns
    -------
    float
    """
    auc = per_class_auroc(y_true, y_score)
    bad = np.flatnonzero(np.isnan(auc))
    if bad.size and not skip_degenerate:
        raise ValueError(
            f"AUROC is undefined for class index(es) {bad.tolist()}: their labels take a single "
            "value (no positive or no negative example); pass skip_degenerate=True to leave them out"
        )
    if bad.size == auc.size:
        return float("nan")
    return float(np.nanmean(auc))


def per_class_auprc(y_true, y_score) -> np.ndarray:
    """Average precision of each class (scikit-learn ``average_precision_score``); NaN without positives.

    AP = sum over distinct thresholds (descending) of (R_k - R_{k-1}) * P_k: the step-wise area
    under the precision-recall curve, no interpolation.

    Parameters
    ----------
    y_true : array [N, C] of 0/1
    y_score : array [N, C]

    Returns
    -------
    np.ndarray [C] float64
    """
    yt, ys = _check(y_true, y_score)
    out = np.full(yt.shape[1], np.nan)
    for c in range(yt.shape[1]):
        y, s = yt[:, c], ys[:, c]
        n_pos = y.sum()
        if n_pos == 0:
            continue
        order = np.argsort(-s, kind="mergesort")
        s_sorted, y_sorted = s[order], y[order]
        tp = np.cumsum(y_sorted)
        # only the last index of each run of tied scores is an operating point
        last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
        tp = tp[last]
        precision = tp / (last + 1)
        recall = tp / n_pos
        out[c] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return out


def macro_auprc(y_true, y_score) -> float:
    """Mean average precision over classes that have at least one positive (NaN if none has).

    Parameters
    ----------
    y_true : array [N, C] of 0/1
    y_score : array [N, C]

    Returns
    -------
    float
    """
    ap = per_class_auprc(y_true, y_score)
    return float("nan") if np.all(np.isnan(ap)) else float(np.nanmean(ap))


def fmax(y_true, y_score, thresholds=None) -> float:
    """Sample-centric F-max, as reported by the PTB-XL benchmark.

    For each threshold t a label is predicted when ``score >= t``. Precision is averaged over
    the samples with at least one predicted label, recall over the samples with at least one
    true label; F(t) = 2 P R / (P + R), and F-max is its maximum over thresholds (thresholds at
    which no sample has a prediction are skipped).

    Parameters
    ----------
    y_true : array [N, C] of 0/1
    y_score : array [N, C] of probabilities (or scores on the scale of ``thresholds``)
    thresholds : array [T], optional
        Default :data:`FMAX_THRESHOLDS` (0.00 to 1.00 step 0.01), the grid that reproduces the
        benchmark's published F-max.

    Returns
    -------
    float
    """
    yt, ys = _check(y_true, y_score)
    grid = (
        FMAX_THRESHOLDS
        if thresholds is None
        else np.sort(np.asarray(thresholds, np.float64).ravel())
    )
    if grid.size == 0 or not np.all(np.isfinite(grid)):
        raise ValueError("thresholds must be a non-empty array of finite values")
    n, t = ys.shape[0], grid.size
    # k = number of thresholds <= score, so the label is predicted exactly at thresholds j < k;
    # counting per (sample, k) and a reverse cumulative sum gives every threshold in one pass
    k = np.searchsorted(grid, ys, side="right")
    rows = np.repeat(np.arange(n), ys.shape[1])
    flat = rows * (t + 1) + k.ravel()
    hist_pred = np.bincount(flat, minlength=n * (t + 1)).reshape(n, t + 1)
    hist_tp = np.bincount(flat, weights=yt.ravel(), minlength=n * (t + 1)).reshape(n, t + 1)
    n_pred = np.cumsum(hist_pred[:, ::-1], axis=1)[:, ::-1][:, 1:]  # [N, T]: labels with k > j
    n_tp = np.cumsum(hist_tp[:, ::-1], axis=1)[:, ::-1][:, 1:]
    n_true = yt.sum(axis=1)
    has_true = n_true > 0
    if not has_true.any():
        raise ValueError("F-max is undefined: no sample has a positive label")
    best = 0.0
    for j in range(t):
        has_pred = n_pred[:, j] > 0
        if not has_pred.any():
            continue
        p = np.mean(n_tp[has_pred, j] / n_pred[has_pred, j])
        r = np.mean(n_tp[has_true, j] / n_true[has_true])
        if p + r > 0:
            best = max(best, 2 * p * r / (p + r))
    return float(best)


# ---------------------------------------------------------------------------------------------
# calibration metrics
# ---------------------------------------------------------------------------------------------


def brier(y_true, y_prob) -> float:
    """Brier score: mean squared error between probabilities and 0/1 labels over all N*C entries.

    Parameters
    ----------
    y_true : array [N, C] of 0/1
    y_prob : array [N, C] of probabilities in [0, 1]

    Returns
    -------
    float
    """
    yt, yp = _check(y_true, y_prob, "y_prob", probabilities=True)
    return float(np.mean((yp - yt) ** 2))


def ece(y_true, y_prob, n_bins: int = 10) -> float:
    """Expected calibration error per label, averaged over labels.

    For each label, probabilities fall into ``n_bins`` equal-width bins [k/n, (k+1)/n) (the last
    bin also holds 1.0); ECE = sum over non-empty bins of (bin count / N) * |mean label - mean
    probability|.

    Parameters
    ----------
    y_true : array [N, C] of 0/1
    y_prob : array [N, C] of probabilities in [0, 1]
    n_bins : int

    Returns
    -------
    float
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    n_bins = int(n_bins)
    yt, yp = _check(y_true, y_prob, "y_prob", probabilities=True)
    n, c = yp.shape
    # floor(p * n) rather than comparing to linspace edges: linspace(0, 1, 11)[3] is
    # 0.30000000000000004, which would put p = 0.3 in the bin below
    b = np.minimum(np.floor(yp * n_bins).astype(np.int64), n_bins - 1)  # [N, C]
    flat = (b + n_bins * np.arange(c)[None, :]).ravel()  # one bin id per (label, bin)
    sum_y = np.bincount(flat, weights=yt.ravel(), minlength=c * n_bins).reshape(c, n_bins)
    sum_p = np.bincount(flat, weights=yp.ravel(), minlength=c * n_bins).reshape(c, n_bins)
    # (count/N) * |sum_y/count - sum_p/count| == |sum_y - sum_p| / N; empty bins contribute 0
    per_label = np.abs(sum_y - sum_p).sum(axis=1) / n
    return float(per_label.mean())


def reliability(y_true, y_prob, n_bins: int = 10) -> dict:
    """Reliability-diagram points pooled over labels, in the bins :func:`ece` uses.

    Returns
    -------
    dict of lists over the non-empty bins: ``mean_prob`` (x), ``frac_pos`` (y: observed share of
    positives), ``count``; plus ``ece`` (this function's bins, per label, averaged).
    """
    yt, yp = _check(y_true, y_prob, "y_prob", probabilities=True)
    b = np.minimum(np.floor(yp * n_bins).astype(np.int64), n_bins - 1).ravel()
    count = np.bincount(b, minlength=n_bins)
    sum_p = np.bincount(b, weights=yp.ravel(), minlength=n_bins)
    sum_y = np.bincount(b, weights=yt.ravel(), minlength=n_bins)
    keep = count > 0
    return {"mean_prob": (sum_p[keep] / count[keep]).tolist(),
            "frac_pos": (sum_y[keep] / count[keep]).tolist(), "count": count[keep].tolist(),
            "ece": ece(yt, yp, n_bins)}


def wilson_interval(successes: int, n: int, level: float = 0.9) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` at two-sided ``level``; it stays
    inside [0, 1] and is usable at 0 or ``n`` successes, where the normal interval is not."""
    from statistics import NormalDist

    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p, z2 = successes / n, z * z / n
    centre = (p + z2 / 2) / (1 + z2)
    half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n)) / (1 + z2)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def binary_cross_entropy(y_true, y_prob, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of independent Bernoulli labels over all N*C entries.

    Parameters
    ----------
    y_true : array [N, C] of 0/1
    y_prob : array [N, C] of probabilities in [0, 1]; clipped to [eps, 1 - eps]
    eps : float

    Returns
    -------
    float
    """
    yt, yp = _check(y_true, y_prob, "y_prob", probabilities=True)
    p = np.clip(yp, eps, 1 - eps)
    return float(-np.mean(yt * np.log(p) + (1 - yt) * np.log1p(-p)))


# ---------------------------------------------------------------------------------------------
# bootstrap and the metrics.json dictionary
# ---------------------------------------------------------------------------------------------


def _draw_bootstrap_ids(yt: np.ndarray, n: int, seed: int) -> np.ndarray:
    """[n, N] resample indices; a resample is redrawn until every class that has both label
    values in the full data keeps both (the benchmark requires every class to keep a positive;
    also keeping a negative makes AUROC defined on every resample, and with a few thousand
    samples the two rules coincide)."""
    rng = np.random.default_rng(seed)
    n_samples = yt.shape[0]
    keep = ~_degenerate(yt)
    need = yt[:, keep]
    out, tries, max_tries = [], 0, 1000 * max(n, 1)
    while len(out) < n:
        if tries >= max_tries:
            raise ValueError(
                f"could not draw {n} bootstrap resamples that keep every class in {max_tries} "
                "tries: some class has too few positive (or negative) examples"
            )
        tries += 1
        idx = rng.integers(0, n_samples, n_samples)
        pos = need[idx].sum(axis=0)
        if need.shape[1] == 0 or (pos.min() > 0 and pos.max() < n_samples):
            out.append(idx)
    return np.stack(out) if out else np.empty((0, n_samples), dtype=np.int64)


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true,
    y_score,
    ids=None,
    n: int = 100,
    seed: int = 0,
) -> dict:
    """Bootstrap estimate and 5-95% interval of ``metric(y_true, y_score)``.

    Parameters
    ----------
    metric : callable (y_true [N, C], y_score [N, C]) -> float
    y_true : array [N, C] of 0/1
    y_score : array [N, C]
    ids : int array [n_boot, N], optional
        Resample indices to use as given (e.g. the benchmark's ``test_bootstrap_ids.npy``).
        Otherwise ``n`` resamples are drawn with ``np.random.default_rng(seed)``, each redrawn
        until every class keeps a positive and a negative example.
    n : int
        Number of resamples drawn when ``ids`` is None.
    seed : int

    Returns
    -------
    dict
        ``point`` (metric on the full data), ``mean`` (over resamples), ``lower`` and ``upper``
        (5th and 95th percentiles, linear interpolation), all floats.
    """
    yt, ys = _check(y_true, y_score)
    if ids is None:
        if int(n) != n or n < 1:
            raise ValueError(
                f"n (number of bootstrap resamples) must be a positive integer; got {n!r}"
            )
        ids = _draw_bootstrap_ids(yt, int(n), seed)
    else:
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"ids must be an integer array [n_boot, n_samples]; got {ids.dtype} {ids.shape}"
            )
        if ids.size == 0 or ids.min() < 0 or ids.max() >= yt.shape[0]:
            raise ValueError(f"ids must index the {yt.shape[0]} samples (0..{yt.shape[0] - 1})")
    values = np.array([metric(yt[i], ys[i]) for i in ids], dtype=np.float64)
    return {
        "point": float(metric(yt, ys)),
        "mean": float(np.mean(values)),
        "lower": float(np.percentile(values, 5)),
        "upper": float(np.percentile(values, 95)),
    }


def evaluate(
    y_true,
    y_prob,
    prefix: str = "test/",
    classes: Sequence[str] | None = None,
    bootstrap: int = 0,
    ids=None,
    seed: int = 0,
) -> dict:
    """Every metric of this module as one flat dict, the shape ``metrics.json`` stores.

    Keys (with ``prefix``, e.g. ``test/``): ``macro_auroc``, ``macro_auprc``, ``fmax``,
    ``brier``, ``ece``, ``nll``, ``n_samples``, ``n_classes``, ``auroc_skipped_classes`` (classes
    left out of the macro AUROC because their labels take one value; small folds can lack a
    rare class) and ``auroc/<class>`` per class (NaN when undefined). With ``bootstrap > 0`` or
    ``ids`` also ``macro_auroc/{mean,lower,upper}`` and ``fmax/{mean,lower,upper}``.

    Parameters
    ----------
    y_true : array [N, C] of 0/1
    y_prob : array [N, C] of probabilities in [0, 1]
    prefix : str
    classes : sequence of C str, optional
        Names for the per-class keys; default the class indices.
    bootstrap : int
        Number of resamples to draw (0: no intervals); ignored when ``ids`` is given.
    ids : int array [n_boot, N], optional
        Fixed resample indices (see :func:`bootstrap_ci`).
    seed : int
        Seed of the drawn resamples.

    Returns
    -------
    dict of str -> float | int
    """
    yt, yp = _check(y_true, y_prob, "y_prob", probabilities=True)
    names = [str(i) for i in range(yt.shape[1])] if classes is None else [str(c) for c in classes]
    if len(names) != yt.shape[1]:
        raise ValueError(
            f"classes names {len(names)} labels but the arrays have {yt.shape[1]} columns"
        )
    auc = per_class_auroc(yt, yp)
    m = {
        f"{prefix}macro_auroc": macro_auroc(yt, yp, skip_degenerate=True),
        f"{prefix}macro_auprc": macro_auprc(yt, yp),
        f"{prefix}fmax": fmax(yt, yp) if yt.sum() > 0 else float("nan"),
        f"{prefix}brier": brier(yt, yp),
        f"{prefix}ece": ece(yt, yp),
        f"{prefix}nll": binary_cross_entropy(yt, yp),
        f"{prefix}n_samples": int(yt.shape[0]),
        f"{prefix}n_classes": int(yt.shape[1]),
        f"{prefix}auroc_skipped_classes": int(np.isnan(auc).sum()),
    }
    m.update({f"{prefix}auroc/{name}": float(a) for name, a in zip(names, auc, strict=True)})
    if (bootstrap > 0 or ids is not None) and not np.isnan(auc).all():
        if ids is None:
            ids = _draw_bootstrap_ids(yt, int(bootstrap), seed)
        for key, fn in (
            ("macro_auroc", lambda a, b: macro_auroc(a, b, skip_degenerate=True)),
            ("fmax", fmax),
        ):
            ci = bootstrap_ci(fn, yt, yp, ids=ids)
            m.update({f"{prefix}{key}/{q}": ci[q] for q in ("mean", "lower", "upper")})
    return m
