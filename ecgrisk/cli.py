"""``ecgrisk``: the plain command line for work that is not training.

    ecgrisk download ptbxl --root data/ptb-xl --records 1000 --fs 100
    ecgrisk inspect data/ptb-xl/records100/00000/00001_lr [--plot ecg.png]
    ecgrisk score data/incoming/ --model runs/finetune/.../model.pt --out scores.csv
    ecgrisk convert exports/ --to wfdb --out data/clinic
    ecgrisk export model.pt --onnx model.onnx
    ecgrisk feedback import|export|stats ...
    ecgrisk review --db feedback.db --model model.pt --data DIR

Training stages are Hydra apps of their own (``ecgrisk-pretrain``, ``ecgrisk-finetune``, ...).

Every command stops cleanly on SIGINT/SIGTERM (exit status 130/143, one line on how to resume;
see :mod:`ecgrisk.signals`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ecgrisk.signals import set_resume_hint, stop_on_signals

# what an interrupted command keeps, and how to go on (``score`` says its own)
_RESUME_HINTS = {
    "download": "files already verified are kept; rerun the same command to fetch the rest",
    "convert": "each record written so far is complete (the manifest comes last); rerun the "
               "same command to convert them all",
    "feedback": "an import stores each file whole or not at all (source import:<file name>); "
                "rerun it with the files not stored yet",
    "review": "every acknowledged judgement is in the store; start the app again to go on",
}


def _download(args) -> int:
    from ecgrisk.data.download import PTBXL_URL, DownloadError, download_ptbxl

    if args.dataset != "ptbxl":
        print(f"unknown dataset {args.dataset!r}; available: ptbxl", file=sys.stderr)
        return 2
    try:
        root = download_ptbxl(args.root, records=args.records, fs=args.fs,
                              base_url=args.base_url or PTBXL_URL, progress=not args.quiet)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"PTB-XL files are in {root}")
    return 0


def _inspect(args) -> int:
    import numpy as np

    from ecgrisk.bundle_files import BundleError
    from ecgrisk.io import ECGReadError, read_ecg
    from ecgrisk.io.inputs import names_something
    from ecgrisk.scoring.quality import quality_flags

    for path in args.files:
        if not names_something(Path(path)):  # a typo: said before any file is read, as by score
            print(f"error: {path!r}: no such file or record", file=sys.stderr)
            return 2
    try:
        explainer = _explainer(args.model) if args.explain else None
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    status = 0
    for path in args.files:
        try:
            ecg = read_ecg(path, fs=args.fs)
        except ECGReadError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
            continue
        sig = ecg.signal
        summary = {
            "path": ecg.path, "record_id": ecg.record_id, "fs": ecg.fs, "samples": sig.shape[1],
            "duration_s": round(ecg.duration_s, 3),
            "leads_present": [lead for lead, m in zip(ecg.leads, ecg.lead_mask, strict=True) if m],
            "amplitude_mV": {"min": float(sig.min()), "max": float(sig.max()),
                             "std_per_lead": [round(float(s), 4) for s in sig.std(axis=1)]},
            # the same checks scoring flags records with
            "quality": {k: v for k, v in quality_flags(sig, ecg.fs, ecg.lead_mask, ecg.fs,
                                                       ecg.meta.get("derived_leads", ()),
                                                       bool(ecg.meta.get("units_assumed_mv"))).items()
                        if k in ("quality", "flat_leads", "saturated_leads", "noisy_leads",
                                 "derived_leads")},
            "meta": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ecg.meta.items()},
        }
        print(json.dumps(summary, indent=1, default=str))
        if explainer:
            explainer(ecg, args)
        if args.plot:
            from ecgrisk.plotting import plot_12lead

            out = Path(args.plot)
            if len(args.files) > 1:
                out = out.with_name(f"{ecg.record_id}_{out.name}")
            out.parent.mkdir(parents=True, exist_ok=True)
            plot_12lead(sig, ecg.fs, title=f"{ecg.record_id}  {ecg.fs:g} Hz", path=out, lead_mask=ecg.lead_mask)
            print(f"plot written to {out}")
    return status


def _convert(args) -> int:
    from ecgrisk.convert import convert_records
    from ecgrisk.io.inputs import InputError, collect_records

    try:
        records = collect_records(args.inputs)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = convert_records(records, args.out, args.to, fs=args.fs, progress=not args.quiet)
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"failed: {r['source']}: {r['error']}", file=sys.stderr)
    print(f"{len(rows) - len(failed)} of {len(rows)} records written to {args.out} "
          f"(manifest: {Path(args.out) / 'manifest.csv'})")
    # as ecgrisk score: a batch with some broken files is done, and the manifest names them
    return 1 if len(failed) == len(rows) else 0


def _explainer(model: str):
    """A function writing, for one ECG, where the evidence for ``model``'s top statements lies
    (a PNG); the bundle is loaded once for all the files."""
    from ecgrisk.bundle import Bundle
    from ecgrisk.plotting import plot_attribution
    from ecgrisk.scoring.attribution import explain
    from ecgrisk.scoring.predict import Predictor

    bundle = Bundle.load(model)
    predictor = Predictor(bundle)

    def write(ecg, args) -> None:
        explanations = explain(predictor, ecg.signal, ecg.fs, top=args.top)
        out = Path(args.explain)
        if len(args.files) > 1:
            out = out.with_name(f"{ecg.record_id}_{out.name}")
        out.parent.mkdir(parents=True, exist_ok=True)
        plot_attribution(explanations, path=out, title=f"{ecg.record_id}: {bundle.name} "
                         f"{bundle.version}, integrated gradients")
        for e in explanations:
            print(f"{e.statement}: p={e.probability:.3f}, evidence in {e.start_s:.2f}-"
                  f"{e.start_s + e.window.shape[1] / e.fs:.2f} s")
        print(f"attribution written to {out}")

    return write


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ecgrisk", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("download", help="download a PhysioNet dataset (resumable, checksummed)")
    d.add_argument("dataset", choices=["ptbxl"], help="ptbxl: PTB-XL (PhysioNet)")
    d.add_argument("--root", required=True, help="destination folder")
    d.add_argument("--records", type=int, default=None, help="only the first N records (default: all)")
    d.add_argument("--fs", type=int, choices=[100, 500], default=100)
    d.add_argument("--base-url", default=None, help="a mirror in PhysioNet's layout")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_download)

    i = sub.add_parser("inspect", help="read ECG files and print what ecgrisk sees",
                       epilog="exit status: 0 when every file was read, 1 when one could not be "
                              "(the error names it), 2 for a path that names no file or record "
                              "or an unusable --model.")
    i.add_argument("files", nargs="+", help="ECG files or WFDB record names, any format score reads")
    i.add_argument("--fs", type=float, default=None, help="resample to / rate of a raw array")
    i.add_argument("--plot", default=None, help="write a 12-lead PNG")
    i.add_argument("--explain", default=None, metavar="PNG",
                   help="write where the evidence for the model's top statements lies (needs captum)")
    i.add_argument("--model", default="ptbxl-superdiagnostic", help="bundle for --explain")
    i.add_argument("--top", type=int, default=3, help="statements --explain shows")
    i.set_defaults(func=_inspect)

    c = sub.add_parser("convert", help="convert ECG files (DICOM, XML, SCP, EDF, ...) to WFDB or npz",
                       epilog="exit status: 0 when at least one record was written (manifest.csv "
                              "names each failure with its reason), 1 when none was, 2 for invalid "
                              "arguments, 130/143 when stopped by SIGINT/SIGTERM.")
    c.add_argument("inputs", nargs="+", help="files, folders, globs or manifest .csv files")
    c.add_argument("--to", choices=["wfdb", "npz"], default="wfdb",
                   help="WFDB records (.hea + 16-bit .dat) or .npz arrays (default wfdb)")
    c.add_argument("--out", required=True, help="output folder (gets manifest.csv)")
    c.add_argument("--fs", type=float, default=None, help="resample to this rate (default: keep)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_convert)

    from ecgrisk.feedback.cli import add_parsers as add_feedback_parsers
    from ecgrisk.review.cli import add_parsers as add_review_parsers
    from ecgrisk.scoring.cli import add_parsers as add_scoring_parsers

    add_scoring_parsers(sub)
    add_feedback_parsers(sub)
    add_review_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    with stop_on_signals(command="ecgrisk"):
        args = build_parser().parse_args(argv)
        set_resume_hint(_RESUME_HINTS.get(args.command, "rerun the same command"),
                        command=f"ecgrisk {args.command}")
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
        return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
