"""Annotator accounts and request protection for the review app (standard library only).

Passwords are hashed with scrypt (:func:`hashlib.scrypt`, a salted memory-hard KDF) and kept in a
``review_users`` table this module creates in the feedback store's SQLite file, next to the
store's own tables (whose schema it never touches). The encoded hash carries its parameters
(``scrypt$n$r$p$salt$hash``) so they can be raised later without invalidating old accounts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

# OWASP's scrypt floor is N=2^17 with r=8, p=1; 2^15 keeps a login near 0.1 s on a small shared
# machine while still costing an attacker 32 MiB per guess. Stored per hash, so raisable later.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_SALT_BYTES, _KEY_BYTES = 16, 32
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 8

_USERS_TABLE = """CREATE TABLE IF NOT EXISTS review_users (
    name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, created_at TEXT NOT NULL)"""


class AuthError(ValueError):
    """A user name, password or user database is unusable; the message says which and why."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem must cover 128 * n * r bytes (plus slack) or OpenSSL refuses large n
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * n * r + 2**20, dklen=_KEY_BYTES)


def hash_password(password: str) -> str:
    """Salted scrypt hash of ``password`` as ``"scrypt$n$r$p$salt$hash"`` (base64url parts)."""
    salt = os.urandom(_SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches an :func:`hash_password` string (constant-time compare)."""
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(key)
        actual = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# A hash to check against when the user does not exist, so that a login for an unknown name
# takes as long as one with a wrong password (no user enumeration by timing).
_DUMMY_HASH: str | None = None


def _sqlite_path(db: str | os.PathLike) -> str:
    text = os.fspath(db)
    if text.startswith("sqlite:///"):
        return text[len("sqlite:///"):]
    if "://" in text:
        raise AuthError(f"--db {text!r}: the review app keeps annotator accounts in an SQLite "
                        "file; give a path or sqlite:///path")
    return text


def _connect(db: str | os.PathLike) -> sqlite3.Connection:
    path = _sqlite_path(db)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute(_USERS_TABLE)
    return conn


def check_name(name: str) -> str:
    """``name`` if it is a usable annotator name, else :class:`AuthError` saying why."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise AuthError(f"user name {name!r} must be 1-64 characters: letters, digits, '.', "
                        "'_', '@' or '-', starting with a letter or digit")
    return name


def add_user(db: str | os.PathLike, name: str, password: str, *, replace: bool = False) -> None:
    """Create annotator ``name`` (or set a new password with ``replace=True``).

    Raises
    ------
    AuthError
        Bad name, a password shorter than :data:`MIN_PASSWORD`, or the user already exists.
    """
    check_name(name)
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"password for {name!r} must have at least {MIN_PASSWORD} characters")
    encoded = hash_password(password)
    now = datetime.now(timezone.utc).isoformat()
    with closing(_connect(db)) as conn, conn:
        if replace:
            conn.execute("INSERT INTO review_users (name, password_hash, created_at) "
                         "VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                         "password_hash = excluded.password_hash", (name, encoded, now))
            return
        try:
            conn.execute("INSERT INTO review_users (name, password_hash, created_at) "
                         "VALUES (?, ?, ?)", (name, encoded, now))
        except sqlite3.IntegrityError as err:
            raise AuthError(f"user {name!r} already exists in {os.fspath(db)}; pass --replace to "
                            "set a new password") from err


def list_users(db: str | os.PathLike) -> list[str]:
    """Annotator names, sorted."""
    with closing(_connect(db)) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM review_users ORDER BY name")]


def authenticate(db: str | os.PathLike, name: str, password: str) -> bool:
    """Whether ``name`` exists and ``password`` is theirs."""
    global _DUMMY_HASH
    with closing(_connect(db)) as conn:
        row = conn.execute("SELECT password_hash FROM review_users WHERE name = ?",
                           (name,)).fetchone()
    if row is None:
        if _DUMMY_HASH is None:
            _DUMMY_HASH = hash_password(secrets.token_hex(8))
        verify_password(password, _DUMMY_HASH)
        return False
    return verify_password(password, row[0])


def credential_stamp(db: str | os.PathLike, name: str) -> str | None:
    """A short digest of ``name``'s stored password hash (None for an unknown name).

    Kept in the session at login: when the password changes or the account goes, the stamp no
    longer matches and the session ends, although its signed cookie is still valid.
    """
    with closing(_connect(db)) as conn:
        row = conn.execute("SELECT password_hash FROM review_users WHERE name = ?",
                           (name,)).fetchone()
    return None if row is None else hashlib.sha256(row[0].encode()).hexdigest()[:16]


def new_token() -> str:
    """A fresh unguessable token (CSRF tokens, session secrets)."""
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str | None) -> bool:
    """Constant-time equality of two tokens; ``False`` when either is missing."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())
