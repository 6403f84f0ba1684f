"""The feedback store's schema, versioned: ``MIGRATIONS[i]`` upgrades version ``i`` to ``i + 1``.

Opening a store runs the missing steps in one transaction (:func:`migrate`); a new schema change
is a function appended to :data:`MIGRATIONS`, written once for both SQLite and PostgreSQL.

v1 verdicts and preferences · v2 provenance (``source``) and ``annotators`` · v3 the review
app's ``accounts`` and ``sessions`` (until v3 the app kept accounts in a ``review_users`` table
of its own, in SQLite only; v3 moves them over).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ecgrisk.feedback.backends import ID_COLUMN, Tx

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SchemaError", "migrate"]


class SchemaError(RuntimeError):
    """The store's schema is newer than this version of ecgrisk understands."""


def _v1_create_tables(tx: Tx) -> None:
    """Verdicts and preferences, readings as JSON text."""
    idcol = ID_COLUMN[tx.dialect]
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


def _v2_provenance(tx: Tx) -> None:
    """Where each record came from (``source``), and a table of annotators."""
    tx.execute("ALTER TABLE verdicts ADD COLUMN source TEXT")
    tx.execute("ALTER TABLE preferences ADD COLUMN source TEXT")
    tx.execute("CREATE TABLE annotators (name TEXT PRIMARY KEY, first_seen TEXT NOT NULL)")
    tx.execute("""INSERT INTO annotators (name, first_seen)
        SELECT annotator, MIN(created_at) FROM (
            SELECT annotator, created_at FROM verdicts
            UNION ALL SELECT annotator, created_at FROM preferences) AS t
        GROUP BY annotator""")


def _v3_accounts_and_sessions(tx: Tx) -> None:
    """Annotator accounts (scrypt hashes) and their login sessions, for the review app.

    ``sessions`` holds a SHA-256 of each session token, never the token: a copy of the
    database lets no one sign in. Accounts of the SQLite-only ``review_users`` table that
    earlier releases created beside the store are moved here with their hashes.
    """
    tx.execute("""CREATE TABLE accounts (
        name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, created_at TEXT NOT NULL,
        password_changed_at TEXT NOT NULL)""")
    tx.execute("""CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY, account TEXT NOT NULL, created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL)""")
    tx.execute("CREATE INDEX sessions_account ON sessions (account)")
    if tx.table_exists("review_users"):
        tx.execute("""INSERT INTO accounts (name, password_hash, created_at, password_changed_at)
            SELECT name, password_hash, created_at, created_at FROM review_users""")
        tx.execute("DROP TABLE review_users")


MIGRATIONS: list[Callable[[Tx], None]] = [_v1_create_tables, _v2_provenance,
                                          _v3_accounts_and_sessions]
SCHEMA_VERSION = len(MIGRATIONS)


def _current_version(tx: Tx) -> int:
    rows = tx.query("SELECT MAX(version) FROM schema_version")
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def migrate(backend: Any, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema to ``target`` (all missing migrations, one transaction); the version.

    Raises
    ------
    SchemaError
        The store is newer than :data:`SCHEMA_VERSION`.
    """
    with backend.transaction(write=False) as tx:
        if tx.table_exists("schema_version") and _current_version(tx) >= target:
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
