"""Feedback records: a cardiologist's verdict on a reading, or a preference between two readings.

A *reading* is the set of SCP statements a model asserts for one ECG. It is shown to a
cardiologist either as a dict ``statement -> 0/1`` or as a list of the positive statements.

Both record kinds are plain dataclasses that survive a JSON round trip
(:meth:`Verdict.to_dict` / :func:`record_from_dict`), so the store, the import/export files and
the simulated cardiologist all speak the same format.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

MARKS = ("right", "wrong")
CHOICES = ("a", "b", "tie")


VERDICT_FIELDS = ("ecg_id", "ecg_path", "reading", "marks", "missed", "annotator", "created_at",
                  "model_version", "note")
PREFERENCE_FIELDS = ("ecg_id", "ecg_path", "reading_a", "reading_b", "choice", "annotator",
                     "created_at", "model_version", "note")
JSON_FIELDS = frozenset({"reading", "marks", "missed", "reading_a", "reading_b"})
CSV_FIELDS = ("kind", "id", "ecg_id", "ecg_path", "annotator", "created_at", "model_version",
              "note", "reading", "marks", "missed", "reading_a", "reading_b", "choice", "source")


class FeedbackError(ValueError):
    """A feedback record is malformed (the message names the field and the reason)."""


class FeedbackImportError(ValueError):
    """An import file is unreadable or holds a bad record (the message names file and line)."""


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (``2024-05-01T12:00:00.123456+00:00``)."""
    return datetime.now(timezone.utc).isoformat()


def _check_text(name: str, value: Any, *, allow_empty: bool = False) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = str(value)  # PTB-XL ecg ids are integers; store them as text
    if not isinstance(value, str):
        raise FeedbackError(f"{name} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise FeedbackError(f"{name} must not be empty")
    return value


def canonical_time(value: Any, name: str = "created_at") -> str:
    """An ISO-8601 time with its zone as the store keeps every time: UTC, one form, so that
    text order is time order (a stored record's ``created_at``; a ``since``/``until`` bound)."""
    value = _check_text(name, value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as err:
        raise FeedbackError(f"{name} {value!r} is not an ISO-8601 time") from err
    if parsed.tzinfo is None:
        raise FeedbackError(f"{name} {value!r} has no time zone; give UTC, e.g. '+00:00'")
    return parsed.astimezone(timezone.utc).isoformat()


def _binary(name: str, statement: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and value in (0, 1):
        return int(value)
    raise FeedbackError(f"{name}[{statement!r}] must be 0 or 1, got {value!r}")


def normalise_reading(name: str, reading: Any) -> dict[str, int]:
    """Turn a reading (dict ``statement -> 0/1`` or list of positive statements) into a dict.

    Raises
    ------
    FeedbackError
        When the reading is neither, or a value is not 0/1.
    """
    if isinstance(reading, Mapping):
        out = {}
        for key, value in reading.items():
            key = _check_text(f"{name} statement", key)
            out[key] = _binary(name, key, value)
        return out
    if isinstance(reading, (list, tuple, set, frozenset)):
        return {_check_text(f"{name} statement", s): 1 for s in reading}
    raise FeedbackError(
        f"{name} must be a dict statement -> 0/1 or a list of positive statements, "
        f"got {type(reading).__name__}"
    )


def reading_vector(reading: Mapping[str, int] | Iterable[str], classes: Sequence[str],
                   name: str = "reading") -> np.ndarray:
    """A reading as a 0/1 vector over ``classes``; statements not mentioned are 0.

    Returns
    -------
    np.ndarray
        ``[C]`` float32.

    Raises
    ------
    FeedbackError
        When the reading names a statement that is not in ``classes``.
    """
    reading = normalise_reading(name, reading if isinstance(reading, Mapping) else list(reading))
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros(len(classes), dtype=np.float32)
    for statement, value in reading.items():
        if statement not in index:
            raise FeedbackError(f"{name} names {statement!r}, which is not in the label list")
        out[index[statement]] = value
    return out


def positives(reading: Mapping[str, int]) -> list[str]:
    """The statements a reading asserts, sorted."""
    return sorted(s for s, v in reading.items() if v)


def _check_common(item) -> None:
    """Validate and normalise the fields every kind of feedback has, in place."""
    item.ecg_id = _check_text("ecg_id", item.ecg_id)
    item.ecg_path = _check_text("ecg_path", item.ecg_path or "", allow_empty=True)
    item.annotator = _check_text("annotator", item.annotator)
    item.created_at = canonical_time(item.created_at)
    item.model_version = _check_text("model_version", item.model_version or "", allow_empty=True)
    if item.note is not None:
        item.note = _check_text("note", item.note, allow_empty=True)


@dataclass(kw_only=True)
class Verdict:
    """A cardiologist's correction of one shown reading.

    Parameters
    ----------
    ecg_id, ecg_path
        Which ECG (id as text; the path is informational and may be empty).
    reading
        The reading as shown: ``statement -> 0/1`` (a list of positive statements is accepted).
    marks
        ``statement -> "right" | "wrong"`` for shown positive statements.
    missed
        Statements the cardiologist adds (absent from the shown positives).
    annotator
        Who judged; must not be empty.
    created_at
        ISO-8601 time with zone (defaults to now, UTC).
    model_version
        Version of the model that produced the reading.
    note
        Free text, optional.

    Notes
    -----
    A verdict is a full review: every statement except the shown positives left unmarked is
    *judged* — shown positives by their mark, added statements as present, everything else as
    absent. :meth:`judgements` lists them; agreement between annotators uses only those.
    """

    kind: ClassVar[str] = "verdict"

    ecg_id: str
    ecg_path: str = ""
    reading: dict[str, int]
    marks: dict[str, str] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)
    annotator: str
    created_at: str = field(default_factory=utc_now)
    model_version: str = ""
    note: str | None = None

    def __post_init__(self) -> None:
        _check_common(self)
        self.reading = normalise_reading("reading", self.reading)
        if not isinstance(self.marks, Mapping):
            raise FeedbackError(f"marks must be a dict statement -> 'right'/'wrong', "
                                f"got {type(self.marks).__name__}")
        marks = {}
        for statement, mark in self.marks.items():
            if mark not in MARKS:
                raise FeedbackError(f"marks[{statement!r}] must be one of {MARKS}, got {mark!r}")
            if self.reading.get(statement) != 1:
                raise FeedbackError(f"marks[{statement!r}]: only shown positive statements can be "
                                    "marked; use 'missed' for a statement the reading lacks")
            marks[statement] = mark
        self.marks = marks
        if isinstance(self.missed, str) or not isinstance(self.missed, Iterable):
            raise FeedbackError("missed must be a list of statements")
        missed = sorted({_check_text("missed statement", s) for s in self.missed})
        shown = [s for s in missed if self.reading.get(s) == 1]
        if shown:
            raise FeedbackError(f"missed lists {shown}, which the reading already shows")
        self.missed = missed

    def judgements(self, classes: Sequence[str] | None = None) -> dict[str, int]:
        """What the cardiologist says is true, for every statement they judged.

        Parameters
        ----------
        classes
            The label list; without it the universe is the statements this record mentions.

        Returns
        -------
        dict
            ``statement -> 0/1``; shown positives left unmarked are absent (not judged).
        """
        universe = list(classes) if classes is not None else sorted(
            set(self.reading) | set(self.marks) | set(self.missed))
        out = {}
        for statement in universe:
            if self.reading.get(statement) == 1:
                if statement in self.marks:
                    out[statement] = int(self.marks[statement] == "right")
            else:
                out[statement] = int(statement in self.missed)
        return out

    def corrected_reading(self, classes: Sequence[str]) -> np.ndarray:
        """The reading as the cardiologist corrected it.

        Shown positives marked right stay 1, wrong become 0, missed become 1; unjudged shown
        statements keep the model's value.

        Returns
        -------
        np.ndarray
            ``[C]`` float32 0/1 over ``classes``.

        Raises
        ------
        FeedbackError
            When the record names a statement not in ``classes``.
        """
        out = reading_vector(self.reading, classes)
        index = {c: i for i, c in enumerate(classes)}
        for statement in list(self.marks) + self.missed:
            if statement not in index:
                raise FeedbackError(f"verdict names {statement!r}, which is not in the label list")
        for statement, mark in self.marks.items():
            out[index[statement]] = float(mark == "right")
        for statement in self.missed:
            out[index[statement]] = 1.0
        return out

    def shown_reading(self, classes: Sequence[str]) -> np.ndarray:
        """The reading as shown, ``[C]`` float32 0/1 over ``classes``."""
        return reading_vector(self.reading, classes)

    def content_key(self) -> str:
        """Canonical text of what was judged (ecg, annotator, reading, marks, missed)."""
        return json.dumps([self.kind, self.ecg_id, self.annotator, positives(self.reading),
                           self.marks, self.missed], sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict with a ``kind`` key."""
        return {"kind": self.kind, **asdict(self)}


@dataclass(kw_only=True)
class Preference:
    """A cardiologist's choice between two readings of one ECG.

    Parameters
    ----------
    ecg_id, ecg_path
        Which ECG.
    reading_a, reading_b
        The two readings (dict ``statement -> 0/1`` or list of positives); stored as sorted lists
        of positive statements.
    choice
        ``"a"``, ``"b"`` or ``"tie"``.
    annotator, created_at, model_version, note
        As for :class:`Verdict`.
    """

    kind: ClassVar[str] = "preference"

    ecg_id: str
    ecg_path: str = ""
    reading_a: list[str]
    reading_b: list[str]
    choice: str
    annotator: str
    created_at: str = field(default_factory=utc_now)
    model_version: str = ""
    note: str | None = None

    def __post_init__(self) -> None:
        _check_common(self)
        if self.choice not in CHOICES:
            raise FeedbackError(f"choice must be one of {CHOICES}, got {self.choice!r}")
        self.reading_a = positives(normalise_reading("reading_a", self.reading_a))
        self.reading_b = positives(normalise_reading("reading_b", self.reading_b))
        if self.reading_a == self.reading_b and self.choice != "tie":
            raise FeedbackError(f"reading_a and reading_b are identical, so choice must be "
                                f"'tie', got {self.choice!r}")

    def chosen_rejected(self) -> tuple[list[str], list[str]] | None:
        """``(chosen, rejected)`` positive-statement lists, or ``None`` for a tie."""
        if self.choice == "tie":
            return None
        if self.choice == "a":
            return self.reading_a, self.reading_b
        return self.reading_b, self.reading_a

    def pair_key(self) -> tuple[str, str, str]:
        """``(ecg_id, first, second)`` with the two readings in canonical order."""
        a, b = json.dumps(self.reading_a), json.dumps(self.reading_b)
        return (self.ecg_id, *sorted((a, b)))

    def canonical_choice(self) -> str:
        """The choice expressed against :meth:`pair_key` order (``"first"/"second"/"tie"``)."""
        if self.choice == "tie":
            return "tie"
        chosen = json.dumps(self.reading_a if self.choice == "a" else self.reading_b)
        return "first" if chosen == self.pair_key()[1] else "second"

    def content_key(self) -> str:
        """Canonical text of what was judged (ecg, annotator, pair, choice)."""
        return json.dumps([self.kind, self.annotator, *self.pair_key(), self.canonical_choice()])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict with a ``kind`` key."""
        return {"kind": self.kind, **asdict(self)}


Feedback = Verdict | Preference
_KINDS = {"verdict": Verdict, "preference": Preference}


def record_from_dict(data: Mapping[str, Any]) -> Verdict | Preference:
    """Build a record from :meth:`Verdict.to_dict`-style data (``kind`` selects the class).

    Unknown keys other than ``id`` and ``source`` (written by the store's exports) are errors.
    """
    if not isinstance(data, Mapping):
        raise FeedbackError(f"a record must be a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in _KINDS:
        raise FeedbackError(f"kind must be one of {tuple(_KINDS)}, got {kind!r}")
    cls = _KINDS[kind]
    allowed = {f.name for f in fields(cls)}
    extra = set(data) - allowed - {"kind", "id", "source"}
    if extra:
        raise FeedbackError(f"unknown field(s) for a {kind}: {sorted(extra)}")
    missing = [f for f in ("ecg_id", "annotator") if f not in data]
    if missing:
        raise FeedbackError(f"a {kind} needs field(s) {missing}")
    kwargs = {k: v for k, v in data.items() if k in allowed}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise FeedbackError(f"{kind}: {err}") from err


# --------------------------------------------------------------------------- files


def read_feedback_file(path: str | os.PathLike, classes: Sequence[str] | None = None
                       ) -> list[Verdict | Preference]:
    """Parse a JSONL (``.jsonl``/``.ndjson``) or CSV (``.csv``) feedback file; with ``classes``
    (a model's label list), a record naming a statement outside it is a bad record too.

    Raises
    ------
    FeedbackImportError
        Naming the file and line of the first bad record.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".csv"):
        raise FeedbackImportError(f"{path}: unknown feedback file type {suffix!r} "
                                  "(expected .jsonl, .ndjson or .csv)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise FeedbackImportError(f"{path}: cannot read ({err})") from err
    records = []
    for line_no, data in (_jsonl_rows(path, text) if suffix != ".csv" else _csv_rows(path, text)):
        try:
            records.append(record_from_dict(data))
            if classes is not None:
                check_statements(records[-1], classes)
        except FeedbackError as err:
            raise FeedbackImportError(f"{path}:{line_no}: {err}") from err
    return records


def check_statements(record: Verdict | Preference, classes: Sequence[str]) -> None:
    """Raise :class:`FeedbackError` when ``record`` names a statement outside ``classes``: the
    refinement that reads it later would stop there."""
    if isinstance(record, Verdict):
        record.corrected_reading(classes)
    else:
        reading_vector(record.reading_a, classes, "reading_a")
        reading_vector(record.reading_b, classes, "reading_b")


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as err:
            raise FeedbackImportError(f"{path}:{line_no}: not valid JSON ({err.msg})") from err


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or "kind" not in reader.fieldnames:
        raise FeedbackImportError(f"{path}:1: CSV header must include 'kind' "
                                  f"(columns: {', '.join(CSV_FIELDS)})")
    unknown = set(reader.fieldnames) - set(CSV_FIELDS)
    if unknown:
        raise FeedbackImportError(f"{path}:1: unknown CSV column(s) {sorted(unknown)}")
    for row in reader:
        line_no = reader.line_num
        if None in row:
            raise FeedbackImportError(f"{path}:{line_no}: more cells than header columns")
        kind = row.get("kind")
        fields = VERDICT_FIELDS if kind == "verdict" else PREFERENCE_FIELDS
        data: dict[str, Any] = {"kind": kind}
        for name in fields:
            cell = row.get(name)
            if not cell:
                if name in ("ecg_path", "model_version"):
                    data[name] = ""
                elif name == "note":
                    data[name] = None
                # other empty cells stay absent: a default applies, or validation names them
                continue
            if name in JSON_FIELDS:
                try:
                    data[name] = json.loads(cell)
                except json.JSONDecodeError as err:
                    raise FeedbackImportError(
                        f"{path}:{line_no}: column {name!r} is not valid JSON ({err.msg})"
                    ) from err
            else:
                data[name] = cell
        yield line_no, data
