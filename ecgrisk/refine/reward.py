"""The reward model r(x, y): frozen ECG embedding + candidate reading -> scalar.

The encoder is frozen and its embeddings precomputed, so the reward model trains on small
tensors: pairs ``(embedding, chosen reading, rejected reading)`` with the Bradley-Terry loss.
Verdicts become pairs too (:func:`verdict_to_pairs`), so both kinds of feedback train one model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ecgrisk.feedback.records import Preference, Verdict, reading_vector
from ecgrisk.refine.losses import bradley_terry_loss


class RewardModel(nn.Module):
    """Scalar reward of a reading for an ECG.

    ``r(x, y) = Σ_c y_c s_c(x) + g([x, y])``: ``s(x)`` scores how right it is to assert each
    statement for this ECG (an MLP head on the embedding, so correctness can depend on the
    ECG), and ``g`` is a small MLP on the concatenation that can learn how statements go
    together.

    Parameters
    ----------
    embed_dim
        ``D``, the encoder's embedding size.
    num_classes
        ``C``, the number of statements.
    hidden
        Width of both MLPs.
    """

    def __init__(self, embed_dim: int, num_classes: int, hidden: int = 128):
        super().__init__()
        if embed_dim < 1 or num_classes < 1 or hidden < 1:
            raise ValueError(f"embed_dim, num_classes and hidden must be >= 1, got "
                             f"{embed_dim}, {num_classes}, {hidden}")
        self.embed_dim, self.num_classes = embed_dim, num_classes
        self.statement_score = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(),
                                             nn.Linear(hidden, num_classes))
        self.joint = nn.Sequential(nn.Linear(embed_dim + num_classes, hidden), nn.GELU(),
                                   nn.Linear(hidden, 1))

    def forward(self, embedding: Tensor, reading: Tensor) -> Tensor:
        """Reward of each reading.

        Parameters
        ----------
        embedding
            ``[B, D]`` ECG embeddings.
        reading
            ``[..., B, C]`` 0/1 readings (leading dims, e.g. ``K`` samples, broadcast).

        Returns
        -------
        Tensor
            ``[..., B]`` rewards.
        """
        if embedding.shape[-1] != self.embed_dim or reading.shape[-1] != self.num_classes:
            raise ValueError(f"expected embedding [B, {self.embed_dim}] and reading "
                             f"[..., B, {self.num_classes}], got {tuple(embedding.shape)} and "
                             f"{tuple(reading.shape)}")
        reading = reading.to(embedding.dtype)
        emb = embedding.expand(*reading.shape[:-1], self.embed_dim)
        per_statement = (reading * self.statement_score(emb)).sum(-1)
        return per_statement + self.joint(torch.cat([emb, reading], -1)).squeeze(-1)


@dataclass
class RewardPairs:
    """Training pairs for the reward model.

    Attributes
    ----------
    embedding
        ``[N, D]`` float32 embedding of the ECG of each pair.
    chosen, rejected
        ``[N, C]`` float32 0/1 readings; ``chosen`` is the better one.
    """

    embedding: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray

    def __post_init__(self) -> None:
        self.embedding = np.asarray(self.embedding, dtype=np.float32)
        self.chosen = np.asarray(self.chosen, dtype=np.float32)
        self.rejected = np.asarray(self.rejected, dtype=np.float32)
        n = len(self.embedding)
        if self.embedding.ndim != 2 or self.chosen.shape != self.rejected.shape \
                or self.chosen.ndim != 2 or len(self.chosen) != n:
            raise ValueError(f"RewardPairs needs embedding [N, D], chosen and rejected [N, C], "
                             f"got {self.embedding.shape}, {self.chosen.shape}, "
                             f"{self.rejected.shape}")

    def __len__(self) -> int:
        return len(self.embedding)


def verdict_to_pairs(verdict: Verdict, classes: Sequence[str], flips: str = "marked"
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Turn a verdict into ``(chosen, rejected)`` reading pairs.

    The corrected reading beats the shown one when they differ; with ``flips``, the corrected
    reading also beats itself with one judged statement flipped, which tells the reward model
    about each statement separately (including those marked right).

    Parameters
    ----------
    verdict
        The verdict.
    classes
        The label list (``C``).
    flips
        ``"marked"``: one pair per marked or missed statement; ``"all"``: one per judged
        statement (every label but unmarked shown positives); ``"none"``: no flips.

    Returns
    -------
    list of tuple
        ``(chosen [C], rejected [C])`` float32 pairs, without repeats.
    """
    if flips not in ("marked", "all", "none"):
        raise ValueError(f"flips must be 'marked', 'all' or 'none', got {flips!r}")
    corrected = verdict.corrected_reading(classes)
    shown = verdict.shown_reading(classes)
    pairs = []
    seen: set[bytes] = set()
    if not np.array_equal(corrected, shown):
        pairs.append((corrected, shown))
        seen.add(shown.tobytes())
    statements = {"none": [], "marked": [*verdict.marks, *verdict.missed],
                  "all": list(verdict.judgements(classes))}[flips]
    index = {c: i for i, c in enumerate(classes)}
    for statement in statements:
        flipped = corrected.copy()
        flipped[index[statement]] = 1.0 - flipped[index[statement]]
        if flipped.tobytes() not in seen:
            pairs.append((corrected, flipped))
            seen.add(flipped.tobytes())
    return pairs


def verdict_targets(verdict: Verdict, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise targets from a verdict: the judged statements and their 0/1 truth.

    Returns
    -------
    targets, mask : np.ndarray
        ``[C]`` float32 each; ``mask`` is 1 where the statement was judged.
    """
    judged = verdict.judgements(classes)
    targets = np.zeros(len(classes), dtype=np.float32)
    mask = np.zeros(len(classes), dtype=np.float32)
    for i, c in enumerate(classes):
        if c in judged:
            targets[i], mask[i] = judged[c], 1.0
    return targets, mask


def preference_to_pair(preference: Preference, classes: Sequence[str]
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(chosen [C], rejected [C])`` for a preference, ``None`` for a tie."""
    pair = preference.chosen_rejected()
    if pair is None:
        return None
    return (reading_vector(pair[0], classes, "chosen"),
            reading_vector(pair[1], classes, "rejected"))


def _tensors(pairs: RewardPairs) -> tuple[Tensor, Tensor, Tensor]:
    return (torch.from_numpy(pairs.embedding), torch.from_numpy(pairs.chosen),
            torch.from_numpy(pairs.rejected))


@torch.no_grad()
def pair_accuracy(model: RewardModel, pairs: RewardPairs) -> float:
    """Fraction of pairs where the model rewards the chosen reading more."""
    if len(pairs) == 0:
        raise ValueError("pair_accuracy needs at least one pair")
    was_training = model.training
    model.eval()
    emb, chosen, rejected = _tensors(pairs)
    acc = float((model(emb, chosen) > model(emb, rejected)).float().mean())
    model.train(was_training)
    return acc


def train_reward_model(model: RewardModel, pairs: RewardPairs, epochs: int = 50,
                       lr: float = 1e-3, batch_size: int = 256, weight_decay: float = 1e-4,
                       seed: int = 0) -> dict[str, list[float]]:
    """Fit the reward model with the Bradley-Terry loss (AdamW, shuffled mini-batches).

    Parameters
    ----------
    model
        The reward model, trained in place.
    pairs
        Training pairs.
    epochs, lr, batch_size, weight_decay
        Optimisation settings.
    seed
        Seeds the shuffling.

    Returns
    -------
    dict
        ``loss`` and ``accuracy`` per epoch (train).
    """
    if len(pairs) == 0:
        raise ValueError("train_reward_model needs at least one pair")
    generator = torch.Generator().manual_seed(seed)
    emb, chosen, rejected = _tensors(pairs)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(pairs), generator=generator)
        total, correct = 0.0, 0.0
        for start in range(0, len(pairs), batch_size):
            idx = order[start:start + batch_size]
            loss, stats = bradley_terry_loss(model(emb[idx], chosen[idx]),
                                             model(emb[idx], rejected[idx]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
            correct += stats["accuracy"] * len(idx)
        history["loss"].append(total / len(pairs))
        history["accuracy"].append(correct / len(pairs))
    return history
