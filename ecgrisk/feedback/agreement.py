"""Agreement between annotators: Cohen's kappa, per-statement agreement, conflicts, duplicates.

Everything here works on lists of :class:`~ecgrisk.feedback.records.Verdict` and
:class:`~ecgrisk.feedback.records.Preference` records, so the store's ``stats`` and the import
summary share one definition of "agree", "conflict" and "duplicate".
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np

from ecgrisk.feedback.records import Preference, Verdict


def cohen_kappa(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Cohen's kappa between two raters' labels of the same items.

    Parameters
    ----------
    a, b
        ``[N]`` labels (any hashable values) from rater A and rater B.

    Returns
    -------
    float
        ``(p_o - p_e) / (1 - p_e)``; ``nan`` when there are no items or chance agreement is 1
        (both raters used a single, identical label), where kappa is undefined.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"cohen_kappa needs two 1-D label arrays of equal length, "
                         f"got shapes {a.shape} and {b.shape}")
    if a.size == 0:
        return math.nan
    labels = np.union1d(a, b)
    if labels.size == 1:
        return math.nan
    from sklearn.metrics import cohen_kappa_score  # lazy: sklearn import is slow

    return float(cohen_kappa_score(a, b, labels=labels))


def latest_per_annotator(verdicts: Sequence[Verdict]) -> dict[str, dict[str, Verdict]]:
    """``ecg_id -> annotator -> latest verdict`` (by ``created_at``; later wins)."""
    out: dict[str, dict[str, Verdict]] = defaultdict(dict)
    for v in sorted(verdicts, key=lambda v: v.created_at):
        out[v.ecg_id][v.annotator] = v
    return dict(out)


def _universe(records: Sequence[Verdict], classes: Sequence[str] | None) -> list[str]:
    if classes is not None:
        return list(classes)
    names: set[str] = set()
    for v in records:
        names |= set(v.reading) | set(v.marks) | set(v.missed)
    return sorted(names)


def statement_agreement(verdicts: Sequence[Verdict], classes: Sequence[str] | None = None
                        ) -> dict[str, dict[str, float | int]]:
    """Per-statement agreement between annotators who judged the same ECG.

    For each ECG, each annotator's latest verdict is used; every pair of annotators that both
    judged a statement contributes one comparison.

    Returns
    -------
    dict
        ``statement -> {"n_pairs": int, "agreement": float}`` for statements with at least one
        comparison (fraction of pairs that gave the same 0/1 judgement).
    """
    agree: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    for by_ann in latest_per_annotator(verdicts).values():
        if len(by_ann) < 2:
            continue
        universe = _universe(list(by_ann.values()), classes)
        judged = {ann: v.judgements(universe) for ann, v in by_ann.items()}
        for x, y in combinations(sorted(judged), 2):
            for s in set(judged[x]) & set(judged[y]):
                total[s] += 1
                agree[s] += int(judged[x][s] == judged[y][s])
    return {s: {"n_pairs": total[s], "agreement": agree[s] / total[s]} for s in sorted(total)}


def _kappa_row(a: Sequence[int], b: Sequence[int]) -> dict[str, Any]:
    """``n_items``, raw ``agreement`` and Cohen's ``kappa`` (``None`` where undefined)."""
    kappa = cohen_kappa(a, b)
    return {"n_items": len(a), "agreement": float(np.mean(np.equal(a, b))),
            "kappa": None if math.isnan(kappa) else kappa}


def _pair_labels(verdicts: Sequence[Verdict], classes: Sequence[str] | None
                 ) -> dict[tuple[str, str], dict[str, tuple[list[int], list[int]]]]:
    """``(annotator a, annotator b) -> statement -> (a's 0/1 labels, b's)`` over the ECGs both
    judged (each annotator's latest verdict per ECG; statements both judged)."""
    out: dict[tuple[str, str], dict[str, tuple[list[int], list[int]]]] = defaultdict(
        lambda: defaultdict(lambda: ([], [])))
    for by_ann in latest_per_annotator(verdicts).values():
        for x, y in combinations(sorted(by_ann), 2):
            universe = _universe([by_ann[x], by_ann[y]], classes)
            jx, jy = by_ann[x].judgements(universe), by_ann[y].judgements(universe)
            for s in sorted(set(jx) & set(jy)):
                out[(x, y)][s][0].append(jx[s])
                out[(x, y)][s][1].append(jy[s])
    return out


def pairwise_kappa(verdicts: Sequence[Verdict], classes: Sequence[str] | None = None
                   ) -> list[dict[str, Any]]:
    """Cohen's kappa for every pair of annotators over the (ECG, statement) items both judged.

    Parameters
    ----------
    verdicts
        All verdicts; each annotator's latest verdict per ECG is used.
    classes
        The label list. With it, every label counts (most agree on "absent", which is what
        kappa corrects for); without it, only statements that one of the two verdicts mentions.

    Returns
    -------
    list of dict
        ``{"annotators": [a, b], "n_items": int, "agreement": float, "kappa": float | None}``
        sorted by annotator names; ``kappa`` is ``None`` where undefined.
    """
    out = []
    for (x, y), by_statement in sorted(_pair_labels(verdicts, classes).items()):
        la = [v for a, _ in by_statement.values() for v in a]
        lb = [v for _, b in by_statement.values() for v in b]
        if la:
            out.append({"annotators": [x, y], **_kappa_row(la, lb)})
    return out


def statement_kappa(verdicts: Sequence[Verdict], classes: Sequence[str] | None = None
                    ) -> list[dict[str, Any]]:
    """Cohen's kappa per statement for every pair of annotators, over the ECGs both judged.

    Parameters
    ----------
    verdicts, classes
        As for :func:`pairwise_kappa`; here each statement is its own two-rater table.

    Returns
    -------
    list of dict
        ``{"statement", "annotators": [a, b], "n_items", "agreement", "kappa"}`` sorted by
        statement, then pair; ``kappa`` is ``None`` where undefined (both gave one same label).
    """
    rows = [{"statement": s, "annotators": [x, y], **_kappa_row(a, b)}
            for (x, y), by_statement in _pair_labels(verdicts, classes).items()
            for s, (a, b) in by_statement.items()]
    return sorted(rows, key=lambda r: (r["statement"], r["annotators"]))


def model_kappa(verdicts: Sequence[Verdict], classes: Sequence[str] | None = None
                ) -> list[dict[str, Any]]:
    """Cohen's kappa per statement between each annotator and the model's call they were shown.

    The model's call is the verdict's ``reading`` (the statement at or above the model's
    threshold); the annotator's is their judgement of it (:meth:`Verdict.judgements`: shown
    positives by their mark, others present when added as missed). Each annotator's latest
    verdict per ECG is used, and only statements they judged count.

    Returns
    -------
    list of dict
        ``{"statement", "annotator", "n_items", "agreement", "kappa"}`` sorted by statement,
        then annotator; ``kappa`` compares ``[model, annotator]`` in that order.
    """
    labels: dict[tuple[str, str], tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for by_ann in latest_per_annotator(verdicts).values():
        for annotator, v in by_ann.items():
            for s, judged in v.judgements(_universe([v], classes)).items():
                labels[(s, annotator)][0].append(int(v.reading.get(s, 0)))
                labels[(s, annotator)][1].append(judged)
    return [{"statement": s, "annotator": annotator, **_kappa_row(model, ann)}
            for (s, annotator), (model, ann) in sorted(labels.items())]


def verdict_conflicts(verdicts: Sequence[Verdict], classes: Sequence[str] | None = None,
                      involving: Sequence[bool] | None = None) -> list[dict[str, Any]]:
    """Statements on which two verdicts for the same ECG disagree.

    Every pair of verdicts on one ECG is compared (the same annotator changing their mind
    counts too), over the statements both judged.

    Parameters
    ----------
    verdicts
        The records to compare.
    classes
        The label list (see :func:`pairwise_kappa`).
    involving
        ``[N]`` flags aligned with ``verdicts``; when given, only pairs with a flagged record
        are reported (an import reports the conflicts its new records bring).

    Returns
    -------
    list of dict
        ``{"kind": "verdict", "ecg_id", "statement", "annotators": [a, b], "values": [va, vb]}``.
    """
    flags = _flags(verdicts, involving)
    by_ecg: dict[str, list[tuple[Verdict, bool]]] = defaultdict(list)
    for v, flag in zip(verdicts, flags, strict=True):
        by_ecg[v.ecg_id].append((v, flag))
    out = []
    for ecg_id, items in sorted(by_ecg.items()):
        for (v, fv), (w, fw) in combinations(items, 2):
            if not (fv or fw):
                continue
            universe = _universe([v, w], classes)
            jv, jw = v.judgements(universe), w.judgements(universe)
            for s in sorted(set(jv) & set(jw)):
                if jv[s] != jw[s]:
                    out.append({"kind": "verdict", "ecg_id": ecg_id, "statement": s,
                                "annotators": [v.annotator, w.annotator],
                                "values": [jv[s], jw[s]]})
    return out


def preference_conflicts(preferences: Sequence[Preference],
                         involving: Sequence[bool] | None = None) -> list[dict[str, Any]]:
    """Pairs of preferences on the same two readings of one ECG that chose differently.

    ``involving`` works as in :func:`verdict_conflicts`.

    Returns
    -------
    list of dict
        ``{"kind": "preference", "ecg_id", "readings": [first, second], "annotators": [a, b],
        "choices": [ca, cb]}`` with choices relative to the canonical order of the readings.
    """
    flags = _flags(preferences, involving)
    by_pair: dict[tuple[str, str, str], list[tuple[Preference, bool]]] = defaultdict(list)
    for p, flag in zip(preferences, flags, strict=True):
        by_pair[p.pair_key()].append((p, flag))
    out = []
    for key, items in sorted(by_pair.items()):
        for (p, fp), (q, fq) in combinations(items, 2):
            if (fp or fq) and p.canonical_choice() != q.canonical_choice():
                out.append({"kind": "preference", "ecg_id": key[0],
                            "readings": [json.loads(key[1]), json.loads(key[2])],
                            "annotators": [p.annotator, q.annotator],
                            "choices": [p.canonical_choice(), q.canonical_choice()]})
    return out


def preference_agreement(preferences: Sequence[Preference]) -> dict[str, float | int]:
    """Fraction of annotator pairs that chose alike on the same pair of readings.

    Each annotator's latest preference on a pair is used.

    Returns
    -------
    dict
        ``{"n_pairs": int, "agreement": float | None}``.
    """
    latest: dict[tuple[str, str, str], dict[str, Preference]] = defaultdict(dict)
    for p in sorted(preferences, key=lambda p: p.created_at):
        latest[p.pair_key()][p.annotator] = p
    n = agree = 0
    for by_ann in latest.values():
        for x, y in combinations(sorted(by_ann), 2):
            n += 1
            agree += int(by_ann[x].canonical_choice() == by_ann[y].canonical_choice())
    return {"n_pairs": n, "agreement": agree / n if n else None}


def duplicates(records: Sequence[Verdict | Preference],
               involving: Sequence[bool] | None = None) -> list[dict[str, Any]]:
    """Groups of records with the same ECG, annotator and content (the later ones are repeats).

    ``involving`` works as in :func:`verdict_conflicts`: only groups with a flagged record.

    Returns
    -------
    list of dict
        ``{"kind", "ecg_id", "annotator", "count"}`` for each content seen more than once.
    """
    groups: dict[str, list[Verdict | Preference]] = defaultdict(list)
    flagged: set[str] = set()
    for r, flag in zip(records, _flags(records, involving), strict=True):
        groups[r.content_key()].append(r)
        if flag:
            flagged.add(r.content_key())
    return [{"kind": g[0].kind, "ecg_id": g[0].ecg_id, "annotator": g[0].annotator,
             "count": len(g)} for key, g in sorted(groups.items())
            if len(g) > 1 and key in flagged]


def _flags(records: Sequence[Any], involving: Sequence[bool] | None) -> list[bool]:
    if involving is None:
        return [True] * len(records)
    if len(involving) != len(records):
        raise ValueError(f"involving has {len(involving)} flags for {len(records)} records")
    return [bool(f) for f in involving]
