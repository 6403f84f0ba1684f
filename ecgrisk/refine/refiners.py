"""The ways a round turns judgements into a better policy: DPO/IPO, policy gradient, BCE.

Each refiner is ``(policy, RoundContext, cfg.refine) -> stats`` and trains the policy in place;
the loop's guard then decides whether the round is kept. Each can also replay the base's own
training records beside the judgements (``refine.replay``, :class:`_Replay`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ecgrisk.refine.loop import RoundContext
from ecgrisk.refine.losses import (
    bernoulli_kl,
    ppo_clip_loss,
    preference_loss,
    rloo_advantages,
    rloo_pg_loss,
    sample_bernoulli,
    uncertainty_weights,
)
from ecgrisk.refine.policy import BernoulliPolicy

log = logging.getLogger(__name__)


def _optimiser(policy: BernoulliPolicy, cfg: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, stats: dict | None = None) -> dict:
    """One optimiser step on ``loss``; the loss and ``stats`` for the history."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {"loss": float(loss.detach()), **(stats or {})}


def _mean_stats(history: list[dict]) -> dict:
    """Means over the last fifth of the steps: where the round ended, not where it began."""
    tail = history[-max(1, len(history) // 5):]
    return {k: float(np.mean([h[k] for h in tail])) for k in tail[0]} if tail else {}


class _Replay:
    """``cfg.replay`` times the BCE on a batch of the base's own training records (``ctx.own``,
    with the labels the base learned them under), added to any refiner's loss: the head is then
    refitted on what the base learned from together with what the judgements add, instead of
    on the judgements alone. Falsy where ``cfg.replay`` is 0 (the default)."""

    def __init__(self, ctx: RoundContext, cfg: Any):
        self.weight, self.own = float(cfg.get("replay", 0.0)), ctx.own
        if self.weight > 0 and self.own is None:
            raise ValueError("refine.replay > 0 needs the base's own training records in the "
                             "round context (prepare_sets(..., own=True))")
        self.labels = (torch.from_numpy(self.own.labels.astype(np.float32)) if self
                       else None)

    def __bool__(self) -> bool:
        return self.weight > 0

    def __call__(self, policy: BernoulliPolicy, loss: torch.Tensor, stats: dict,
                 rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, dict]:
        if not self:
            return loss, stats
        o = np.sort(rng.choice(len(self.own), min(batch, len(self.own)), replace=False))
        own = F.binary_cross_entropy_with_logits(policy.logits(self.own, o), self.labels[o])
        return loss + self.weight * own, {**stats, "replay": float(own.detach())}


def preference_refine(policy: BernoulliPolicy, ctx: RoundContext, cfg: Any) -> dict:
    """DPO or IPO (``cfg.method``) on every strict pair the store holds, against the frozen
    reference; ``cfg.weighting=uncertainty`` weights pairs by the reference's uncertainty on
    the statements they differ in."""
    d = ctx.data
    if len(d.record) == 0:
        log.warning("refine=%s: no strict pairs in the feedback (all ties?); nothing to train",
                    cfg.method)
        return {}
    if cfg.weighting not in ("none", "uncertainty"):
        raise ValueError(f"refine.weighting must be 'none' or 'uncertainty', got {cfg.weighting!r}")
    rng, opt, history = np.random.default_rng(ctx.seed), _optimiser(policy, cfg), []
    replay = _Replay(ctx, cfg)
    chosen, rejected = torch.from_numpy(d.chosen), torch.from_numpy(d.rejected)
    for _ in range(cfg.steps):
        b = rng.choice(len(d.record), min(cfg.batch_size, len(d.record)), replace=False)
        uniq, inv = np.unique(d.record[b], return_inverse=True)
        logits = policy.logits(ctx.pool, uniq)[torch.from_numpy(inv)]
        ref = ctx.ref_logits[d.record[b]]
        weights = (uncertainty_weights(ref, chosen[b], rejected[b])
                   if cfg.weighting == "uncertainty" else None)
        loss, stats = preference_loss(logits, ref, chosen[b], rejected[b], beta=cfg.beta,
                                      label_smoothing=cfg.get("label_smoothing", 0.0),
                                      kind=cfg.method, weights=weights)
        history.append(_step(opt, *replay(policy, loss, stats, rng, cfg.batch_size)))
    return _mean_stats(history)


def pg_refine(policy: BernoulliPolicy, ctx: RoundContext, cfg: Any) -> dict:
    """KL-regularised policy gradient against the reward model on every pool ECG.

    ``algo=rloo``: REINFORCE with a leave-one-out baseline over ``samples`` readings per ECG.
    ``algo=ppo``: the same advantages, then ``ppo_epochs`` clipped updates per batch.
    """
    if ctx.reward is None:
        log.warning("refine=pg: no reward model (no training pairs); nothing to train")
        return {}
    if cfg.algo not in ("rloo", "ppo"):
        raise ValueError(f"refine.algo must be 'rloo' or 'ppo', got {cfg.algo!r}")
    rng, opt, history = np.random.default_rng(ctx.seed), _optimiser(policy, cfg), []
    replay = _Replay(ctx, cfg)
    gen = torch.Generator().manual_seed(ctx.seed)
    emb = torch.from_numpy(ctx.embeddings)
    for _ in range(cfg.steps):
        b = np.sort(rng.choice(len(ctx.pool), min(cfg.batch_size, len(ctx.pool)), replace=False))
        logits = policy.logits(ctx.pool, b)
        samples = sample_bernoulli(logits, cfg.samples, generator=gen)  # [K, B, C]
        with torch.no_grad():
            rewards = ctx.reward(emb[b], samples)  # [K, B]
        ref = ctx.ref_logits[b]
        if cfg.algo == "rloo":
            loss, stats = rloo_pg_loss(logits, ref, samples, rewards, kl_coef=cfg.kl_coef)
            steps = [(loss, stats)]
        else:
            adv = rloo_advantages(rewards)
            old = logits.detach()
            steps = []
            for e in range(cfg.ppo_epochs):
                cur = logits if e == 0 else policy.logits(ctx.pool, b)
                pl, stats = ppo_clip_loss(cur, old, samples, adv, clip=cfg.clip)
                kl = bernoulli_kl(cur, ref).mean()
                steps.append((pl + cfg.kl_coef * kl, {**stats, "kl": float(kl.detach()),
                                                      "reward": float(rewards.mean())}))
                if e + 1 < cfg.ppo_epochs:
                    _step(opt, steps[-1][0])
            loss, stats = steps[-1]
        history.append(_step(opt, *replay(policy, loss, stats, rng, cfg.batch_size)))
    return _mean_stats(history)


def bce_refine(policy: BernoulliPolicy, ctx: RoundContext, cfg: Any) -> dict:
    """Supervised correction from the verdicts: masked BCE on the statements they judged, plus
    ``cfg.kl_coef`` times the closed-form KL to the reference on as many ECGs drawn from the
    whole pool: a few hundred verdicts on the ECGs the model was least sure of would otherwise
    pull every reading (and its calibration) towards theirs."""
    d = ctx.data
    if len(d.target_record) == 0:
        raise ValueError("refine=bce trains on verdicts, and the store holds none about the "
                         "pool; use ask.candidates=threshold")
    rng, opt, history = np.random.default_rng(ctx.seed), _optimiser(policy, cfg), []
    replay = _Replay(ctx, cfg)
    targets, mask = torch.from_numpy(d.targets), torch.from_numpy(d.mask)
    for _ in range(cfg.steps):
        b = rng.choice(len(d.target_record), min(cfg.batch_size, len(d.target_record)),
                       replace=False)
        uniq, inv = np.unique(d.target_record[b], return_inverse=True)
        logits = policy.logits(ctx.pool, uniq)[torch.from_numpy(inv)]
        fit = F.binary_cross_entropy_with_logits(logits, targets[b], weight=mask[b],
                                                 reduction="sum") / mask[b].sum().clamp(min=1)
        anchor = np.sort(rng.choice(len(ctx.pool), min(cfg.batch_size, len(ctx.pool)),
                                    replace=False))
        kl = bernoulli_kl(policy.logits(ctx.pool, anchor), ctx.ref_logits[anchor]).mean()
        loss, stats = fit + cfg.kl_coef * kl, {"bce": float(fit.detach()), "kl": float(kl.detach())}
        history.append(_step(opt, *replay(policy, loss, stats, rng, cfg.batch_size)))
    return _mean_stats(history)


REFINERS = {"dpo": preference_refine, "ipo": preference_refine, "pg": pg_refine,
            "bce": bce_refine}
