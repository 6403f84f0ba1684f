"""Refinement from cardiologist feedback: records, store, simulated cardiologist, the math.

The torch-based parts (:mod:`~ecgrisk.preference.losses`, :mod:`~ecgrisk.preference.reward`)
load on first use so that ``import ecgrisk.preference`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from ecgrisk.preference.acquisition import sample_readings, select, threshold_reading
from ecgrisk.preference.agreement import cohen_kappa
from ecgrisk.preference.feedback import FeedbackError, Preference, Verdict, record_from_dict
from ecgrisk.preference.simulated import SimulatedCardiologist
from ecgrisk.preference.store import FeedbackImportError, FeedbackStore

_LAZY = {
    "bernoulli_logprob": "losses", "bernoulli_kl": "losses", "dpo_loss": "losses",
    "bradley_terry_loss": "losses", "rloo_pg_loss": "losses", "ppo_clip_loss": "losses",
    "sample_bernoulli": "losses", "RewardPairs": "reward", "build_pairs": "reward",
    "verdict_targets": "reward",
    "RewardModel": "reward", "train_reward_model": "reward", "pair_accuracy": "reward",
    "verdict_to_pairs": "reward", "preference_to_pair": "reward",
}

__all__ = [
    "FeedbackError", "FeedbackImportError", "FeedbackStore", "Preference",
    "SimulatedCardiologist", "Verdict", "cohen_kappa", "record_from_dict", "sample_readings",
    "select", "threshold_reading", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"ecgrisk.preference.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'ecgrisk.preference' has no attribute {name!r}")
