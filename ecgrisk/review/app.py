"""The review web app (Starlette): login, the review page, 12-lead plots and a JSON API.

Routes
------
``GET /login``, ``POST /login``, ``POST /logout``
    Annotator login (scrypt-hashed passwords, see :mod:`ecgrisk.review.auth`).
``GET /``
    The review page (verdicts, or A/B/tie in comparison mode).
``GET /plot/{ecg_id}.png``
    The cached standard 12-lead sheet of a queued ECG.
``GET /api/queue?limit=N&skip=ID...``
    Progress and the next ``N`` ECGs the logged-in annotator has not judged.
``POST /api/feedback``
    One judgement (JSON), written to the feedback store in one transaction.

Every route but ``/login`` and ``/static`` needs a session: pages redirect to ``/login``, the API
and plots answer 401. Sessions are signed cookies (HttpOnly, SameSite=Strict). Every POST must
carry the session's CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``) and, when
the browser sends one, an ``Origin`` of this server; otherwise 403 and nothing is written.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ecgrisk.feedback.records import FeedbackError, Preference, Verdict, positives
from ecgrisk.feedback.store import FeedbackStore
from ecgrisk.io import ECGReadError
from ecgrisk.review import auth
from ecgrisk.review.queue import ReviewQueue

HERE = Path(__file__).parent
SOURCE = "review"  # provenance of every record this app writes (the store's ``source`` column)
MAX_LIMIT = 20

# Short descriptions of the PTB-XL superclasses; other statements are shown by their code.
DESCRIPTIONS = {"NORM": "Normal ECG", "MI": "Myocardial infarction", "STTC": "ST/T change",
                "CD": "Conduction disturbance", "HYP": "Hypertrophy"}

_SECURITY_HEADERS = {
    # the page handles keystrokes: never let another site frame it
    "Content-Security-Policy": ("default-src 'self'; img-src 'self'; script-src 'self'; "
                                "style-src 'self'; frame-ancestors 'none'; form-action 'self'; "
                                "base-uri 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

Handler = Callable[[Request], Awaitable[Response]]


class ReviewApp:
    """State shared by the routes: the store location, the queue and the templates.

    Parameters
    ----------
    db : the feedback store's SQLite file (annotator accounts live in the same file).
    queue : the scored review queue.
    """

    def __init__(self, db: str | os.PathLike, queue: ReviewQueue):
        self.db = os.fspath(db)
        self.queue = queue
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        with FeedbackStore(self.db):  # create or migrate the store once, up front
            pass

    # ------------------------------------------------------------------ store access

    def judged(self, user: str) -> set[str]:
        """ECG ids this annotator already judged for this model version (from the store)."""
        with FeedbackStore(self.db) as store:
            rows = store.rows(self.queue.kind, annotator=user,
                              model_version=self.queue.model_version)
        return {r.ecg_id for _, _, r in rows}

    def write(self, record: Verdict | Preference) -> int | None:
        """Store one record in its own transaction; its id, or None if already judged."""
        with FeedbackStore(self.db) as store:
            return store.add_first(record, source=SOURCE)

    # ------------------------------------------------------------------ judgements

    def make_record(self, user: str, body: dict[str, Any]) -> Verdict | Preference:
        """The feedback record for a JSON body; the reading comes from the server's scores.

        Raises
        ------
        KeyError
            The ECG is not in the queue.
        FeedbackError
            The body is malformed (the message says which field and why).
        """
        ecg_id = body.get("ecg_id")
        if not isinstance(ecg_id, str) or not ecg_id:
            raise FeedbackError("ecg_id must be a non-empty string")
        item = self.queue.by_id[ecg_id]
        note = body.get("note")
        if note is not None and not isinstance(note, str):
            raise FeedbackError("note must be a string")
        q = self.queue
        if q.compare is None:
            unknown = [k for k in body if k not in ("ecg_id", "marks", "missed", "note")]
            if unknown:
                raise FeedbackError(f"unknown field(s) {unknown} for a verdict")
            missed = body.get("missed", [])
            if not isinstance(missed, list):
                raise FeedbackError("missed must be a list of statements")
            bad = [s for s in missed if s not in q.classes]
            if bad:
                raise FeedbackError(f"missed names {bad}, not in the label list")
            return Verdict(ecg_id=ecg_id, ecg_path=item.path, reading=q.reading(item.probs),
                           marks=body.get("marks", {}), missed=missed, annotator=user,
                           model_version=q.model_version, note=note or None)
        unknown = [k for k in body if k not in ("ecg_id", "choice", "note")]
        if unknown:
            raise FeedbackError(f"unknown field(s) {unknown} for a comparison")
        a, b, swapped = q.shown_readings(item)
        primary = f"{q.model_name}@{q.model_version}"
        other = f"{q.compare[0]}@{q.compare[1]}"
        shown = f"A={other}, B={primary}" if swapped else f"A={primary}, B={other}"
        return Preference(ecg_id=ecg_id, ecg_path=item.path,
                          reading_a=positives(q.reading(a)), reading_b=positives(q.reading(b)),
                          choice=body.get("choice"), annotator=user,
                          model_version=q.model_version,
                          note=shown + (f"; {note}" if note else ""))


# ---------------------------------------------------------------------- request guards


class SecurityHeaders:
    """ASGI middleware adding :data:`_SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in _SECURITY_HEADERS.items():
                    if key not in headers:
                        headers[key] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _user(request: Request) -> str | None:
    return request.session.get("user")


class RevokedSessions:
    """ASGI middleware ending the session of an annotator whose password changed (or whose
    account went) since login: the signed cookie alone would stay valid until it expires."""

    def __init__(self, app, db):
        self.app, self.db = app, db

    async def __call__(self, scope, receive, send):
        session = scope.get("session") if scope["type"] == "http" else None
        if session and session.get("user"):
            if session.get("stamp") != auth.credential_stamp(self.db, session["user"]):
                session.clear()
        await self.app(scope, receive, send)


def _csrf(request: Request) -> str:
    """The session's CSRF token (created on first use, also before login)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = auth.new_token()
    return token


def _same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc == host
    referer = request.headers.get("referer")
    if referer is not None:
        return urlsplit(referer).netloc == host
    return True  # a non-browser client (no Origin): the CSRF token alone decides


def _forbidden(api: bool, why: str) -> Response:
    if api:
        return JSONResponse({"error": why}, status_code=403)
    return Response(why, status_code=403, media_type="text/plain")


def page(handler: Handler) -> Handler:
    """A route for people: no session -> 302 to the login page."""
    async def wrapped(request: Request) -> Response:
        if not _user(request):
            return RedirectResponse("/login", status_code=302)
        return await handler(request)
    return wrapped


def api(handler: Handler) -> Handler:
    """A route for programs (and images): no session -> 401 JSON."""
    async def wrapped(request: Request) -> Response:
        if not _user(request):
            return JSONResponse({"error": "login required"}, status_code=401)
        return await handler(request)
    return wrapped


async def _check_post(request: Request, api_route: bool, form_token: str | None = None
                      ) -> Response | None:
    """403 unless the POST is same-origin and carries the session's CSRF token."""
    if not _same_origin(request):
        return _forbidden(api_route, "cross-site request refused")
    given = request.headers.get("x-csrf-token") or form_token
    if not auth.same_token(given, request.session.get("csrf")):
        return _forbidden(api_route, "missing or wrong CSRF token")
    return None


# ---------------------------------------------------------------------- the app


def create_app(db: str | os.PathLike, queue: ReviewQueue, *, secret_key: str | None = None,
               allowed_hosts: Sequence[str] | None = None, https_only: bool = False,
               session_hours: float = 12.0) -> Starlette:
    """The review app as an ASGI application.

    Parameters
    ----------
    db : feedback store SQLite file; annotators must exist in it (``ecgrisk review add-user``).
    queue : see :meth:`ReviewQueue.build`.
    secret_key : signs session cookies; a fresh random key by default (sessions end when the
        server stops; judgements are in the store, so nothing is lost).
    allowed_hosts : ``Host`` headers to answer (guards against DNS rebinding); all if ``None``.
    https_only : mark the cookie ``Secure`` (behind an HTTPS proxy).
    session_hours : session lifetime.
    """
    state = ReviewApp(db, queue)
    templates = state.templates

    async def login_page(request: Request) -> Response:
        if _user(request):
            return RedirectResponse("/", status_code=302)
        return templates.TemplateResponse(request, "login.html", {"csrf": _csrf(request),
                                                                   "error": None})

    async def login(request: Request) -> Response:
        form = await request.form()
        refused = await _check_post(request, False, str(form.get("csrf_token") or ""))
        if refused is not None:
            return refused
        name, password = str(form.get("username") or ""), str(form.get("password") or "")
        ok = await run_in_threadpool(auth.authenticate, state.db, name, password)
        if not ok:
            return templates.TemplateResponse(
                request, "login.html", {"csrf": _csrf(request), "username": name,
                                        "error": "Unknown user or wrong password."},
                status_code=401)
        request.session.clear()  # a new session on login: no fixation of a pre-login cookie
        stamp = await run_in_threadpool(auth.credential_stamp, state.db, name)
        request.session.update({"user": name, "csrf": auth.new_token(), "stamp": stamp})
        return RedirectResponse("/", status_code=303)

    async def logout(request: Request) -> Response:
        form = await request.form()
        refused = await _check_post(request, False, str(form.get("csrf_token") or ""))
        if refused is not None:
            return refused
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def review(request: Request) -> Response:
        q = state.queue
        labels = [{"name": c, "description": DESCRIPTIONS.get(c, "")} for c in q.classes]
        return templates.TemplateResponse(request, "review.html", {
            "csrf": _csrf(request), "user": _user(request), "mode": q.mode,
            "model": f"{q.model_name} v{q.model_version}",
            "compare": None if q.compare is None else f"{q.compare[0]} v{q.compare[1]}",
            "labels": labels, "threshold": q.threshold})

    async def plot(request: Request) -> Response:
        ecg_id = request.path_params["ecg_id"]
        item = state.queue.by_id.get(ecg_id)
        if item is None:
            return JSONResponse({"error": f"no ECG {ecg_id!r} in the queue"}, status_code=404)
        try:
            path = await run_in_threadpool(state.queue.plot_png, item)
        except ECGReadError as err:  # the file changed or vanished since startup
            return JSONResponse({"error": str(err)}, status_code=500)
        return FileResponse(path, media_type="image/png",
                            headers={"Cache-Control": "private, max-age=3600"})

    async def api_queue(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "3"))
        except ValueError:
            return JSONResponse({"error": "limit must be an integer"}, status_code=400)
        limit = max(0, min(limit, MAX_LIMIT))
        user = _user(request)
        judged = await run_in_threadpool(state.judged, user)
        q = state.queue
        pending = q.pending(judged, request.query_params.getlist("skip"))
        return JSONResponse({
            "mode": q.mode, "user": user, "threshold": q.threshold,
            "model": {"name": q.model_name, "version": q.model_version},
            "compare": None if q.compare is None else {"name": q.compare[0],
                                                        "version": q.compare[1]},
            "classes": q.classes, "progress": q.progress(judged),
            "items": [q.to_json(it) for it in pending[:limit]],
        }, headers={"Cache-Control": "no-store"})

    async def api_feedback(request: Request) -> Response:
        refused = await _check_post(request, True)
        if refused is not None:
            return refused
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send the judgement as application/json"},
                                status_code=415)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "body is not valid JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
        user = _user(request)
        try:
            record = state.make_record(user, body)
        except KeyError:
            return JSONResponse({"error": f"no ECG {body.get('ecg_id')!r} in the queue"},
                                status_code=404)
        except FeedbackError as err:
            return JSONResponse({"error": str(err)}, status_code=400)

        def write() -> tuple[int | None, set[str]]:
            row_id = state.write(record)  # checks "already judged" in the same transaction
            return row_id, state.judged(user)

        row_id, judged = await run_in_threadpool(write)
        if row_id is None:
            return JSONResponse({"error": f"{user} already judged {record.ecg_id}",
                                 "progress": state.queue.progress(judged)}, status_code=409)
        return JSONResponse({"id": row_id, "kind": record.kind,
                             "progress": state.queue.progress(judged)}, status_code=201)

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", page(logout), methods=["POST"]),
        Route("/", page(review), methods=["GET"]),
        Route("/plot/{ecg_id:path}.png", api(plot), methods=["GET"]),
        Route("/api/queue", api(api_queue), methods=["GET"]),
        Route("/api/feedback", api(api_feedback), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [Middleware(SessionMiddleware, secret_key=secret_key or auth.new_token(),
                             session_cookie="ecgrisk_review", same_site="strict",
                             https_only=https_only, max_age=int(session_hours * 3600)),
                  Middleware(RevokedSessions, db=state.db)]
    if allowed_hosts is not None:
        middleware.insert(0, Middleware(TrustedHostMiddleware,
                                        allowed_hosts=list(allowed_hosts)))
    middleware.insert(0, Middleware(SecurityHeaders))
    app = Starlette(routes=routes, middleware=middleware)
    app.state.review = state
    return app
