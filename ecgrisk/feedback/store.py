"""The feedback store: verdicts and preferences in SQLite (default) or PostgreSQL.

One code path serves both databases (:mod:`~ecgrisk.feedback.backends` runs the same portable
SQL through :mod:`sqlite3` or SQLAlchemy Core); the schema is versioned and migrated forward on
opening (:mod:`~ecgrisk.feedback.migrations`). The review app's annotator accounts and sessions
live in the same database (:mod:`~ecgrisk.feedback.accounts`, ``store.accounts``).
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ecgrisk.feedback import agreement
from ecgrisk.feedback.accounts import Accounts
from ecgrisk.feedback.backends import Tx
from ecgrisk.feedback.backends import open_backend as _open_backend
from ecgrisk.feedback.migrations import MIGRATIONS, SCHEMA_VERSION, SchemaError, migrate
from ecgrisk.feedback.records import (
    CSV_FIELDS,
    JSON_FIELDS,
    PREFERENCE_FIELDS,
    VERDICT_FIELDS,
    FeedbackImportError,
    Preference,
    Verdict,
    canonical_time,
    read_feedback_file,
)
from ecgrisk.files import atomic_path

__all__ = ["EXPORT_FORMATS", "FeedbackImportError", "FeedbackStore", "MIGRATIONS",
           "SCHEMA_VERSION", "SchemaError", "migrate"]

# file suffix -> export format; the one table for the CLI, the store and the review app
EXPORT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}

Row = tuple[int, "str | None", "Verdict | Preference"]


def _write_jsonl(fh: Any, rows: Sequence[Row]) -> None:
    for row_id, source, record in rows:
        fh.write(json.dumps({**record.to_dict(), "id": row_id, "source": source},
                            sort_keys=True) + "\n")


def _write_csv(fh: Any, rows: Sequence[Row]) -> None:
    writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for row_id, source, record in rows:
        data = {**record.to_dict(), "id": row_id, "source": source or ""}
        writer.writerow({k: (json.dumps(v, sort_keys=True) if k in JSON_FIELDS
                             else ("" if v is None else v)) for k, v in data.items()})


_WRITERS: dict[str, Callable[[Any, Sequence[Row]], None]] = {"jsonl": _write_jsonl,
                                                             "csv": _write_csv}


class FeedbackStore:
    """Verdicts and preferences with annotator and time, in one database.

    Parameters
    ----------
    url_or_path
        A file path or ``sqlite:///path.db`` (SQLite, the default), or an SQLAlchemy URL such
        as ``postgresql://user@host/db`` where a team shares one store (needs
        ``pip install ecgrisk[postgres]``).
    busy_timeout_s
        How long an SQLite writer waits for another process's write to finish.

    Examples
    --------
    >>> store = FeedbackStore(tmp_path / "feedback.db")           # doctest: +SKIP
    >>> store.add_many([Verdict(ecg_id="17", reading={"NORM": 1}, marks={"NORM": "right"},
    ...                         annotator="dr-a")])                # doctest: +SKIP
    [1]
    """

    def __init__(self, url_or_path: str | os.PathLike, busy_timeout_s: float = 60.0):
        self.url = os.fspath(url_or_path)
        self._backend = _open_backend(url_or_path, busy_timeout_s)
        self.schema_version = migrate(self._backend)
        self.accounts = Accounts(self._backend)  # the review app's annotators and sessions

    def close(self) -> None:
        """Close the connection."""
        self._backend.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeedbackStore({self.url!r})"

    # ---------------------------------------------------------------- writing

    def add_many(self, items: Iterable[Verdict | Preference], source: str | None = None
                 ) -> list[int]:
        """Store records in one transaction (all or none); their ids in order."""
        items = list(items)
        for i, item in enumerate(items):
            if not isinstance(item, (Verdict, Preference)):
                raise TypeError(f"item {i} is a {type(item).__name__}, not a Verdict or "
                                "Preference")
        ids = []
        with self._backend.transaction(write=True) as tx:
            for item in items:
                ids.append(self._insert(tx, item, source))
        return ids

    def add_first(self, item: Verdict | Preference, source: str | None = None) -> int | None:
        """Store ``item`` unless its annotator already judged its ECG for its model version.

        The check and the write share one write transaction (``BEGIN IMMEDIATE`` on SQLite; on
        PostgreSQL a transaction lock on the (table, ECG, annotator, model version) key, since
        its READ COMMITTED transactions would both see "not there yet"), so a double-click or
        a retried request stores the judgement once. Returns the new id, or None when the
        judgement was already there.
        """
        table = "verdicts" if isinstance(item, Verdict) else "preferences"
        with self._backend.transaction(write=True) as tx:
            if tx.dialect == "postgresql":
                key = json.dumps([table, item.ecg_id, item.annotator, item.model_version])
                tx.query("SELECT pg_advisory_xact_lock(hashtext(:k))", {"k": key})
            if tx.query(f"SELECT 1 FROM {table} WHERE ecg_id = :e AND annotator = :a "
                        "AND model_version = :m LIMIT 1",
                        {"e": item.ecg_id, "a": item.annotator, "m": item.model_version}):
                return None
            return self._insert(tx, item, source)

    @staticmethod
    def _insert(tx: Tx, item: Verdict | Preference, source: str | None) -> int:
        table, columns = ((("verdicts", VERDICT_FIELDS)) if isinstance(item, Verdict)
                          else ("preferences", PREFERENCE_FIELDS))
        params = {c: (json.dumps(getattr(item, c), sort_keys=True) if c in JSON_FIELDS
                      else getattr(item, c)) for c in columns}
        params["source"] = source
        names = (*columns, "source")
        sql = (f"INSERT INTO {table} ({', '.join(names)}) "
               f"VALUES ({', '.join(':' + c for c in names)}) RETURNING id")
        row_id = int(tx.query(sql, params)[0][0])
        tx.execute("""INSERT INTO annotators (name, first_seen) VALUES (:name, :t)
            ON CONFLICT (name) DO UPDATE SET first_seen = excluded.first_seen
            WHERE excluded.first_seen < annotators.first_seen""",
                   {"name": item.annotator, "t": item.created_at})
        return row_id

    # ---------------------------------------------------------------- reading

    def verdicts(self, **filters: Any) -> list[Verdict]:
        """Stored verdicts, oldest first. See :meth:`rows` for the filters."""
        return [r for _, _, r in self.rows("verdict", **filters)]

    def preferences(self, **filters: Any) -> list[Preference]:
        """Stored preferences, oldest first. See :meth:`rows` for the filters."""
        return [r for _, _, r in self.rows("preference", **filters)]

    def rows(self, kind: str, *, ecg_id: str | Sequence[str] | None = None,
             annotator: str | Sequence[str] | None = None,
             model_version: str | Sequence[str] | None = None, source: str | None = None,
             since: str | None = None, until: str | None = None, limit: int | None = None
             ) -> list[tuple[int, str | None, Verdict | Preference]]:
        """``(id, source, record)`` for one kind, ordered by time then id.

        Parameters
        ----------
        kind
            ``"verdict"`` or ``"preference"``.
        ecg_id, annotator, model_version
            A value or a list of accepted values.
        source
            Exact provenance (e.g. ``"import:batch1.jsonl"``).
        since, until
            ISO-8601 times with a zone, any offset; ``since <= created_at < until``.
        limit
            At most this many rows.
        """
        if kind not in ("verdict", "preference"):
            raise ValueError(f"kind must be 'verdict' or 'preference', got {kind!r}")
        table, columns = (("verdicts", VERDICT_FIELDS) if kind == "verdict"
                          else ("preferences", PREFERENCE_FIELDS))
        where, params = [], {}
        for name, value in (("ecg_id", ecg_id), ("annotator", annotator),
                            ("model_version", model_version), ("source", source)):
            if value is None:
                continue
            values = [value] if isinstance(value, (str, int)) else list(value)
            keys = [f"{name}{i}" for i in range(len(values))]
            params.update({k: str(v) for k, v in zip(keys, values, strict=True)})
            where.append(f"{name} IN ({', '.join(':' + k for k in keys)})" if keys else "1 = 0")
        # compared as text with the stored canonical times: the bounds take the same form
        if since is not None:
            where.append("created_at >= :since")
            params["since"] = canonical_time(since, "since")
        if until is not None:
            where.append("created_at < :until")
            params["until"] = canonical_time(until, "until")
        sql = f"SELECT id, source, {', '.join(columns)} FROM {table}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._backend.transaction(write=False) as tx:
            raw = tx.query(sql, params)
        cls = Verdict if kind == "verdict" else Preference
        out = []
        for row in raw:
            data = {c: (json.loads(v) if c in JSON_FIELDS else v)
                    for c, v in zip(columns, row[2:], strict=True)}
            out.append((int(row[0]), row[1], cls(**data)))
        return out

    def count(self, kind: str | None = None) -> int:
        """Number of stored records (of one kind, or all)."""
        tables = {"verdict": ["verdicts"], "preference": ["preferences"],
                  None: ["verdicts", "preferences"]}
        if kind not in tables:
            raise ValueError(f"kind must be 'verdict', 'preference' or None, got {kind!r}")
        with self._backend.transaction(write=False) as tx:
            return sum(int(tx.query(f"SELECT COUNT(*) FROM {t}")[0][0]) for t in tables[kind])

    def annotators(self) -> dict[str, str]:
        """``annotator -> first time seen``."""
        with self._backend.transaction(write=False) as tx:
            return dict(tx.query("SELECT name, first_seen FROM annotators ORDER BY name"))

    def _select(self, kind: str | None, filters: dict[str, Any]) -> list[Row]:
        kinds = ("verdict", "preference") if kind is None else (kind,)
        return [row for k in kinds for row in self.rows(k, **filters)]

    # ---------------------------------------------------------------- files

    def dump(self, fh: Any, fmt: str, kind: str | None = None, **filters: Any) -> int:
        """Write records to an open text file as ``"jsonl"`` or ``"csv"``; the count.

        Parameters
        ----------
        fh
            A text file (or :class:`io.StringIO`) opened with ``newline=""``.
        fmt
            ``"jsonl"`` (one JSON object per line) or ``"csv"`` (dict/list cells hold JSON; an
            empty ``note`` cell reads back as ``None``). Both carry ``id`` and ``source`` and
            read back with :meth:`import_file`.
        kind
            ``"verdict"``, ``"preference"`` or None (both: verdicts first).
        **filters
            As for :meth:`rows` (``annotator``, ``model_version``, ``ecg_id``, ``source``,
            ``since``, ``until``).
        """
        if fmt not in _WRITERS:
            raise ValueError(f"export format must be one of {sorted(_WRITERS)}, got {fmt!r}")
        rows = self._select(kind, filters)
        _WRITERS[fmt](fh, rows)
        return len(rows)

    def export(self, path: str | os.PathLike, kind: str | None = None, **filters: Any) -> int:
        """:meth:`dump` into ``path`` atomically, the format told by its suffix
        (:data:`EXPORT_FORMATS`); the count. Readers see the old file or the whole new one."""
        suffix = Path(path).suffix.lower()
        if suffix not in EXPORT_FORMATS:
            raise ValueError(f"{path}: unknown export format {suffix!r} "
                             f"(use {', '.join(EXPORT_FORMATS)})")
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
            return self.dump(fh, EXPORT_FORMATS[suffix], kind, **filters)

    def import_file(self, path: str | os.PathLike, classes: Sequence[str] | None = None
                    ) -> dict[str, Any]:
        """Add the records of a JSONL or CSV file (chosen by extension), all or none.

        Duplicates (same ECG, annotator and content) and conflicting judgements (with stored
        records or within the file) are kept with their annotators and reported.

        Returns
        -------
        dict
            ``{"file", "verdicts": n, "preferences": n, "ids": [...],
            "duplicates": [...], "conflicts": [...]}``
            (see :func:`~ecgrisk.feedback.agreement.duplicates` and ``*_conflicts``).

        Raises
        ------
        FeedbackImportError
            Unknown extension, unreadable file, or a bad record (naming file and line), such
            as one naming a statement outside ``classes`` where they are given.
        """
        path = Path(path)
        records = read_feedback_file(path, classes)
        ecg_ids = sorted({r.ecg_id for r in records})
        # a long IN list would hit the database's parameter limit: then read all and filter
        wanted = set(ecg_ids)
        by_id = {"ecg_id": ecg_ids} if len(ecg_ids) <= 500 else {}
        old = [r for _, _, r in self.rows("verdict", **by_id) + self.rows("preference", **by_id)
               if r.ecg_id in wanted]
        ids = self.add_many(records, source=f"import:{path.name}")
        combined = old + records
        new_flags = [False] * len(old) + [True] * len(records)
        vmask = [isinstance(r, Verdict) for r in combined]
        verdicts = [r for r, m in zip(combined, vmask, strict=True) if m]
        prefs = [r for r, m in zip(combined, vmask, strict=True) if not m]
        v_new = [f for f, m in zip(new_flags, vmask, strict=True) if m]
        p_new = [f for f, m in zip(new_flags, vmask, strict=True) if not m]
        return {
            "file": str(path),
            "verdicts": sum(isinstance(r, Verdict) for r in records),
            "preferences": sum(isinstance(r, Preference) for r in records),
            "ids": ids,
            "duplicates": agreement.duplicates(combined, involving=new_flags),
            "conflicts": agreement.verdict_conflicts(verdicts, classes, involving=v_new)
            + agreement.preference_conflicts(prefs, involving=p_new),
        }

    # ---------------------------------------------------------------- summaries

    def stats(self, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """Counts, agreement between annotators, duplicates and conflicts (JSON-friendly).

        Parameters
        ----------
        classes
            The label list; it sets the statements over which verdicts are compared (see
            :func:`~ecgrisk.feedback.agreement.pairwise_kappa`).

        Returns
        -------
        dict
            ``n_verdicts``, ``n_preferences``, ``by_annotator`` and ``by_model_version``
            (``{name: {"verdict": n, "preference": n}}``), ``statement_agreement``,
            ``kappa`` (one entry per annotator pair), ``preference_agreement``,
            ``duplicates`` and ``conflicts`` (counts by kind).
        """
        verdicts, prefs = self.verdicts(), self.preferences()
        records: list[Verdict | Preference] = [*verdicts, *prefs]
        by_ann: dict[str, Counter] = {}
        by_mv: dict[str, Counter] = {}
        for r in records:
            by_ann.setdefault(r.annotator, Counter())[r.kind] += 1
            by_mv.setdefault(r.model_version, Counter())[r.kind] += 1

        def table(d: dict[str, Counter]) -> dict[str, dict[str, int]]:
            return {k: {"verdict": c["verdict"], "preference": c["preference"]}
                    for k, c in sorted(d.items())}

        dups = agreement.duplicates(records)
        return {
            "n_verdicts": len(verdicts),
            "n_preferences": len(prefs),
            "by_annotator": table(by_ann),
            "by_model_version": table(by_mv),
            "statement_agreement": agreement.statement_agreement(verdicts, classes),
            "kappa": agreement.pairwise_kappa(verdicts, classes),
            "preference_agreement": agreement.preference_agreement(prefs),
            "duplicates": {"verdict": sum(d["count"] - 1 for d in dups if d["kind"] == "verdict"),
                           "preference": sum(d["count"] - 1 for d in dups
                                             if d["kind"] == "preference")},
            "conflicts": {"verdict": len(agreement.verdict_conflicts(verdicts, classes)),
                          "preference": len(agreement.preference_conflicts(prefs))},
        }
