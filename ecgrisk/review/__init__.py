"""A web app where cardiologists judge the model's readings, feeding the feedback store.

``ecgrisk review --db feedback.db --model model.pt --data DIR`` serves it (optional extra:
``pip install ecgrisk[review]``); ``ecgrisk review add-user NAME --db feedback.db`` creates an
annotator account. ``--db`` may also be a PostgreSQL URL: accounts and sessions are in the
feedback store's own schema. The web framework is imported only when the app is built, so
importing this package stays cheap and works without the extra.

Modules: ``app`` (routes), ``guards`` (sessions, CSRF, headers), ``auth`` (passwords, sessions),
``throttle`` (failed sign-ins), ``queue`` (what to review), ``demographics`` (PTB-XL age/sex),
``cli``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"create_app": "app", "ReviewQueue": "queue", "ReviewItem": "queue",
         "add_user": "auth", "authenticate": "auth", "AuthError": "auth",
         "LoginThrottle": "throttle"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"ecgrisk.review.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ecgrisk.review' has no attribute {name!r}")
