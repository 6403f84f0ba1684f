"""Failed sign-ins counted per account and per address, refused before any password is checked.

Each password check is a 32 MiB scrypt run, so an unthrottled login form lets anyone make the
server hash for them, and lets them guess passwords as fast as it hashes. :class:`LoginThrottle`
counts *failed* sign-ins in moving windows (the ``limits`` library, in-memory storage) under two
keys: the account name (an attacker spreading guesses over many addresses) and the client
address (one address trying many accounts). While either is used up, a sign-in is refused with
the seconds until a slot frees, and scrypt never runs.

Successful sign-ins do not count, so colleagues behind one clinic address are held back only by
that address's failures, never by each other's logins; a success clears its account's failures
(they were the owner's typos: an attacker who lacks the password cannot clear them).

Counts live in the server process: a restart forgets them, and several server processes count
separately (each then allows its own quota).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from limits import RateLimitItem

# `limits` (the review extra) is imported where it is used: the ecgrisk CLI reads the defaults
# below to build its parser, also on installs without the extra.
DEFAULT_PER_ACCOUNT = "5 per 15 minutes"
DEFAULT_PER_ADDRESS = "20 per 15 minutes"
# scrypt runs allowed at once: bounds the memory a burst of sign-ins can take (32 MiB each), and
# how far a burst can overshoot a limit (checks already running when it is reached: at most
# this many minus one; with 1 the limits are exact)
DEFAULT_CONCURRENT_CHECKS = 2


def parse_limit(text: str, what: str) -> RateLimitItem:
    """A ``limits`` rate such as ``"5 per 15 minutes"``; :class:`ValueError` naming ``what``."""
    from limits import parse

    try:
        return parse(text)
    except ValueError as err:
        raise ValueError(f"{what} {text!r} is not a rate like '5 per 15 minutes' ({err})") from err


@dataclass(frozen=True)
class Attempt:
    """The outcome of one sign-in: ``ok``, or refused for ``retry_after`` seconds (> 0)."""

    ok: bool
    retry_after: int = 0

    @property
    def throttled(self) -> bool:
        return self.retry_after > 0


class LoginThrottle:
    """Counts failed sign-ins and refuses new ones while a limit is used up.

    Parameters
    ----------
    per_account : failed sign-ins allowed for one account name in a moving window.
    per_address : failed sign-ins allowed from one client address (any account names).
    concurrent_checks : password checks that may run at once (see the module notes).
    """

    def __init__(self, per_account: str = DEFAULT_PER_ACCOUNT,
                 per_address: str = DEFAULT_PER_ADDRESS,
                 concurrent_checks: int = DEFAULT_CONCURRENT_CHECKS):
        self.per_account = parse_limit(per_account, "the per-account sign-in limit")
        self.per_address = parse_limit(per_address, "the per-address sign-in limit")
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        if concurrent_checks < 1:
            raise ValueError(f"concurrent_checks must be at least 1, got {concurrent_checks}")
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._checks = threading.BoundedSemaphore(concurrent_checks)

    def _keys(self, account: str, address: str) -> list[tuple[RateLimitItem, str, str]]:
        return [(self.per_account, "account", account), (self.per_address, "address", address)]

    def retry_after(self, account: str, address: str) -> int:
        """Seconds until ``account`` may try again from ``address``; 0 when it may now."""
        wait = 0.0
        for item, scope, key in self._keys(account, address):
            if not self._limiter.test(item, scope, key):
                reset = self._limiter.get_window_stats(item, scope, key).reset_time
                wait = max(wait, reset - time.time())
        # Retry-After is whole seconds; never 0 while refused
        return max(1, math.ceil(wait)) if wait > 0 else 0

    def attempt(self, account: str, address: str, check: Callable[[], bool]) -> Attempt:
        """Run the password ``check`` unless ``account`` or ``address`` is throttled.

        Waits while ``concurrent_checks`` other checks run: call it from a worker thread, not
        the event loop.
        """
        wait = self.retry_after(account, address)
        if wait:
            return Attempt(False, wait)  # the flood's cost ends here: no scrypt
        with self._checks:
            wait = self.retry_after(account, address)  # failures may have landed while queued
            if wait:
                return Attempt(False, wait)
            ok = check()
            if ok:
                self._limiter.clear(self.per_account, "account", account)
            else:
                for item, scope, key in self._keys(account, address):
                    self._limiter.hit(item, scope, key)
        return Attempt(ok)
