"""``ecgrisk-refine``: refine a fine-tuned model bundle from cardiologist feedback.

    ecgrisk-refine data=ptbxl data.root=DIR base=RUN/model.pt feedback=simulated refine=dpo \
        rounds=3 queries_per_round=32
    ecgrisk-refine data.root=DIR base=RUN/model.pt feedback=store feedback.store=fb.db refine=pg

Each round asks about ECGs of the query pool (by default one half of the validation fold; the
base was not trained on it), gets judgements (simulated cardiologist or a feedback store), fits
a reward model and refines the classifier (DPO against the frozen base, a KL-regularised policy
gradient against the reward model, or masked BCE on verdicts); a guard on the other half of the
validation fold keeps a round only if macro AUROC holds (:mod:`ecgrisk.preference.loop`).

The test fold is evaluated for the base and the kept final model (and after every round with
``evaluate_test_each_round=true``, which the benchmark sets). With ``pool=val`` the guard checks
on ECGs the loop asked about, so it is optimistic; ``pool=val_half`` (default) avoids that at the
price of a guard half as large (36 records on the shared subset: the guard is noisy).

The run directory receives ``.hydra/``, ``feedback.db`` (every judgement the run used),
``queries/round_k.jsonl`` (what was asked), ``checkpoints/`` (the kept model after each
round), ``metrics.json`` and ``model.pt`` (a bundle with ``base`` naming the base bundle).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

from ecgrisk.bundle import Bundle
from ecgrisk.config import run_app
from ecgrisk.preference.loop import RoundContext, make_feedback, run_loop
from ecgrisk.preference.losses import (
    bernoulli_kl,
    dpo_loss,
    ppo_clip_loss,
    rloo_advantages,
    rloo_pg_loss,
    sample_bernoulli,
)
from ecgrisk.preference.policy import BernoulliPolicy
from ecgrisk.preference.store import FeedbackStore
from ecgrisk.runs import run_dir, write_metrics

log = logging.getLogger(__name__)

POOLS = ("val_half", "val")


# --------------------------------------------------------------------------- embedded windows


@dataclass
class WindowSet:
    """The evaluation windows of a set of records, embedded once by the frozen base encoder.

    Attributes
    ----------
    record_ids
        ``N`` record ids (text).
    labels
        ``[N, C]`` 0/1 labels.
    positions
        ``[W]`` record position of each window.
    embeddings
        ``[W, D]`` float32 window embeddings (``encoder.embed``).
    inputs
        ``[W, leads, T]`` window signals, kept only for ``train="all"``.
    """

    record_ids: list[str]
    labels: np.ndarray
    positions: np.ndarray
    embeddings: Tensor
    inputs: Tensor | None = None
    _order: np.ndarray = field(init=False, repr=False)
    _bounds: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions, dtype=np.int64)
        if len(self.positions) != len(self.embeddings):
            raise ValueError(f"positions [{len(self.positions)}] and embeddings "
                             f"[{len(self.embeddings)}] must have one entry per window")
        if len(self.labels) != len(self.record_ids):
            raise ValueError(f"labels [{len(self.labels)}] and record_ids "
                             f"[{len(self.record_ids)}] must have one entry per record")
        self._order = np.argsort(self.positions, kind="stable")
        self._bounds = np.searchsorted(self.positions[self._order], np.arange(len(self) + 1))
        if np.any(np.diff(self._bounds) == 0):
            raise ValueError("every record needs at least one window")

    def __len__(self) -> int:
        return len(self.record_ids)

    def windows_of(self, records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Windows of ``records`` ``[n]``: window indices ``[m]`` and their positions in ``records``."""
        parts = [self._order[self._bounds[r]:self._bounds[r + 1]] for r in records]
        pos = np.repeat(np.arange(len(records)), [len(p) for p in parts])
        return np.concatenate(parts), pos

    def record_embeddings(self) -> np.ndarray:
        """``[N, D]`` float32: the mean of each record's window embeddings."""
        sums = torch.zeros(len(self), self.embeddings.shape[1])
        sums.index_add_(0, torch.from_numpy(self.positions), self.embeddings.float().cpu())
        counts = np.bincount(self.positions, minlength=len(self))
        return (sums.numpy() / counts[:, None]).astype(np.float32)

    def subset(self, records: Sequence[int]) -> WindowSet:
        """The records at ``records``, in that order."""
        records = np.asarray(records, dtype=np.int64)
        win, pos = self.windows_of(records)
        return WindowSet([self.record_ids[r] for r in records], self.labels[records], pos,
                         self.embeddings[win],
                         None if self.inputs is None else self.inputs[win])


@torch.no_grad()
def embed_windows(model: torch.nn.Module, dataset: Any, labels: np.ndarray,
                  record_ids: Sequence[str], batch_size: int = 256, keep_inputs: bool = False
                  ) -> WindowSet:
    """Embed every window of a :class:`~ecgrisk.data.windows.WindowDataset` once.

    Parameters
    ----------
    model
        An :class:`~ecgrisk.models.classifier.ECGClassifier` (its ``embed`` is used).
    dataset
        The windows (``(x [leads, T], y, k)`` items and ``positions``).
    labels, record_ids
        ``[N, C]`` labels and ``N`` ids of the dataset's records.
    """
    from torch.utils.data import DataLoader

    model.eval()
    embs, inputs, ks = [], [], []
    for x, _, k in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        embs.append(model.embed(x).float())
        ks.append(k.numpy())
        if keep_inputs:
            inputs.append(x)
    k = np.concatenate(ks)
    return WindowSet(list(record_ids), np.asarray(labels), np.asarray(dataset.positions)[k],
                     torch.cat(embs), torch.cat(inputs) if keep_inputs else None)


@dataclass
class Sets:
    """Where the loop asks (``pool``), what the guard checks (``guard``), what is reported
    (``test``)."""

    pool: WindowSet
    guard: WindowSet
    test: WindowSet


def prepare_sets(model: torch.nn.Module, dm: Any, pool: str = "val_half", seed: int = 0,
                 batch_size: int = 256, keep_inputs: bool = False) -> Sets:
    """Embed the validation and test folds of a set-up DataModule and split the pool off.

    ``pool="val_half"`` asks about a seeded half of the validation fold and guards on the
    other half; ``pool="val"`` asks and guards on the whole fold (the guard then checks on
    ECGs the loop has seen).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    emb = {s: embed_windows(model, dm.eval_dataset(s), dm.labels(s), dm.record_ids(s),
                            batch_size, keep_inputs) for s in ("val", "test")}
    val = emb["val"]
    if pool == "val":
        return Sets(val, val, emb["test"])
    if len(val) < 4:
        raise ValueError(f"pool=val_half needs at least 4 validation records, got {len(val)}")
    order = np.random.default_rng(seed).permutation(len(val))
    half = len(val) // 2
    return Sets(val.subset(np.sort(order[:half])), val.subset(np.sort(order[half:])),
                emb["test"])


# --------------------------------------------------------------------------- refiners


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


def dpo_refine(policy: BernoulliPolicy, ctx: RoundContext, cfg: Any) -> dict:
    """DPO on every strict pair the store holds, against the frozen reference."""
    d = ctx.data
    if len(d.record) == 0:
        log.warning("refine=dpo: no strict pairs in the feedback (all ties?); nothing to train")
        return {}
    rng, opt, history = np.random.default_rng(ctx.seed), _optimiser(policy, cfg), []
    chosen, rejected = torch.from_numpy(d.chosen), torch.from_numpy(d.rejected)
    for _ in range(cfg.steps):
        b = rng.choice(len(d.record), min(cfg.batch_size, len(d.record)), replace=False)
        uniq, inv = np.unique(d.record[b], return_inverse=True)
        logits = policy.logits(ctx.pool, uniq)[torch.from_numpy(inv)]
        loss, stats = dpo_loss(logits, ctx.ref_logits[d.record[b]], chosen[b], rejected[b],
                               beta=cfg.beta, label_smoothing=cfg.label_smoothing)
        history.append(_step(opt, loss, stats))
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
        history.append(_step(opt, loss, stats))
    return _mean_stats(history)


def bce_refine(policy: BernoulliPolicy, ctx: RoundContext, cfg: Any) -> dict:
    """Supervised fine-tuning on the verdicts' judged statements (masked BCE).

    With a noise-free simulated cardiologist the judged statements are the full labels: the
    benchmark's upper bound.
    """
    d = ctx.data
    if len(d.target_record) == 0:
        raise ValueError("refine=bce trains on verdicts, and the store holds none about the "
                         "pool; use ask.candidates=threshold")
    rng, opt, history = np.random.default_rng(ctx.seed), _optimiser(policy, cfg), []
    targets, mask = torch.from_numpy(d.targets), torch.from_numpy(d.mask)
    for _ in range(cfg.steps):
        b = rng.choice(len(d.target_record), min(cfg.batch_size, len(d.target_record)),
                       replace=False)
        uniq, inv = np.unique(d.target_record[b], return_inverse=True)
        logits = policy.logits(ctx.pool, uniq)[torch.from_numpy(inv)]
        loss = F.binary_cross_entropy_with_logits(logits, targets[b], weight=mask[b],
                                                  reduction="sum") / mask[b].sum().clamp(min=1)
        history.append(_step(opt, loss))
    return _mean_stats(history)


REFINERS = {"dpo": dpo_refine, "pg": pg_refine, "bce": bce_refine}


# --------------------------------------------------------------------------- the app


def data_for_bundle(data: DictConfig, bundle: Bundle) -> DictConfig:
    """The ``data`` node with the bundle's preprocessing and evaluation windows, so the cache and
    the windows are those the model was trained and calibrated with."""
    data = OmegaConf.create(OmegaConf.to_container(data, resolve=True))
    prep = bundle.preprocessing
    wanted = {"fs": prep.fs, "bandpass": list(prep.bandpass) if prep.bandpass else None,
              "notch": prep.notch}
    with open_dict(data):
        for key, value in wanted.items():
            if data.preprocessing.get(key) != value:
                log.info("data.preprocessing.%s=%s from the base bundle (config had %s)", key,
                         value, data.preprocessing.get(key))
            data.preprocessing[key] = value
        data.window_s, data.stride_s = bundle.window_s, bundle.stride_s
    return data


def _refined_bundle(bundle: Bundle, model: torch.nn.Module, cfg: DictConfig, version: str,
                    extra: dict) -> Bundle:
    return dataclasses.replace(bundle, model=model, version=version,
                               base=str(Path(cfg.base).resolve()),
                               config=OmegaConf.to_yaml(cfg, resolve=True),
                               extra={**bundle.extra, "refine": extra})


def refine(cfg: DictConfig) -> dict:
    """Refine ``cfg.base`` over ``cfg.rounds`` rounds of feedback; write the run; the metrics."""
    from ecgrisk.finetune import build_datamodule  # lazy: pulls in Lightning

    t0 = time.perf_counter()
    if not cfg.get("base"):
        raise ValueError("base=RUN/model.pt is required: the fine-tuned bundle to refine")
    if cfg.refine.method not in REFINERS:
        raise ValueError(f"refine.method must be one of {sorted(REFINERS)}, "
                         f"got {cfg.refine.method!r}")
    if cfg.rounds < 1 or cfg.queries_per_round < 1:
        raise ValueError(f"rounds and queries_per_round must be >= 1, got {cfg.rounds} and "
                         f"{cfg.queries_per_round}")
    bundle = Bundle.load(cfg.base)
    out = run_dir(cfg)
    if (out / "feedback.db").exists():
        raise FileExistsError(f"{out / 'feedback.db'} exists: a refine run needs a fresh run "
                              "directory (its store holds exactly the judgements it used)")
    torch.manual_seed(cfg.seed)
    dm = build_datamodule(data_for_bundle(cfg.data, bundle), cfg.seed, scaler=bundle.scaler,
                          progress=cfg.progress)
    dm.setup()
    if list(dm.classes) != list(bundle.classes):
        raise ValueError(f"{cfg.base}: the bundle predicts {bundle.classes} but the data "
                         f"(task={cfg.data.get('task')}) has {dm.classes}; set data.task to the "
                         "bundle's task")
    sets = prepare_sets(bundle.model, dm, cfg.pool, cfg.seed, cfg.data.batch_size,
                        keep_inputs=cfg.refine.train == "all")
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def save_round(k: int, policy: BernoulliPolicy, accepted: bool) -> None:
        _refined_bundle(bundle, policy.model, cfg, f"{bundle.version}+r{k}",
                        {"round": k, "accepted": accepted}).save(
            out / "checkpoints" / f"round_{k}.pt")

    store = FeedbackStore(out / "feedback.db")
    try:
        feedback = make_feedback(cfg.feedback, sets.pool, store, bundle.classes)
        result = run_loop(cfg, bundle.model, bundle.temperature, bundle.bias, bundle.aggregation,
                          bundle.classes, sets, store, feedback, REFINERS[cfg.refine.method],
                          out, bundle.version, on_round=save_round)
    finally:
        store.close()
    metrics = {**result.metrics, "feedback/skipped": getattr(feedback, "skipped", 0),
               "refine/wall_s": time.perf_counter() - t0, "classes": list(bundle.classes)}
    extra = {"method": cfg.refine.method, "feedback": cfg.feedback.kind, "pool": cfg.pool,
             "accepted_rounds": result.accepted, "rounds_completed":
             metrics["rounds/completed"], "feedback_count": metrics["feedback/count"],
             "base_version": bundle.version}
    _refined_bundle(bundle, result.policy.model, cfg, f"{bundle.version}+refine.{stamp}",
                    extra).save(out / "model.pt")
    write_metrics(out / "metrics.json", metrics)
    _print_summary(metrics, out)
    return metrics


def _print_summary(m: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"test fold: {m['test/records']} records; {m['feedback/count']} judgements, "
                    f"{m['rounds/accepted']}/{m['rounds/completed']} rounds kept")
    for col in ("metric", "base", "refined"):
        t.add_column(col)
    for k in ("macro_auroc", "brier", "ece"):
        t.add_row(k, f"{m[f'base/test/{k}']:.4f}", f"{m[f'test/{k}']:.4f}")
    t.add_row("val macro_auroc (guard)", f"{m['base/val/macro_auroc']:.4f}",
              f"{m['val/macro_auroc']:.4f}")
    Console().print(t)
    Console().print(f"reward pair accuracy (held-out feedback): {m['reward/pair_accuracy']:.3f}")
    Console().print(f"run directory: {out}")


@hydra.main(version_base="1.3", config_path=None, config_name="refine")
def _hydra_main(cfg: DictConfig) -> float:
    metrics = refine(cfg)
    return float(metrics.get("val/macro_auroc", float("nan")))


def main() -> None:
    """Console entry point (``ecgrisk-refine``)."""
    run_app(_hydra_main)


if __name__ == "__main__":
    main()
