"""``ecgrisk review``: serve the review app; ``ecgrisk review add-user NAME``: create an annotator.

    ecgrisk review add-user dr-lee --db feedback.db            # prompts for the password
    echo "$PW" | ecgrisk review add-user dr-lee --db feedback.db --password-stdin
    ecgrisk review --db feedback.db --model model.pt --data ecgs/ [--host 127.0.0.1] [--port 8000]
    ecgrisk review --db feedback.db --model refined.pt --compare model.pt --data ecgs/
    ecgrisk review --db postgresql+psycopg://review@dbhost/feedback --model model.pt --data ecgs/

``--db`` is the feedback store, an SQLite file or an SQLAlchemy URL; the annotator accounts and
their sessions are kept in it. Wire into the ``ecgrisk`` parser with :func:`add_parsers`.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sqlite3
import sys

from ecgrisk.feedback.migrations import SchemaError
from ecgrisk.signals import raise_if_interrupted

LOOPBACK = ("127.0.0.1", "localhost")
log = logging.getLogger(__name__)


def _store_errors() -> tuple[type[BaseException], ...]:
    """What opening an unreachable or unusable store raises (SQLAlchemy's where installed)."""
    errors: list[type[BaseException]] = [OSError, ImportError, ValueError, SchemaError,
                                         sqlite3.Error]
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:
        pass
    else:
        errors.append(SQLAlchemyError)
    return tuple(errors)


def _open_store(db: str):
    """The feedback store at ``db``, or None after printing why it cannot be opened."""
    from ecgrisk.feedback.store import FeedbackStore

    try:
        return FeedbackStore(db)
    except _store_errors() as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"error: cannot open the feedback store {db}: {reason}", file=sys.stderr)
        return None


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise SystemExit("error: no terminal to prompt for a password; pass --password-stdin")
    first = getpass.getpass(f"Password for {args.name}: ")
    if getpass.getpass("Repeat password: ") != first:
        raise SystemExit("error: the passwords differ")
    return first


def _add_user(args: argparse.Namespace) -> int:
    from ecgrisk.review.auth import AuthError, add_user

    db = getattr(args, "db", None)
    if not db:
        print("error: review add-user needs --db (the feedback store: an SQLite file or a "
              "database URL)", file=sys.stderr)
        return 2
    password = _read_password(args)
    store = _open_store(db)
    if store is None:
        return 2
    with store:
        existed = args.replace and store.accounts.get(args.name) is not None
        try:
            add_user(store, args.name, password, replace=args.replace)
        except AuthError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    # --replace on a misspelled name makes a new account: say so, not "updated"
    print(f"annotator {args.name!r} {'updated' if existed else 'added'} in {db}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    missing = [f"--{n}" for n in ("db", "model", "data") if not getattr(args, n, None)]
    if missing:
        print(f"error: ecgrisk review needs {' '.join(missing)}", file=sys.stderr)
        return 2
    try:
        import limits  # noqa: F401  (the sign-in throttle's; throttle.py imports it late)
        import uvicorn

        from ecgrisk.review.app import create_app
    except ImportError as err:
        print(f"error: the review app needs its extra ({err.name} is missing): "
              "pip install 'ecgrisk[review]'", file=sys.stderr)
        return 1
    from ecgrisk.bundle import Bundle
    from ecgrisk.bundle_files import BundleError
    from ecgrisk.review.auth import list_users
    from ecgrisk.review.queue import ReviewQueue
    from ecgrisk.review.throttle import LoginThrottle

    try:
        throttle = LoginThrottle(args.login_limit_account, args.login_limit_address)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    store = _open_store(args.db)  # also creates or migrates its schema, up front
    if store is None:
        return 2
    with store:
        users = list_users(store)
    if not users:
        print(f"error: {args.db} has no annotator account; create one with\n"
              f"  ecgrisk review add-user NAME --db {args.db}", file=sys.stderr)
        return 2
    try:
        bundle = Bundle.load(args.model)
        other = Bundle.load(args.compare) if args.compare else None
        print(f"scoring the ECGs under {args.data} with {bundle.name} v{bundle.version}...",
              file=sys.stderr)
        queue = ReviewQueue.build(bundle, args.data, compare=other, rule=args.rule,
                                  size=args.size, seed=args.seed, threshold=args.threshold,
                                  pattern=args.pattern, plot_dir=args.plot_cache)
    except (BundleError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    # a SIGTERM whose exception was dropped while the queue was scored (see ecgrisk.signals)
    # stops the command here: once uvicorn runs, it owns the signals and the server would start
    # as if none had come (a fresh-clone CI run under load saw that: test_review[SIGTERM-early])
    raise_if_interrupted()
    if args.host in LOOPBACK:
        allowed = list(LOOPBACK)
    else:
        allowed = None
        print(f"warning: serving on {args.host}, reachable from other machines; put it behind "
              "an HTTPS proxy and pass --secure-cookie", file=sys.stderr)
    app = create_app(args.db, queue, allowed_hosts=allowed, https_only=args.secure_cookie,
                     session_hours=args.session_hours, throttle=throttle)
    print(f"review app for {len(users)} annotator(s), {len(queue.items)} ECGs: "
          f"http://{args.host}:{args.port}/", file=sys.stderr)
    # behind a proxy, uvicorn takes the client address (which the sign-in throttle counts)
    # from X-Forwarded-For only when the proxy is in --forwarded-allow-ips
    extra = ({} if args.forwarded_allow_ips is None
             else {"forwarded_allow_ips": args.forwarded_allow_ips})
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", **extra)
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``review`` (serve) and ``review add-user`` on the ``ecgrisk`` CLI.

    Returns the ``review`` parser.
    """
    from ecgrisk.review.throttle import DEFAULT_PER_ACCOUNT, DEFAULT_PER_ADDRESS

    r = subparsers.add_parser(
        "review", help="web app where cardiologists judge the model's readings",
        description="Serve the review app, or manage its annotator accounts (add-user).")
    r.add_argument("--db", help="feedback store: an SQLite file or an SQLAlchemy URL "
                                "(postgresql+psycopg://...); accounts are kept in it too")
    r.add_argument("--model", help="model bundle whose readings are judged (model.pt)")
    r.add_argument("--data", help="folder of ECG records to review")
    r.add_argument("--compare", default=None,
                   help="a second bundle: comparison mode (reading A, B or tie)")
    r.add_argument("--rule", default=None,
                   choices=["uncertainty", "margin", "disagreement", "random"],
                   help="order of the queue (default: uncertainty; disagreement with --compare)")
    r.add_argument("--size", type=int, default=None, help="at most N ECGs in the queue")
    r.add_argument("--seed", type=int, default=0, help="seed of --rule random")
    r.add_argument("--threshold", type=float, default=0.5,
                   help="probability at which a statement enters the reading")
    r.add_argument("--pattern", default=None, help="glob of records to use, e.g. '*_lr.hea'")
    r.add_argument("--plot-cache", default=None, help="folder for the rendered PNGs")
    r.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    r.add_argument("--port", type=int, default=8000)
    r.add_argument("--secure-cookie", action="store_true",
                   help="mark the session cookie Secure (when served behind HTTPS)")
    r.add_argument("--session-hours", type=float, default=12.0,
                   help="how long a sign-in lasts (default: 12)")
    r.add_argument("--login-limit-account", default=DEFAULT_PER_ACCOUNT, metavar="RATE",
                   help="failed sign-ins allowed per account name, then 429 until the window "
                        f"frees a slot (default: '{DEFAULT_PER_ACCOUNT}')")
    r.add_argument("--login-limit-address", default=DEFAULT_PER_ADDRESS, metavar="RATE",
                   help="failed sign-ins allowed per client address, any account "
                        f"(default: '{DEFAULT_PER_ADDRESS}')")
    r.add_argument("--forwarded-allow-ips", default=None, metavar="IPS",
                   help="proxies trusted to set X-Forwarded-For (uvicorn's option; default "
                        "127.0.0.1): the client address the sign-in limit counts")
    r.set_defaults(func=_serve)
    sub = r.add_subparsers(dest="review_command", required=False, metavar="{add-user}")
    a = sub.add_parser("add-user", help="create an annotator account (password hashed, scrypt)")
    a.add_argument("name", help="annotator name (letters, digits, . _ @ -)")
    # SUPPRESS: a --db given before 'add-user' (on the review parser) is kept
    a.add_argument("--db", default=argparse.SUPPRESS,
                   help="feedback store (SQLite file or SQLAlchemy URL)")
    a.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of stdin")
    a.add_argument("--replace", action="store_true", help="set a new password for an existing user")
    a.set_defaults(func=_add_user)
    return r


def main(argv: list[str] | None = None) -> int:
    """Run ``review ...`` on its own (``python -m ecgrisk.review.cli review ...``)."""
    parser = argparse.ArgumentParser(prog="ecgrisk")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
