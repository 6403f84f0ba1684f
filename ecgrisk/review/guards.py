"""Request guards of the review app: who is signed in, CSRF and origin checks, security headers.

Every route but ``/login`` and ``/static`` needs a session: pages (:func:`page`) redirect to
``/login``, the API and plots (:func:`api`) answer 401. The signed session cookie (HttpOnly,
SameSite=Strict) carries a session token and the CSRF token; :class:`StoredSessions` accepts the
session token only while the store holds a live session for it, so logging out or a new
password ends a session everywhere at once. Every POST must carry the session's CSRF token (form
field ``csrf_token`` or header ``X-CSRF-Token``) and, when the browser sends one, an ``Origin``
of this server; otherwise 403 and nothing is written (:func:`check_post`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from ecgrisk.feedback.store import FeedbackStore
from ecgrisk.review import auth

SECURITY_HEADERS = {
    # the page handles keystrokes: never let another site frame it
    "Content-Security-Policy": ("default-src 'self'; img-src 'self'; script-src 'self'; "
                                "style-src 'self'; frame-ancestors 'none'; form-action 'self'; "
                                "base-uri 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
_USER = "ecgrisk.review.user"  # the scope key StoredSessions sets

Handler = Callable[[Request], Awaitable[Response]]


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    if key not in headers:
                        headers[key] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class StoredSessions:
    """ASGI middleware (inside the session-cookie middleware) naming the request's annotator.

    The cookie's session token counts only while the store holds a live session for it; a token
    whose session ended (logout, new password, expiry, account gone) is dropped from the cookie.
    """

    def __init__(self, app: Any, store: FeedbackStore):
        self.app, self.store = app, store

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            session = scope.get("session")
            user = None
            if session and session.get("sid"):
                user = await run_in_threadpool(auth.session_user, self.store, session["sid"])
                if user is None:
                    session.clear()
            scope[_USER] = user
        await self.app(scope, receive, send)


def current_user(request: Request) -> str | None:
    """The signed-in annotator of this request, or None."""
    return request.scope.get(_USER)


def csrf_token(request: Request) -> str:
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


def _forbidden(api_route: bool, why: str) -> Response:
    if api_route:
        return JSONResponse({"error": why}, status_code=403)
    return Response(why, status_code=403, media_type="text/plain")


def page(handler: Handler) -> Handler:
    """A route for people: no session -> 302 to the login page."""
    async def wrapped(request: Request) -> Response:
        if not current_user(request):
            return RedirectResponse("/login", status_code=302)
        return await handler(request)
    return wrapped


def api(handler: Handler) -> Handler:
    """A route for programs (and images): no session -> 401 JSON."""
    async def wrapped(request: Request) -> Response:
        if not current_user(request):
            return JSONResponse({"error": "login required"}, status_code=401)
        return await handler(request)
    return wrapped


async def check_post(request: Request, api_route: bool, form_token: str | None = None
                     ) -> Response | None:
    """403 unless the POST is same-origin and carries the session's CSRF token."""
    if not _same_origin(request):
        return _forbidden(api_route, "cross-site request refused")
    given = request.headers.get("x-csrf-token") or form_token
    if not auth.same_token(given, request.session.get("csrf")):
        return _forbidden(api_route, "missing or wrong CSRF token")
    return None
