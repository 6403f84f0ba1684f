"""``ecgrisk-refine``: refine a fine-tuned model bundle from cardiologist feedback.

    ecgrisk-refine data=ptbxl data.root=DIR base=RUN/model.pt feedback=simulated refine=dpo \
        rounds=3 queries_per_round=32
    ecgrisk-refine data.root=DIR base=RUN/model.pt feedback=store feedback.store=fb.db refine=pg

Each round asks about ECGs of the query pool (``pool=val_half``, the default: one half of the
validation fold; ``pool=folds``: the training-fold records the base never saw; ``pool=folder
pool.root=DIR``: the clinic's own files, see :mod:`ecgrisk.refine.pools`), gets judgements
(simulated cardiologist or a feedback store), fits a reward model and refines the classifier
(DPO or IPO against the frozen base, a KL-regularised policy gradient against the reward model,
or supervised correction from the verdicts); a guard on one half of the validation fold keeps a
round only if macro AUROC, Brier and ECE hold (:mod:`ecgrisk.refine.loop`).

The report set (the test fold; for pools outside the validation fold without one, the other
half of the validation fold) is evaluated for the base and the kept final model, and after
every round with ``report_each_round=true`` (the benchmark sets it).

The run directory receives ``.hydra/``, ``feedback.db`` (every judgement the run used),
``queries/round_k.jsonl`` (what was asked), ``checkpoints/`` (the kept model after each
round), ``metrics.json`` and ``model.pt`` (a bundle with ``base`` naming the base bundle).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from ecgrisk.bundle import Bundle
from ecgrisk.config import plain_errors, run_app
from ecgrisk.conformal import ReviewBand, fit_review, with_band
from ecgrisk.data.datamodule import build_datamodule
from ecgrisk.feedback.store import FeedbackStore
from ecgrisk.groups import record_groups, usable_specs
from ecgrisk.metrics import reliability
from ecgrisk.models.classifier import ECGClassifier
from ecgrisk.plotting import plot_reliability
from ecgrisk.refine.loop import check_store_source, make_feedback, run_loop
from ecgrisk.refine.policy import BernoulliPolicy
from ecgrisk.refine.pools import check_pool_root, prepare_sets
from ecgrisk.refine.refiners import REFINERS
from ecgrisk.runs import check_positive, run_dir, write_metrics
from ecgrisk.signals import raise_if_interrupted, set_resume_hint, stop_on_signals

log = logging.getLogger(__name__)


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


def _refined_bundle(bundle: Bundle, policy: BernoulliPolicy, cfg: DictConfig, version: str,
                    extra: dict, review: ReviewBand | None = None) -> Bundle:
    """The refined model as a bundle; ``review``, when given, replaces the base's review band
    (and any per-statement sets of an older base)."""
    temperature, bias = policy.calibration()
    extra = {**bundle.extra, "refine": extra}
    if review is not None:
        extra = with_band(extra, review)
    return dataclasses.replace(bundle, model=policy.model, version=version,
                               temperature=temperature, bias=bias,
                               base=str(Path(cfg.base).resolve()),
                               config=OmegaConf.to_yaml(cfg, resolve=True), extra=extra)


def _reliability(bundle: Bundle, refined: BernoulliPolicy, sets) -> dict:
    """Reliability of the base and the refined model on the report set (else the guard half,
    which the guard also chose rounds on)."""
    split, ws = ((sets.report_split, sets.report) if sets.report is not None
                 else ("guard half", sets.guard))
    base = BernoulliPolicy(copy.deepcopy(bundle.model), bundle.temperature, bundle.bias,
                           aggregation=bundle.aggregation)
    return {f"base, {split}": reliability(ws.labels, base.probs(ws)),
            f"refined, {split}": reliability(ws.labels, refined.probs(ws))}


def refine(cfg: DictConfig) -> dict:
    """Refine ``cfg.base`` over ``cfg.rounds`` rounds of feedback; write the run; the metrics."""
    t0 = time.perf_counter()
    if not cfg.get("base"):
        raise ValueError("base=RUN/model.pt is required: the fine-tuned bundle to refine")
    if cfg.refine.method not in REFINERS:
        raise ValueError(f"refine.method must be one of {sorted(REFINERS)}, "
                         f"got {cfg.refine.method!r}")
    check_positive(cfg, "refine.lr", whole=("rounds", "queries_per_round", "refine.batch_size"))
    if cfg.pool.kind == "folder" and cfg.feedback.kind == "simulated":
        raise ValueError("pool=folder has no labels for a simulated cardiologist to judge by: "
                         "use feedback=store feedback.store=PATH|URL (judgements made in the "
                         "review app on the same folder)")
    if cfg.feedback.kind == "store":
        check_store_source(cfg.feedback.store)
    if cfg.pool.kind == "folder":
        check_pool_root(cfg.pool)
    bundle = Bundle.load(cfg.base)
    if not isinstance(bundle.model, ECGClassifier):
        # the refiners move one head on one encoder's embeddings
        raise ValueError(f"base={cfg.base} is an ensemble: refine one of its members "
                         f"({', '.join(m['path'] for m in bundle.extra.get('ensemble', []))}), "
                         f"then build the ensemble again with `ecgrisk ensemble`")
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
    # the groups the base's band was fitted within, checked before the loop runs
    base_band = bundle.extra.get("review")
    review_by = usable_specs(dm.sources[0], ReviewBand.from_dict(base_band).by if base_band else [])
    sets = prepare_sets(bundle, dm, cfg.pool, cfg.seed, cfg.data.batch_size,
                        keep_inputs=cfg.refine.train == "all", cache_dir=cfg.data.cache_dir,
                        own=cfg.refine.get("replay", 0.0) > 0, progress=cfg.progress)
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def save_round(k: int, policy: BernoulliPolicy, accepted: bool) -> None:
        _refined_bundle(bundle, policy, cfg, f"{bundle.version}+r{k}",
                        {"round": k, "accepted": accepted}).save(
            out / "checkpoints" / f"round_{k}.pt")
        raise_if_interrupted()

    store = FeedbackStore(out / "feedback.db")
    try:
        feedback = make_feedback(cfg.feedback, sets.pool, store, bundle.classes)
        result = run_loop(cfg, bundle, sets, store, feedback, REFINERS[cfg.refine.method], out,
                          on_round=save_round)
    finally:
        store.close()
    metrics = {**result.metrics, "feedback/skipped": getattr(feedback, "skipped", 0),
               "refine/wall_s": time.perf_counter() - t0, "classes": list(bundle.classes)}
    extra = {"method": cfg.refine.method, "feedback": cfg.feedback.kind,
             "pool": OmegaConf.to_container(cfg.pool, resolve=True),
             "accepted_rounds": result.accepted, "rounds_completed":
             metrics["rounds/completed"], "feedback_count": metrics["feedback/count"],
             "base_version": bundle.version}
    curves = _reliability(bundle, result.policy, sets)
    # the base's review band was fitted to the base's probabilities: refit it to the refined
    # model's, on the guard half (where its rounds were judged and any recalibration fitted)
    alpha = float((base_band or {}).get("alpha", 0.1))
    review = fit_review(sets.guard.labels, result.policy.probs(sets.guard), alpha,
                        record_groups(dm.sources[0], sets.guard.record_ids, review_by))
    plot_reliability(curves, path=out / "reliability.png",
                     title=f"{cfg.refine.method} refinement: reliability, all statements pooled")
    _refined_bundle(bundle, result.policy, cfg, f"{bundle.version}+refine.{stamp}",
                    {**extra, "reliability": curves}, review).save(out / "model.pt")
    write_metrics(out / "metrics.json", metrics)
    _print_summary(metrics, out)
    return metrics


def _print_summary(m: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    split = "report" if m["report/records"] else "val"
    where = (f"{m['report/split']}: {m['report/records']} records" if split == "report" else
             f"nothing beyond the guard half of the validation fold: {m['guard/records']} records")
    t = Table(title=f"{where}; {m['feedback/count']} judgements, "
                    f"{m['rounds/accepted']}/{m['rounds/completed']} rounds kept")
    for col in ("metric", "base", "refined"):
        t.add_column(col)
    for k in ("macro_auroc", "brier", "ece"):
        t.add_row(k, f"{m[f'base/{split}/{k}']:.4f}", f"{m[f'{split}/{k}']:.4f}")
    t.add_row("val macro_auroc (guard)", f"{m['base/val/macro_auroc']:.4f}",
              f"{m['val/macro_auroc']:.4f}")
    Console().print(t)
    Console().print(f"reward pair accuracy (held-out feedback): {m['reward/pair_accuracy']:.3f}")
    Console().print(f"run directory: {out}")


def _restart_hint(cfg: DictConfig) -> Callable[[], str]:
    """What an interrupted refinement kept and how to run it again, said when the signal comes.
    Refinement does not resume: its rounds are seeded, so a fresh run repeats the finished ones
    exactly. The store keeps every judgement of a finished round (each round's are stored in
    one transaction)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    out = Path(cfg.output_dir) if cfg.get("output_dir") else Path(hydra_cfg.runtime.output_dir)
    # a run refuses a directory whose store holds judgements already: one that was named must
    # be named anew
    named = any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra)
    new_dir = ("with another output_dir " if cfg.get("output_dir") else
               "with another hydra.run.dir " if named else "")
    again = f"rerun the same command {new_dir}to refine again (seeded: the same rounds, the same result)"

    def hint() -> str:
        if not any((out / "checkpoints").glob("round_*.pt")):
            return f"no round had finished; {again}"
        return (f"the judgements of finished rounds are in {out / 'feedback.db'} and their models "
                f"in {out / 'checkpoints'}; {again}")

    return hint


@hydra.main(version_base="1.3", config_path=None, config_name="refine")
def _hydra_main(cfg: DictConfig) -> float:
    set_resume_hint(_restart_hint(cfg))
    with plain_errors("ecgrisk-refine"):
        metrics = refine(cfg)
    return float(metrics.get("val/macro_auroc", float("nan")))


def main() -> None:
    """Console entry point (``ecgrisk-refine``); SIGINT/SIGTERM exit with 130/143."""
    with stop_on_signals(command="ecgrisk-refine"):
        run_app(_hydra_main, "refine", "ecgrisk-refine")


if __name__ == "__main__":
    main()
