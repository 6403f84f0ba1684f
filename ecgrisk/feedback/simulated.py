"""A simulated cardiologist: judges readings against ground truth, with tunable imperfection.

It answers through the same records as a real cardiologist (:class:`Verdict`,
:class:`Preference`), so benchmarks exercise the real store and training path.

Imperfection has three knobs:

- ``noise``: each judgement is flipped with this probability (a mark right <-> wrong, a
  statement the reading left out judged present when absent or absent when present, a
  preference reversed);
- ``temperature``: preferences follow Bradley-Terry on agreement with the truth,
  ``P(a) = σ((s_a - s_b) / temperature)``; ``temperature=0`` always picks the better reading;
- ``bias``: a systematic disagreement with the labels, e.g. ``{"STTC": "strict"}`` sees STTC
  only where the labels have it *and* a fixed coin (p = 0.5) agrees; a float is the keep
  probability. The coins are drawn once, so the cardiologist is consistent with itself.

A perfect annotator is ``noise=0, temperature=0``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ecgrisk.feedback.records import Preference, Verdict, reading_vector


class SimulatedCardiologist:
    """Judges readings of ECG ``idx`` against ``y_true[idx]``.

    Parameters
    ----------
    y_true
        ``[n, C]`` 0/1 ground truth.
    classes
        ``C`` statement names.
    noise
        Probability of flipping each judgement, in ``[0, 1]``.
    temperature
        Bradley-Terry temperature for preferences (``>= 0``; 0 is deterministic).
    bias
        ``statement -> "strict" | keep probability`` (see the module docstring).
    seed
        Seeds every random choice; the same calls in the same order give the same answers.
    annotator
        Name written into the records.
    score
        ``"hamming"`` (minus the number of wrong statements) or ``"f1"``.
    ties
        When True, equal scores give ``"tie"``; otherwise a fair coin decides.
    """

    def __init__(self, y_true: np.ndarray, classes: Sequence[str], noise: float = 0.0,
                 temperature: float = 1.0, bias: Mapping[str, Any] | None = None,
                 seed: int = 0, annotator: str = "sim-1", score: str = "hamming",
                 ties: bool = True):
        y_true = np.asarray(y_true)
        if y_true.ndim != 2 or y_true.shape[1] != len(classes):
            raise ValueError(f"y_true must be [n, C={len(classes)}], got {y_true.shape}")
        if not np.isin(y_true, (0, 1)).all():
            raise ValueError("y_true must hold only 0/1")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if score not in ("hamming", "f1"):
            raise ValueError(f"score must be 'hamming' or 'f1', got {score!r}")
        self.classes = list(classes)
        self.noise, self.temperature, self.score_kind, self.ties = noise, temperature, score, ties
        self.annotator = annotator
        self.rng = np.random.default_rng(seed)
        self.truth = y_true.astype(np.int8).copy()  # what this cardiologist believes
        index = {c: i for i, c in enumerate(self.classes)}
        for statement, rule in (bias or {}).items():
            if statement not in index:
                raise ValueError(f"bias names {statement!r}, which is not in classes")
            keep = 0.5 if rule == "strict" else rule
            if not isinstance(keep, (int, float)) or not 0 <= keep <= 1:
                raise ValueError(f"bias[{statement!r}] must be 'strict' or a probability, "
                                 f"got {rule!r}")
            coin = self.rng.random(len(y_true)) < keep
            self.truth[:, index[statement]] &= coin.astype(np.int8)

    def _reading(self, reading: Any, name: str) -> np.ndarray:
        if isinstance(reading, np.ndarray):
            if reading.shape != (len(self.classes),):
                raise ValueError(f"{name} must be [C={len(self.classes)}], got {reading.shape}")
            return (reading > 0.5).astype(np.int8)
        return reading_vector(reading, self.classes, name).astype(np.int8)

    def score(self, idx: int, reading: Any) -> float:
        """How well a reading agrees with this cardiologist's truth (higher is better)."""
        y = self._reading(reading, "reading")
        t = self.truth[idx]
        if self.score_kind == "hamming":
            return -float(np.sum(y != t))
        tp, fp, fn = np.sum(y & t), np.sum(y & (1 - t)), np.sum((1 - y) & t)
        return 1.0 if tp + fp + fn == 0 else float(2 * tp / (2 * tp + fp + fn))

    def verdict(self, idx: int, ecg_id: str, ecg_path: str, reading: Any,
                model_version: str = "") -> Verdict:
        """Mark each shown positive right/wrong and add missed true statements.

        Parameters
        ----------
        idx
            Row of ``y_true``.
        ecg_id, ecg_path, model_version
            Written into the record.
        reading
            ``[C]`` 0/1 array, dict ``statement -> 0/1`` or list of positives.
        """
        y = self._reading(reading, "reading")
        t = self.truth[idx]
        marks, missed = {}, []
        for i, c in enumerate(self.classes):
            flip = self.rng.random() < self.noise
            if y[i]:
                marks[c] = "right" if bool(t[i]) != flip else "wrong"
            elif bool(t[i]) != flip:  # noise errs both ways: misses and false additions
                missed.append(c)
        shown = {c: int(v) for c, v in zip(self.classes, y, strict=True)}
        return Verdict(ecg_id=ecg_id, ecg_path=ecg_path, reading=shown, marks=marks,
                       missed=missed, annotator=self.annotator, model_version=model_version)

    def prefer(self, idx: int, ecg_id: str, ecg_path: str, reading_a: Any, reading_b: Any,
               model_version: str = "") -> Preference:
        """Choose between two readings (Bradley-Terry on :meth:`score`, then ``noise``)."""
        a, b = self._reading(reading_a, "reading_a"), self._reading(reading_b, "reading_b")
        s_a, s_b = self.score(idx, a), self.score(idx, b)
        if np.array_equal(a, b) or (s_a == s_b and self.ties):
            choice = "tie"
        else:
            if self.temperature == 0:
                p_a = 0.5 if s_a == s_b else float(s_a > s_b)
            else:
                p_a = 1.0 / (1.0 + np.exp(-(s_a - s_b) / self.temperature))
            choice = "a" if self.rng.random() < p_a else "b"
            if self.rng.random() < self.noise:
                choice = "b" if choice == "a" else "a"
        names_a = [c for c, v in zip(self.classes, a, strict=True) if v]
        names_b = [c for c, v in zip(self.classes, b, strict=True) if v]
        return Preference(ecg_id=ecg_id, ecg_path=ecg_path, reading_a=names_a,
                          reading_b=names_b, choice=choice, annotator=self.annotator,
                          model_version=model_version)
