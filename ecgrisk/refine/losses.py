"""Closed-form objectives for a multi-label classifier read as a Bernoulli policy.

The classifier emits one logit per statement and treats statements as independent, so a reading
``y ∈ {0, 1}^C`` has ``log π(y | x) = Σ_c y_c log σ(l_c) + (1 - y_c) log σ(-l_c)`` and the KL
between two such policies is a sum of per-statement Bernoulli KLs — no sampling, no
approximation. Everything uses ``logsigmoid`` so large logits stay finite.

Ties: a tie says nothing about which reading is better, so :func:`preference_loss` takes strict
pairs only; callers drop ties (``Preference.chosen_rejected()`` returns ``None`` for them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shapes must match, got {shapes}")


def bernoulli_logprob(logits: Tensor, readings: Tensor) -> Tensor:
    """Log-probability of each reading under independent Bernoulli outputs.

    Parameters
    ----------
    logits
        ``[..., B, C]`` per-statement logits (broadcast against ``readings``).
    readings
        ``[..., B, C]`` 0/1 readings (float).

    Returns
    -------
    Tensor
        ``[..., B]`` ``Σ_c y log σ(l) + (1 - y) log σ(-l)``.
    """
    readings = readings.to(logits.dtype)
    return (readings * F.logsigmoid(logits) + (1 - readings) * F.logsigmoid(-logits)).sum(-1)


def bernoulli_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """``KL(π_p || π_q)`` for independent Bernoulli outputs, summed over statements.

    Parameters
    ----------
    logits_p, logits_q
        ``[B, C]`` logits of the two policies.

    Returns
    -------
    Tensor
        ``[B]`` ``Σ_c p (log p - log q) + (1 - p)(log(1 - p) - log(1 - q))``, ``p = σ(l_p)``.
    """
    _check_same_shape(logits_p=logits_p, logits_q=logits_q)
    p = torch.sigmoid(logits_p)
    kl = (p * (F.logsigmoid(logits_p) - F.logsigmoid(logits_q))
          + (1 - p) * (F.logsigmoid(-logits_p) - F.logsigmoid(-logits_q)))
    return kl.sum(-1)


def preference_loss(policy_logits: Tensor, ref_logits: Tensor, chosen: Tensor, rejected: Tensor,
                    beta: float = 0.1, label_smoothing: float = 0.0, kind: str = "dpo",
                    weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """DPO or IPO against a frozen reference policy, on strict pairs.

    ``h = (log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))``.

    - ``kind="dpo"``: ``-(1 - ε) log σ(β h) - ε log σ(-β h)`` (``ε = label_smoothing``, the
      conservative-DPO guard against flipped labels; 0 gives plain DPO). Unbounded: a pair the
      model already gets right keeps pushing ``h`` up, which on a few hundred noisy pairs drives
      probabilities to 0 or 1 (Azar et al. 2023).
    - ``kind="ipo"``: ``(h - 1 / (2 β))²``: the log-ratio gap is pulled to a finite target and
      no further, so the policy stays near the reference however often a pair is seen.

    Parameters
    ----------
    policy_logits, ref_logits
        ``[B, C]`` logits of the policy being trained and of the reference (detached here).
    chosen, rejected
        ``[B, C]`` 0/1 readings, the preferred and the other one (no ties).
    beta
        Strength of the KL constraint (larger: stay closer to the reference).
    label_smoothing
        DPO only: assumed probability that a preference label is flipped, in ``[0, 0.5)``.
    kind
        ``"dpo"`` or ``"ipo"``.
    weights
        ``[B]`` non-negative pair weights (e.g. :func:`uncertainty_weights`); None: equal.

    Returns
    -------
    loss : Tensor
        Scalar: the weighted mean over pairs.
    stats : dict
        ``reward_accuracy`` (fraction with ``h > 0``), ``margin`` (mean ``β h``),
        ``chosen_reward`` and ``rejected_reward`` (mean implicit rewards ``β Δ log π``).
    """
    _check_same_shape(policy_logits=policy_logits, ref_logits=ref_logits, chosen=chosen,
                      rejected=rejected)
    if kind not in ("dpo", "ipo"):
        raise ValueError(f"preference loss must be 'dpo' or 'ipo', got {kind!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    ref_logits = ref_logits.detach()
    chosen_ratio = bernoulli_logprob(policy_logits, chosen) - bernoulli_logprob(ref_logits, chosen)
    rejected_ratio = (bernoulli_logprob(policy_logits, rejected)
                      - bernoulli_logprob(ref_logits, rejected))
    h = chosen_ratio - rejected_ratio
    if kind == "dpo":
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * h)
                  - label_smoothing * F.logsigmoid(-beta * h))
    else:
        losses = (h - 1 / (2 * beta)) ** 2
    if weights is None:
        loss = losses.mean()
    else:
        weights = weights.to(losses.dtype)
        loss = (weights * losses).sum() / weights.sum().clamp(min=1e-12)
    h_ = h.detach()
    stats = {"reward_accuracy": float((h_ > 0).float().mean()),
             "margin": float(beta * h_.mean()),
             "chosen_reward": float(beta * chosen_ratio.detach().mean()),
             "rejected_reward": float(beta * rejected_ratio.detach().mean())}
    return loss, stats


def uncertainty_weights(ref_logits: Tensor, chosen: Tensor, rejected: Tensor) -> Tensor:
    """``[B]`` weight of each pair: the reference's uncertainty ``4 p (1 - p)`` (1 at p = 0.5,
    0 when certain), averaged over the statements where the two readings differ.

    A judgement about a statement the model was sure of and got right teaches little; one about
    a statement it hesitated on is where the cardiologist's word moves the reading.
    """
    _check_same_shape(ref_logits=ref_logits, chosen=chosen, rejected=rejected)
    p = torch.sigmoid(ref_logits.detach())
    differ = (chosen != rejected).to(p.dtype)
    return (4 * p * (1 - p) * differ).sum(-1) / differ.sum(-1).clamp(min=1)


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor, margin: float = 0.0
                       ) -> tuple[Tensor, dict[str, float]]:
    """Reward-model loss ``-log σ(r_c - r_r - margin)``, averaged.

    Parameters
    ----------
    r_chosen, r_rejected
        ``[B]`` rewards of the preferred and the other reading.
    margin
        Required gap (0 gives the plain Bradley-Terry likelihood).

    Returns
    -------
    loss : Tensor
        Scalar.
    stats : dict
        ``accuracy`` (fraction with ``r_c > r_r``) and ``margin`` (mean ``r_c - r_r``).
    """
    _check_same_shape(r_chosen=r_chosen, r_rejected=r_rejected)
    diff = r_chosen - r_rejected
    loss = -F.logsigmoid(diff - margin).mean()
    diff = diff.detach()
    return loss, {"accuracy": float((diff > 0).float().mean()), "margin": float(diff.mean())}


def sample_bernoulli(logits: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """``k`` readings per ECG drawn from the policy (no gradient).

    Returns
    -------
    Tensor
        ``[k, B, C]`` 0/1 float.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    probs = torch.sigmoid(logits.detach()).expand(k, *logits.shape)
    return torch.bernoulli(probs, generator=generator)


def rloo_advantages(rewards: Tensor) -> Tensor:
    """Leave-one-out advantages ``[K, B]``: each sample's reward minus the mean of the others'."""
    k = rewards.shape[0]
    if k < 2:
        raise ValueError("the leave-one-out baseline needs K >= 2 samples per ECG")
    return rewards - (rewards.sum(0, keepdim=True) - rewards) / (k - 1)


def rloo_pg_loss(logits: Tensor, ref_logits: Tensor, samples: Tensor, rewards: Tensor,
                 kl_coef: float = 0.05) -> tuple[Tensor, dict[str, float]]:
    """REINFORCE with a leave-one-out baseline, plus a closed-form KL to the reference.

    Each of the ``K`` samples of an ECG is judged against the mean reward of the other
    ``K - 1`` samples of the same ECG, so the baseline needs no value network and stays
    unbiased. The KL term is exact (:func:`bernoulli_kl`) rather than estimated from samples.

    Parameters
    ----------
    logits
        ``[B, C]`` policy logits (with gradient).
    ref_logits
        ``[B, C]`` reference logits (detached here).
    samples
        ``[K, B, C]`` 0/1 readings drawn from the policy, ``K >= 2``.
    rewards
        ``[K, B]`` reward of each sample.
    kl_coef
        Weight of ``KL(π || π_ref)``.

    Returns
    -------
    loss : Tensor
        Scalar ``-mean(A · log π(y)) + kl_coef · mean KL``.
    stats : dict
        ``reward`` (mean), ``advantage_std``, ``kl``, ``pg_loss``.
    """
    if samples.dim() != 3 or samples.shape[1:] != logits.shape:
        raise ValueError(f"samples must be [K, B, C] with [B, C] = {tuple(logits.shape)}, "
                         f"got {tuple(samples.shape)}")
    k = samples.shape[0]
    if k < 2:
        raise ValueError("the leave-one-out baseline needs K >= 2 samples per ECG")
    if rewards.shape != samples.shape[:2]:
        raise ValueError(f"rewards must be [K, B] = {tuple(samples.shape[:2])}, "
                         f"got {tuple(rewards.shape)}")
    advantage = rloo_advantages(rewards.detach().to(logits.dtype))
    logp = bernoulli_logprob(logits.unsqueeze(0), samples)  # [K, B]
    pg = -(advantage * logp).mean()
    kl = bernoulli_kl(logits, ref_logits.detach()).mean()
    loss = pg + kl_coef * kl
    return loss, {"reward": float(rewards.mean()), "advantage_std": float(advantage.std()),
                  "kl": float(kl.detach()), "pg_loss": float(pg.detach())}


def ppo_clip_loss(logits: Tensor, old_logits: Tensor, samples: Tensor, advantages: Tensor,
                  clip: float = 0.2) -> tuple[Tensor, dict[str, float]]:
    """PPO's clipped surrogate for several updates on one batch of samples.

    Parameters
    ----------
    logits
        ``[B, C]`` current policy logits (with gradient).
    old_logits
        ``[B, C]`` logits of the policy that drew the samples (detached here).
    samples
        ``[K, B, C]`` 0/1 readings.
    advantages
        ``[K, B]`` advantages (e.g. leave-one-out, as in :func:`rloo_pg_loss`).
    clip
        Ratio clip ``ε``: the ratio ``π / π_old`` is kept within ``[1 - ε, 1 + ε]``.

    Returns
    -------
    loss : Tensor
        Scalar ``-mean(min(ρ A, clip(ρ) A))``.
    stats : dict
        ``clip_fraction`` and ``ratio`` (mean).
    """
    if samples.dim() != 3 or samples.shape[1:] != logits.shape:
        raise ValueError(f"samples must be [K, B, C] with [B, C] = {tuple(logits.shape)}, "
                         f"got {tuple(samples.shape)}")
    if advantages.shape != samples.shape[:2]:
        raise ValueError(f"advantages must be [K, B] = {tuple(samples.shape[:2])}, "
                         f"got {tuple(advantages.shape)}")
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    advantages = advantages.detach().to(logits.dtype)
    log_ratio = (bernoulli_logprob(logits.unsqueeze(0), samples)
                 - bernoulli_logprob(old_logits.detach().unsqueeze(0), samples))
    ratio = log_ratio.exp()
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    ratio_ = ratio.detach()
    clipped = ((ratio_ - 1).abs() > clip).float().mean()
    return -surrogate.mean(), {"clip_fraction": float(clipped), "ratio": float(ratio_.mean())}
