"""A scores table against known labels: discrimination and calibration, overall and by subgroup.

``ecgrisk evaluate`` is the check a model card asks for before its probabilities are trusted on
local data: the table ``ecgrisk score`` wrote, joined to labels, gives macro AUROC with a
bootstrap interval, Brier and ECE of the calibrated probabilities, each statement's prevalence
beside its mean predicted probability, and whether the review flag's bound holds here (the
share of ECGs it leaves unflagged with a misread statement), for every ECG and each subgroup named
with ``--by``: a labels column (sex, age bands, site, device, ...) or a scores column
(``needs_review``, ``quality``, ``risk_band``: does the review flag pick the harder ECGs?).

Labels come from a CSV (a ``record`` column as the scores table names records, or as the
record's file name; one 0/1 column per statement; any other columns to group by) or from a
PTB-XL root (labels of a benchmark task, with sex, age, fold, patient, site and device to group
by).
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgrisk.conformal import misread
from ecgrisk.files import atomic_path, atomic_write_text
from ecgrisk.groups import MISSING, as_text, group_names, parse_group
from ecgrisk.io.inputs import as_record
from ecgrisk.metrics import bootstrap_ci, evaluate, macro_auroc, reliability, wilson_interval
from ecgrisk.scoring.table import read_rows, table_format

__all__ = ["EvaluationError", "Joined", "Labels", "load_scores", "labels_from_csv",
           "labels_from_ptbxl", "parse_by", "join_scores", "groups_of", "evaluate_scores",
           "write_evaluation", "to_markdown"]

_TRUE, _FALSE = {"1", "1.0", "true", "yes"}, {"0", "0.0", "false", "no"}
_NOT_GROUPS = ("record", "path", "error")  # score columns no ECG shares with another


class EvaluationError(ValueError):
    """The scores or the labels cannot be evaluated; the message names the file and why."""


@dataclass
class Labels:
    """Known labels: ``y[record]`` per statement, and ``columns[name][record]`` to group by."""

    source: str
    classes: list[str]
    y: dict[str, dict[str, int]]
    columns: dict[str, dict[str, str | float | None]] = field(default_factory=dict)


def load_scores(path: str | Path) -> tuple[list[str], list[dict]]:
    """The statements (``prob/<name>`` columns) and typed rows of a table ``ecgrisk score``
    wrote, read as scoring reads its own output back."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: no such scores table")
    if path.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise EvaluationError(f"{path}: a scores table is a .csv or .parquet file")
    try:
        fmt = table_format(path)
        if fmt == "csv":
            with path.open(newline="") as f:
                columns = next(csv.reader(f), [])
        else:
            import pyarrow.parquet as pq

            columns = pq.read_schema(path).names
        classes = [c[5:] for c in columns if c.startswith("prob/")]
        if "record" not in columns or not classes:
            raise EvaluationError(f"{path}: not a scores table of `ecgrisk score` (it needs a "
                                  f"record column and prob/<statement> columns; found {columns[:6]})")
        return classes, list(read_rows([path], columns, fmt))
    except EvaluationError:
        raise
    except (ValueError, OSError, csv.Error) as e:  # bad bytes, a broken Parquet
        raise EvaluationError(f"{path}: cannot read it as a scores table ({e})") from e


def labels_from_csv(path: str | Path, classes: list[str]) -> Labels:
    """Labels from a CSV: ``record``, a 0/1 (or true/false) column per statement in ``classes``,
    and any other columns, to group by."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = list(reader.fieldnames or []), list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise EvaluationError(f"{path}: cannot read labels ({e})") from e
    lacking = [c for c in ["record", *classes] if c not in fields]
    if lacking:
        raise EvaluationError(f"{path}: a labels CSV needs a record column and one per statement "
                              f"scored; it lacks {lacking}")
    y = {}
    for line, r in enumerate(rows, start=2):
        values = {c: str(r[c]).strip().lower() for c in classes}
        bad = [c for c, v in values.items() if v not in _TRUE | _FALSE]
        if bad:
            raise EvaluationError(f"{path}, line {line}: {bad[0]} is {r[bad[0]]!r}; statement "
                                  f"columns hold 0/1 or true/false")
        if r["record"] in y:
            raise EvaluationError(f"{path}, line {line}: record {r['record']!r} is labelled twice")
        y[r["record"]] = {c: int(v in _TRUE) for c, v in values.items()}
    columns = {c: {r["record"]: _value(r[c]) for r in rows} for c in fields
               if c != "record" and c not in classes}
    return Labels(str(path), list(classes), y, columns)


def _value(text):
    text = (text or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def labels_from_ptbxl(root: str | Path, task: str) -> Labels:
    """A PTB-XL task's labels keyed by both file names of each record (``00102_lr`` and
    ``00102_hr``), with ``sex``, ``age`` (90 for PTB-XL's ages over 89), ``fold``, ``patient``,
    ``site`` and ``device`` to group by where the database has them."""
    from ecgrisk.data.ptbxl import FILENAME_COLUMN, attributes, task_labels

    try:
        meta, classes, y = task_labels(root, task)
    except (FileNotFoundError, ValueError) as e:
        raise EvaluationError(str(e)) from e
    names = [[Path(str(f)).name for f in meta[col]] for col in FILENAME_COLUMN.values()]
    keyed = lambda values: {k: v for ks in names for k, v in zip(ks, values, strict=True)}  # noqa: E731
    columns = {c: keyed(v) for c, v in attributes(meta, with_folds=True).items()}
    rows = [dict(zip(classes, map(int, r), strict=True)) for r in y]
    return Labels(f"PTB-XL {root} ({task})", classes, keyed(rows), columns)


def parse_by(text: str) -> tuple[str, list[float] | None]:
    """``--by`` as (column, band edges or None): ``sex``, or ``age:40,60,80`` for bands."""
    try:
        return parse_group(text)
    except ValueError as e:
        raise EvaluationError(f"--by {e}") from None


def _group_metrics(y: np.ndarray, p: np.ndarray, classes: list[str], bootstrap: int, seed: int,
                   flagged: np.ndarray | None) -> dict:
    m = evaluate(y, p, prefix="", classes=classes)
    if bootstrap and not math.isnan(m["macro_auroc"]):
        # only the interval this reports: metrics.evaluate would bootstrap F-max too, a third
        # of the time; the same seeded resamples, so the same interval
        try:
            ci = bootstrap_ci(lambda a, b: macro_auroc(a, b, skip_degenerate=True), y, p,
                              n=bootstrap, seed=seed)
            m.update({f"macro_auroc/{q}": ci[q] for q in ("mean", "lower", "upper")})
        except ValueError:  # a small group whose rare statements no resample can keep: no interval
            pass
    out = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}
    out["prevalence"] = dict(zip(classes, y.mean(axis=0).tolist(), strict=True))
    out["mean_prob"] = dict(zip(classes, p.mean(axis=0).tolist(), strict=True))
    out["reliability"] = reliability(y, p)
    if flagged is not None:  # the review flag's bound: unflagged and misread <= the band's alpha
        wrong = misread(y, p)
        missed = int((~flagged & wrong).sum())
        out["review_rate"] = float(flagged.mean())
        out["unreviewed_misread"] = missed / len(y)
        # a proportion: its Wilson interval says whether a group's excess over the bound is noise
        lo, hi = wilson_interval(missed, len(y))
        out["unreviewed_misread/lower"], out["unreviewed_misread/upper"] = lo, hi
    return out


def _flags(rows: list[dict]) -> np.ndarray | None:
    """``needs_review`` of the score rows as bools; None for a table without the column."""
    if not rows or "needs_review" not in rows[0]:
        return None
    return np.array([str(r["needs_review"]).strip().lower() in _TRUE for r in rows])


@dataclass
class Joined:
    """Scores joined to labels: ``y`` and ``p`` ``[n, C]`` over ``keys``, the score ``rows``
    they came from, and what was left out."""

    classes: list[str]
    labels: Labels
    keys: list[str]
    rows: list[dict]
    y: np.ndarray
    p: np.ndarray
    failed: int
    unlabelled: int
    left_out: int


def join_scores(scores: str | Path, labels: str | Path, task: str | None = None,
                only: list[str] = ()) -> Joined:
    """The scored ECGs that have labels, as arrays.

    ``labels`` is a CSV (see :func:`labels_from_csv`) or a PTB-XL root, whose ``task`` must then
    be named. Rows join by the scores' ``record``, else by the record's file name. Rows that
    failed to score and rows without labels are counted, never dropped silently. ``only``
    (``fold=9``, ``site=0,1``, ``needs_review=True``) keeps the ECGs whose label column, or
    else scores column, holds one of the values.
    """
    classes, rows = load_scores(scores)
    if Path(labels).is_dir():
        if not task:
            raise EvaluationError(f"{labels} is a folder: name the PTB-XL task its labels are for "
                                  f"(--task superdiagnostic, all, ...)")
        labels = labels_from_ptbxl(labels, task)
    else:
        labels = labels_from_csv(labels, classes)
    lacking = [c for c in classes if c not in labels.classes]
    if lacking:
        raise EvaluationError(f"{labels.source}: no labels for the statements {lacking} the scores "
                              f"in {scores} give (labelled: {labels.classes})")
    score_columns = list(rows[0]) if rows else []
    keep = _only(only, labels, score_columns)
    keys, matched, probs, failed, unlabelled, left_out = [], [], [], 0, 0, 0
    for r in rows:
        if isinstance(r.get("error"), str) and r["error"].strip():  # a missing value (NaN) is none
            failed += 1
            continue
        # else the id scoring gives the file on its own: its name, less a file format's suffix
        key = r["record"] if r["record"] in labels.y else as_record(Path(str(r.get("path", ""))))[0]
        if key not in labels.y:
            unlabelled += 1
            continue
        if not keep(key, r):
            left_out += 1
            continue
        try:
            row = [float(r[f"prob/{c}"]) for c in classes]
        except (TypeError, ValueError):
            row = [math.nan]
        if not all(0.0 <= v <= 1.0 for v in row):
            raise EvaluationError(f"{scores}: record {r['record']} has no error but probabilities "
                                  f"that are not numbers in [0, 1]")
        keys.append(key)
        matched.append(r)
        probs.append(row)
    if not keys:
        raise EvaluationError(f"{scores}: none of its {len(rows)} rows matches a labelled record "
                              f"in {labels.source} (by record or file name)")
    twice = [k for k, n in Counter(keys).items() if n > 1]
    if twice:
        # the same ECG scored from two folders (or at 100 and 500 Hz) would count twice, and
        # narrow every interval as if it were two patients
        paths = [str(r.get("path", "")) for k, r in zip(keys, matched, strict=True) if k == twice[0]]
        raise EvaluationError(f"{scores}: {len(twice)} labelled records match more than one scored "
                              f"row, e.g. {twice[0]!r}: {paths}; evaluate each ECG once (score one "
                              f"copy, or keep one with --only)")
    y = np.array([[labels.y[k][c] for c in classes] for k in keys], dtype=np.uint8)
    return Joined(classes, labels, keys, matched, y, np.array(probs, dtype=np.float64),
                  failed, unlabelled, left_out)


def evaluate_scores(scores: str | Path, labels: str | Path, task: str | None = None,
                    by: list[str] = (), only: list[str] = (), bootstrap: int = 200, seed: int = 0,
                    min_group: int = 30) -> dict:
    """Every ECG and each ``by`` subgroup of :func:`join_scores`, measured. Groups under
    ``min_group`` ECGs are listed without metrics."""
    j = join_scores(scores, labels, task, only)
    classes, keys, y, p = j.classes, j.keys, j.y, j.p
    flagged = _flags(j.rows)
    groups = [{"by": "all", "group": "all", "n": len(keys),
               **_group_metrics(y, p, classes, bootstrap, seed, flagged)}]
    for spec, names in groups_of(j, by).items():
        cuts = parse_by(spec)[1]
        for g in sorted(set(names), key=lambda g: _order(g, cuts)):
            idx = np.array([i for i, v in enumerate(names) if v == g])
            row = {"by": spec, "group": g, "n": int(idx.size)}
            if idx.size >= min_group:
                row.update(_group_metrics(y[idx], p[idx], classes, bootstrap, seed,
                                          None if flagged is None else flagged[idx]))
            groups.append(row)
    models = sorted({f"{r.get('model_name', '?')} {r.get('model_version', '?')}" for r in j.rows})
    return {"scores": str(scores), "labels": j.labels.source, "models": models, "classes": classes,
            "only": list(only), "scored_and_labelled": len(keys), "failed": j.failed,
            "unlabelled": j.unlabelled, "left_out_by_only": j.left_out,
            "bootstrap": bootstrap, "min_group": min_group, "groups": groups}


def groups_of(joined: Joined, by: list[str]) -> dict[str, list[str]]:
    """Each ``--by`` spec's group name for every joined ECG: a labels or scores column's value,
    or its band (``age:40,60,80``), ``missing`` where it has none."""
    out = {}
    for spec in by:
        name = parse_by(spec)[0]
        get = _column(name, f"--by {spec!r}", joined.labels, list(joined.rows[0]))
        try:
            out[spec] = group_names([get(k, r) for k, r in zip(joined.keys, joined.rows, strict=True)], spec)
        except ValueError as e:
            raise EvaluationError(f"--by {e}") from None
    return out


def _only(only: list[str], labels: Labels, score_columns: list[str]):
    """A test of a (record key, score row) against every ``--only COLUMN=V1,V2``."""
    tests = []
    for spec in only:
        name, sep, values = spec.partition("=")
        if not sep or not name or not values:
            raise EvaluationError(f"--only {spec!r}: expected COLUMN=VALUE[,VALUE...], e.g. fold=9")
        tests.append((_column(name, f"--only {spec!r}", labels, score_columns), set(values.split(","))))
    return lambda key, row: all(as_text(get(key, row)) in wanted for get, wanted in tests)


def _column(name: str, what: str, labels: Labels, score_columns: list[str]):
    """``(key, score row) -> value`` of a labels column, else of a scores column (``quality``,
    ``needs_review``, ``risk_band``, ...)."""
    if name in labels.columns:
        col = labels.columns[name]
        return lambda key, row: col.get(key)
    if name in score_columns and name not in _NOT_GROUPS and not name.startswith("prob/"):
        # typed rows hold None for an empty number (age, fs_in), which str() would make a text
        return lambda key, row: None if row.get(name) is None else _value(str(row[name]))
    raise EvaluationError(f"{what}: no column {name!r} in {labels.source} (it has "
                          f"{sorted(labels.columns)}) nor in the scores")


def _order(group: str, cuts) -> tuple:
    """Bands from the lowest up, numbers in numeric order, other values in text order, missing
    last."""
    if group == MISSING:
        return (3, 0.0, "")
    if cuts is None:
        try:
            return (0, float(group), "")
        except ValueError:
            return (1, 0.0, group)
    lead = float(group.lstrip("<>=").split("-<")[0])
    return (0 if group.startswith("<") else 2 if group.startswith(">") else 1, lead, "")


def _f(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def _pct(v):
    return "-" if v is None else f"{v:.1%}"


def _pct_ci(g: dict, key: str) -> str:
    lo, hi = g.get(f"{key}/lower"), g.get(f"{key}/upper")
    return "" if lo is None else f" ({100 * lo:.1f}-{100 * hi:.1f})"


def to_markdown(result: dict) -> str:
    """The evaluation as markdown: one table of every group, then prevalence against mean
    predicted probability per statement."""
    lines = [f"# Evaluation of `{result['scores']}`", "",
             f"Labels: {result['labels']}"
             + (f", only {' and '.join(result['only'])}" if result["only"] else "")
             + f". {result['scored_and_labelled']} ECGs scored and labelled; {result['failed']} failed "
             f"to score, {result['unlabelled']} scored without labels and {result['left_out_by_only']} "
             f"outside --only (all left out). "
             f"Macro AUROC over the statements with both label values in the group"
             + (f", 90% bootstrap interval from {result['bootstrap']} resamples" if result["bootstrap"] else "")
             + "; Brier and ECE of the calibrated "
             f"probabilities. Groups under {result['min_group']} ECGs are not measured; a group "
             f"without an interval holds a statement too rare in it for every resample to keep "
             f"both its labels. Groups differ in case mix, so the differences between their "
             f"AUROCs are not the model's alone. Flagged: the share with `needs_review`; "
             f"unflagged, misread: the share without it whose reading (the statements at "
             f"p >= 0.5) misreads a statement, with its 90% Wilson interval: the bundle's review "
             f"band bounds it by its alpha (0.1 by default) for ECGs like its validation fold.", "",
             "| by | group | n | macro AUROC (90% CI) | Brier | ECE | flagged | unflagged, misread |",
             "|---|---|---|---|---|---|---|---|"]
    for g in result["groups"]:
        if "macro_auroc" not in g:
            lines.append(f"| {g['by']} | {g['group']} | {g['n']} | - | - | - | - | - |")
            continue
        lo, hi = g.get("macro_auroc/lower"), g.get("macro_auroc/upper")
        ci = f" ({_f(lo)}-{_f(hi)})" if lo is not None else ""
        lines.append(f"| {g['by']} | {g['group']} | {g['n']} | {_f(g['macro_auroc'])}{ci} | "
                     f"{_f(g['brier'], 4)} | {_f(g['ece'], 4)} | {_pct(g.get('review_rate'))} | "
                     f"{_pct(g.get('unreviewed_misread'))}{_pct_ci(g, 'unreviewed_misread')} |")
    classes = result["classes"]
    lines += ["", "AUROC per statement (- where the group holds one label value only):", "",
              "| by | group | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
    for g in result["groups"]:
        if "macro_auroc" in g:
            cells = [_f(g.get(f"auroc/{c}")) for c in classes]
            lines.append(f"| {g['by']} | {g['group']} | " + " | ".join(cells) + " |")
    lines += ["", "Prevalence / mean predicted probability per statement (calibration in the large):",
              "", "| by | group | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
    for g in result["groups"]:
        if "prevalence" in g:
            cells = [f"{g['prevalence'][c]:.3f} / {g['mean_prob'][c]:.3f}" for c in classes]
            lines.append(f"| {g['by']} | {g['group']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_evaluation(result: dict, out: str | Path) -> list[Path]:
    """``evaluation.json``, ``evaluation.md``, a reliability diagram per ``--by`` (and one for
    every ECG) and, with any ``--by``, ``subgroups.png`` (a forest plot of macro AUROC) into
    ``out``, each written atomically."""
    from ecgrisk.plotting import plot_reliability, plot_subgroups

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "evaluation.json", out / "evaluation.md"]
    atomic_write_text(written[0], json.dumps(result, indent=1))
    atomic_write_text(written[1], to_markdown(result))
    for by in dict.fromkeys(g["by"] for g in result["groups"]):
        curves = {g["group"] if by != "all" else "every ECG": g["reliability"]
                  for g in result["groups"] if g["by"] == by and "reliability" in g}
        if not curves:
            continue
        path = out / ("reliability.png" if by == "all" else f"reliability_{by.split(':')[0]}.png")
        with atomic_path(path) as tmp:
            plot_reliability(curves, title=f"reliability by {by}" if by != "all" else "",
                             path=None).savefig(tmp, format="png")
        written.append(path)
    if len(result["groups"]) > 1:
        path = out / "subgroups.png"
        with atomic_path(path) as tmp:
            plot_subgroups(result["groups"], path=None).savefig(tmp, format="png")
        written.append(path)
    return written
