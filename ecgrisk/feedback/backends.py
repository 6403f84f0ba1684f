"""The two databases the feedback store runs on, behind one small transaction interface.

The store's SQL is a portable subset (named ``:param`` placeholders, ``INSERT ... RETURNING id``,
``ON CONFLICT``); a backend runs it through :mod:`sqlite3` or through SQLAlchemy Core. Only the
id column type differs per dialect (:data:`ID_COLUMN`).

SQLite: one file, ``journal_mode=WAL`` (readers never block the writer), a busy timeout, and
every write one ``BEGIN IMMEDIATE`` transaction, so several processes can write at once. One
connection may be shared by the threads of one process (the review app's request threads): a
lock gives each transaction the connection to itself.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ID_COLUMN = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
             "postgresql": "BIGSERIAL PRIMARY KEY"}


class Tx:
    """One open transaction: ``execute`` for statements, ``query`` for rows."""

    def __init__(self, run: Callable[[str, dict], Any], dialect: str, rows: Callable[[Any], list]):
        self._run, self.dialect, self._rows = run, dialect, rows

    def execute(self, sql: str, params: dict | None = None) -> None:
        self._run(sql, params or {})

    def query(self, sql: str, params: dict | None = None) -> list[tuple]:
        return [tuple(r) for r in self._rows(self._run(sql, params or {}))]

    def table_exists(self, name: str) -> bool:
        """Whether table ``name`` exists (in PostgreSQL: in the current schema)."""
        sql = ("SELECT name FROM sqlite_master WHERE type = 'table' AND name = :name"
               if self.dialect == "sqlite" else
               "SELECT table_name FROM information_schema.tables "
               "WHERE table_name = :name AND table_schema = current_schema()")
        return bool(self.query(sql, {"name": name}))


class SqliteBackend:
    dialect = "sqlite"

    def __init__(self, path: str, busy_timeout_s: float):
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN ourselves so that writes take the lock up front.
        # check_same_thread=False: the lock below, not the thread, keeps transactions apart.
        self.conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")  # durable enough under WAL, much faster
        self._lock = threading.Lock()

    @contextmanager
    def transaction(self, write: bool) -> Iterator[Tx]:
        with self._lock:
            # IMMEDIATE takes the write lock now (waiting up to busy_timeout) instead of failing
            # with SQLITE_BUSY when a read transaction later tries to upgrade.
            self.conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield Tx(self.conn.execute, self.dialect, lambda cur: cur.fetchall())
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self.conn.close()


class SQLAlchemyBackend:
    def __init__(self, url: str):
        try:
            import sqlalchemy
        except ImportError as err:
            raise ImportError(f"the feedback store {url!r} needs SQLAlchemy and a database "
                              "driver: pip install ecgrisk[postgres]") from err
        self._text = sqlalchemy.text
        self.engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
        self.dialect = self.engine.dialect.name
        if self.dialect not in ID_COLUMN:
            raise ValueError(f"feedback store {url!r}: unsupported database {self.dialect!r} "
                             f"(supported: {sorted(ID_COLUMN)})")

    @contextmanager
    def transaction(self, write: bool) -> Iterator[Tx]:
        with self.engine.begin() as conn:
            yield Tx(lambda sql, params: conn.execute(self._text(sql), params), self.dialect,
                     lambda result: result.fetchall())

    def close(self) -> None:
        self.engine.dispose()


def open_backend(url_or_path: str | os.PathLike, busy_timeout_s: float) -> Any:
    """A backend for a path or ``sqlite:///path`` (SQLite) or another SQLAlchemy URL."""
    text = os.fspath(url_or_path)
    if text.startswith("sqlite:///"):
        return SqliteBackend(text[len("sqlite:///"):], busy_timeout_s)
    if "://" in text:
        return SQLAlchemyBackend(text)
    return SqliteBackend(text, busy_timeout_s)
