"""Which readings need a human: selective review by conformal risk control.

The model's reading of an ECG calls a statement present when its calibrated probability is at
least 0.5, as the review app shows it. An ECG goes to review when some statement's probability
lies inside the band ``(low, 1 - low)``, the statements too close to call. ``low`` is chosen on a
calibration fold (the validation fold the bundle's calibration was fitted on) by conformal risk
control (Angelopoulos, Bates, Fisch, Lei & Schuster, ICLR 2024): the narrowest band (the
largest ``low``), so the fewest ECGs flagged, whose loss on the fold, counted with the
conformal correction, stays at or under ``alpha``. The loss of an ECG is 1 when it is not
flagged and its reading misreads a statement, else 0. For a new ECG exchangeable with the fold,
the chance that it passes without review while its reading is wrong is then at most ``alpha``.
That holds on average over the fold; fitted in each group of a column as well (age band, sex,
device: ``fit_review(groups=...)``), it holds within each of them too, at the price of more
ECGs flagged.

This replaced per-statement split-conformal sets (each statement's label in its set with
probability 0.9), which flagged every ECG of the 71-statement ``ptbxl-all`` bundle and, for the
superdiagnostic bundle, 39% of fold-9 ECGs while leaving 18% of them unflagged and misread. On
fold-9 halves it was not fitted on (:func:`split_review`), the band flags 46% and leaves 10%.
Ranking ECGs instead by the model's own chance of a misread anywhere, ``1 - prod max(p, 1 - p)``,
flagged 61.4% of ``ptbxl-all``'s ECGs instead of 64.1% at the same risk, and as many for
superdiagnostic (10 halvings each); one band of probabilities was kept as the rule a reader can
check by eye.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["MIN_GROUP", "READ_AT", "ReviewBand", "fit_review", "misread", "review_risk", "split_review",
           "with_band"]

READ_AT = 0.5  # a statement is read as present at or above this calibrated probability
# the smallest group fit_review fits a band in: on PTB-XL's fold-9 halves, groups of 150 or more
# kept every age, sex and device group at or under the bound on the other half (10 halvings)
MIN_GROUP = 150


def _closeness(probs: np.ndarray) -> np.ndarray:
    """``[N, C]`` how close each probability is to the reading's threshold: 1 at 0.5, 0 at 0 or 1.

    ``min(2p, 2 - 2p)``, which floating point computes exactly (doubling is exact, and so is
    ``2 - x`` for ``x`` in [1, 2]), so a band fitted at one ECG's value flags it as fitted.
    """
    p = np.asarray(probs, dtype=np.float64)
    return np.minimum(2.0 * p, 2.0 - 2.0 * p)


def misread(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``[N]`` bool: the reading (statements at or above :data:`READ_AT`) gets some statement wrong."""
    return ((np.asarray(probs) >= READ_AT) != np.asarray(labels).astype(bool)).any(axis=1)


@dataclass
class ReviewBand:
    """A fitted review rule (stored in a bundle): flag an ECG when a statement's calibrated
    probability is in ``(low, 1 - low)``; ``low = 0`` flags every ECG with any probability off
    0 and 1, ``low = 0.5`` none."""

    alpha: float
    low: float
    n: int
    groups: list[str] = field(default_factory=list)  # "column=value (n)" the bound was fitted in
    by: list[str] = field(default_factory=list)  # the specs they came from ("sex", "age:40,60,80")

    def flags(self, probs: np.ndarray) -> np.ndarray:
        """``probs [N, C]`` calibrated -> ``[N, C]`` bool, True for the statements in the band."""
        return _closeness(np.atleast_2d(probs)) > 2.0 * self.low

    def review(self, probs: np.ndarray, classes: list[str]) -> list[str]:
        """Per ECG, ``""`` when no statement is in the band, else ``"uncertain A B"``, the
        statements in it, the closest to 0.5 first."""
        p = np.atleast_2d(probs)
        inside, close = self.flags(p), _closeness(p)
        out = []
        for row_in, row_close in zip(inside, close, strict=True):
            named = [classes[c] for c in np.argsort(-row_close, kind="stable") if row_in[c]]
            out.append("uncertain " + " ".join(named) if named else "")
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ReviewBand:
        groups = [str(g) for g in d.get("groups", [])]
        by = d.get("by")
        return cls(alpha=float(d["alpha"]), low=float(d["low"]), n=int(d["n"]), groups=groups,
                   by=[str(b) for b in by] if by is not None else _by_from_groups(groups))


_BAND = re.compile(r"^(?:<(?P<below>[\d.]+)|>=(?P<above>[\d.]+)|(?P<lo>[\d.]+)-<(?P<hi>[\d.]+))$")


def _by_from_groups(groups: list[str]) -> list[str]:
    """The specs of a band stored before ``by`` was (the shipped bundles'), read back from its
    group labels: ``age=40-<60 (512)`` gives ``age`` with edges 40 and 60, ``sex=male (990)``
    gives ``sex``."""
    edges: dict[str, set[float]] = {}
    for label in groups:
        name, _, rest = label.partition("=")
        m = _BAND.match(rest.rsplit(" (", 1)[0])
        found = edges.setdefault(name, set())
        if m:
            found.update(float(v) for v in m.groupdict().values() if v is not None)
    return [f"{name}:{','.join(f'{e:g}' for e in sorted(cuts))}" if cuts else name
            for name, cuts in edges.items()]


def with_band(extra: dict, band: ReviewBand) -> dict:
    """A bundle's ``extra`` with ``band`` as its review rule; the per-statement sets an earlier
    ecgrisk stored (``conformal``) go, as scoring no longer reads them."""
    return {**{k: v for k, v in extra.items() if k != "conformal"}, "review": band.to_dict()}


def fit_review(labels: np.ndarray, probs: np.ndarray, alpha: float = 0.1,
               groups: dict[str, np.ndarray] | None = None) -> ReviewBand:
    """The band conformal risk control chooses on a calibration fold: ``labels`` 0/1 and
    calibrated ``probs``, both ``[N, C]``.

    With ECGs sorted by their closest statement's closeness ``u``, leaving the ``k`` least
    uncertain unflagged costs ``L_k``, the misread ECGs among them; the rule keeps the largest
    ``k`` with ``(L_k + 1) / (N + 1) <= alpha`` (the loss is at most 1) and ties in ``u`` go
    together. Too few ECGs for ``alpha`` (``N < 1 / alpha - 1``) flag every ECG.

    ``groups`` (``{"age": ["<40", ...], "sex": [...]}``, a value per ECG) makes the bound hold
    within each group of at least :data:`MIN_GROUP` ECGs too: the band is fitted in every such
    group and over all, and the widest wins. A wider band only flags more, so each group keeps
    its own guarantee; the cost is more ECGs flagged.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"labels {y.shape} and probs {p.shape} must both be [N, C]")
    band = ReviewBand(alpha=float(alpha), low=_fit_low(y, p, alpha), n=len(y), by=list(groups or {}))
    for name, values in (groups or {}).items():
        values = np.asarray(values).astype(str)
        if len(values) != len(y):
            raise ValueError(f"groups[{name!r}] has {len(values)} values for {len(y)} ECGs")
        for v in np.unique(values):
            member = values == v
            if member.sum() >= MIN_GROUP:
                band.low = min(band.low, _fit_low(y[member], p[member], alpha))
                band.groups.append(f"{_label(name, v)} ({int(member.sum())})")
    return band


def _label(name: str, value: str) -> str:
    """``age=<40`` for the group ``<40`` of ``age:40,60,80``; runs of spaces in a value folded."""
    return f"{name.split(':')[0]}={' '.join(value.split())}"


def _fit_low(y: np.ndarray, p: np.ndarray, alpha: float) -> float:
    n = len(y)
    u = _closeness(p).max(axis=1)
    order = np.argsort(u, kind="stable")
    u_sorted, bad = u[order], misread(y, p)[order]
    loss = np.concatenate([[0], np.cumsum(bad)])  # loss[k]: the k least uncertain left unflagged
    # only cuts between distinct values of u: ECGs with the same u are flagged or not together
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(u_sorted) > 0) + 1, [n]])
    ok = cuts[(loss[cuts] + 1) / (n + 1) <= alpha]
    k = int(ok.max()) if len(ok) else 0
    # flag u > u_sorted[k - 1]: a probability p is in the band when min(2p, 2 - 2p) > 2 low
    return 0.0 if k == 0 else float(u_sorted[k - 1] / 2.0)


def review_risk(band: ReviewBand, labels: np.ndarray, probs: np.ndarray) -> dict:
    """What the band does on labelled ECGs: ``review_rate`` (share flagged),
    ``unreviewed_misread`` (share not flagged with a misread statement: the risk it bounds by
    ``alpha``), ``misread_among_unreviewed``, ``misread`` (share misread at all), ``records``."""
    flagged = band.flags(probs).any(axis=1)
    wrong = misread(labels, probs)
    kept = ~flagged
    return {"alpha": band.alpha, "review_rate": float(flagged.mean()),
            "unreviewed_misread": float((kept & wrong).mean()),
            "misread_among_unreviewed": float(wrong[kept].mean()) if kept.any() else 0.0,
            "misread": float(wrong.mean()), "records": int(len(wrong))}


def split_review(labels: np.ndarray, probs: np.ndarray, alpha: float = 0.1, seed: int = 0,
                 splits: int = 10, groups: dict[str, np.ndarray] | None = None) -> dict:
    """The band measured honestly on one fold: fitted on a random half and measured on the
    other, both ways, over ``splits`` random halvings; the means of :func:`review_risk`'s shares
    and of ``low``, with ``records`` the whole fold. With ``groups`` (fitted as
    :func:`fit_review` fits them), ``by_group`` holds each group's mean share left unflagged and
    misread, and ``worst_group`` the highest."""
    y, p = np.asarray(labels), np.asarray(probs)
    groups = {k: np.asarray(v).astype(str) for k, v in (groups or {}).items()}
    rng = np.random.default_rng(seed)
    runs, by_group = [], {}
    for _ in range(splits):
        idx = rng.permutation(len(y))
        halves = (idx[: len(y) // 2], idx[len(y) // 2:])
        for a, b in (halves, halves[::-1]):
            band = fit_review(y[a], p[a], alpha, {k: v[a] for k, v in groups.items()})
            runs.append({**review_risk(band, y[b], p[b]), "low": band.low})
            left = ~band.flags(p[b]).any(axis=1) & misread(y[b], p[b])
            for name, values in groups.items():
                for v in np.unique(values):
                    member = values[b] == v
                    if member.sum() >= MIN_GROUP / 2:  # half a fitted group's size, measured
                        by_group.setdefault(_label(name, v), []).append(float(left[member].mean()))
    means = {k: float(np.mean([r[k] for r in runs])) for k in runs[0] if k not in ("alpha", "records")}
    out = {"alpha": float(alpha), **means, "records": int(len(y)), "splits": splits}
    if by_group:
        out["by_group"] = {k: float(np.mean(v)) for k, v in sorted(by_group.items())}
        out["worst_group"] = max(out["by_group"].items(), key=lambda kv: kv[1])
    return out
