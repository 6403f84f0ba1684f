"""Annotator accounts and their login sessions, in the feedback store (schema v3).

Data only: names, password hashes (made and checked by :mod:`ecgrisk.review.auth`, which owns
the hashing policy) and SHA-256 digests of session tokens with their expiry. Each method is one
transaction on the store's backend, so SQLite and PostgreSQL share this code.

Reach it as ``FeedbackStore(...).accounts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = ["Account", "AccountExistsError", "Accounts"]


class AccountExistsError(ValueError):
    """An account of that name is already in the store."""


@dataclass(frozen=True)
class Account:
    """One stored annotator account (times are ISO-8601 UTC)."""

    name: str
    password_hash: str
    created_at: str
    password_changed_at: str


def _iso(t: datetime) -> str:
    # fixed width (microseconds always written), so that text order is time order in SQL
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Accounts:
    """The ``accounts`` and ``sessions`` tables of one store.

    Parameters
    ----------
    backend : the store's database backend (see :mod:`ecgrisk.feedback.backends`).
    """

    def __init__(self, backend: Any):
        self._backend = backend

    # ---------------------------------------------------------------- accounts

    def add(self, name: str, password_hash: str, *, replace: bool = False) -> bool:
        """Store an account; with ``replace``, set a new hash for an existing one.

        A replaced password ends every open session of the account, in the same transaction.
        Returns True when the account is new.

        Raises
        ------
        AccountExistsError
            ``name`` exists and ``replace`` is False.
        """
        now = _iso(_now())
        with self._backend.transaction(write=True) as tx:
            exists = bool(tx.query("SELECT 1 FROM accounts WHERE name = :n", {"n": name}))
            if exists and not replace:
                raise AccountExistsError(f"account {name!r} already exists")
            if exists:
                tx.execute("UPDATE accounts SET password_hash = :h, password_changed_at = :t "
                           "WHERE name = :n", {"n": name, "h": password_hash, "t": now})
                tx.execute("DELETE FROM sessions WHERE account = :n", {"n": name})
            else:
                tx.execute("INSERT INTO accounts (name, password_hash, created_at, "
                           "password_changed_at) VALUES (:n, :h, :t, :t)",
                           {"n": name, "h": password_hash, "t": now})
        return not exists

    def get(self, name: str) -> Account | None:
        """The account called ``name``, or None."""
        with self._backend.transaction(write=False) as tx:
            rows = tx.query("SELECT name, password_hash, created_at, password_changed_at "
                            "FROM accounts WHERE name = :n", {"n": name})
        return Account(*rows[0]) if rows else None

    def names(self) -> list[str]:
        """Account names, sorted."""
        with self._backend.transaction(write=False) as tx:
            return [r[0] for r in tx.query("SELECT name FROM accounts ORDER BY name")]

    # ---------------------------------------------------------------- sessions

    def open_session(self, token_hash: str, name: str, lifetime_s: float) -> str:
        """Record a session of ``name`` that ends after ``lifetime_s``; its expiry (ISO).

        Expired sessions of every account are deleted on the way, so the table stays small.
        """
        now = _now()
        expires = _iso(now + timedelta(seconds=lifetime_s))
        with self._backend.transaction(write=True) as tx:
            tx.execute("DELETE FROM sessions WHERE expires_at <= :now", {"now": _iso(now)})
            tx.execute("INSERT INTO sessions (token_hash, account, created_at, expires_at) "
                       "VALUES (:h, :n, :c, :e)",
                       {"h": token_hash, "n": name, "c": _iso(now), "e": expires})
        return expires

    def session_account(self, token_hash: str) -> str | None:
        """The account of a live session (not expired, account still there), else None."""
        with self._backend.transaction(write=False) as tx:
            rows = tx.query("SELECT s.account FROM sessions s JOIN accounts a "
                            "ON a.name = s.account WHERE s.token_hash = :h AND s.expires_at > :now",
                            {"h": token_hash, "now": _iso(_now())})
        return rows[0][0] if rows else None

    def close_session(self, token_hash: str) -> None:
        """End one session (logout); nothing happens if it is already gone."""
        with self._backend.transaction(write=True) as tx:
            tx.execute("DELETE FROM sessions WHERE token_hash = :h", {"h": token_hash})
