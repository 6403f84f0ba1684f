"""The review web app (Starlette): login, the review page, agreement, exports and a JSON API.

Routes
------
``GET /login``, ``POST /login``, ``POST /logout``
    Annotator login (scrypt-hashed passwords, see :mod:`ecgrisk.review.auth`); failed sign-ins
    are throttled per account and per address (:mod:`ecgrisk.review.throttle`): 429 with
    ``Retry-After`` before any password is checked.
``GET /``
    The review page (verdicts, or A/B/tie in comparison mode).
``GET /agreement``
    Per-statement Cohen's kappa between annotators, and of each annotator with the model.
``GET /export/judgements.csv``, ``GET /export/judgements.jsonl``
    The signed-in annotator's judgements in this review (this model version), as a download.
``GET /plot/{ecg_id}.png``
    The cached standard 12-lead sheet of a queued ECG.
``GET /evidence/{ecg_id}.png``
    The same sheet with the evidence for the model's top statement coloured (integrated
    gradients; header ``X-Evidence-For`` names the statement); 404 without captum.
``GET /api/queue?limit=N&skip=ID...``
    Progress and the next ``N`` ECGs the logged-in annotator has not judged.
``POST /api/feedback``
    One judgement (JSON), written to the feedback store in one transaction.

Sessions, CSRF and origin checks: :mod:`ecgrisk.review.guards`.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ecgrisk.feedback import agreement
from ecgrisk.feedback.records import FeedbackError, Preference, Verdict, positives
from ecgrisk.feedback.store import FeedbackStore
from ecgrisk.io import ECGReadError
from ecgrisk.review import auth
from ecgrisk.review.guards import (
    SecurityHeaders,
    StoredSessions,
    api,
    check_post,
    csrf_token,
    current_user,
    page,
)
from ecgrisk.review.queue import ReviewQueue
from ecgrisk.review.throttle import Attempt, LoginThrottle

HERE = Path(__file__).parent
SOURCE = "review"  # provenance of every record this app writes (the store's ``source`` column)
MAX_LIMIT = 20
EXPORTS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}

# Short descriptions of the PTB-XL superclasses; other statements are shown by their code.
DESCRIPTIONS = {"NORM": "Normal ECG", "MI": "Myocardial infarction", "STTC": "ST/T change",
                "CD": "Conduction disturbance", "HYP": "Hypertrophy"}


class ReviewApp:
    """State shared by the routes: the store, the queue, the login throttle and the templates.

    Parameters
    ----------
    db : the feedback store (SQLite path or SQLAlchemy URL); annotator accounts and sessions
        live in it too. Opened once, for the app's life (the lifespan closes it).
    queue : the scored review queue.
    throttle : counts failed sign-ins (see :class:`~ecgrisk.review.throttle.LoginThrottle`).
    session_hours : how long a login lasts.
    """

    def __init__(self, db: str | os.PathLike, queue: ReviewQueue, throttle: LoginThrottle,
                 session_hours: float):
        self.db = os.fspath(db)
        self.queue = queue
        self.throttle = throttle
        self.session_hours = float(session_hours)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.store = FeedbackStore(self.db)  # creates or migrates the schema up front

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ accounts

    def sign_in(self, name: str, password: str, address: str) -> Attempt:
        """Check a password unless the account or the address is throttled (worker thread)."""
        # names that cannot be accounts share one counter: no memory per made-up name
        account = name if auth.NAME_RE.match(name) else "(not a user name)"
        return self.throttle.attempt(account, address,
                                     lambda: auth.authenticate(self.store, name, password))

    # ------------------------------------------------------------------ store access

    def judged(self, user: str) -> set[str]:
        """ECG ids this annotator already judged for this model version (from the store)."""
        rows = self.store.rows(self.queue.kind, annotator=user,
                               model_version=self.queue.model_version)
        return {r.ecg_id for _, _, r in rows}

    def write(self, record: Verdict | Preference) -> int | None:
        """Store one record in its own transaction; its id, or None if already judged."""
        return self.store.add_first(record, source=SOURCE)

    def export(self, user: str, fmt: str) -> str:
        """``user``'s judgements in this review (this model version) as CSV or JSONL text, in
        the store's export format (what ``ecgrisk feedback import`` reads back)."""
        buf = io.StringIO(newline="")
        self.store.dump(buf, fmt, kind=self.queue.kind, annotator=user,
                        model_version=self.queue.model_version)
        return buf.getvalue()

    def agreement(self) -> dict[str, Any]:
        """Agreement on this model version's judgements (see :mod:`ecgrisk.feedback.agreement`).

        ``annotator_kappa``: per-statement kappa for each pair of annotators;
        ``model_kappa``: each annotator against the model's call as shown (its threshold);
        ``preferences``: in comparison mode, the share of annotator pairs that chose alike.
        """
        q = self.queue
        verdicts = self.store.verdicts(model_version=q.model_version)
        prefs = self.store.preferences(model_version=q.model_version)
        return {"n_verdicts": len(verdicts), "n_preferences": len(prefs),
                "annotators": sorted({r.annotator for r in [*verdicts, *prefs]}),
                "annotator_kappa": agreement.statement_kappa(verdicts, q.classes),
                "model_kappa": agreement.model_kappa(verdicts, q.classes),
                "preferences": agreement.preference_agreement(prefs)}

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


def _wait_text(seconds: int) -> str:
    minutes = -(-seconds // 60)
    return f"{seconds} seconds" if seconds < 60 else f"{minutes} minute{'s' * (minutes != 1)}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", text)


def create_app(db: str | os.PathLike, queue: ReviewQueue, *, secret_key: str | None = None,
               allowed_hosts: Sequence[str] | None = None, https_only: bool = False,
               session_hours: float = 12.0, throttle: LoginThrottle | None = None) -> Starlette:
    """The review app as an ASGI application.

    Parameters
    ----------
    db : feedback store (SQLite path or SQLAlchemy URL); annotators must exist in it
        (``ecgrisk review add-user``).
    queue : see :meth:`ReviewQueue.build`.
    secret_key : signs session cookies; a fresh random key by default (signed-in annotators
        sign in again after a restart; judgements are in the store, so nothing is lost).
    allowed_hosts : ``Host`` headers to answer (guards against DNS rebinding); all if ``None``.
    https_only : mark the cookie ``Secure`` (behind an HTTPS proxy).
    session_hours : session lifetime.
    throttle : failed sign-in limits; :class:`LoginThrottle` defaults when ``None``.
    """
    state = ReviewApp(db, queue, throttle or LoginThrottle(), session_hours)
    templates = state.templates

    def login_form(request: Request, error: str | None, status: int, name: str = "",
                   headers: dict[str, str] | None = None) -> Response:
        return templates.TemplateResponse(
            request, "login.html", {"csrf": csrf_token(request), "username": name,
                                    "error": error}, status_code=status, headers=headers)

    async def login_page(request: Request) -> Response:
        if current_user(request):
            return RedirectResponse("/", status_code=302)
        return login_form(request, None, 200)

    async def login(request: Request) -> Response:
        form = await request.form()
        refused = await check_post(request, False, str(form.get("csrf_token") or ""))
        if refused is not None:
            return refused
        name, password = str(form.get("username") or ""), str(form.get("password") or "")
        address = request.client.host if request.client else "unknown"
        attempt = await run_in_threadpool(state.sign_in, name, password, address)
        if attempt.throttled:
            return login_form(
                request, "Too many failed sign-ins for this account or from this address. "
                f"Try again in {_wait_text(attempt.retry_after)}.", 429, name,
                headers={"Retry-After": str(attempt.retry_after)})
        if not attempt.ok:
            return login_form(request, "Unknown user or wrong password.", 401, name)
        token = await run_in_threadpool(auth.start_session, state.store, name,
                                        state.session_hours)
        request.session.clear()  # a new session on login: no fixation of a pre-login cookie
        request.session.update({"sid": token, "csrf": auth.new_token()})
        return RedirectResponse("/", status_code=303)

    async def logout(request: Request) -> Response:
        form = await request.form()
        refused = await check_post(request, False, str(form.get("csrf_token") or ""))
        if refused is not None:
            return refused
        await run_in_threadpool(auth.end_session, state.store, request.session.get("sid"))
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    def topbar(request: Request) -> dict[str, Any]:
        q = state.queue
        return {"csrf": csrf_token(request), "user": current_user(request), "mode": q.mode,
                "model": f"{q.model_name} v{q.model_version}",
                "compare": None if q.compare is None else f"{q.compare[0]} v{q.compare[1]}",
                "threshold": q.threshold}

    async def review(request: Request) -> Response:
        labels = [{"name": c, "description": DESCRIPTIONS.get(c, "")} for c in state.queue.classes]
        return templates.TemplateResponse(request, "review.html",
                                          {**topbar(request), "labels": labels})

    async def agreement_page(request: Request) -> Response:
        stats = await run_in_threadpool(state.agreement)
        return templates.TemplateResponse(request, "agreement.html",
                                          {**topbar(request), **stats},
                                          headers={"Cache-Control": "no-store"})

    async def export(request: Request) -> Response:
        fmt = request.path_params["fmt"]
        if fmt not in EXPORTS:
            return Response(f"no export format {fmt!r} (csv or jsonl)", status_code=404,
                            media_type="text/plain")
        user = current_user(request)
        text = await run_in_threadpool(state.export, user, fmt)
        q = state.queue
        name = _safe(f"judgements-{q.model_name}-v{q.model_version}-{user}.{fmt}")
        return Response(text, media_type=EXPORTS[fmt], headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store"})  # patients' data: no copy in caches

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

    async def evidence(request: Request) -> Response:
        ecg_id = request.path_params["ecg_id"]
        item = state.queue.by_id.get(ecg_id)
        if item is None or state.queue.explainer is None:
            why = "no evidence overlay (captum not installed)" if item else f"no ECG {ecg_id!r} in the queue"
            return JSONResponse({"error": why}, status_code=404)
        try:
            path, statement = await run_in_threadpool(state.queue.evidence_png, item)
        except ECGReadError as err:
            return JSONResponse({"error": str(err)}, status_code=500)
        return FileResponse(path, media_type="image/png", headers={
            "Cache-Control": "private, max-age=3600", "X-Evidence-For": statement})

    async def api_queue(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "3"))
        except ValueError:
            return JSONResponse({"error": "limit must be an integer"}, status_code=400)
        limit = max(0, min(limit, MAX_LIMIT))
        user = current_user(request)
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
        refused = await check_post(request, True)
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
        user = current_user(request)
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
        Route("/agreement", page(agreement_page), methods=["GET"]),
        Route("/export/judgements.{fmt}", page(export), methods=["GET"]),
        Route("/plot/{ecg_id:path}.png", api(plot), methods=["GET"]),
        Route("/evidence/{ecg_id:path}.png", api(evidence), methods=["GET"]),
        Route("/api/queue", api(api_queue), methods=["GET"]),
        Route("/api/feedback", api(api_feedback), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [Middleware(SessionMiddleware, secret_key=secret_key or auth.new_token(),
                             session_cookie="ecgrisk_review", same_site="strict",
                             https_only=https_only, max_age=int(session_hours * 3600)),
                  Middleware(StoredSessions, store=state.store)]
    if allowed_hosts is not None:
        middleware.insert(0, Middleware(TrustedHostMiddleware,
                                        allowed_hosts=list(allowed_hosts)))
    middleware.insert(0, Middleware(SecurityHeaders))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            state.close()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.review = state
    return app
