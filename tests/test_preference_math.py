"""Preference math: Bernoulli log-probs/KL, DPO, Bradley-Terry, RLOO, reward model, simulated
cardiologist, acquisition — checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ecgrisk.feedback.acquisition import sample_readings, select, threshold_reading
from ecgrisk.feedback.records import Verdict
from ecgrisk.feedback.simulated import SimulatedCardiologist
from ecgrisk.refine.losses import (
    bernoulli_kl,
    bernoulli_logprob,
    bradley_terry_loss,
    ppo_clip_loss,
    preference_loss,
    rloo_pg_loss,
    uncertainty_weights,
)
from ecgrisk.refine.reward import (
    RewardModel,
    RewardPairs,
    pair_accuracy,
    train_reward_model,
    verdict_to_pairs,
)

LN3 = math.log(3.0)
CLASSES = ["NORM", "MI", "STTC", "CD"]


def test_bernoulli_logprob_by_hand():
    # sigma(0) = 0.5, sigma(ln 3) = 0.75
    logits = torch.tensor([[0.0, LN3], [0.0, LN3]])
    readings = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    expected = [math.log(0.5 * 0.25), math.log(0.5 * 0.75)]
    torch.testing.assert_close(bernoulli_logprob(logits, readings), torch.tensor(expected))
    # extreme logits stay finite: log(1 - sigma(100)) = -100
    assert bernoulli_logprob(torch.tensor([[100.0]]), torch.tensor([[0.0]])).item() \
        == pytest.approx(-100.0)


def test_bernoulli_kl_of_a_two_label_policy_by_hand():
    # p = (0.5, 0.75), q = (0.25, 0.5)
    # KL_1 = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3)               = 0.143841
    # KL_2 = 0.75 ln(0.75/0.5) + 0.25 ln(0.25/0.5) = 0.75 ln 1.5 - 0.25 ln 2  = 0.130812
    p = torch.tensor([[0.0, LN3]])
    q = torch.tensor([[-LN3, 0.0]])
    expected = 0.5 * math.log(4 / 3) + 0.75 * math.log(1.5) - 0.25 * math.log(2)
    assert bernoulli_kl(p, q).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.274653, abs=1e-6)
    assert bernoulli_kl(p, p).item() == pytest.approx(0.0, abs=1e-7)
    assert torch.isfinite(bernoulli_kl(torch.tensor([[60.0]]), torch.tensor([[-60.0]]))).all()


def test_dpo_loss_by_hand_and_its_gradient_prefers_the_chosen_reading():
    # policy p = (0.5, 0.75), reference (0.5, 0.5); chosen (1, 1), rejected (0, 0)
    # log pi(y_w) - log ref(y_w) = ln 0.375 - ln 0.25 = ln 1.5
    # log pi(y_l) - log ref(y_l) = ln 0.125 - ln 0.25 = ln 0.5
    # h = ln 3; with beta = 0.5 the loss is -log sigma(ln3 / 2) = ln(1 + 1/sqrt(3)) = 0.455706
    policy = torch.tensor([[0.0, LN3]], requires_grad=True)
    ref = torch.zeros(1, 2)
    chosen, rejected = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 0.0]])
    loss, stats = preference_loss(policy, ref, chosen, rejected, beta=0.5)
    assert loss.item() == pytest.approx(math.log(1 + 1 / math.sqrt(3)), abs=1e-6)
    assert stats["margin"] == pytest.approx(LN3 / 2, abs=1e-6)
    assert stats["chosen_reward"] == pytest.approx(0.5 * math.log(1.5), abs=1e-6)
    assert stats["reward_accuracy"] == 1.0
    loss.backward()
    before = (bernoulli_logprob(policy, chosen) - bernoulli_logprob(policy, rejected)).item()
    with torch.no_grad():
        policy -= 1.0 * policy.grad
    after = (bernoulli_logprob(policy, chosen) - bernoulli_logprob(policy, rejected)).item()
    assert after > before
    with pytest.raises(ValueError, match="shapes must match"):
        preference_loss(policy, ref, chosen, rejected[:, :1])


def test_ipo_loss_by_hand_is_bounded_where_dpo_keeps_pushing():
    # the same pair as above: h = ln 3; IPO with beta = 0.5 targets h = 1 / (2 beta) = 1
    # loss = (ln 3 - 1)^2 = 0.009679, and its gradient pulls h back down towards 1
    policy = torch.tensor([[0.0, LN3]], requires_grad=True)
    ref = torch.zeros(1, 2)
    chosen, rejected = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 0.0]])
    loss, stats = preference_loss(policy, ref, chosen, rejected, beta=0.5, kind="ipo")
    assert loss.item() == pytest.approx((LN3 - 1) ** 2, abs=1e-6)
    assert stats["margin"] == pytest.approx(LN3 / 2, abs=1e-6)
    loss.backward()
    h = lambda lg: (bernoulli_logprob(lg, chosen) - bernoulli_logprob(lg, rejected)).item()  # noqa: E731
    with torch.no_grad():
        stepped = policy - 0.1 * policy.grad
    assert 1.0 < h(stepped) < LN3  # past the target: back towards it, not beyond
    # DPO on the same pair keeps raising h
    dpo_policy = policy.detach().clone().requires_grad_(True)
    preference_loss(dpo_policy, ref, chosen, rejected, beta=0.5)[0].backward()
    with torch.no_grad():
        assert h(dpo_policy - 0.1 * dpo_policy.grad) > LN3
    with pytest.raises(ValueError, match="'dpo' or 'ipo'"):
        preference_loss(policy, ref, chosen, rejected, kind="kto")


def test_uncertainty_weights_by_hand_and_weighted_loss():
    # reference p = (0.5, 0.9, 0.1); pair 1 differs in statement 0 only: weight 4*.5*.5 = 1
    # pair 2 differs in statements 1 and 2: weight mean(4*.9*.1, 4*.1*.9) = 0.36
    ref = torch.logit(torch.tensor([[0.5, 0.9, 0.1], [0.5, 0.9, 0.1]]))
    chosen = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    rejected = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    w = uncertainty_weights(ref, chosen, rejected)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.36]), atol=1e-6, rtol=0)
    policy = ref.clone()
    each = [preference_loss(policy[i:i + 1], ref[i:i + 1], chosen[i:i + 1], rejected[i:i + 1],
                            kind="ipo")[0].item() for i in range(2)]
    weighted, _ = preference_loss(policy, ref, chosen, rejected, kind="ipo", weights=w)
    assert weighted.item() == pytest.approx((each[0] * 1.0 + each[1] * 0.36) / 1.36, abs=1e-6)


def test_bradley_terry_loss_by_hand():
    # -log sigma(1) = ln(1 + e^-1) = 0.313262; -log sigma(-2) = ln(1 + e^2) = 2.126928
    loss, stats = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
    assert loss.item() == pytest.approx((math.log(1 + math.e ** -1)
                                         + math.log(1 + math.e ** 2)) / 2, abs=1e-6)
    assert stats == {"accuracy": 0.5, "margin": pytest.approx(-0.5)}
    loss, _ = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=1.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_rloo_gradient_by_hand_and_sign():
    # one ECG, two statements, policy at 0.5 each; K = 3 samples with rewards (3, 0, 0)
    # leave-one-out baselines (0, 1.5, 1.5) -> advantages (3, -1.5, -1.5)
    # d loss / d l_c = -(1/K) sum_k A_k (y_kc - 0.5):  c=0: -(1.5 + 0.75 - 0.75)/3 = -0.5
    #                                                  c=1: -(-1.5 - 0.75 - 0.75)/3 = +1.0
    logits = torch.zeros(1, 2, requires_grad=True)
    samples = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])
    rewards = torch.tensor([[3.0], [0.0], [0.0]])
    loss, stats = rloo_pg_loss(logits, torch.zeros(1, 2), samples, rewards, kl_coef=0.1)
    loss.backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[-0.5, 1.0]]))  # KL grad is 0 here
    assert stats["kl"] == pytest.approx(0.0) and stats["reward"] == pytest.approx(1.0)
    before = bernoulli_logprob(logits, samples[0]).item()
    with torch.no_grad():
        logits -= 0.1 * logits.grad
    assert bernoulli_logprob(logits, samples[0]).item() > before  # above-average sample gains
    assert bernoulli_logprob(logits, samples[1]).item() < math.log(0.25)
    # with the policy away from the reference, the loss adds kl_coef * the closed-form KL
    p = torch.tensor([[0.0, LN3]])
    loss2, stats2 = rloo_pg_loss(p, torch.tensor([[-LN3, 0.0]]), samples, rewards, kl_coef=2.0)
    assert stats2["kl"] == pytest.approx(0.274653, abs=1e-5)
    assert loss2.item() == pytest.approx(stats2["pg_loss"] + 2.0 * stats2["kl"], abs=1e-6)
    with pytest.raises(ValueError, match="K >= 2"):
        rloo_pg_loss(logits, logits, samples[:1], rewards[:1], 0.1)


def test_ppo_clip_at_the_old_policy_is_minus_mean_advantage():
    logits = torch.tensor([[0.3, -0.2]], requires_grad=True)
    samples = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    adv = torch.tensor([[1.0], [-3.0]])
    loss, stats = ppo_clip_loss(logits, logits.detach(), samples, adv)
    assert loss.item() == pytest.approx(1.0) and stats["clip_fraction"] == 0.0
    # a ratio far above 1 + clip earns no more than the clipped surrogate
    far = torch.tensor([[5.0, -5.0]])
    loss, stats = ppo_clip_loss(far, torch.zeros(1, 2), samples[:1], torch.ones(1, 1))
    assert loss.item() == pytest.approx(-1.2) and stats["clip_fraction"] == 1.0


def _planted_pairs(n: int, rng: np.random.Generator, dim: int = 8):
    # statement c is truly present when embedding[c] > 0: correctness depends on the ECG
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    truth = (emb[:, : len(CLASSES)] > 0).astype(np.float32)
    rejected = truth.copy()
    flip = rng.integers(0, len(CLASSES), n)
    rejected[np.arange(n), flip] = 1 - rejected[np.arange(n), flip]
    return RewardPairs(emb, truth, rejected)


def test_reward_model_learns_a_planted_preference():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train, held_out = _planted_pairs(800, rng), _planted_pairs(300, rng)
    model = RewardModel(embed_dim=8, num_classes=len(CLASSES), hidden=32)
    assert pair_accuracy(model, held_out) < 0.8  # untrained: near chance
    history = train_reward_model(model, train, epochs=40, lr=3e-3, batch_size=128, seed=0)
    assert history["loss"][-1] < history["loss"][0]
    assert pair_accuracy(model, held_out) > 0.9
    # K sampled readings per ECG broadcast against one embedding each
    out = model(torch.from_numpy(held_out.embedding[:5]), torch.zeros(3, 5, len(CLASSES)))
    assert out.shape == (3, 5)


def test_verdict_to_pairs():
    v = Verdict(ecg_id="1", reading={"NORM": 1, "MI": 1}, marks={"NORM": "right", "MI": "wrong"},
                missed=["STTC"], annotator="dr-a")
    pairs = verdict_to_pairs(v, CLASSES)
    corrected = np.array([1, 0, 1, 0], dtype=np.float32)
    np.testing.assert_array_equal(pairs[0][0], corrected)
    np.testing.assert_array_equal(pairs[0][1], [1, 1, 0, 0])  # beats the shown reading
    rejected = sorted(tuple(r) for _, r in pairs[1:])
    # one flip of each marked or missed statement: NORM, MI, STTC
    assert rejected == [(0, 0, 1, 0), (1, 0, 0, 0), (1, 1, 1, 0)]
    assert all(np.array_equal(c, corrected) for c, _ in pairs)
    assert len(verdict_to_pairs(v, CLASSES, flips="all")) == 5  # + CD flipped on
    # a verdict that only confirms: no shown-vs-corrected pair, one flip
    ok = Verdict(ecg_id="2", reading=["NORM"], marks={"NORM": "right"}, annotator="dr-a")
    ((c, r),) = verdict_to_pairs(ok, CLASSES)
    np.testing.assert_array_equal(c, [1, 0, 0, 0])
    np.testing.assert_array_equal(r, [0, 0, 0, 0])
    assert len(verdict_to_pairs(v, CLASSES, flips="none")) == 1


def _truth(n=300, seed=1):
    return (np.random.default_rng(seed).random((n, len(CLASSES))) < 0.4).astype(int)


def test_noiseless_simulated_cardiologist_is_exact():
    y = _truth()
    sim = SimulatedCardiologist(y, CLASSES, noise=0.0, temperature=0.0, seed=3)
    rng = np.random.default_rng(0)
    for i in range(len(y)):
        shown = (rng.random(len(CLASSES)) < 0.5).astype(int)
        v = sim.verdict(i, str(i), "", shown)
        np.testing.assert_array_equal(v.corrected_reading(CLASSES), y[i])
        a, b = (rng.random((2, len(CLASSES))) < 0.5).astype(int)
        p = sim.prefer(i, str(i), "", a, b)
        da, db = np.sum(a != y[i]), np.sum(b != y[i])
        assert p.choice == ("tie" if da == db else "a" if da < db else "b")


def test_simulated_noise_flip_rate_and_temperature():
    y = _truth(n=2000)
    sim = SimulatedCardiologist(y, CLASSES, noise=0.2, temperature=0.0, seed=4)
    shown = np.ones(len(CLASSES), dtype=int)
    wrong = total = 0
    for i in range(len(y)):
        v = sim.verdict(i, str(i), "", shown)
        judged = np.array([v.marks[c] == "right" for c in CLASSES], dtype=int)
        wrong += int(np.sum(judged != y[i]))
        total += len(CLASSES)
    assert wrong / total == pytest.approx(0.2, abs=0.02)
    # temperature 1, no noise, readings one statement apart: P(better) = sigma(1) = 0.731
    soft = SimulatedCardiologist(y, CLASSES, noise=0.0, temperature=1.0, seed=5)
    better = [soft.prefer(i, str(i), "", y[i], np.r_[1 - y[i][:1], y[i][1:]]).choice == "a"
              for i in range(len(y))]
    assert np.mean(better) == pytest.approx(1 / (1 + math.exp(-1)), abs=0.03)
    # same seed, same answers
    again = SimulatedCardiologist(y, CLASSES, noise=0.0, temperature=1.0, seed=5)
    assert [again.prefer(i, str(i), "", y[i], np.r_[1 - y[i][:1], y[i][1:]]).choice == "a"
            for i in range(len(y))] == better


def test_strict_bias_sees_a_statement_about_half_as_often():
    y = np.zeros((4000, len(CLASSES)), dtype=int)
    y[:, 2] = 1  # STTC everywhere in the labels
    sim = SimulatedCardiologist(y, CLASSES, bias={"STTC": "strict"}, temperature=0, seed=0)
    verdicts = [sim.verdict(i, str(i), "", y[i]) for i in range(len(y))]
    rate = np.mean([v.marks["STTC"] == "right" for v in verdicts])
    assert rate == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match="not in classes"):
        SimulatedCardiologist(y, CLASSES, bias={"AFIB": "strict"})


def test_acquisition_rules():
    probs = np.array([[0.99, 0.01], [0.5, 0.5], [0.7, 0.2], [0.9, 0.45]])
    # mean binary entropy: row 1 (ln 2) > row 2 > row 3 > row 0
    np.testing.assert_array_equal(select(probs, 2), [1, 2])
    np.testing.assert_array_equal(select(probs, 2, exclude=[1]), [2, 3])
    np.testing.assert_array_equal(select(probs, 1, rule="margin"), [1])
    probs_b = probs.copy()
    probs_b[3] = [0.1, 0.45]
    np.testing.assert_array_equal(select(probs, 1, rule="disagreement", probs_b=probs_b), [3])
    r1, r2 = select(probs, 3, rule="random", seed=7), select(probs, 3, rule="random", seed=7)
    np.testing.assert_array_equal(r1, r2)
    assert len(set(r1.tolist())) == 3
    assert len(select(probs, 10)) == 4
    with pytest.raises(ValueError, match="probs_b"):
        select(probs, 1, rule="disagreement")
    with pytest.raises(ValueError, match="rule must be one of"):
        select(probs, 1, rule="entropy")
    np.testing.assert_array_equal(threshold_reading(probs[2], [0.6, 0.1]), [1, 1])
    draws = sample_readings(probs, 4000, rng=0)
    assert draws.shape == (4000, 4, 2)
    np.testing.assert_allclose(draws.mean(0), probs, atol=0.03)
