"""The policy being refined and the guard that decides whether a refinement is kept.

The policy is the fine-tuned classifier read as independent Bernoulli outputs per statement:
per-record logits are the window-aggregated logits divided by the bundle's per-statement
temperatures, so its probabilities are the calibrated ones scoring reports, and a reading's
log-probability and the KL to the frozen reference are closed form
(:mod:`ecgrisk.refine.losses`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ecgrisk.calibration import fit_calibration
from ecgrisk.feedback.acquisition import threshold_reading
from ecgrisk.metrics import evaluate
from ecgrisk.refine.windows import WindowSet
from ecgrisk.windowing import aggregate_windows

# --------------------------------------------------------------------------- the policy


class BernoulliPolicy:
    """The classifier as a policy over readings: independent calibrated Bernoullis.

    Parameters
    ----------
    model
        The classifier; trained in place (pass a copy to keep the original).
    temperature, bias
        ``[C]`` per-statement calibration of the bundle: logits / temperature + bias.
    aggregation
        ``"max"`` or ``"mean"`` over a record's windows, as the bundle scores.
    train
        ``"head"`` (only the head's weights change) or ``"all"``.
    """

    def __init__(self, model: torch.nn.Module, temperature: np.ndarray, bias: np.ndarray,
                 aggregation: str = "max", train: str = "head"):
        if train not in ("head", "all"):
            raise ValueError(f"refine.train must be 'head' or 'all', got {train!r}")
        self.model, self.aggregation, self.train = model.eval(), aggregation, train
        # float64, as the bundle stores them: a refined bundle keeps them bit for bit
        self.temperature = torch.as_tensor(np.asarray(temperature, dtype=np.float64))
        self.bias = torch.as_tensor(np.asarray(bias, dtype=np.float64))
        for p in model.parameters():
            p.requires_grad_(train == "all")
        for p in model.head.parameters():
            p.requires_grad_(True)

    def parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def logits(self, ws: WindowSet, records: np.ndarray | None = None) -> Tensor:
        """Calibrated per-record logits ``[n, C]`` (window-aggregated, divided by T, plus b)."""
        rec = self.record_logits(ws, records)
        return rec / self.temperature.to(rec) + self.bias.to(rec)

    def record_logits(self, ws: WindowSet, records: np.ndarray | None = None) -> Tensor:
        """Window-aggregated logits ``[n, C]`` before calibration."""
        records = np.arange(len(ws)) if records is None else np.asarray(records, dtype=np.int64)
        win, pos = ws.windows_of(records)
        if self.train == "head":
            z = self.model.forward_head(ws.embeddings[torch.from_numpy(win)])
        else:
            if ws.inputs is None:
                raise ValueError("refine.train=all needs the window inputs: build the sets with "
                                 "keep_inputs=True")
            index = torch.from_numpy(win)
            z = torch.cat([self.model(ws.inputs[index[i:i + 1024]])
                           for i in range(0, len(index), 1024)])
        rec, _ = aggregate_windows(torch.arange(len(win)), z, pos, len(records), self.aggregation)
        return rec

    @torch.no_grad()
    def probs(self, ws: WindowSet) -> np.ndarray:
        """Calibrated probabilities ``[N, C]`` float64 of every record of ``ws``."""
        return torch.sigmoid(self.logits(ws)).double().cpu().numpy()

    @torch.no_grad()
    def recalibrate(self, ws: WindowSet) -> None:
        """Refit the per-statement temperature and bias on ``ws``'s labels.

        The bundle's calibration was fitted to the base's logits on validation data; a
        refinement moves the logits, and kept on the old calibration its probabilities drift
        even where its ranking improved. Per-statement AUROC is unchanged by the refit.
        """
        t, b = fit_calibration(self.record_logits(ws).double().cpu().numpy(), ws.labels)
        self.temperature, self.bias = torch.as_tensor(t), torch.as_tensor(b)

    def calibration(self) -> tuple[np.ndarray, np.ndarray]:
        """The current ``[C]`` temperature and bias, float64 (what a refined bundle stores)."""
        return self.temperature.numpy().copy(), self.bias.numpy().copy()

    def snapshot(self) -> dict:
        """A copy of the weights and calibration (to restore when the guard rejects a round)."""
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "temperature": self.temperature.clone(), "bias": self.bias.clone()}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.temperature, self.bias = state["temperature"].clone(), state["bias"].clone()


def evaluate_policy(policy: BernoulliPolicy, ws: WindowSet, prefix: str, classes: Sequence[str],
                    bootstrap: int = 0, seed: int = 0) -> tuple[dict, np.ndarray]:
    """:func:`~ecgrisk.metrics.evaluate` of the policy's calibrated probabilities, and them."""
    probs = policy.probs(ws)
    return evaluate(ws.labels, probs, prefix=prefix, classes=classes, bootstrap=bootstrap,
                    seed=seed), probs


def reading_accuracy(probs: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of statements where the thresholded reading of ``probs`` ``[N, C]`` equals
    ``truth`` ``[N, C]`` (e.g. what a simulated cardiologist holds true); not to be confused with
    :func:`ecgrisk.feedback.agreement.statement_agreement`, which compares annotators."""
    return float((threshold_reading(probs, threshold) == np.asarray(truth)).mean())


# --------------------------------------------------------------------------- the guard


def guard_verdict(candidate: dict, base: dict, tolerance: float, brier_tolerance: float,
                  ece_tolerance: float, prefix: str = "val/", against: str = "base") -> str:
    """Why a refinement does not hold on the guard set, or ``""`` when it does.

    It holds while macro AUROC fell by at most ``tolerance`` from the base's and Brier and ECE
    rose by at most ``brier_tolerance`` and ``ece_tolerance``: ranking alone can improve while
    the probabilities a clinician reads get worse. An undefined AUROC never holds.

    Parameters
    ----------
    candidate, base
        Guard-set metrics (:func:`~ecgrisk.metrics.evaluate`) under ``prefix``.
    against
        What ``base`` is, for the reason's wording (``"base"`` or ``"kept"``).
    """
    for name, tol in (("tolerance", tolerance), ("brier_tolerance", brier_tolerance),
                      ("ece_tolerance", ece_tolerance)):
        if tol < 0:
            raise ValueError(f"guard.{name} must be >= 0, got {tol}")
    auc, auc0 = candidate[f"{prefix}macro_auroc"], base[f"{prefix}macro_auroc"]
    if not (math.isfinite(auc) and math.isfinite(auc0)):
        return "macro AUROC is undefined on the guard set"
    reasons = []
    if auc < auc0 - tolerance:
        reasons.append(f"macro AUROC {auc:.4f} < {against} {auc0:.4f} - {tolerance:g}")
    for key, tol in (("brier", brier_tolerance), ("ece", ece_tolerance)):
        v, v0 = candidate[f"{prefix}{key}"], base[f"{prefix}{key}"]
        if v > v0 + tol:
            reasons.append(f"{key.upper() if key == 'ece' else 'Brier'} {v:.4f} > {against} "
                           f"{v0:.4f} + {tol:g}")
    return "; ".join(reasons)


def guarded_update(policy: BernoulliPolicy, before: dict, guard: WindowSet,
                   base: dict, cfg, classes: Sequence[str]) -> tuple[str, dict]:
    """Keep the refined weights if the guard accepts them, else restore ``before``.

    With ``cfg.recalibrate`` the candidate's calibration is first refitted on the guard set, as
    the base's was fitted on validation data, so Brier and ECE judge the refined logits under a
    calibration of their own rather than under one fitted to the base's.

    Parameters
    ----------
    base
        The guard metrics (``val/...``) to hold against: the base model's, or with
        ``cfg.against == "kept"`` the last kept model's.
    cfg
        The ``guard`` config node (``tolerance``, ``brier_tolerance``, ``ece_tolerance``,
        ``recalibrate``, ``against``).

    Returns
    -------
    reason : str
        ``""`` when the round is kept, else why it was refused (:func:`guard_verdict`).
    metrics : dict
        The refined model's guard-set metrics (``val/...``), whatever the outcome.
    """
    if cfg.recalibrate:
        policy.recalibrate(guard)
    metrics, _ = evaluate_policy(policy, guard, "val/", classes)
    reason = guard_verdict(metrics, base, cfg.tolerance, cfg.brier_tolerance, cfg.ece_tolerance,
                           against=cfg.against)
    if reason:
        policy.restore(before)
    return reason, metrics
