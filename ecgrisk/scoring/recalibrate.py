"""A bundle's calibration refitted on a clinic's own labelled ECGs.

A bundle's probabilities are ``sigmoid(z / T + b)`` per statement, with (T, b) fitted on its
validation fold. A population unlike that fold (older patients, other devices) needs others.
The scores table already holds ``u = z / T + b`` as ``logit(prob)``, so fitting
``sigmoid(u / T2 + b2)`` to local labels needs no model run, and the new bundle folds the two
maps into one: ``T' = T * T2``, ``b' = b / T2 + b2``. Ranking (AUROC) is unchanged; only the
probabilities, the risk bands they fall in and the review flags move. The review band
(:mod:`ecgrisk.conformal`) is refitted on the same local ECGs, so its bound holds for them.

A refit on a few hundred ECGs can fit their noise. Two forms are tried: a shift of each logit
(``b2`` alone, recalibration in the large) and temperature and shift; :func:`held_out_check` fits
each on half the ECGs and measures it on the other half, 20 times, and the form with the lower
held-out Brier is fitted on them all. It also says whether that beats the bundle's own
calibration on ECGs it was not fitted on (``results/local_recalibration*`` for PTB-XL's own
subgroups). Keeping the bundle's calibration where neither form beats it on those halves was
tried and measured worse: on PTB-XL's subgroups the halves of a few hundred ECGs are too noisy
to tell, and the check kept it where the shift would have helped (the README's figures).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from ecgrisk.bundle import Bundle
from ecgrisk.calibration import apply_temperature, fit_calibration, prob_to_logit
from ecgrisk.conformal import ReviewBand, fit_review, review_risk, split_review, with_band
from ecgrisk.files import file_sha256
from ecgrisk.metrics import brier, ece, reliability
from ecgrisk.scoring.evaluate import EvaluationError, Joined, groups_of

__all__ = ["FORMS", "check_own_scores", "fit_recalibration", "recalibrated", "halvings",
           "held_out_check", "choose_and_fit", "recalibrate_bundle"]


FORMS = ("shift", "temperature and shift")


def fit_recalibration(p: np.ndarray, y: np.ndarray, form: str = "temperature and shift"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``(T2, b2)`` per statement, so that ``sigmoid(logit(p) / T2 + b2)`` fits ``y``; with
    ``form="shift"`` T2 stays 1 (recalibration in the large: one parameter per statement)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    return fit_calibration(prob_to_logit(p), y, temperature=form != "shift")


def recalibrated(p: np.ndarray, t2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """The probabilities ``p`` under ``(T2, b2)``: what the recalibrated bundle gives."""
    return apply_temperature(prob_to_logit(p), t2, b2)


def halvings(groups, splits: int = 20):
    """``splits`` random halvings of the ECGs, a group's ECGs (a patient's) kept together: one
    boolean mask per draw, True on the half to fit."""
    groups = np.asarray(groups)
    ids = np.unique(groups)
    for seed in range(splits):
        fit = np.random.default_rng(seed).permutation(ids)[: len(ids) // 2]
        yield np.isin(groups, fit)


def held_out_check(p: np.ndarray, y: np.ndarray, groups=None, splits: int = 20) -> dict:
    """Each form of the refit fitted on half the ECGs and measured on the other half, against
    the bundle's own calibration: mean held-out Brier, the draws in which the refit was lower,
    and ``chosen``, the form with the lower mean (the one :func:`choose_and_fit` fits)."""
    groups = np.arange(len(y)) if groups is None else groups
    kept, refit = [], {form: [] for form in FORMS}
    for a in halvings(groups, splits):
        kept.append(brier(y[~a], p[~a]))
        for form in FORMS:
            refit[form].append(brier(y[~a], recalibrated(p[~a], *fit_recalibration(p[a], y[a], form))))
    out = {"splits": splits, "brier_bundle": float(np.mean(kept)), "forms": {
        form: {"brier": float(np.mean(b)), "better_in": int(np.sum(np.array(b) < np.array(kept)))}
        for form, b in refit.items()}}
    out["chosen"] = min(FORMS, key=lambda f: out["forms"][f]["brier"])
    return out


def choose_and_fit(p: np.ndarray, y: np.ndarray, groups=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The refit ``ecgrisk recalibrate`` makes: the form the held-out check prefers, fitted on
    every ECG. Returns ``(T2, b2, check)``."""
    check = held_out_check(p, y, groups)
    return (*fit_recalibration(p, y, check["chosen"]), check)


def check_own_scores(joined: Joined, bundle: Bundle, bundle_path: str | Path) -> None:
    """Refuse scores ``bundle`` did not write: what is refitted is its own probabilities."""
    if joined.classes != list(bundle.classes):
        raise EvaluationError(f"the scores give {joined.classes}, the bundle {bundle_path} "
                              f"{list(bundle.classes)}: score the ECGs with this bundle first")
    other = {(r.get("model_name"), str(r.get("model_version"))) for r in joined.rows} - {
        (bundle.name, str(bundle.version))}
    if other:
        raise EvaluationError(f"the scores come from {sorted(map(str, other))[0]}, not from "
                              f"{bundle_path} ({bundle.name} {bundle.version}): its own "
                              f"probabilities are what is refitted")


def recalibrate_bundle(bundle: Bundle, bundle_path: str | Path, joined: Joined,
                       by: list[str] = ()) -> tuple[Bundle, dict]:
    """The bundle with its calibration refitted on ``joined`` (scores it wrote, with labels),
    and a summary: how many ECGs, (T2, b2), Brier and ECE before and after on those ECGs. The
    review band is refitted too, so that its bound holds in each group of ``by`` (``--by``
    specs, as ``ecgrisk evaluate`` takes them) as well as over all."""
    check_own_scores(joined, bundle, bundle_path)
    y, p = joined.y, joined.p
    patient = joined.labels.columns.get("patient")  # a patient's ECGs stay in one half
    patients = [str(patient.get(k, k)) for k in joined.keys] if patient else None
    t2, b2, check = choose_and_fit(p, y, patients)
    after = recalibrated(p, t2, b2)
    alpha = float(bundle.extra.get("review", {}).get("alpha", 0.1))
    summary = {
        "labels": joined.labels.source, "ecgs": len(joined.keys),
        "base_sha256": file_sha256(bundle_path), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "temperature_factor": t2.tolist(), "bias_shift": b2.tolist(),
        "brier_before": brier(y, p), "brier_after": brier(y, after),
        "ece_before": ece(y, p), "ece_after": ece(y, after),
        "positives": y.sum(axis=0).tolist(),
        "form": check["chosen"], "held_out": check,
    }
    groups = groups_of(joined, list(by))
    band = fit_review(y, after, alpha, groups)
    # what the bundle's own band does on these ECGs (it was not fitted on them), and what the
    # refitted one does on halves of them it was not fitted on
    summary["review"] = {"alpha": alpha, "low": band.low, "groups": band.groups,
                         "held_out": split_review(y, after, alpha, groups=groups)}
    if "review" in bundle.extra:
        own = ReviewBand.from_dict(bundle.extra["review"])
        summary["review"]["bundle"] = {"low": own.low, "by": own.by, **review_risk(own, y, p)}
    extra = {**with_band(bundle.extra, band),
             "reliability": {"before, local ECGs": reliability(y, p),
                             "after, the same ECGs (in-sample)": reliability(y, after)},
             "recalibration": summary}
    new = dataclasses.replace(
        bundle, temperature=bundle.temperature * t2, bias=bundle.bias / t2 + b2,
        version=f"{bundle.version}+recalibrated-{time.strftime('%Y%m%d-%H%M%S')}",
        base=str(Path(bundle_path).resolve()), extra=extra)
    return new, summary
