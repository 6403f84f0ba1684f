"""Annotator accounts, login sessions and request tokens for the review app.

Passwords are hashed with scrypt (:func:`hashlib.scrypt`, a salted memory-hard KDF); the encoded
hash carries its parameters (``scrypt$n$r$p$salt$hash``) so they can be raised later without
invalidating old accounts. Accounts and sessions live in the feedback store
(``store.accounts``, schema v3), so an SQLite file and a PostgreSQL database work alike.

A session is a random token kept in the signed session cookie; the store keeps only its SHA-256
with the account and the expiry. Logging out deletes it, and a new password deletes every
session of the account, so a copied cookie stops working at once, not when it expires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets

from ecgrisk.feedback.accounts import AccountExistsError
from ecgrisk.feedback.store import FeedbackStore

# OWASP's scrypt floor is N=2^17 with r=8, p=1; 2^15 keeps a login near 0.1 s on a small shared
# machine while still costing an attacker 32 MiB per guess. Stored per hash, so raisable later.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_SALT_BYTES, _KEY_BYTES = 16, 32
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")  # \Z: '$' lets a final newline in
MIN_PASSWORD = 8


class AuthError(ValueError):
    """A user name or password is unusable; the message says which and why."""


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


def check_name(name: str) -> str:
    """``name`` if it is a usable annotator name, else :class:`AuthError` saying why."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise AuthError(f"user name {name!r} must be 1-64 characters: letters, digits, '.', "
                        "'_', '@' or '-', starting with a letter or digit")
    return name


def add_user(store: FeedbackStore, name: str, password: str, *, replace: bool = False) -> None:
    """Create annotator ``name`` (or set a new password with ``replace=True``, which ends the
    account's open sessions).

    Raises
    ------
    AuthError
        Bad name, a password shorter than :data:`MIN_PASSWORD`, or the user already exists.
    """
    check_name(name)
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"password for {name!r} must have at least {MIN_PASSWORD} characters")
    try:
        store.accounts.add(name, hash_password(password), replace=replace)
    except AccountExistsError as err:
        raise AuthError(f"user {name!r} already exists in {store.url}; pass --replace to set "
                        "a new password") from err


def list_users(store: FeedbackStore) -> list[str]:
    """Annotator names, sorted."""
    return store.accounts.names()


def authenticate(store: FeedbackStore, name: str, password: str) -> bool:
    """Whether ``name`` exists and ``password`` is theirs (one scrypt run either way)."""
    global _DUMMY_HASH
    account = store.accounts.get(name) if NAME_RE.match(name) else None
    if account is None:
        if _DUMMY_HASH is None:
            _DUMMY_HASH = hash_password(secrets.token_hex(8))
        verify_password(password, _DUMMY_HASH)
        return False
    return verify_password(password, account.password_hash)


def _token_hash(token: str) -> str:
    # the store keys sessions by this digest; the token itself is only in the user's cookie
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(store: FeedbackStore, name: str, hours: float) -> str:
    """Open a session of ``name`` lasting ``hours``; its token (for the session cookie)."""
    token = new_token()
    store.accounts.open_session(_token_hash(token), name, hours * 3600.0)
    return token


def session_user(store: FeedbackStore, token: str | None) -> str | None:
    """The annotator of a live session token, or None (unknown, ended or expired)."""
    if not token or not isinstance(token, str):
        return None
    return store.accounts.session_account(_token_hash(token))


def end_session(store: FeedbackStore, token: str | None) -> None:
    """End the session of ``token`` (logout); nothing happens for an unknown token."""
    if token and isinstance(token, str):
        store.accounts.close_session(_token_hash(token))


def new_token() -> str:
    """A fresh unguessable token (sessions, CSRF tokens, cookie secrets)."""
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str | None) -> bool:
    """Constant-time equality of two tokens; ``False`` when either is missing."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())
