"""Per-label temperature scaling, fitted on the validation fold.

The classifier reads a record as sliding windows and aggregates the window probabilities (by
max, as the PTB-XL benchmark does). Temperature scaling acts on one logit per record and label:
the logit of the *aggregated* probability, ``logit(p_record)`` (see :func:`prob_to_logit`), not on
window logits. A label's calibrated probability is ``sigmoid(logit / T)``; dividing by a positive
T is monotone, so ranking metrics (AUROC, AUPRC) are unchanged and only the probabilities move.
"""

from __future__ import annotations

import numpy as np

__all__ = ["apply_temperature", "fit_temperature", "prob_to_logit"]

_LOG_T_BOUNDS = (np.log(1e-3), np.log(1e3))  # past these, T says "no signal", not a calibration


def _sigmoid(x: np.ndarray) -> np.ndarray:
    from scipy.special import expit  # lazy: keeps ``import ecgrisk.calibration`` cheap

    return expit(x)


def _check_logits(logits, name: str = "logits") -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2:
        raise ValueError(f"{name} must be [n_records, n_labels]; got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError(
            f"{name} holds {int(np.sum(~np.isfinite(z)))} NaN or infinite values "
            "(convert probabilities of exactly 0 or 1 with prob_to_logit, which clips them)"
        )
    return z


def prob_to_logit(prob, eps: float = 1e-7) -> np.ndarray:
    """Logit of (aggregated) probabilities, clipped to [eps, 1 - eps] so it stays finite.

    Parameters
    ----------
    prob : array [N, C] of probabilities in [0, 1]
    eps : float

    Returns
    -------
    np.ndarray [N, C] float64
    """
    p = np.asarray(prob, dtype=np.float64)
    if p.size and (np.isnan(p).any() or p.min() < 0 or p.max() > 1):
        raise ValueError("prob must hold probabilities in [0, 1] without NaN")
    p = np.clip(p, eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def fit_temperature(logits, y_true, max_iter: int = 200) -> np.ndarray:
    """Per-label temperatures minimising the BCE of ``sigmoid(logits / T)`` on held-out data.

    Each label's loss depends on its own T only, so the summed loss is minimised jointly with
    L-BFGS-B over log T (which keeps T > 0), with T bounded to [1e-3, 1e3].

    Parameters
    ----------
    logits : array [N, C]
        Per-record logits, i.e. ``logit`` of the window-aggregated probability.
    y_true : array [N, C] of 0/1
    max_iter : int
        Iteration limit of the optimiser.

    Returns
    -------
    np.ndarray [C] float64
        Temperatures > 0; 1.0 for a label whose labels take one value only (nothing to fit).
    """
    from scipy.optimize import minimize

    z = _check_logits(logits)
    y = np.asarray(y_true)
    if y.ndim == 1:
        y = y[:, None]
    if y.shape != z.shape:
        raise ValueError(f"y_true has shape {y.shape} but logits has shape {z.shape}")
    y = y.astype(np.float64)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y_true must hold only 0 and 1")
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer; got {max_iter!r}")

    temps = np.ones(z.shape[1])
    pos = y.sum(axis=0)
    fit = (pos > 0) & (pos < y.shape[0])
    if not fit.any():
        return temps
    zf, yf, n = z[:, fit], y[:, fit], z.shape[0]

    def loss_grad(log_t: np.ndarray):
        a = np.exp(-log_t)  # 1 / T
        s = zf * a
        # BCE with logits, stable for large |s|: softplus(s) - y * s
        loss = np.logaddexp(0.0, s) - yf * s
        # d loss / d log T = (sigmoid(s) - y) * z * d a / d log T = -(sigmoid(s) - y) * s
        grad = -((_sigmoid(s) - yf) * s).sum(axis=0) / n
        return loss.sum() / n, grad

    res = minimize(
        loss_grad,
        np.zeros(int(fit.sum())),
        jac=True,
        method="L-BFGS-B",
        bounds=[_LOG_T_BOUNDS] * int(fit.sum()),
        options={"maxiter": int(max_iter), "ftol": 1e-12, "gtol": 1e-9},
    )
    temps[fit] = np.exp(res.x)
    return temps


def apply_temperature(logits, temperatures) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / T)``, one temperature per label.

    Parameters
    ----------
    logits : array [N, C]
        Per-record logits (logit of the aggregated probability).
    temperatures : array [C] of positive floats

    Returns
    -------
    np.ndarray [N, C] float64 probabilities ([N] for a 1-D ``logits``)
    """
    vector = np.ndim(logits) == 1
    z = _check_logits(logits)
    t = np.asarray(temperatures, dtype=np.float64).ravel()
    if t.shape != (z.shape[1],):
        raise ValueError(f"temperatures has {t.size} values but logits has {z.shape[1]} labels")
    if not np.all(np.isfinite(t) & (t > 0)):
        raise ValueError(
            f"temperatures must be finite and > 0; got {t[~(np.isfinite(t) & (t > 0))][:5]}"
        )
    p = _sigmoid(z / t)
    return p[:, 0] if vector else p
