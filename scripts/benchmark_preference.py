"""Benchmark refinement from (simulated) cardiologist feedback on PTB-XL superdiagnostic.

From a fine-tuned model (``--base``, or one fine-tuned here on ``--root``), ask about ECGs of
one half of the validation fold, guard on the other half, report on the test fold; K rounds of
ask -> judge -> reward -> refine per arm:

- ``dpo/uncertainty``, ``dpo/random``: DPO on the simulated cardiologist's verdicts;
- ``pg/uncertainty``, ``pg/random``: RLOO policy gradient against the reward model;
- ``upper-bound/uncertainty``: masked BCE on the verdicts of a noise-free cardiologist, i.e.
  fine-tuning the same head on the asked ECGs with their full labels.

Per round and number of judgements: test macro AUROC (90 % bootstrap CI), the paired change
against the base (CI over the same resamples), Brier (CI), ECE, and agreement with the
simulated cardiologist (fraction of statements where the thresholded reading matches what the
cardiologist holds true, on the test fold). Writes ``results/preference.{json,md,png}``.

    python scripts/benchmark_preference.py                      # small CPU defaults
    python scripts/benchmark_preference.py --base RUN/model.pt --rounds 5 --queries 100
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

ARMS = {
    "dpo/uncertainty": ["refine=dpo", "ask.rule=uncertainty"],
    "dpo/random": ["refine=dpo", "ask.rule=random"],
    "pg/uncertainty": ["refine=pg", "ask.rule=uncertainty"],
    "pg/random": ["refine=pg", "ask.rule=random"],
    "upper-bound/uncertainty": ["refine=bce", "ask.rule=uncertainty", "feedback.noise=0.0",
                                "feedback.bias={}"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from ecgrisk.paths import shared_data

    shared = shared_data()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(shared / "ptb-xl") if shared else None,
                   help="PTB-XL folder (default: the shared subset)")
    p.add_argument("--base", default=None, help="a fine-tuned model.pt (default: fine-tune one)")
    p.add_argument("--work", default="runs/benchmark_preference",
                   help="base fine-tune, cache and feedback stores go here")
    p.add_argument("--out", default="results", help="folder for preference.{json,md,png}")
    p.add_argument("--epochs", type=int, default=8, help="base fine-tune epochs")
    p.add_argument("--width", type=int, default=16, help="base xresnet1d18 base_channels")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--queries", type=int, default=12, help="ECGs asked per round")
    p.add_argument("--seeds", type=int, default=1, help="repeats with different seeds")
    p.add_argument("--noise", type=float, default=0.1, help="simulated cardiologist noise")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of arms")
    p.add_argument("overrides", nargs="*", help="extra refine config overrides, e.g. "
                                                "refine.lr=3e-4 guard.tolerance=0.01")
    args = p.parse_args(argv)
    if not args.root:
        p.error("--root is required (no shared PTB-XL subset found)")
    unknown = set(args.arms.split(",")) - set(ARMS)
    if unknown:
        p.error(f"--arms: unknown {sorted(unknown)}; choose from {list(ARMS)}")
    return args


def fine_tune_base(args: argparse.Namespace, work: Path) -> Path:
    from ecgrisk.config import compose
    from ecgrisk.finetune.app import train

    out = work / "base"
    train(compose("finetune", [
        f"data.root={args.root}", f"data.cache_dir={work / 'cache'}", f"output_dir={out}",
        "model=xresnet1d18", f"model.kwargs.base_channels={args.width}", "data.batch_size=64",
        f"trainer.max_epochs={args.epochs}", "trainer.enable_progress_bar=false",
        "bootstrap=0", "early_stopping_patience=null"]))
    return out / "model.pt"


def scores(y: np.ndarray, probs: np.ndarray, base: np.ndarray, truth: np.ndarray, n: int
           ) -> dict:
    """Test-fold metrics of one model, with CIs over shared bootstrap resamples."""
    from ecgrisk.metrics import bootstrap_ci, brier, ece, macro_auroc
    from ecgrisk.refine.policy import reading_accuracy

    def auroc(a, b):
        return macro_auroc(a, b, skip_degenerate=True)

    # one set of resamples for every row, so intervals and the paired change line up
    ids = np.random.default_rng(0).integers(0, len(y), (n, len(y)))
    ci = {"auroc": bootstrap_ci(auroc, y, probs, ids=ids),
          "brier": bootstrap_ci(brier, y, probs, ids=ids)}
    deltas = [auroc(y[i], probs[i]) - auroc(y[i], base[i]) for i in ids]
    ci["delta_auroc"] = {"point": auroc(y, probs) - auroc(y, base),
                         "lower": float(np.nanpercentile(deltas, 5)),
                         "upper": float(np.nanpercentile(deltas, 95))}
    out = {}
    for name, c in ci.items():
        out.update({name: c["point"], f"{name}_lower": c["lower"], f"{name}_upper": c["upper"]})
    out.update({"ece": ece(y, probs), "agreement": reading_accuracy(probs, truth)})
    return out


def run_arm(name: str, seed: int, args, bundle, sets, work: Path) -> list[dict]:
    from ecgrisk.config import compose
    from ecgrisk.feedback.simulated import SimulatedCardiologist
    from ecgrisk.feedback.store import FeedbackStore
    from ecgrisk.refine.loop import make_feedback, run_loop
    from ecgrisk.refine.refiners import REFINERS

    cfg = compose("refine", [f"base={args.base}", f"seed={seed}", f"feedback.seed={seed}",
                             f"feedback.noise={args.noise}", f"rounds={args.rounds}",
                             f"queries_per_round={args.queries}", "bootstrap=0",
                             "evaluate_test_each_round=true", *ARMS[name], *args.overrides])
    folder = work / "arms" / name.replace("/", "_") / f"seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    # the cardiologist's view of the test fold (same bias coins) for the agreement column
    bias = dict(cfg.feedback.bias) if cfg.feedback.get("bias") else None
    truth = SimulatedCardiologist(sets.test.labels, bundle.classes, bias=bias,
                                  seed=cfg.feedback.seed).truth
    t0 = time.perf_counter()
    with FeedbackStore(folder / "feedback.db") as store:
        feedback = make_feedback(cfg.feedback, sets.pool, store, bundle.classes)
        res = run_loop(cfg, bundle, sets, store, feedback, REFINERS[cfg.refine.method],
                       out=folder)
    wall = time.perf_counter() - t0
    m, rows = res.metrics, []
    for k in range(0, args.rounds + 1):
        if k not in res.test_probs:
            break
        pre = f"round_{k}/"
        rows.append({"arm": name, "seed": seed, "round": k,
                     "judgements": m.get(f"{pre}feedback/count", 0),
                     "accepted": m.get(f"{pre}accepted"),
                     "guard_auroc": m.get(f"{pre}val/macro_auroc", m["base/val/macro_auroc"]),
                     "reward_pair_accuracy": m.get(f"{pre}reward/pair_accuracy"),
                     **scores(sets.test.labels, res.test_probs[k], res.test_probs[0], truth,
                              args.bootstrap)})
    rows[-1]["wall_s"] = wall
    return rows


def write_markdown(path: Path, rows: list[dict], meta: dict) -> None:
    def ci(r, k, digits=3):
        return f"{r[k]:.{digits}f} [{r[k + '_lower']:.{digits}f}, {r[k + '_upper']:.{digits}f}]"

    lines = [
        "# Refinement from simulated cardiologist feedback (PTB-XL superdiagnostic)", "",
        f"Base: `{meta['base']}`; pool: {meta['pool']} validation records (asked), guard: "
        f"{meta['guard']} validation records, test: {meta['test']} records. {meta['rounds']} "
        f"rounds x {meta['queries']} ECGs; simulated cardiologist noise {meta['noise']}; "
        f"{meta['bootstrap']} bootstrap resamples (90 % intervals, shared across rows). "
        f"Wall time {meta['wall_s']:.0f} s.", "",
        "| arm | seed | round | judgements | kept | test macro AUROC | Δ vs base | Brier | "
        "ECE | agreement | reward pair acc. |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = "base" if r["round"] == 0 else ("yes" if r["accepted"] else "no (guard)")
        acc = r["reward_pair_accuracy"]
        lines.append(
            f"| {r['arm']} | {r['seed']} | {r['round']} | {r['judgements']} | {kept} | "
            f"{ci(r, 'auroc')} | {ci(r, 'delta_auroc')} | {ci(r, 'brier')} | {r['ece']:.3f} | "
            f"{r['agreement']:.3f} | {'' if acc is None or acc != acc else f'{acc:.2f}'} |")
    lines += ["", "Notes: the test fold is evaluated for the base and after every round (the "
              "kept model: a round the guard rejects leaves the previous model in place). On a "
              "test fold this small, differences whose Δ interval contains 0 are not wins. The "
              "upper bound fine-tunes the same head on the asked ECGs with their full labels "
              "(a noise-free cardiologist's verdicts); after round 1 its asked ECGs can differ "
              "from the other arms' because each arm asks with its own current model.", ""]
    path.write_text("\n".join(lines))


def plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for arm in dict.fromkeys(r["arm"] for r in rows):
        for seed in dict.fromkeys(r["seed"] for r in rows if r["arm"] == arm):
            rs = [r for r in rows if r["arm"] == arm and r["seed"] == seed]
            x = [r["judgements"] for r in rs]
            label = arm if seed == rs[0]["seed"] and seed == rows[0]["seed"] else None
            for ax, key in zip(axes, ("auroc", "brier", "agreement"), strict=True):
                line, = ax.plot(x, [r[key] for r in rs], marker="o", ms=3, label=label)
                if key != "agreement":
                    ax.fill_between(x, [r[f"{key}_lower"] for r in rs],
                                    [r[f"{key}_upper"] for r in rs], alpha=0.12,
                                    color=line.get_color())
    for ax, title in zip(axes, ("test macro AUROC (90% CI)", "test Brier (90% CI)",
                                "agreement with the cardiologist"), strict=True):
        ax.set_xlabel("judgements")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ecgrisk.bundle import Bundle
    from ecgrisk.config import compose
    from ecgrisk.data.datamodule import build_datamodule
    from ecgrisk.refine.app import data_for_bundle
    from ecgrisk.refine.windows import prepare_sets

    t0 = time.perf_counter()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if args.base is None:
        args.base = str(fine_tune_base(args, work))
    bundle = Bundle.load(args.base)
    cfg = compose("refine", [f"data.root={args.root}", f"data.cache_dir={work / 'cache'}",
                             f"base={args.base}", *args.overrides])
    dm = build_datamodule(data_for_bundle(cfg.data, bundle), 0, scaler=bundle.scaler,
                          progress=False)
    dm.setup()
    sets = prepare_sets(bundle.model, dm, cfg.pool, seed=0, batch_size=cfg.data.batch_size,
                        keep_inputs=cfg.refine.train == "all")
    rows = []
    for seed in range(args.seeds):
        for name in args.arms.split(","):
            rows += run_arm(name, seed, args, bundle, sets, work)
            last = rows[-1]
            print(f"{name:26s} seed {seed}: {last['judgements']:4d} judgements, test AUROC "
                  f"{last['auroc']:.3f} (Δ {last['delta_auroc']:+.3f} "
                  f"[{last['delta_auroc_lower']:+.3f}, {last['delta_auroc_upper']:+.3f}])")
    meta = {"base": args.base, "pool": len(sets.pool), "guard": len(sets.guard),
            "test": len(sets.test), "rounds": args.rounds, "queries": args.queries,
            "noise": args.noise, "bootstrap": args.bootstrap, "seeds": args.seeds,
            "overrides": args.overrides, "wall_s": time.perf_counter() - t0}
    clean = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
             for r in rows]  # NaN (no held-out pairs) -> null: strict JSON
    (out / "preference.json").write_text(json.dumps({"meta": meta, "rows": clean}, indent=1))
    write_markdown(out / "preference.md", rows, meta)
    plot(out / "preference.png", rows)
    print(f"wrote {out / 'preference.json'}, {out / 'preference.md'}, {out / 'preference.png'}")


if __name__ == "__main__":
    main()
