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
        param = next(model.parameters())
        self.temperature = torch.as_tensor(np.asarray(temperature), dtype=param.dtype,
                                           device=param.device)
        self.bias = torch.as_tensor(np.asarray(bias), dtype=param.dtype, device=param.device)
        for p in model.parameters():
            p.requires_grad_(train == "all")
        for p in model.head.parameters():
            p.requires_grad_(True)

    def parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def logits(self, ws: WindowSet, records: np.ndarray | None = None) -> Tensor:
        """Calibrated per-record logits ``[n, C]`` (window-aggregated, divided by T, plus b)."""
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
        return rec / self.temperature + self.bias

    @torch.no_grad()
    def probs(self, ws: WindowSet) -> np.ndarray:
        """Calibrated probabilities ``[N, C]`` float64 of every record of ``ws``."""
        return torch.sigmoid(self.logits(ws)).double().cpu().numpy()

    def snapshot(self) -> dict[str, Tensor]:
        """A copy of the weights (to restore when the guard rejects a round)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore(self, state: dict[str, Tensor]) -> None:
        self.model.load_state_dict(state)


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


def guard_accepts(candidate_auroc: float, base_auroc: float, tolerance: float) -> bool:
    """Whether a refinement holds: its AUROC fell by at most ``tolerance`` from the base's.

    An undefined AUROC (every class one-valued in the guard set) never passes.
    """
    if tolerance < 0:
        raise ValueError(f"guard.tolerance must be >= 0, got {tolerance}")
    if not (math.isfinite(candidate_auroc) and math.isfinite(base_auroc)):
        return False
    return candidate_auroc >= base_auroc - tolerance


def guarded_update(policy: BernoulliPolicy, before: dict[str, Tensor], guard: WindowSet,
                   base_auroc: float, tolerance: float, classes: Sequence[str]
                   ) -> tuple[bool, dict]:
    """Keep the refined weights if the guard accepts them, else restore ``before``.

    Returns
    -------
    accepted : bool
    metrics : dict
        The refined model's guard-set metrics (``val/...``), whatever the outcome.
    """
    metrics, _ = evaluate_policy(policy, guard, "val/", classes)
    accepted = guard_accepts(metrics["val/macro_auroc"], base_auroc, tolerance)
    if not accepted:
        policy.restore(before)
    return accepted, metrics
