"""Per-label temperature scaling, fitted on the validation fold.

The classifier reads a record as sliding windows and aggregates the window probabilities (by
max, as the PTB-XL benchmark does). Temperature scaling acts on one logit per record and label:
the logit of the *aggregated* probability, ``logit(p_record)`` (see :func:`prob_to_logit`), not on
window logits. A label's calibrated probability is ``sigmoid(logit / T + b)``; with T > 0 this is
monotone, so ranking metrics (AUROC, AUPRC) are unchanged and only the probabilities move.

The bias ``b`` is there because the max over a record's windows shifts every logit upwards (the
more windows, the more): a temperature alone can only shrink such logits towards 0.5, which
leaves rare statements badly over-predicted. :func:`fit_calibration` fits both per label;
:func:`fit_temperature` is the bias-free special case.
"""

from __future__ import annotations

import numpy as np

__all__ = ["apply_temperature", "fit_calibration", "fit_temperature", "prob_to_logit"]

_LOG_T_BOUNDS = (np.log(1e-3), np.log(1e3))  # past these, T says "no signal", not a calibration


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # numpy rather than scipy.special.expit: scoring's main process would import scipy.special
    # (0.2-0.3 s, at its first batch) for this alone; exp(-|x|) keeps both tails accurate
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


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


def fit_calibration(logits, y_true, max_iter: int = 200, bias: bool = True,
                    temperature: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-label temperature and bias minimising the BCE of ``sigmoid(logits / T + b)``.

    Each label's loss depends on its own (T, b) only, so the summed loss is minimised jointly
    with L-BFGS-B over (log T, b), which keeps T > 0, with T bounded to [1e-3, 1e3].

    Parameters
    ----------
    logits : array [N, C]
        Per-record logits, i.e. ``logit`` of the window-aggregated probability.
    y_true : array [N, C] of 0/1
    max_iter : int
        Iteration limit of the optimiser.
    bias : bool
        Fit ``b`` too; False keeps ``b = 0`` (plain temperature scaling).
    temperature : bool
        Fit ``T`` too; False keeps ``T = 1`` (a shift of each logit only: recalibration in the
        large, two parameters fewer to learn from a small set).

    Returns
    -------
    temperature, bias : np.ndarray [C] float64 each
        (1, 0) for a label whose labels take one value only (nothing to fit).
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

    temps, biases = np.ones(z.shape[1]), np.zeros(z.shape[1])
    pos = y.sum(axis=0)
    fit = (pos > 0) & (pos < y.shape[0])
    if not fit.any():
        return temps, biases
    zf, yf, n, k = z[:, fit], y[:, fit], z.shape[0], int(fit.sum())

    def loss_grad(params: np.ndarray):
        log_t, b = params[:k], params[k:] if bias else np.zeros(k)
        s = zf * np.exp(-log_t) + b
        # BCE with logits, stable for large |s|: softplus(s) - y * s
        loss = np.logaddexp(0.0, s) - yf * s
        r = _sigmoid(s) - yf
        # d s / d log T = -(s - b); d s / d b = 1
        grad = [-(r * (s - b)).sum(axis=0) / n]
        if bias:
            grad.append(r.sum(axis=0) / n)
        return loss.sum() / n, np.concatenate(grad)

    res = minimize(
        loss_grad,
        np.zeros(2 * k if bias else k),
        jac=True,
        method="L-BFGS-B",
        bounds=[_LOG_T_BOUNDS if temperature else (0.0, 0.0)] * k + [(None, None)] * (k if bias else 0),
        options={"maxiter": int(max_iter), "ftol": 1e-12, "gtol": 1e-9},
    )
    temps[fit] = np.exp(res.x[:k])
    if bias:
        biases[fit] = res.x[k:]
    return temps, biases


def fit_temperature(logits, y_true, max_iter: int = 200) -> np.ndarray:
    """Per-label temperatures ``[C]`` minimising the BCE of ``sigmoid(logits / T)`` (no bias)."""
    return fit_calibration(logits, y_true, max_iter=max_iter, bias=False)[0]


def apply_temperature(logits, temperatures, bias=None) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / T + b)``, one (T, b) per label.

    Parameters
    ----------
    logits : array [N, C]
        Per-record logits (logit of the aggregated probability).
    temperatures : array [C] of positive floats
    bias : array [C], optional (0 when None)

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
    b = np.zeros_like(t) if bias is None else np.asarray(bias, dtype=np.float64).ravel()
    if b.shape != t.shape or not np.all(np.isfinite(b)):
        raise ValueError(f"bias must be {t.size} finite values, got {b[:5]}")
    p = _sigmoid(z / t + b)
    return p[:, 0] if vector else p
