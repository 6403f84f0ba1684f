"""Benchmark refinement from (simulated) cardiologist feedback on PTB-XL at full scale.

    python scripts/benchmark_preference.py --root data/ptb-xl-full --scenario scarce \\
        --judgements 50 100 200 500 1000 --seeds 3
    python scripts/benchmark_preference.py --root data/ptb-xl-full --scenario house ...

Scenarios (task ``superdiagnostic``; fold 10 is never used):

- ``scarce``: the base is fine-tuned on ``--base-fraction`` (5%) of the folds 1-8 labels, drawn
  by patient; the pool is the rest of folds 1-8, whose labels reach the loop only as the
  simulated cardiologist's answers.
- ``house``: the same base; the cardiologist reads by a stricter convention than the labels the
  base learned: a statement only at PTB-XL likelihood >= ``--house-likelihood`` (80). Agreement
  and AUROC are measured against those house labels.

Both: the guard uses one seeded half of fold 9 and every figure is reported on the other half.
The **oracle** is the same base with the same trainable part (the head on the frozen encoder's
features) trained on the whole pool's labels (the scenario's convention), with its step chosen
on the guard half. Each arm runs ``max(--judgements) / q`` rounds of ``q`` = gcd(--judgements)
verdicts and is read at each requested count: the report-half macro AUROC, Brier, ECE and
agreement with the cardiologist, with 90% bootstrap intervals over report-half records (one set
of resamples for every row), and ``gap_closed = (refined - base) / (oracle - base)`` of macro
AUROC. Rows "mean" average the seeds within each resample. Three yardsticks come first: the
oracle's head trained on ``n`` clean pool labels drawn at random; on those together with the
base's own training records (replay), labelled as the base learned them (``house``: the
standard labels beside the house's); and on the base's records with the ``n`` pool ECGs the
base is most uncertain about instead. ``--arms ''`` computes only these.

Writes ``results/preference_<scenario>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np

# an arm is "<method>[-<variant>...]/<ask rule>"; its name is all its overrides
ARMS = ("bce/uncertainty", "bce/random", "bce-replay/uncertainty", "bce-replay/random",
        "ipo/uncertainty", "ipo-weighted/uncertainty", "dpo/uncertainty", "pg/uncertainty",
        "dpo-replay/uncertainty", "dpo-replay/random", "dpo-replay/margin",
        "dpo-replay/disagreement", "ipo-replay/uncertainty", "pg-replay/uncertainty")
VARIANTS = {"replay": "refine.replay=1.0", "weighted": "refine.weighting=uncertainty"}


def arm_overrides(name: str) -> list[str]:
    """The refine overrides an arm's name spells, e.g. ``dpo-replay/margin`` ->
    ``refine=dpo refine.replay=1.0 ask.rule=margin``."""
    learner, rule = name.split("/")
    method, *variants = learner.split("-")
    return [f"refine={method}", *(VARIANTS[v] for v in variants), f"ask.rule={rule}"]


SCENARIOS = ("scarce", "house")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="unpacked PTB-XL (folds 1-9 suffice)")
    p.add_argument("--scenario", choices=SCENARIOS, required=True)
    p.add_argument("--judgements", type=int, nargs="+", default=[50, 100, 200, 500, 1000])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--arms", default=None, help="comma-separated subset of arms ('': the "
                   "reference rows only; default: every arm of the scenario)")
    p.add_argument("--base", default=None, help="a fine-tuned model.pt (default: fine-tune one "
                                                "on --base-fraction of folds 1-8)")
    p.add_argument("--base-fraction", type=float, default=0.05)
    p.add_argument("--model", default="xresnet1d101", help="base architecture")
    p.add_argument("--epochs", type=int, default=50, help="base fine-tuning epochs")
    p.add_argument("--house-likelihood", type=float, default=80.0)
    p.add_argument("--noise", type=float, default=0.05,
                   help="probability that the simulated cardiologist flips a judgement")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--work", default="runs/benchmark_preference",
                   help="base fine-tune, feedback stores and oracle go here")
    p.add_argument("--out", default="results")
    p.add_argument("overrides", nargs="*", help="extra refine config overrides for every arm, "
                                                "e.g. guard.tolerance=0.01")
    args = p.parse_args(argv)
    args.arms = list(ARMS) if args.arms is None else [a for a in args.arms.split(",") if a]
    unknown = set(args.arms) - set(ARMS)
    if unknown:
        p.error(f"--arms: unknown {sorted(unknown)}; choose from {list(ARMS)}")
    if min(args.judgements) < 1:
        p.error("--judgements must be positive")
    return args


def fine_tune_base(args: argparse.Namespace, work: Path) -> Path:
    """The base: ``--model`` fine-tuned on ``--base-fraction`` of folds 1-8 (reused if there)."""
    from ecgrisk.config import compose
    from ecgrisk.finetune.app import train

    out = work / f"base-{args.model}-f{args.base_fraction:g}"
    if (out / "model.pt").is_file():
        return out / "model.pt"
    train(compose("finetune", [
        f"data.root={args.root}", f"data.train_fraction={args.base_fraction}",
        "data.task=superdiagnostic", f"model={args.model}", f"output_dir={out}",
        f"trainer.max_epochs={args.epochs}", "trainer.check_val_every_n_epoch=5",
        "trainer.enable_progress_bar=false"]))
    return out / "model.pt"


def refine_cfg(args: argparse.Namespace, seed: int, arm: list[str], queries: int, rounds: int):
    from ecgrisk.config import compose

    house = [f"data.min_likelihood={args.house_likelihood}"] if args.scenario == "house" else []
    return compose("refine", [
        f"data.root={args.root}", "data.task=superdiagnostic", *house, f"base={args.base}",
        "pool=folds", f"seed={seed}", f"feedback.seed={seed}", f"feedback.noise={args.noise}",
        f"rounds={rounds}", f"queries_per_round={queries}", "bootstrap=0",
        "report_each_round=true", "progress=false", *arm, *args.overrides])


def oracle(bundle, sets, classes, seed: int = 0, lr: float = 1e-3, batch: int = 256,
           steps: int = 3000, every: int = 100) -> tuple[np.ndarray, dict]:
    """The base head trained on every pool label (masked BCE on all statements); the step with
    the best guard macro AUROC is kept. Returns its report-set probabilities and a summary."""
    import torch
    import torch.nn.functional as F

    from ecgrisk.refine.policy import BernoulliPolicy, evaluate_policy

    torch.manual_seed(seed)
    policy = BernoulliPolicy(copy.deepcopy(bundle.model), bundle.temperature, bundle.bias,
                             bundle.aggregation, "head")
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=1e-4)
    labels = torch.from_numpy(sets.pool.labels.astype(np.float32))
    rng = np.random.default_rng(seed)
    best = (evaluate_policy(policy, sets.guard, "val/", classes)[0]["val/macro_auroc"], 0,
            policy.snapshot())
    for step in range(1, steps + 1):
        b = np.sort(rng.choice(len(sets.pool), min(batch, len(sets.pool)), replace=False))
        loss = F.binary_cross_entropy_with_logits(policy.logits(sets.pool, b), labels[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            auc = evaluate_policy(policy, sets.guard, "val/", classes)[0]["val/macro_auroc"]
            if auc > best[0]:
                best = (auc, step, policy.snapshot())
    policy.restore(best[2])
    return policy.probs(sets.report), {"guard_auroc": best[0], "step": best[1]}


REFERENCE = "reference: n clean labels"
REPLAY = "reference: the base's labels + n clean labels"
UNCERTAIN = "reference: the base's labels + its n most uncertain, clean"
REFERENCES = (REFERENCE, REPLAY, UNCERTAIN)


def reference_rows(bundle, sets, classes, counts: list[int], seeds: int, y, base_p, oracle_p,
                   ids) -> list[dict]:
    """What ``n`` perfectly labelled pool ECGs, drawn at random, give the same head trained as
    the oracle is (no noise, no guard): the yardstick for ``n`` judgements; also that head
    trained on the base's own training records (``sets.own``) and the ``n`` together: replay
    of what the base learned from, beside what the judgements add; and that again with the
    ``n`` pool ECGs the base is most uncertain about (``uncertainty`` asking, once, with
    perfect answers) instead of random ones."""
    from ecgrisk.feedback.acquisition import select
    from ecgrisk.refine.policy import BernoulliPolicy

    uncertain = select(BernoulliPolicy(bundle.model, bundle.temperature, bundle.bias,
                                       bundle.aggregation).probs(sets.pool),
                       min(max(counts), len(sets.pool)), rule="uncertainty")
    rows = []
    for arm, extra in [(REFERENCE, None), (REPLAY, sets.own), (UNCERTAIN, sets.own)]:
        for n in sorted(counts):
            if n >= len(sets.pool):
                continue
            t0, got = time.perf_counter(), []
            for s in range(seeds):
                idx = (np.sort(uncertain[:n]) if arm == UNCERTAIN else
                       np.sort(np.random.default_rng(s).choice(len(sets.pool), n, replace=False)))
                train = sets.pool.subset(idx) if extra is None else _joined(extra,
                                                                          sets.pool.subset(idx))
                p, _ = oracle(bundle, dataclasses.replace(sets, pool=train), classes, seed=s,
                              steps=1000, every=50)
                got.append(p)
            rows.append({"arm": arm, "judgements": n, "seed": "mean", "kept": "-",
                         "guard_auroc": None, "reward_pair_accuracy": None,
                         "wall_s": (time.perf_counter() - t0) / seeds,
                         **summarise(y, got, base_p, oracle_p, ids)})
    return rows


def own_alone(bundle, sets, classes, seeds: int, y, base_p, oracle_p, ids) -> dict:
    """The yardstick's head trained on the base's own training records alone (no judgement):
    how much of what replay closes needs none."""
    got = [oracle(bundle, dataclasses.replace(sets, pool=sets.own), classes, seed=s, steps=1000,
                  every=50)[0] for s in range(seeds)]
    return summarise(y, got, base_p, oracle_p, ids)


def _joined(a, b):
    """Two WindowSets of different records as one."""
    import torch

    from ecgrisk.refine.windows import WindowSet

    return WindowSet(a.record_ids + b.record_ids, np.concatenate([a.labels, b.labels]),
                     np.concatenate([a.positions, b.positions + len(a)]),
                     torch.cat([a.embeddings, b.embeddings]))


def run_arm(name: str, seed: int, args, bundle, sets, queries: int, rounds: int,
            work: Path) -> dict:
    """One arm, one seed: report-set probabilities after each round, wall time, guard log."""
    from ecgrisk.feedback.store import FeedbackStore
    from ecgrisk.refine.loop import make_feedback, run_loop
    from ecgrisk.refine.refiners import REFINERS

    cfg = refine_cfg(args, seed, arm_overrides(name), queries, rounds)
    folder = work / "arms" / name.replace("/", "_") / f"seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0, elapsed = time.perf_counter(), {}
    with FeedbackStore(folder / "feedback.db") as store:
        feedback = make_feedback(cfg.feedback, sets.pool, store, bundle.classes)
        res = run_loop(cfg, bundle, sets, store, feedback, REFINERS[cfg.refine.method],
                       out=folder,
                       on_round=lambda k, *_: elapsed.__setitem__(k, time.perf_counter() - t0))
    m = res.metrics
    guard, last = {}, m["base/val/macro_auroc"]
    for k in range(1, rounds + 1):  # the kept model's guard AUROC: what tuning may look at
        if m.get(f"round_{k}/accepted"):
            last = m[f"round_{k}/val/macro_auroc"]
        guard[k] = last
    return {"probs": res.report_probs, "elapsed": elapsed, "guard": guard,
            "kept": {k: bool(m.get(f"round_{k}/accepted")) for k in range(1, rounds + 1)},
            "reasons": {k: m.get(f"round_{k}/guard_reason", "") for k in range(1, rounds + 1)},
            "pair_accuracy": {k: m.get(f"round_{k}/reward/pair_accuracy")
                              for k in range(1, rounds + 1)}}


def _metrics(y: np.ndarray, probs: np.ndarray, idx: np.ndarray | None = None) -> dict:
    from ecgrisk.metrics import brier, ece, macro_auroc
    from ecgrisk.refine.policy import reading_accuracy

    if idx is not None:
        y, probs = y[idx], probs[idx]
    return {"auroc": macro_auroc(y, probs, skip_degenerate=True), "brier": brier(y, probs),
            "ece": ece(y, probs), "agreement": reading_accuracy(probs, y)}


def summarise(y: np.ndarray, runs: list[np.ndarray], base: np.ndarray, oracle_p: np.ndarray,
              ids: np.ndarray) -> dict:
    """Point values and 90% intervals of the seeds' mean metrics and of gap_closed, over the
    shared bootstrap resamples ``ids [B, N]``."""
    def mean_metrics(i):
        ms = [_metrics(y, p, i) for p in runs]
        return {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}

    point = mean_metrics(None)
    b0, o0 = _metrics(y, base)["auroc"], _metrics(y, oracle_p)["auroc"]
    point["delta_auroc"] = point["auroc"] - b0
    point["gap_closed"] = (point["auroc"] - b0) / (o0 - b0) if o0 != b0 else math.nan
    draws = []
    for i in ids:
        m = mean_metrics(i)
        bb, oo = _metrics(y, base, i)["auroc"], _metrics(y, oracle_p, i)["auroc"]
        m["delta_auroc"] = m["auroc"] - bb
        m["gap_closed"] = (m["auroc"] - bb) / (oo - bb) if oo != bb else math.nan
        draws.append(m)
    out = {}
    for k, v in point.items():
        vals = np.array([d[k] for d in draws], dtype=float)
        out[k] = v
        out[f"{k}_lower"] = float(np.nanpercentile(vals, 5))
        out[f"{k}_upper"] = float(np.nanpercentile(vals, 95))
    return out


def write_markdown(path: Path, result: dict) -> None:
    meta, rows = result["meta"], result["rows"]

    def ci(r, k, d=3):
        return f"{r[k]:.{d}f} [{r[k + '_lower']:.{d}f}, {r[k + '_upper']:.{d}f}]"

    scen = ("**scarce labels**: base fine-tuned on "
            f"{meta['base_fraction']:.0%} of the folds 1-8 labels (by patient)"
            if meta["scenario"] == "scarce" else
            f"**house style**: the cardiologist calls a statement only at PTB-XL likelihood >= "
            f"{meta['house_likelihood']:g}; base fine-tuned on {meta['base_fraction']:.0%} of "
            "the folds 1-8 standard labels; every figure against the house labels")
    lines = [
        f"# Refinement from simulated cardiologist feedback: {meta['scenario']}", "",
        f"`{meta['command']}`", "",
        f"{scen}. Base `{meta['base']}` ({meta['model']}); pool: {meta['pool']} folds 1-8 "
        f"records the base never saw; guard: {meta['guard']} fold-9 records, report: "
        f"{meta['report']} other fold-9 records; PTB-XL superdiagnostic. Verdicts in rounds of "
        f"{meta['queries']}; simulated cardiologist noise {meta['noise']}; {meta['seeds']} "
        f"seeds; {meta['bootstrap']} bootstrap resamples of the report half (90% intervals, "
        f"one set of resamples for every row). Feature extraction {meta['embed_s']:.0f} s, "
        f"oracle {meta['oracle_s']:.0f} s, whole run {meta['wall_s'] / 60:.1f} min on "
        f"{meta['machine']}.", "",
        f"Base: report macro AUROC {ci(result['base'], 'auroc')}, Brier "
        f"{result['base']['brier']:.4f}, ECE {result['base']['ece']:.4f}, agreement "
        f"{result['base']['agreement']:.3f}. Oracle (head trained on all {meta['pool']} pool "
        f"labels, step {result['oracle']['step']} chosen on the guard half): "
        f"{ci(result['oracle'], 'auroc')}, Brier {result['oracle']['brier']:.4f}, ECE "
        f"{result['oracle']['ece']:.4f}, agreement {result['oracle']['agreement']:.3f}. "
        f"The base's own {meta['own']} training records alone (the oracle's head trained on "
        f"them, as the base learned them, no judgement): {ci(result['own_alone'], 'auroc')}, "
        f"gap closed {ci(result['own_alone'], 'gap_closed', 2)}.", "",
        "| arm | judgements | macro AUROC | Δ vs base | gap closed | Brier | ECE | agreement "
        "| rounds kept | reward pair acc. | wall s / seed |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["seed"] != "mean":
            continue
        acc = r.get("reward_pair_accuracy")
        lines.append(
            f"| {r['arm']} | {r['judgements']} | {ci(r, 'auroc')} | {ci(r, 'delta_auroc')} | "
            f"{ci(r, 'gap_closed', 2)} | {r['brier']:.4f} | {r['ece']:.4f} | "
            f"{ci(r, 'agreement')} | {r['kept']} | "
            f"{'' if acc is None else f'{acc:.2f}'} | {r['wall_s']:.0f} |")
    replay = (f" The row '{REPLAY}' trains it on the base's own {meta['own']} training records "
              "and those n together: their labels with it, as the base learned them. The row "
              f"'{UNCERTAIN}' does the same with the n pool ECGs the base is most uncertain "
              "about (mean binary entropy, as `ask.rule=uncertainty` asks in round 1) instead of "
              "random ones: whether asking by uncertainty pays even when every answer is right.")
    lines += ["", f"The row '{REFERENCE}' trains the same head as the oracle on n pool ECGs drawn "
              "at random with their true labels (no noise, no guard): what n judgements could "
              f"give at best through supervision alone.{replay}",
              "", "Gap closed is the share of the oracle's AUROC gain over the base that the "
              "refined model reaches; its interval comes from the same resamples, so a wide one "
              "means the gap itself is small against the report half's noise. Rounds kept: "
              "rounds the guard accepted on the guard half (macro AUROC, Brier and ECE against "
              "the base, or against the last kept model with `guard.against=kept`; with "
              "`guard.recalibrate=true` each candidate's calibration is first refitted on the "
              "guard half), summed over seeds. The reward model's held-out pair accuracy is on "
              "judged ECGs it never trained on. Wall s / seed: how long the loop took to reach "
              "that many judgements (clocked at the end of that round), mean over seeds.", ""]
    lines += targets(rows)
    refusals = result.get("refusals", {})
    if refusals:
        lines += ["Guard refusals per arm (a round can fail on several counts):", ""]
        lines += [f"- {arm}: {why}" for arm, why in refusals.items()]
        lines.append("")
    path.write_text("\n".join(lines))


def targets(rows: list[dict], at: int = 200) -> list[str]:
    """The issue's targets at ``at`` judgements: the best arm closes at least half the gap, and
    asking by uncertainty beats asking at random for the same learner."""
    means = {r["arm"]: r for r in rows
             if r["seed"] == "mean" and r["judgements"] == at and r["arm"] not in REFERENCES}
    if not means:
        return [f"Targets at {at} judgements: not measured.", ""]
    best = max(means.values(), key=lambda r: r["gap_closed"])
    lines = [f"Targets at {at} judgements: best arm {best['arm']} closes "
             f"{best['gap_closed']:.2f} [{best['gap_closed_lower']:.2f}, "
             f"{best['gap_closed_upper']:.2f}] of the gap (target >= 0.5: "
             f"{'PASS' if best['gap_closed'] >= 0.5 else 'FAIL'})."]
    for arm, r in means.items():
        other = means.get(arm.replace("/uncertainty", "/random"))
        if arm.endswith("/uncertainty") and other is not None:
            ahead = r["gap_closed"] > other["gap_closed"]
            lines.append(f"{arm} vs {other['arm']}: gap closed {r['gap_closed']:.2f} vs "
                         f"{other['gap_closed']:.2f}: uncertainty asking "
                         f"{'ahead' if ahead else 'NOT ahead'} of random.")
    return [" ".join(lines), ""]


def plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["seed"] == "mean"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for arm in dict.fromkeys(r["arm"] for r in rows):
        rs = [r for r in rows if r["arm"] == arm]
        x = [r["judgements"] for r in rs]
        for ax, key in zip(axes, ("gap_closed", "agreement"), strict=True):
            style = ({"color": {REFERENCE: "k", REPLAY: "0.5"}.get(arm, "0.75"), "ls": "-.",
                      "lw": 1.0}
                     if arm in REFERENCES else
                     {"ls": "--" if arm.endswith("/random") else "-"})
            line, = ax.plot(x, [r[key] for r in rs], marker="o", ms=3, label=arm, **style)
            ax.fill_between(x, [r[f"{key}_lower"] for r in rs], [r[f"{key}_upper"] for r in rs],
                            alpha=0.1, color=line.get_color())
    axes[0].axhline(1.0, color="k", lw=0.8, ls=":", label="oracle")
    axes[0].axhline(0.5, color="grey", lw=0.8, ls=":")
    axes[0].axhline(0.0, color="k", lw=0.8)
    axes[1].axhline(result["oracle"]["agreement"], color="k", lw=0.8, ls=":", label="oracle")
    axes[1].axhline(result["base"]["agreement"], color="k", lw=0.8, label="base")
    for ax, title in zip(axes, ("macro AUROC gap closed, (refined - base) / (oracle - base)",
                                "agreement with the cardiologist"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("judgements (verdicts)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"PTB-XL superdiagnostic, scenario {result['meta']['scenario']}: report half "
                 f"of fold 9, mean of {result['meta']['seeds']} seeds, 90% CI", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ecgrisk.bundle import Bundle
    from ecgrisk.data.datamodule import build_datamodule
    from ecgrisk.hardware import describe
    from ecgrisk.provenance import command_line
    from ecgrisk.refine.app import data_for_bundle
    from ecgrisk.refine.pools import prepare_sets

    t0 = time.perf_counter()
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.base is None:
        args.base = str(fine_tune_base(args, work))
    bundle = Bundle.load(args.base)
    queries = math.gcd(*args.judgements)
    rounds = max(args.judgements) // queries
    cfg = refine_cfg(args, 0, [], queries, rounds)
    dm = build_datamodule(data_for_bundle(cfg.data, bundle), 0, scaler=bundle.scaler,
                          progress=False)
    dm.setup()
    t_embed = time.perf_counter()
    sets = prepare_sets(bundle, dm, cfg.pool, seed=0, batch_size=cfg.data.batch_size,
                        cache_dir=cfg.data.cache_dir, own=True)
    embed_s = time.perf_counter() - t_embed
    classes, y = bundle.classes, sets.report.labels
    print(f"pool {len(sets.pool)}, guard {len(sets.guard)}, report {len(sets.report)} "
          f"({sets.report_split}); embedded in {embed_s:.0f} s", flush=True)
    from ecgrisk.refine.policy import BernoulliPolicy

    base_p = BernoulliPolicy(bundle.model, bundle.temperature, bundle.bias,
                             bundle.aggregation).probs(sets.report)
    t_or = time.perf_counter()
    oracle_p, oracle_info = oracle(bundle, sets, classes)
    oracle_s = time.perf_counter() - t_or
    ids = np.random.default_rng(0).integers(0, len(y), (args.bootstrap, len(y)))
    base_row = summarise(y, [base_p], base_p, oracle_p, ids)
    oracle_row = {**summarise(y, [oracle_p], base_p, oracle_p, ids), **oracle_info}
    print(f"base AUROC {base_row['auroc']:.4f}, oracle {oracle_row['auroc']:.4f} "
          f"(step {oracle_info['step']}, {oracle_s:.0f} s)", flush=True)
    rows, refusals = reference_rows(bundle, sets, classes, args.judgements, args.seeds, y, base_p,
                                    oracle_p, ids), {}
    alone = own_alone(bundle, sets, classes, args.seeds, y, base_p, oracle_p, ids)
    for name in args.arms:
        runs = [run_arm(name, s, args, bundle, sets, queries, rounds, work / args.scenario)
                for s in range(args.seeds)]
        reasons = [r for run in runs for r in run["reasons"].values() if r]
        if reasons:
            kinds = {k: sum(k in r for r in reasons) for k in ("macro AUROC", "Brier", "ECE")}
            refusals[name] = (f"{len(reasons)} of {rounds * len(runs)} rounds refused ("
                              + ", ".join(f"{k} in {n}" for k, n in kinds.items() if n)
                              + f"); e.g. {reasons[0]}")
        for n in sorted(args.judgements):
            k = n // queries
            got = [run["probs"].get(k) for run in runs]
            if any(g is None for g in got):  # the pool ran dry before n judgements
                continue
            accs = [run["pair_accuracy"][k] for run in runs if run["pair_accuracy"][k] is not None]
            common = {"arm": name, "judgements": n,
                      "guard_auroc": float(np.mean([run["guard"][k] for run in runs])),
                      "kept": sum(sum(v for j, v in run["kept"].items() if j <= k) for run in runs),
                      "reward_pair_accuracy": float(np.nanmean(accs)) if accs else None,
                      "wall_s": float(np.mean([run["elapsed"][k] for run in runs]))}
            rows.append({**common, "seed": "mean", **summarise(y, got, base_p, oracle_p, ids)})
            for s, (run, g) in enumerate(zip(runs, got, strict=True)):
                rows.append({**common, "seed": s, "guard_auroc": float(run["guard"][k]),
                             "kept": sum(v for j, v in run["kept"].items() if j <= k),
                             "wall_s": float(run["elapsed"][k]), **_metrics(y, g)})
            r = rows[-len(got) - 1]
            print(f"{args.scenario} {name:26s} {n:5d}: guard AUROC {r['guard_auroc']:.4f}; "
                  f"report AUROC {r['auroc']:.4f} gap closed "
                  f"{r['gap_closed']:+.2f} [{r['gap_closed_lower']:+.2f}, "
                  f"{r['gap_closed_upper']:+.2f}] agreement {r['agreement']:.3f}", flush=True)
    meta = {"scenario": args.scenario, "base": args.base, "model": bundle.model.encoder.spec.get(
                "name"), "base_fraction": args.base_fraction,
            "house_likelihood": args.house_likelihood, "pool": len(sets.pool),
            "own": len(sets.own),
            "guard": len(sets.guard), "report": len(sets.report), "queries": queries,
            "rounds": rounds, "noise": args.noise, "seeds": args.seeds,
            "bootstrap": args.bootstrap, "overrides": args.overrides, "embed_s": embed_s,
            "oracle_s": oracle_s, "wall_s": time.perf_counter() - t0,
            "machine": describe(),
            "command": command_line(__file__, argv)}
    result = {"meta": meta, "base": base_row, "oracle": oracle_row, "own_alone": alone,
              "rows": rows, "refusals": refusals}
    clean = json.loads(json.dumps(result, default=float).replace("NaN", "null"))
    stem = out / f"preference_{args.scenario}"
    Path(f"{stem}.json").write_text(json.dumps(clean, indent=1))
    write_markdown(Path(f"{stem}.md"), result)
    plot(Path(f"{stem}.png"), result)
    print(f"wrote {stem}.json, .md, .png")


if __name__ == "__main__":
    main()
