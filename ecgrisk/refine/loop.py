"""The refinement loop: ask -> judge -> reward -> refine -> guard, round after round.

The policy and the guard are in :mod:`ecgrisk.refine.policy`. With ``train="head"`` (the
default) a forward pass is the head on window embeddings computed once by the frozen base encoder
(:class:`ecgrisk.refine.WindowSet`); ``train="all"`` runs the whole model on kept window
inputs. The model stays in eval mode (no dropout, frozen BatchNorm statistics), so the policy
that is trained is the one that is evaluated and scored.

Both feedback paths go through the run's store: the simulated cardiologist writes its answers
there, ``feedback=store`` copies judgements from another store there, and each round then reads
everything the run's store holds about the query pool.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ecgrisk.bundle import Bundle
from ecgrisk.feedback.acquisition import sample_readings, select, threshold_reading
from ecgrisk.feedback.records import Preference, Verdict
from ecgrisk.feedback.simulated import SimulatedCardiologist
from ecgrisk.feedback.store import FeedbackStore
from ecgrisk.files import atomic_write_text
from ecgrisk.refine.policy import (
    BernoulliPolicy,
    evaluate_policy,
    guarded_update,
)
from ecgrisk.refine.pools import Sets
from ecgrisk.refine.reward import (
    RewardModel,
    RewardPairs,
    pair_accuracy,
    preference_to_pair,
    train_reward_model,
    verdict_targets,
    verdict_to_pairs,
)
from ecgrisk.refine.windows import WindowSet

log = logging.getLogger(__name__)

CANDIDATES = ("threshold", "samples", "versions")


# --------------------------------------------------------------------------- asking and judging


def ask(probs: np.ndarray, n: int, rule: str, asked: Sequence[int], seed: int,
        base_probs: np.ndarray | None = None) -> np.ndarray:
    """Indices ``[<= n]`` of pool ECGs not asked yet, chosen by an acquisition rule.

    ``disagreement`` compares the current model with the base; while they coincide (before
    any accepted round) it falls back to ``uncertainty``.
    """
    probs_b = None
    if rule == "disagreement":
        if base_probs is None or np.allclose(probs, base_probs):
            log.info("disagreement: the model equals the base so far; asking by uncertainty")
            rule = "uncertainty"
        else:
            probs_b = base_probs
    return select(probs, n, rule=rule, seed=seed, probs_b=probs_b,
                  exclude=np.asarray(asked, dtype=np.int64))


def candidate_readings(kind: str, probs: np.ndarray, base_probs: np.ndarray, threshold: float,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """What the cardiologist is shown for each asked ECG.

    ``threshold``: the model's reading (a verdict is asked). ``samples``: two distinct readings
    drawn from the policy where possible; ``versions``: the current model's reading against the
    base's (a policy sample where they agree); both ask for a preference.

    Returns
    -------
    a, b : np.ndarray
        ``[n, C]`` 0/1 readings; ``b`` is None for verdicts.
    """
    if kind not in CANDIDATES:
        raise ValueError(f"ask.candidates must be one of {CANDIDATES}, got {kind!r}")
    a = threshold_reading(probs, threshold)
    if kind == "threshold":
        return a, None
    draws = sample_readings(probs, 8, rng)  # [8, n, C]
    if kind == "samples":
        a, b = draws[0], draws[0].copy()
    else:
        b = threshold_reading(base_probs, threshold)
    for i in np.flatnonzero((a == b).all(1)):
        # two equal readings teach nothing: show the first policy sample that differs instead
        other = [d for d in draws[1:, i] if (d != a[i]).any()]
        if other:
            b[i] = other[0]
    return a, b


class SimulatedFeedback:
    """Answers each round's questions with a :class:`SimulatedCardiologist` (on the pool's
    labels) and writes them to the run's store."""

    def __init__(self, cardiologist: SimulatedCardiologist, pool: WindowSet,
                 store: FeedbackStore):
        self.sim, self.pool, self.store = cardiologist, pool, store

    def collect(self, round_k: int, asked: np.ndarray, a: np.ndarray, b: np.ndarray | None,
                model_version: str) -> int:
        """Judge the asked ECGs; the number of records written."""
        records: list[Verdict | Preference] = []
        for j, i in enumerate(asked):
            rid = self.pool.record_ids[i]
            if b is None:
                records.append(self.sim.verdict(int(i), rid, "", a[j], model_version))
            else:
                records.append(self.sim.prefer(int(i), rid, "", a[j], b[j], model_version))
        self.store.add_many(records, source=f"simulated:round_{round_k}")
        return len(records)


def check_store_source(source: str | None) -> str:
    """``feedback.store``, refused unless it names a store: a URL, or a SQLite file that exists
    (the refine app asks before it makes its run directory)."""
    if not source:
        raise ValueError("feedback=store needs feedback.store=PATH|URL of the feedback store")
    if "://" not in str(source) and not Path(source).is_file():
        raise FileNotFoundError(f"feedback.store={source}: no such feedback store")
    return str(source)


class StoreFeedback:
    """Copies judgements about pool ECGs from another store (``feedback.store``) into the run's
    store, each round only those not copied before.

    Parameters
    ----------
    source
        Path or URL of the store holding real judgements (it must exist).
    annotator
        Only this annotator (or list); None: all.
    """

    def __init__(self, source: str, pool: WindowSet, store: FeedbackStore,
                 annotator: str | Sequence[str] | None = None):
        self.source = FeedbackStore(check_store_source(source))
        self.pool, self.store, self.annotator = pool, store, annotator
        self.seen: set[tuple[str, int]] = set()
        self.skipped = 0

    def collect(self, round_k: int, asked: np.ndarray, a: np.ndarray, b: np.ndarray | None,
                model_version: str) -> int:
        """Copy new judgements; the number copied (records about other ECGs are skipped)."""
        pool_ids = set(self.pool.record_ids)
        new = []
        for kind in ("verdict", "preference"):
            for row_id, _, record in self.source.rows(kind, annotator=self.annotator):
                if (kind, row_id) in self.seen:
                    continue
                self.seen.add((kind, row_id))
                if record.ecg_id in pool_ids:
                    new.append(record)
                else:
                    self.skipped += 1
        if self.skipped:
            log.info("feedback store %s: %d judgements are about ECGs outside the query pool "
                     "and were skipped", self.source.url, self.skipped)
        self.store.add_many(new, source=f"store:{self.source.url}:round_{round_k}")
        return len(new)


def make_feedback(cfg: Any, pool: WindowSet, store: FeedbackStore, classes: Sequence[str]
                  ) -> SimulatedFeedback | StoreFeedback:
    """The feedback source a ``feedback`` config node describes (``kind: simulated|store``)."""
    if cfg.kind == "simulated":
        bias = dict(cfg.bias) if cfg.get("bias") else None
        sim = SimulatedCardiologist(pool.labels, classes, noise=cfg.noise,
                                    temperature=cfg.temperature, bias=bias, seed=cfg.seed,
                                    annotator=cfg.annotator, score=cfg.score)
        return SimulatedFeedback(sim, pool, store)
    if cfg.kind == "store":
        annotator = cfg.get("annotator")
        if annotator is not None and not isinstance(annotator, str):
            annotator = list(annotator)
        return StoreFeedback(cfg.store, pool, store, annotator)
    raise ValueError(f"feedback.kind must be 'simulated' or 'store', got {cfg.kind!r}")


# --------------------------------------------------------------------------- feedback -> data


@dataclass
class FeedbackData:
    """Everything the store holds about the pool, as tensors the refiners use.

    Attributes
    ----------
    record, chosen, rejected
        ``[P]`` pool index and ``[P, C]`` readings of each strict pair (ties dropped).
    heldout
        ``[P]`` bool: the pair's ECG is in the held-out slice of the judgements.
    target_record, targets, mask
        ``[V]`` pool index, ``[V, C]`` 0/1 truth and ``[V, C]`` judged-mask per verdict.
    count
        Number of judgements (records) read.
    """

    record: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    heldout: np.ndarray
    target_record: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    count: int

    def pairs(self, embeddings: np.ndarray, which: np.ndarray) -> RewardPairs:
        """Reward-model pairs for the selected pairs (``which`` ``[P]`` bool)."""
        return RewardPairs(embeddings[self.record[which]], self.chosen[which],
                           self.rejected[which])


def read_feedback(store: FeedbackStore, pool: WindowSet, classes: Sequence[str], cfg: Any,
                  seed: int = 0) -> FeedbackData:
    """Read the store's judgements about pool ECGs; hold out a seeded slice of the judged ECGs.

    ``cfg`` is the ``reward`` config node: ``holdout`` (the fraction of judged ECGs held out)
    and ``flips`` (:func:`~ecgrisk.refine.reward.verdict_to_pairs`). The held-out slice is
    chosen by ECG, so no ECG gives pairs to both sides.
    """
    index = {rid: i for i, rid in enumerate(pool.record_ids)}
    verdicts = [v for v in store.verdicts() if v.ecg_id in index]
    prefs = [p for p in store.preferences() if p.ecg_id in index]
    C = len(classes)
    rec, chosen, rejected, t_rec, targets, masks = [], [], [], [], [], []
    for v in verdicts:
        for c, r in verdict_to_pairs(v, classes, cfg.flips):
            rec.append(index[v.ecg_id])
            chosen.append(c)
            rejected.append(r)
        t, m = verdict_targets(v, classes)
        t_rec.append(index[v.ecg_id])
        targets.append(t)
        masks.append(m)
    for p in prefs:
        pair = preference_to_pair(p, classes)
        if pair is not None:
            rec.append(index[p.ecg_id])
            chosen.append(pair[0])
            rejected.append(pair[1])
    judged = np.unique(np.asarray(rec, dtype=np.int64))
    n_hold = int(round(cfg.holdout * len(judged))) if len(judged) >= 2 else 0
    held = np.random.default_rng(seed).permutation(judged)[:n_hold]
    rec_arr = np.asarray(rec, dtype=np.int64)

    def stack(rows: list, width: int) -> np.ndarray:
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, width), np.float32)

    return FeedbackData(rec_arr, stack(chosen, C), stack(rejected, C), np.isin(rec_arr, held),
                        np.asarray(t_rec, dtype=np.int64), stack(targets, C), stack(masks, C),
                        len(verdicts) + len(prefs))


def fit_reward(data: FeedbackData, embeddings: np.ndarray, num_classes: int, cfg: Any,
               seed: int = 0) -> tuple[RewardModel | None, dict]:
    """Train the Bradley-Terry reward model on the non-held-out pairs; its held-out accuracy.

    Returns
    -------
    model : RewardModel or None
        None when there are no training pairs.
    metrics : dict
        ``reward/pair_accuracy`` (NaN without held-out pairs), ``reward/train_accuracy``,
        ``reward/train_pairs``, ``reward/heldout_pairs``.
    """
    train, held = ~data.heldout, data.heldout
    metrics = {"reward/train_pairs": int(train.sum()), "reward/heldout_pairs": int(held.sum()),
               "reward/pair_accuracy": float("nan"), "reward/train_accuracy": float("nan")}
    if not train.any():
        return None, metrics
    torch.manual_seed(seed)
    model = RewardModel(embeddings.shape[1], num_classes, hidden=cfg.hidden)
    history = train_reward_model(model, data.pairs(embeddings, train), epochs=cfg.epochs,
                                 lr=cfg.lr, weight_decay=cfg.weight_decay, seed=seed)
    metrics["reward/train_accuracy"] = history["accuracy"][-1]
    if held.any():
        metrics["reward/pair_accuracy"] = pair_accuracy(model, data.pairs(embeddings, held))
    model.eval()
    return model, metrics


def write_queries(path: Path, pool: WindowSet, asked: np.ndarray, a: np.ndarray,
                  b: np.ndarray | None, classes: Sequence[str], model_version: str) -> None:
    """``queries/round_k.jsonl``: what was asked, one ECG a line (for real annotators, the list
    to judge and import)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for j, i in enumerate(asked):
        row = {"ecg_id": pool.record_ids[i], "model_version": model_version,
               "reading" if b is None else "reading_a":
                   [c for c, v in zip(classes, a[j], strict=True) if v]}
        if b is not None:
            row["reading_b"] = [c for c, v in zip(classes, b[j], strict=True) if v]
        lines.append(json.dumps(row) + "\n")
    atomic_write_text(path, "".join(lines))


# --------------------------------------------------------------------------- rounds


@dataclass
class RoundContext:
    """What a refiner may use: the pool, the frozen reference's pool logits ``[N, C]``, the
    feedback, the reward model (None without training pairs), the pool embeddings ``[N, D]``
    and the base's own training records (None unless ``refine.replay`` asked for them)."""

    pool: WindowSet
    ref_logits: Tensor
    data: FeedbackData
    reward: RewardModel | None
    embeddings: np.ndarray
    seed: int
    own: WindowSet | None = None


Refiner = Callable[["BernoulliPolicy", RoundContext, Any], dict]


@dataclass
class LoopResult:
    """The kept policy, flat metrics, accepted round numbers, and probabilities on the report
    set ``[N_report, C]`` by round (0: the base; -1: the kept model; others only with
    ``report_each_round``)."""

    policy: BernoulliPolicy
    metrics: dict
    accepted: list[int]
    report_probs: dict[int, np.ndarray] = field(default_factory=dict)


def run_loop(cfg: Any, bundle: Bundle, sets: Sets, store: FeedbackStore,
             feedback: SimulatedFeedback | StoreFeedback, refiner: Refiner,
             out: Path | None = None,
             on_round: Callable[[int, BernoulliPolicy, bool], None] | None = None) -> LoopResult:
    """``cfg.rounds`` rounds of ask -> judge -> reward -> refine -> guard.

    Parameters
    ----------
    cfg
        The ``refine.yaml`` config (``rounds``, ``queries_per_round``, ``ask``, ``reward``,
        ``refine``, ``guard``, ``bootstrap``, ``report_each_round``, ``seed``).
    bundle
        The base: its classifier (copied, never changed), ``[C]`` calibration (logits /
        temperature + bias), window aggregation, classes, and version (written into the
        feedback records as ``model_version``).
    sets
        Pool, guard and report windows (:mod:`ecgrisk.refine.pools`).
    store
        The run's store: judgements are written to it and read back from it.
    feedback
        Who answers (:func:`make_feedback`).
    refiner
        ``(policy, RoundContext, cfg.refine) -> stats``, e.g. :data:`ecgrisk.refine.REFINERS`.
    out
        Run directory (``queries/round_k.jsonl`` are written there), or None.
    on_round
        Called as ``on_round(k, policy, accepted)`` after each round's guard (e.g. to save a
        checkpoint of the kept model).

    Returns
    -------
    LoopResult
        Metrics hold ``base/val/*``, ``base/report/*``, per round ``round_k/{queries,
        feedback/count, feedback/new, reward/*, refine/*, val/macro_auroc, accepted,
        guard_reason}`` (and ``round_k/report/*`` with ``report_each_round``), and for the kept
        model ``val/*``, ``report/*``, ``reward/pair_accuracy``, ``feedback/count``,
        ``rounds/*``; ``report/split`` names the report set.
    """
    classes = bundle.classes
    policy = BernoulliPolicy(copy.deepcopy(bundle.model), bundle.temperature, bundle.bias,
                             bundle.aggregation, cfg.refine.train)
    reference = BernoulliPolicy(copy.deepcopy(bundle.model), bundle.temperature, bundle.bias,
                                bundle.aggregation, "head")
    with torch.no_grad():
        ref_logits = reference.logits(sets.pool)
    base_probs = torch.sigmoid(ref_logits).double().cpu().numpy()
    embeddings = sets.pool.record_embeddings()
    base_val, _ = evaluate_policy(reference, sets.guard, "val/", classes)
    metrics = {f"base/{k}": v for k, v in base_val.items()}
    result = LoopResult(policy, metrics, [])

    def report(model: BernoulliPolicy, prefix: str, key: int) -> None:
        if sets.report is not None:  # None: nothing beyond the guard set
            m, result.report_probs[key] = evaluate_policy(model, sets.report, prefix, classes,
                                                          cfg.bootstrap, cfg.seed)
            metrics.update(m)

    report(reference, "base/report/", 0)
    base_auroc = metrics["base/val/macro_auroc"]
    if cfg.guard.against not in ("base", "kept"):
        raise ValueError(f"guard.against must be 'base' or 'kept', got {cfg.guard.against!r}")
    held = base_val  # what the guard holds a round against
    asked: list[int] = []
    current, last = bundle.version, {"reward/pair_accuracy": float("nan"), "feedback/count": 0}
    completed = 0
    for k in range(1, cfg.rounds + 1):
        pre = f"round_{k}/"
        probs = policy.probs(sets.pool)
        idx = ask(probs, cfg.queries_per_round, cfg.ask.rule, asked, cfg.seed + k, base_probs)
        if len(idx) == 0 and isinstance(feedback, SimulatedFeedback):
            log.info("round %d: every pool ECG has been asked; stopping", k)
            break
        a, b = candidate_readings(cfg.ask.candidates, probs[idx], base_probs[idx],
                                  cfg.ask.threshold, np.random.default_rng([cfg.seed, k]))
        if out is not None:
            write_queries(out / "queries" / f"round_{k}.jsonl", sets.pool, idx, a, b, classes,
                          current)
        new = feedback.collect(k, idx, a, b, current)
        asked.extend(int(i) for i in idx)
        if new == 0:
            if k == 1 and isinstance(feedback, StoreFeedback):
                who = f" by {feedback.annotator}" if feedback.annotator else ""
                raise ValueError(
                    f"feedback store {feedback.source.url} holds no judgements{who} about the "
                    f"{len(sets.pool)} ECGs of this pool ({feedback.skipped} are about other "
                    f"ECGs): nothing to refine from; judge them with `ecgrisk review` first")
            log.info("round %d: no new feedback; stopping", k)
            break
        data = read_feedback(store, sets.pool, classes, cfg.reward, cfg.seed)
        reward, reward_metrics = fit_reward(data, embeddings, len(classes), cfg.reward,
                                            cfg.seed + k)
        before = policy.snapshot()
        ctx = RoundContext(sets.pool, ref_logits, data, reward, embeddings, cfg.seed + k,
                           sets.own)
        stats = refiner(policy, ctx, cfg.refine)
        reason, val = guarded_update(policy, before, sets.guard, held, cfg.guard, classes)
        accepted = not reason
        if accepted and cfg.guard.against == "kept":
            held = val
        completed = k
        log.info("round %d: %d asked, %d judgements, reward pair accuracy %.3f, val macro AUROC "
                 "%.4f (base %.4f) -> %s", k, len(idx), data.count,
                 reward_metrics["reward/pair_accuracy"], val["val/macro_auroc"], base_auroc,
                 "accepted" if accepted else f"REFUSED by the guard ({reason}); the previous "
                 "model is kept")
        last = {"reward/pair_accuracy": reward_metrics["reward/pair_accuracy"],
                "feedback/count": data.count}
        metrics.update({f"{pre}queries": int(len(idx)), f"{pre}feedback/count": data.count,
                        f"{pre}feedback/new": int(new), f"{pre}val/macro_auroc":
                        val["val/macro_auroc"], f"{pre}accepted": bool(accepted),
                        f"{pre}guard_reason": reason,
                        **{pre + key: v for key, v in reward_metrics.items()},
                        **{f"{pre}refine/{key}": v for key, v in stats.items()}})
        if accepted:
            result.accepted.append(k)
            current = f"{bundle.version}+r{k}"
        if on_round is not None:
            on_round(k, policy, accepted)
        if cfg.report_each_round:
            report(policy, f"{pre}report/", k)
    final_val, _ = evaluate_policy(policy, sets.guard, "val/", classes)
    report(policy, "report/", -1)
    metrics.update({**final_val, **last, "rounds/completed": completed,
                    "rounds/accepted": len(result.accepted), "guard/tolerance":
                    float(cfg.guard.tolerance), "pool/records": len(sets.pool),
                    "guard/records": len(sets.guard),
                    "report/records": 0 if sets.report is None else len(sets.report),
                    "report/split": sets.report_split if sets.report is not None else "none"})
    if not completed:
        log.warning("no round was completed: the kept model is the base model")
    elif not result.accepted:
        log.warning("no refinement passed the guard: the kept model is the base model")
    return result
