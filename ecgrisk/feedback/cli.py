"""``ecgrisk feedback import|export|stats``: move judgements in and out of a feedback store.

    ecgrisk feedback import batch1.jsonl batch2.csv --store feedback.db [--model model.pt]
    ecgrisk feedback export all.jsonl --store feedback.db
    ecgrisk feedback export dr-a.csv --store feedback.db --annotator dr-a --model-version 7
    ecgrisk feedback stats --store feedback.db [--model model.pt | --classes NORM,MI,STTC]

``--store`` takes a path (SQLite) or an SQLAlchemy URL. Each command prints one JSON object on
stdout; errors go to stderr, naming the file. Exit status: 1 when a file could not be imported
or written (the other files of an import still go in), 2 for an argument that cannot be used (a
store that does not exist, an unknown export format, an unusable ``--model``), as ``ecgrisk
score``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parsers(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``feedback`` (with ``import``, ``export``, ``stats``) on a CLI's subparsers.

    Each leaf sets ``func``: ``args.func(args)`` runs it and returns the exit status.
    """
    fb = subparsers.add_parser("feedback", help="import, export and summarise cardiologist "
                                                 "feedback (verdicts and preferences)")
    sub = fb.add_subparsers(dest="feedback_command", required=True)

    def common(p: argparse.ArgumentParser, classes: bool = True) -> None:
        p.add_argument("--store", required=True,
                       help="feedback store: a SQLite path or an SQLAlchemy URL")
        if classes:
            group = p.add_mutually_exclusive_group()
            group.add_argument("--model", default=None,
                               help="a model bundle whose statement list checks the records")
            group.add_argument("--classes", default=None,
                               help="comma-separated statement list, e.g. NORM,MI,STTC,CD,HYP")

    imp = sub.add_parser("import", help="add the records of JSONL/CSV files (each all or none)")
    imp.add_argument("files", nargs="+", help=".jsonl, .ndjson or .csv feedback files")
    common(imp)
    imp.set_defaults(func=_import)

    exp = sub.add_parser("export", help="write the records to a JSONL or CSV file (atomically)")
    exp.add_argument("out", help="output file; .jsonl/.ndjson or .csv chooses the format")
    common(exp, classes=False)
    exp.add_argument("--kind", choices=["verdict", "preference"], default=None,
                     help="only this kind of record (default: both)")
    exp.add_argument("--annotator", action="append", default=None,
                     help="only this annotator's records (repeat for several)")
    exp.add_argument("--model-version", action="append", default=None,
                     help="only records on this model version (repeat for several)")
    exp.set_defaults(func=_export)

    st = sub.add_parser("stats", help="counts, agreement between annotators, conflicts")
    common(st)
    st.set_defaults(func=_stats)
    return fb


def _error(message: str, status: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def _classes(args: argparse.Namespace) -> list[str] | None:
    if getattr(args, "model", None):
        from ecgrisk.bundle import Bundle

        return list(Bundle.load(args.model).classes)
    if getattr(args, "classes", None):
        return [c.strip() for c in args.classes.split(",") if c.strip()]
    return None


class _NoStore(FileNotFoundError):
    """--store names no store: the user's argument, not a failed read (exit 2)."""


def _open(args: argparse.Namespace, must_exist: bool) -> Any:
    from ecgrisk.feedback.store import FeedbackStore

    if must_exist and "://" not in args.store and not Path(args.store).is_file():
        raise _NoStore(f"{args.store}: no such feedback store")
    return FeedbackStore(args.store)


def _import(args: argparse.Namespace) -> int:
    from ecgrisk.bundle_files import BundleError
    from ecgrisk.feedback.store import FeedbackImportError

    try:
        classes = _classes(args)
    except BundleError as err:
        return _error(str(err), 2)
    summaries, status = [], 0
    with _open(args, must_exist=False) as store:
        for path in args.files:
            try:
                result = store.import_file(path, classes)
            except (FeedbackImportError, OSError) as err:
                # the message names the file (and line); other files still go in
                print(f"error: {err}", file=sys.stderr)
                status = 1
                continue
            summaries.append({"file": result["file"], "verdicts": result["verdicts"],
                              "preferences": result["preferences"],
                              "duplicates": len(result["duplicates"]),
                              "conflicts": len(result["conflicts"])})
        total = store.count()
    print(json.dumps({"store": args.store, "imported": summaries, "total": total}, indent=1))
    return status


def _export(args: argparse.Namespace) -> int:
    from ecgrisk.feedback.store import EXPORT_FORMATS

    suffix = Path(args.out).suffix.lower()
    if suffix not in EXPORT_FORMATS:
        return _error(f"{args.out}: unknown export format {suffix!r} (use .jsonl or .csv)", 2)
    try:
        with _open(args, must_exist=True) as store:
            n = store.export(args.out, kind=args.kind, annotator=args.annotator,
                             model_version=args.model_version)
    except _NoStore as err:
        return _error(str(err), 2)
    except OSError as err:
        return _error(str(err))
    print(json.dumps({"store": args.store, "file": args.out, "records": n}))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from ecgrisk.bundle_files import BundleError

    try:
        classes = _classes(args)
        with _open(args, must_exist=True) as store:
            stats = store.stats(classes)
    except (_NoStore, BundleError) as err:
        return _error(str(err), 2)
    except OSError as err:
        return _error(str(err))
    print(json.dumps({"store": args.store, **stats}, indent=1, default=str))
    return 0
