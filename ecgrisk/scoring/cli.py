"""``ecgrisk score``, ``evaluate``, ``recalibrate``, ``ensemble`` and ``export``, registered on the ``ecgrisk``
command line by :func:`add_parsers` (``score``'s examples and exit status: ``_SCORE_EPILOG``).

    ecgrisk evaluate scores.csv --labels labels.csv --by sex --by age:40,60,80 --out eval/
    ecgrisk recalibrate scores.csv --labels labels.csv --model ptbxl-superdiagnostic --out local.pt
    ecgrisk ensemble runs/a/model.pt runs/b/model.pt --out ensemble.pt
    ecgrisk export model.pt --onnx model.onnx
"""

from __future__ import annotations

import argparse
import sys

from ecgrisk.shipped import DEFAULT_BUNDLE
from ecgrisk.signals import stop_on_signals

__all__ = ["add_parsers"]

_SCORE_EPILOG = """\
examples:
  ecgrisk score data/ecgs/                  # shipped ptbxl-superdiagnostic -> scores.csv
  ecgrisk score data/ecgs/ more/*.hea manifest.csv --model ptbxl-all --out scores.csv
  ecgrisk score data/ --model model.pt --out scores.parquet --resume --report report/

exit status: 0 when at least one record scored (or all were already in the output with
--resume), 1 when nothing could be scored, 2 for invalid arguments or an unusable model bundle,
130/143 when stopped by SIGINT/SIGTERM (rerun with --resume to continue; reader processes end
with the run, even when it is killed with SIGKILL)."""


def _bands(text: str) -> tuple[float, float]:
    try:
        b = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bands {text!r}: expected two numbers such as 0.2,0.5") from None
    if len(b) != 2 or not 0.0 <= b[0] <= b[1] <= 1.0:
        raise argparse.ArgumentTypeError(f"--bands {text!r}: need low,high with 0 <= low <= high <= 1")
    return b


def _score(args) -> int:
    from rich.console import Console

    from ecgrisk.scoring.report import print_summary, write_report

    console = Console(stderr=True)
    def hint() -> str:
        if args.devices:
            return "rerun the same command (a scale-out run starts over; the output is replaced whole)"
        from pathlib import Path

        from ecgrisk.scoring.table import stale_partials

        # --out appears only when a run completes: say where the rows are meanwhile
        kept = stale_partials(Path(args.out))  # this run's is the one written last
        if not kept:
            return "no row was written yet; rerun the same command"
        where = max(kept, key=lambda f: f.stat().st_mtime)
        again = "" if args.resume or "--resume" in sys.argv else " with --resume"
        return f"the rows scored so far are kept in {where}; rerun the same command{again} to continue"

    with stop_on_signals(hint, command="ecgrisk score"):
        summary = _run_score(args, console)
    if isinstance(summary, int):
        return summary
    print_summary(summary, args.out, console)
    if args.report:
        from ecgrisk.bundle import Bundle

        bundle = Bundle.load(args.model)
        files = write_report(summary, args.report, args.bands or bundle.risk_bands, bundle,
                             progress=not args.quiet)
        console.print(f"report: {files[-1]} shows its {len(files) - 1} plots")
    if summary.scored == 0 and summary.resumed == 0:
        console.print("[red]no record could be scored[/red]")
        return 1
    return 0


def _run_score(args, console):
    """The summary, or the exit status: 2 after an error it printed, 0 on a DDP rank other than
    0 (rank 0 merges and reports)."""
    from ecgrisk.bundle_files import BundleError, resolve  # no torch yet: see score_files
    from ecgrisk.io.inputs import InputError
    from ecgrisk.scoring.job import score_files
    from ecgrisk.scoring.table import OutputError

    try:
        args.model = str(resolve(args.model))  # a shipped name -> its file (digests need a file)
        if args.devices:
            from ecgrisk.scoring.distributed import score_distributed

            if args.resume or args.backend != "torch":
                # said, not silently dropped: ranks write shards merged at the end, with torch
                raise ValueError("--devices scores every record again with the torch backend: "
                                 "it takes neither --resume nor --backend onnx")
            summary = score_distributed(args.inputs, args.model, args.out, devices=args.devices,
                                        num_nodes=args.num_nodes, accelerator=args.accelerator,
                                        strategy=args.strategy, workers=args.workers,
                                        batch_size=args.batch_size, bands=args.bands,
                                        missing_leads=args.missing_leads, npy_fs=args.npy_fs,
                                        top_n=args.report_top)
            return 0 if summary is None else summary
        return score_files(args.inputs, args.model, args.out, workers=args.workers,
                           batch_size=args.batch_size, resume=args.resume, bands=args.bands,
                           backend=args.backend, onnx_path=args.onnx,
                           missing_leads=args.missing_leads, npy_fs=args.npy_fs,
                           progress=not args.quiet, top_n=args.report_top)
    except (BundleError, InputError, OutputError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    except Exception as e:  # e.g. OnnxBackendError: the chosen backend cannot run
        console.print(f"[red]error:[/red] {type(e).__name__}: {e}")
        return 2


def _export(args) -> int:
    from ecgrisk.bundle import Bundle
    from ecgrisk.bundle_files import BundleError, resolve
    from ecgrisk.scoring.onnx_backend import OnnxBackendError, export_onnx

    try:
        args.model = str(resolve(args.model))
        bundle = Bundle.load(args.model)
        path = export_onnx(bundle, args.onnx, bundle_path=args.model, opset=args.opset)
    except (BundleError, OnnxBackendError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"ONNX model written to {path}")
    return 0


def _evaluate(args) -> int:
    from ecgrisk.scoring.evaluate import (
        EvaluationError,
        evaluate_scores,
        to_markdown,
        write_evaluation,
    )

    try:
        result = evaluate_scores(args.scores, args.labels, task=args.task, by=args.by,
                                 only=args.only, bootstrap=args.bootstrap, min_group=args.min_group)
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(to_markdown(result), end="")
    if args.out:
        print("\nwritten: " + ", ".join(str(p) for p in write_evaluation(result, args.out)))
    return 0


def _recalibrate(args) -> int:
    from pathlib import Path

    from ecgrisk.bundle import Bundle
    from ecgrisk.bundle_files import BundleError, resolve
    from ecgrisk.scoring.evaluate import EvaluationError, join_scores
    from ecgrisk.scoring.recalibrate import recalibrate_bundle

    try:
        path = resolve(args.model)
        if Path(args.out).resolve() == Path(path).resolve():
            raise EvaluationError(f"--out {args.out} is the bundle being recalibrated; "
                                  f"write the recalibrated one beside it")
        bundle = Bundle.load(path)
        joined = join_scores(args.scores, args.labels, args.task, args.only)
        new, summary = recalibrate_bundle(bundle, path, joined, args.by)
    except (BundleError, EvaluationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    new.save(args.out)
    print(f"refitted on {summary['ecgs']} ECGs of {summary['labels']} ({joined.failed} failed to "
          f"score, {joined.unlabelled} without labels, {joined.left_out} outside --only: left out)")
    print("statement  positives  T factor  bias shift")
    for c, n, t, b in zip(new.classes, summary["positives"], summary["temperature_factor"],
                          summary["bias_shift"], strict=True):
        rare = "  (few of one label: little to fit)" if min(n, summary["ecgs"] - n) < 10 else ""
        print(f"{c:10s} {n:9d} {t:9.3f} {b:+11.3f}{rare}")
    print(f"on these ECGs (in-sample): Brier {summary['brier_before']:.4f} -> "
          f"{summary['brier_after']:.4f}, ECE {summary['ece_before']:.4f} -> {summary['ece_after']:.4f}")
    h = summary["held_out"]
    print(f"held out (fitted on half of these ECGs, measured on the other half, {h['splits']} draws): "
          f"Brier {h['brier_bundle']:.4f} with the bundle's calibration; "
          + "; ".join(f"{form} refitted {r['brier']:.4f}, better in {r['better_in']} of {h['splits']}"
                      for form, r in h["forms"].items())
          + f". Fitted: {summary['form']}")
    if h["forms"][summary["form"]]["better_in"] <= h["splits"] // 2:
        print("warning: on ECGs it was not fitted on, the refit did not beat the bundle's own "
              "calibration in most draws; keep the bundle's unless you have more labelled ECGs",
              file=sys.stderr)
    r = summary["review"]
    own = r.get("bundle")
    if own:
        print(f"review band: the bundle's ({own['low']:.3f}-{1 - own['low']:.3f}) on these ECGs flags "
              f"{own['review_rate']:.1%} and leaves {own['unreviewed_misread']:.1%} unflagged and "
              f"misread (its bound: {own['alpha']:.0%})")
    held = r["held_out"]
    print(f"review band refitted: {r['low']:.3f}-{1 - r['low']:.3f}"
          + (f" (its bound held in each of {len(r['groups'])} groups too)" if r["groups"] else "")
          + f"; on held-out halves it flags {held['review_rate']:.1%} and leaves "
            f"{held['unreviewed_misread']:.1%} unflagged and misread"
          + (f", {held['worst_group'][1]:.1%} in the worst group ({held['worst_group'][0]})"
             if "worst_group" in held else ""))
    if own and own.get("by") and not args.by:
        print(f"note: the bundle's band was fitted within groups by {', '.join(own['by'])} too, "
              f"this one over all of these ECGs; to keep a bound in each group, pass "
              + " ".join(f"--by {b}" for b in own["by"]) + " (columns of the labels or the scores)")
    print(f"recalibrated bundle written to {args.out}")
    return 0


def _ensemble(args) -> int:
    from ecgrisk.bundle_files import BundleError
    from ecgrisk.scoring.ensemble import ensemble_bundles

    try:
        bundle = ensemble_bundles(args.bundles, name=args.name)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bundle.save(args.out)
    print(f"ensemble of {len(args.bundles)} bundles written to {args.out} ({bundle.name}).\n"
          f"It has no review band and its calibration is the identity on the mean of the members' "
          f"calibrated logits; refit both on the validation fold the members were calibrated on:\n"
          f"  ecgrisk score VALIDATION_ECGS --model {args.out} --out val.csv\n"
          f"  ecgrisk recalibrate val.csv --labels LABELS --model {args.out} --out FINAL.pt "
          f"[--by sex --by age:40,60,80 ...]")
    return 0


def _labelled_scores(p, only_verb: str) -> None:
    """The arguments ``evaluate`` and ``recalibrate`` share: a scores table and its labels."""
    p.add_argument("scores", help="the scores table (.csv or .parquet) `ecgrisk score` wrote")
    p.add_argument("--labels", required=True,
                   help="a CSV with a record column (as in the scores, or the file name) and a 0/1 "
                        "column per statement, other columns to group by; or a PTB-XL root")
    p.add_argument("--task", default=None,
                   help="with a PTB-XL root: the task whose labels to use (superdiagnostic, all, ...)")
    p.add_argument("--only", action="append", default=[], metavar="COLUMN=VALUES",
                   help=f"{only_verb} the ECGs whose labels or scores column holds one of the "
                        f"values, e.g. fold=9 (repeatable)")


def add_parsers(subparsers) -> None:
    """Register ``score``, ``evaluate``, ``recalibrate``, ``ensemble`` and ``export``
    on the ``ecgrisk`` CLI's sub-parsers."""
    s = subparsers.add_parser(
        "score", help="score ECG files with a model bundle into a table",
        description="Score ECG files with a model bundle: one row per ECG of calibrated\n"
                    "per-statement probabilities, a risk band, a review flag and quality columns.\n"
                    "A file that cannot be scored is a row with a named error; the run goes on.",
        epilog=_SCORE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="ECG files, folders (recursive), globs or manifest .csv with a path column")
    s.add_argument("--model", default=DEFAULT_BUNDLE,
                   help=f"model bundle: a model.pt or a shipped bundle's name, e.g. ptbxl-all "
                        f"(default {DEFAULT_BUNDLE}; a name it does not know lists them)")
    s.add_argument("--out", default="scores.csv", help="output table: .csv or .parquet (default scores.csv)")
    s.add_argument("--workers", type=int, default=2, help="reader processes (0: none)")
    s.add_argument("--batch-size", type=int, default=512, help="windows per model call")
    s.add_argument("--resume", action="store_true", help="keep rows already in --out")
    s.add_argument("--bands", type=_bands, default=None,
                   help="risk band thresholds low,high (default: the bundle's)")
    s.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="torch (default; bf16 where the CPU has it) or an exported ONNX network")
    s.add_argument("--onnx", default=None, help="ONNX file from `ecgrisk export` (backend onnx)")
    s.add_argument("--missing-leads", choices=["pad", "refuse"], default="pad",
                   help="pad: score records with absent leads (flagged); refuse: fail them")
    s.add_argument("--npy-fs", type=float, default=None, help="sampling rate of .npy (and .npz) files that carry none")
    s.add_argument("--report", default=None, metavar="DIR",
                   help="write a risk histogram and 12-lead plots of the highest-risk ECGs")
    s.add_argument("--report-top", type=int, default=5, metavar="N",
                   help="highest-risk ECGs --report plots (default 5)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    g = s.add_argument_group("scale-out (Lightning predict, one shard per rank, then a merge)")
    g.add_argument("--devices", type=int, default=0,
                   help="run through Lightning on N devices (torch backend, no --resume)")
    g.add_argument("--num-nodes", type=int, default=1)
    g.add_argument("--accelerator", default="auto")
    g.add_argument("--strategy", default="ddp")
    s.set_defaults(func=_score)

    v = subparsers.add_parser(
        "evaluate", help="measure a scores table against known labels, overall and by subgroup",
        description="Discrimination (macro AUROC with a bootstrap interval) and calibration (Brier, "
                    "ECE, prevalence against mean predicted probability) of the table `ecgrisk "
                    "score` wrote, for every ECG and for each subgroup named with --by.")
    _labelled_scores(v, "keep")
    v.add_argument("--by", action="append", default=[], metavar="COLUMN[:EDGES]",
                   help="subgroups by a labels or scores column, e.g. sex or needs_review, or "
                        "bands: age:40,60,80 (repeatable)")
    v.add_argument("--bootstrap", type=int, default=200, help="resamples for the intervals (0: none)")
    v.add_argument("--min-group", type=int, default=30, help="smallest group that is measured")
    v.add_argument("--out", default=None, metavar="DIR",
                   help="write evaluation.json, evaluation.md and reliability diagrams here")
    v.set_defaults(func=_evaluate)

    r = subparsers.add_parser(
        "recalibrate", help="refit a bundle's calibration on your labelled ECGs",
        description="Refit a bundle's per-statement calibration (a shift of each logit, or a "
                    "temperature and a shift, whichever does better on held-out halves) and its "
                    "review band on local labelled ECGs it scored, and write it as a new bundle. "
                    "Ranking is unchanged; the probabilities move.")
    _labelled_scores(r, "fit on")
    r.add_argument("--model", default=DEFAULT_BUNDLE, help="the bundle that wrote the scores "
                   f"(model.pt or a shipped name; default {DEFAULT_BUNDLE})")
    r.add_argument("--out", required=True, help="the recalibrated bundle to write (.pt)")
    r.add_argument("--by", action="append", default=[], metavar="COLUMN[:EDGES]",
                   help="fit the review band so its bound holds in each group of this labels or "
                        "scores column too (groups of 150 ECGs or more), e.g. sex or age:40,60,80 "
                        "(repeatable; more ECGs flagged)")
    r.set_defaults(func=_recalibrate)

    n = subparsers.add_parser(
        "ensemble", help="combine fine-tuned bundles into one that scores as their ensemble",
        description="Combine fine-tuned bundles (same statements, preprocessing, windows, "
                    "aggregation and precision) into one bundle whose model is the mean of the "
                    "members' calibrated logits. Then refit its calibration and review band with "
                    "`ecgrisk recalibrate` on the validation fold.")
    n.add_argument("bundles", nargs="+", metavar="BUNDLE", help="model.pt files or shipped names")
    n.add_argument("--out", required=True, help="the ensemble bundle to write (.pt)")
    n.add_argument("--name", default=None, help="its name (default: the members' joined by +)")
    n.set_defaults(func=_ensemble)

    e = subparsers.add_parser("export", help="export a model bundle's network to ONNX")
    e.add_argument("model", help="model bundle (model.pt or a shipped name)")
    e.add_argument("--onnx", required=True, help="destination .onnx file")
    e.add_argument("--opset", type=int, default=17)
    e.set_defaults(func=_export)
