"""The feedback store: verdicts and preferences in SQLite (default) or PostgreSQL.

One code path serves both databases: the SQL is a portable subset (named ``:param``
placeholders, ``INSERT ... RETURNING id``, ``ON CONFLICT``), and a tiny backend adapter runs it
through :mod:`sqlite3` or through SQLAlchemy Core. Only the id column type differs per dialect.

SQLite: one file, ``journal_mode=WAL`` (readers never block the writer), a busy timeout, and
every write one ``BEGIN IMMEDIATE`` transaction, so several processes can write at once.

The schema is versioned: ``MIGRATIONS[i]`` upgrades version ``i`` to ``i + 1``; opening a store
runs the missing ones in one transaction. A new schema change is a function appended there.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ecgrisk.feedback import agreement
from ecgrisk.feedback.records import (
    CSV_FIELDS,
    JSON_FIELDS,
    PREFERENCE_FIELDS,
    VERDICT_FIELDS,
    FeedbackImportError,
    Preference,
    Verdict,
    read_feedback_file,
)
from ecgrisk.files import atomic_path

__all__ = ["FeedbackImportError", "FeedbackStore", "MIGRATIONS", "SCHEMA_VERSION", "SchemaError",
           "migrate"]

_ID_COLUMN = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
              "postgresql": "BIGSERIAL PRIMARY KEY"}


class SchemaError(RuntimeError):
    """The store's schema is newer than this version of ecgrisk understands."""


# --------------------------------------------------------------------------- backends


class _Tx:
    """One open transaction: ``execute`` for statements, ``query`` for rows."""

    def __init__(self, run: Callable[[str, dict], Any], dialect: str, rows: Callable[[Any], list]):
        self._run, self.dialect, self._rows = run, dialect, rows

    def execute(self, sql: str, params: dict | None = None) -> None:
        self._run(sql, params or {})

    def query(self, sql: str, params: dict | None = None) -> list[tuple]:
        return [tuple(r) for r in self._rows(self._run(sql, params or {}))]


class _SqliteBackend:
    dialect = "sqlite"

    def __init__(self, path: str, busy_timeout_s: float):
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN ourselves so that writes take the lock up front
        self.conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")  # durable enough under WAL, much faster

    @contextmanager
    def transaction(self, write: bool) -> Iterator[_Tx]:
        # IMMEDIATE takes the write lock now (waiting up to busy_timeout) instead of failing
        # with SQLITE_BUSY when a read transaction later tries to upgrade.
        self.conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield _Tx(self.conn.execute, self.dialect, lambda cur: cur.fetchall())
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


class _SQLAlchemyBackend:
    def __init__(self, url: str):
        try:
            import sqlalchemy
        except ImportError as err:
            raise ImportError(f"the feedback store {url!r} needs SQLAlchemy and a database "
                              "driver: pip install ecgrisk[postgres]") from err
        self._text = sqlalchemy.text
        self.engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
        self.dialect = self.engine.dialect.name
        if self.dialect not in _ID_COLUMN:
            raise ValueError(f"feedback store {url!r}: unsupported database {self.dialect!r} "
                             f"(supported: {sorted(_ID_COLUMN)})")

    @contextmanager
    def transaction(self, write: bool) -> Iterator[_Tx]:
        with self.engine.begin() as conn:
            yield _Tx(lambda sql, params: conn.execute(self._text(sql), params), self.dialect,
                      lambda result: result.fetchall())

    def close(self) -> None:
        self.engine.dispose()


# --------------------------------------------------------------------------- migrations


def _v1_create_tables(tx: _Tx) -> None:
    """Verdicts and preferences, readings as JSON text."""
    idcol = _ID_COLUMN[tx.dialect]
    tx.execute(f"""CREATE TABLE verdicts (
        id {idcol}, ecg_id TEXT NOT NULL, ecg_path TEXT NOT NULL, reading TEXT NOT NULL,
        marks TEXT NOT NULL, missed TEXT NOT NULL, annotator TEXT NOT NULL,
        created_at TEXT NOT NULL, model_version TEXT NOT NULL, note TEXT)""")
    tx.execute(f"""CREATE TABLE preferences (
        id {idcol}, ecg_id TEXT NOT NULL, ecg_path TEXT NOT NULL, reading_a TEXT NOT NULL,
        reading_b TEXT NOT NULL, choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie')),
        annotator TEXT NOT NULL, created_at TEXT NOT NULL, model_version TEXT NOT NULL,
        note TEXT)""")
    tx.execute("CREATE INDEX verdicts_ecg ON verdicts (ecg_id)")
    tx.execute("CREATE INDEX preferences_ecg ON preferences (ecg_id)")


def _v2_provenance(tx: _Tx) -> None:
    """Where each record came from (``source``), and a table of annotators."""
    tx.execute("ALTER TABLE verdicts ADD COLUMN source TEXT")
    tx.execute("ALTER TABLE preferences ADD COLUMN source TEXT")
    tx.execute("CREATE TABLE annotators (name TEXT PRIMARY KEY, first_seen TEXT NOT NULL)")
    tx.execute("""INSERT INTO annotators (name, first_seen)
        SELECT annotator, MIN(created_at) FROM (
            SELECT annotator, created_at FROM verdicts
            UNION ALL SELECT annotator, created_at FROM preferences) AS t
        GROUP BY annotator""")


MIGRATIONS: list[Callable[[_Tx], None]] = [_v1_create_tables, _v2_provenance]
SCHEMA_VERSION = len(MIGRATIONS)


def _current_version(tx: _Tx) -> int:
    rows = tx.query("SELECT MAX(version) FROM schema_version")
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def _has_schema_table(backend: Any) -> bool:
    sql = ("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
           if backend.dialect == "sqlite" else
           "SELECT table_name FROM information_schema.tables "
           "WHERE table_name = 'schema_version' AND table_schema = current_schema()")
    with backend.transaction(write=False) as tx:
        return bool(tx.query(sql))


def migrate(backend: Any, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema to ``target`` (all missing migrations, one transaction); the version."""
    if _has_schema_table(backend):
        with backend.transaction(write=False) as tx:
            if _current_version(tx) >= target:
                return _check_not_newer(_current_version(tx))
    with backend.transaction(write=True) as tx:
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        if tx.dialect == "postgresql":  # SQLite's BEGIN IMMEDIATE already serialises this
            tx.execute("LOCK TABLE schema_version IN EXCLUSIVE MODE")
        version = _check_not_newer(_current_version(tx))  # re-read under the lock
        for step in range(version, target):
            MIGRATIONS[step](tx)
            tx.execute("INSERT INTO schema_version (version) VALUES (:v)", {"v": step + 1})
        return max(version, target)


def _check_not_newer(version: int) -> int:
    if version > SCHEMA_VERSION:
        raise SchemaError(f"the feedback store has schema v{version}, newer than this ecgrisk "
                          f"understands (v{SCHEMA_VERSION}); upgrade ecgrisk")
    return version


# --------------------------------------------------------------------------- the store


def _open_backend(url_or_path: str | os.PathLike, busy_timeout_s: float) -> Any:
    text = os.fspath(url_or_path)
    if text.startswith("sqlite:///"):
        return _SqliteBackend(text[len("sqlite:///"):], busy_timeout_s)
    if "://" in text:
        return _SQLAlchemyBackend(text)
    return _SqliteBackend(text, busy_timeout_s)


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        write(fh)


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

        The check and the write share one write transaction (``BEGIN IMMEDIATE`` on SQLite), so
        a double-click or a retried request stores the judgement once. Returns the new id, or
        None when the judgement was already there.
        """
        table = "verdicts" if isinstance(item, Verdict) else "preferences"
        with self._backend.transaction(write=True) as tx:
            if tx.query(f"SELECT 1 FROM {table} WHERE ecg_id = :e AND annotator = :a "
                        "AND model_version = :m LIMIT 1",
                        {"e": item.ecg_id, "a": item.annotator, "m": item.model_version}):
                return None
            return self._insert(tx, item, source)

    @staticmethod
    def _insert(tx: _Tx, item: Verdict | Preference, source: str | None) -> int:
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
            ISO times; ``since <= created_at < until``.
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
        if since is not None:
            where.append("created_at >= :since")
            params["since"] = since
        if until is not None:
            where.append("created_at < :until")
            params["until"] = until
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

    def _all_rows(self) -> list[tuple[int, str | None, Verdict | Preference]]:
        return self.rows("verdict") + self.rows("preference")

    # ---------------------------------------------------------------- files

    def export_jsonl(self, path: str | os.PathLike) -> int:
        """Write every record as one JSON object per line (atomically); the count."""
        rows = self._all_rows()

        def write(fh: Any) -> None:
            for row_id, source, record in rows:
                fh.write(json.dumps({**record.to_dict(), "id": row_id, "source": source},
                                    sort_keys=True) + "\n")

        _atomic_write(path, write)
        return len(rows)

    def export_csv(self, path: str | os.PathLike) -> int:
        """Write every record as a CSV row (atomically; dict/list cells hold JSON); the count.

        An empty ``note`` cell reads back as ``None``.
        """
        rows = self._all_rows()

        def write(fh: Any) -> None:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for row_id, source, record in rows:
                data = {**record.to_dict(), "id": row_id, "source": source or ""}
                writer.writerow({k: (json.dumps(v, sort_keys=True) if k in JSON_FIELDS
                                     else ("" if v is None else v)) for k, v in data.items()})

        _atomic_write(path, write)
        return len(rows)

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
            Unknown extension, unreadable file, or a bad record (naming file and line).
        """
        path = Path(path)
        records = read_feedback_file(path)
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
