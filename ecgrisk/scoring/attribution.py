"""Where in the 12 leads and in time the evidence for a statement lies: integrated gradients.

For each of a reading's top statements the window that wins the max aggregation for that
statement (the one whose logit the record's score comes from) is explained with captum's
``IntegratedGradients`` against an all-zero input (the training mean after scaling, i.e. no
signal). The result is ``[leads, window]`` attributions in logit units; their sum over the
window is the logit's difference from the baseline (IG's completeness), which
``Explanation.convergence`` reports. Positive values push the statement up.

captum is in the ``review`` extra; nothing here is imported by the scoring hot path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ecgrisk.scoring.predict import Predictor

__all__ = ["Explanation", "evidence_on_record", "explain", "explainer", "segment_deletion"]

log = logging.getLogger(__name__)


@dataclass
class Explanation:
    """One statement's evidence in one window.

    Attributes
    ----------
    statement : class name.
    probability : the record's calibrated probability of it.
    window : ``[leads, window]`` the model's input window, un-scaled to mV (preprocessed).
    attribution : ``[leads, window]`` integrated gradients of the statement's logit.
    start_s : where the window starts in the record, seconds.
    fs : the model's sampling rate.
    convergence : |sum(attribution) - (logit(window) - logit(baseline))|; small is faithful IG.
    """

    statement: str
    probability: float
    window: np.ndarray
    attribution: np.ndarray
    start_s: float
    fs: float
    convergence: float


def explainer(bundle) -> Predictor | None:
    """A Predictor to explain ``bundle``'s readings with, or None (with a warning) where captum,
    from the ``review`` extra, is not installed: plots then go without attribution."""
    try:
        import captum  # noqa: F401
    except ImportError:
        log.warning("captum is not installed (the review extra): no attribution plots")
        return None
    return Predictor(bundle)


def explain(predictor: Predictor, signal: np.ndarray, fs: float, top: int = 3,
            steps: int = 32) -> list[Explanation]:
    """Integrated-gradients explanations of the ``top`` most probable statements of one ECG.

    Parameters
    ----------
    predictor : the scoring :class:`Predictor` (torch backend).
    signal : ``[12, T]`` mV as :func:`~ecgrisk.io.read_ecg` returns it; ``fs`` its rate.
    top : statements explained, by calibrated probability.
    steps : integration steps (captum's ``n_steps``).
    """
    from captum.attr import IntegratedGradients

    spec, bundle = predictor.spec, predictor.bundle
    prepared = spec.prepare(signal, fs)
    windows, _ = spec.windows([prepared])
    starts = np.arange(len(windows)) * spec.stride
    logits = predictor.window_logits(windows)  # [W, C]
    probs = predictor.calibrate(predictor.aggregate(logits, np.zeros(len(windows), int), 1))[0]
    model = bundle.model.eval()
    ig = IntegratedGradients(lambda x: model(x).float())
    out = []
    for c in np.argsort(-probs)[:top]:
        w = int(np.argmax(logits[:, c]))
        x = torch.from_numpy(windows[w:w + 1].copy())
        attr, delta = ig.attribute(x, baselines=torch.zeros_like(x), target=int(c),
                                   n_steps=steps, return_convergence_delta=True)
        out.append(Explanation(
            statement=bundle.classes[c], probability=float(probs[c]),
            window=windows[w] * spec.scaler.std + spec.scaler.mean,
            attribution=attr[0].detach().numpy().astype(np.float32),
            start_s=float(starts[w] / spec.preprocessing.fs), fs=spec.preprocessing.fs,
            convergence=float(abs(delta.item()))))
    return out


def segment_deletion(predictor: Predictor, e: Explanation, seconds: float = 0.25,
                     random_draws: int = 20, seed: int = 0) -> tuple[float, float]:
    """Faithfulness check: the statement's probability drop in its window when the
    ``seconds``-long segment (all leads) with the largest positive attribution is deleted (set to
    the baseline), and the mean drop over ``random_draws`` random segments of the same length.

    Returns
    -------
    (drop for the most-attributed segment, mean drop for random segments)
    """
    spec, bundle = predictor.spec, predictor.bundle
    c = bundle.classes.index(e.statement)
    x = (e.window - spec.scaler.mean) / spec.scaler.std  # back to model input
    n = x.shape[1]
    length = max(1, int(round(seconds * e.fs)))
    evidence = np.convolve(np.clip(e.attribution, 0, None).sum(axis=0), np.ones(length), "valid")
    best = int(np.argmax(evidence))
    rng = np.random.default_rng(seed)
    starts = [best, *rng.integers(0, n - length + 1, random_draws)]
    batch = np.repeat(x[None], len(starts) + 1, axis=0).astype(np.float32)
    for k, a in enumerate(starts, start=1):
        batch[k, :, a:a + length] = 0.0
    p = predictor.calibrate(predictor.window_logits(batch))[:, c]
    return float(p[0] - p[1]), float(np.mean(p[0] - p[2:]))


def evidence_on_record(e: Explanation, n_samples: int, fs: float) -> np.ndarray:
    """``e``'s attribution placed on the record's own time axis: ``[leads, n_samples]`` at
    ``fs`` (the file's rate, which the 12-lead sheet draws), scaled to [-1, 1], zero outside the
    explained window."""
    t_window = e.start_s + np.arange(e.attribution.shape[1]) / e.fs
    t_record = np.arange(n_samples) / fs
    inside = (t_record >= t_window[0]) & (t_record <= t_window[-1])
    out = np.zeros((e.attribution.shape[0], n_samples), dtype=np.float32)
    for i, a in enumerate(e.attribution):
        out[i, inside] = np.interp(t_record[inside], t_window, a)
    return out / (float(np.abs(e.attribution).max()) or 1.0)
