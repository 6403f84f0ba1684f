"""Review accounts and sessions in the feedback store (SQLite and PostgreSQL), the migration of
old accounts, and the sign-in throttle (per account, per address, before any scrypt run)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import sqlite3
import threading
import time
import warnings

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
pytest.importorskip("jinja2")
pytest.importorskip("multipart")
pytest.importorskip("limits")

import httpx  # noqa: E402

with warnings.catch_warnings():  # starlette >= 1.x nudges towards httpx2; httpx still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from review_support import (  # noqa: E402
    PASSWORD,
    add_accounts,
    cheap_hashes,
    copy_records,
    fresh_store_url,
    login,
    make_bundle,
    post_feedback,
    try_login,
)

from ecgrisk.bundle import Bundle  # noqa: E402
from ecgrisk.feedback import FeedbackStore  # noqa: E402
from ecgrisk.feedback.backends import open_backend  # noqa: E402
from ecgrisk.feedback.migrations import SCHEMA_VERSION, migrate  # noqa: E402
from ecgrisk.review import auth  # noqa: E402
from ecgrisk.review.app import create_app  # noqa: E402
from ecgrisk.review.cli import main as review_main  # noqa: E402
from ecgrisk.review.queue import ReviewQueue  # noqa: E402
from ecgrisk.review.throttle import Attempt, LoginThrottle  # noqa: E402

FIFTEEN_MIN = 15 * 60


@pytest.fixture(scope="module")
def queue(ptbxl_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("review-accounts")
    bundle = Bundle.load(make_bundle(root / "model.pt", [2.0, -2.0, 1.5, -2.0, -2.0]))
    return ReviewQueue.build(bundle, copy_records(ptbxl_root, root / "data"),
                             plot_dir=root / "plots")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    with fresh_store_url(request.param, tmp_path) as url:
        yield url


def _session_token(client) -> str | None:
    """The session token inside the signed cookie (base64 JSON, then timestamp and signature)."""
    value = client.cookies.get("ecgrisk_review")
    if not value:
        return None
    data = value.split(".")[0]
    return json.loads(base64.b64decode(data + "=" * (-len(data) % 4))).get("sid")


def _stored_sessions(store) -> list[tuple[str, str]]:
    with store._backend.transaction(write=False) as tx:
        return tx.query("SELECT token_hash, account FROM sessions ORDER BY account")


# ------------------------------------------------------------------------------- both stores


def test_add_user_login_judge_export_logout_on_each_store(store_url, queue, monkeypatch):
    for name in ("dr-a", "dr-b"):
        monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
        with cheap_hashes():
            assert review_main(["review", "add-user", name, "--db", store_url,
                                "--password-stdin"]) == 0
    app = create_app(store_url, queue)
    try:
        client = TestClient(app)
        token = login(client, "dr-a")
        item = queue.items[0]
        r = post_feedback(client, token, {"ecg_id": item.ecg_id, "marks": {"STTC": "wrong"},
                                          "missed": ["CD"]})
        assert r.status_code == 201 and r.json()["progress"] == {"judged": 1, "total": 4}
        assert client.get("/api/queue").json()["progress"]["judged"] == 1
        lines = client.get("/export/judgements.jsonl").text.splitlines()
        assert [json.loads(x)["ecg_id"] for x in lines] == [item.ecg_id]

        # the store keeps the session's digest, never the token the cookie carries
        sid = _session_token(client)
        with FeedbackStore(store_url) as store:
            assert _stored_sessions(store) == [(hashlib.sha256(sid.encode()).hexdigest(),
                                                "dr-a")]
            (v,) = store.verdicts()
            assert (v.annotator, v.marks, v.missed) == ("dr-a", {"STTC": "wrong"}, ["CD"])
        copied = client.cookies.get("ecgrisk_review")

        # logging out ends the session in the store: a copy of the cookie is no longer a login
        assert client.post("/logout", data={"csrf_token": token},
                           follow_redirects=False).status_code == 303
        thief = TestClient(app)
        thief.cookies.set("ecgrisk_review", copied)
        assert thief.get("/api/queue").status_code == 401
        with FeedbackStore(store_url) as store:
            assert _stored_sessions(store) == []
            assert store.accounts.names() == ["dr-a", "dr-b"]
    finally:
        app.state.review.close()


def test_simultaneous_submissions_store_one_judgement_on_each_store(store_url, queue):
    """A double-click or a retried request: eight identical posts at once, one row."""
    add_accounts(store_url, "dr-a")
    app = create_app(store_url, queue)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            page = await c.get("/login")
            tok = page.text.split('name="csrf_token" value="')[1].split('"')[0]
            await c.post("/login", data={"username": "dr-a", "password": PASSWORD,
                                         "csrf_token": tok})
            csrf = (await c.get("/")).text.split('name="csrf-token" content="')[1].split('"')[0]
            first = (await c.get("/api/queue")).json()["items"][0]["ecg_id"]
            body = {"ecg_id": first, "marks": {}, "missed": []}
            posts = [c.post("/api/feedback", json=body, headers={"X-CSRF-Token": csrf})
                     for _ in range(8)]
            return first, sorted(r.status_code for r in await asyncio.gather(*posts))

    try:
        ecg_id, codes = asyncio.run(run())
    finally:
        app.state.review.close()
    assert codes == [201] + [409] * 7
    with FeedbackStore(store_url) as store:
        assert len(store.verdicts(ecg_id=ecg_id)) == 1


# ------------------------------------------------------------------------------- migration


_LEGACY_USERS = """CREATE TABLE review_users (
    name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, created_at TEXT NOT NULL)"""


@pytest.mark.parametrize("with_store_tables", [True, False])
def test_accounts_of_an_older_release_are_migrated(tmp_path, queue, with_store_tables):
    """Earlier releases kept accounts in a ``review_users`` table beside a v2 store (or alone,
    when add-user ran before the store was first opened); opening the store moves them."""
    path = tmp_path / "old.db"
    if with_store_tables:
        backend = open_backend(path, 5.0)
        assert migrate(backend, target=2) == 2
        backend.close()
    with cheap_hashes():
        hashes = {n: auth.hash_password(PASSWORD) for n in ("dr-old", "dr-older")}
    with sqlite3.connect(path) as conn:
        conn.execute(_LEGACY_USERS)
        conn.executemany("INSERT INTO review_users VALUES (?, ?, ?)",
                         [(n, h, f"2024-01-0{i}T00:00:00+00:00")
                          for i, (n, h) in enumerate(hashes.items(), start=1)])
    conn.close()

    with FeedbackStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 3
        assert store.accounts.names() == ["dr-old", "dr-older"]
        old = store.accounts.get("dr-old")
        assert (old.password_hash, old.created_at) == (hashes["dr-old"],
                                                       "2024-01-01T00:00:00+00:00")
        assert auth.authenticate(store, "dr-older", PASSWORD)
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert "review_users" not in tables and {"accounts", "sessions"} <= tables
    app = create_app(path, queue)  # and the app signs them in
    try:
        login(TestClient(app), "dr-old")
    finally:
        app.state.review.close()


# ------------------------------------------------------------------------------- throttle


def test_throttle_refuses_after_the_limit_without_checking():
    throttle = LoginThrottle("3 per 15 minutes", "10 per 15 minutes")
    calls = []

    def check(ok):
        return lambda: calls.append(ok) or ok

    for _ in range(3):
        assert throttle.attempt("dr-a", "10.0.0.1", check(False)) == Attempt(ok=False)
    refused = throttle.attempt("dr-a", "10.0.0.1", check(True))  # even the right password
    assert not refused.ok and FIFTEEN_MIN - 5 <= refused.retry_after <= FIFTEEN_MIN
    assert len(calls) == 3  # no check ran for the refused attempt
    assert throttle.attempt("dr-a", "10.0.0.9", check(True)).throttled  # from anywhere
    # another account at the same address is not held back by dr-a's failures
    assert throttle.attempt("dr-b", "10.0.0.1", check(True)).ok


def test_a_success_clears_its_accounts_failures():
    throttle = LoginThrottle("3 per 15 minutes", "10 per 15 minutes")
    for _ in range(2):
        throttle.attempt("dr-a", "10.0.0.1", lambda: False)
    assert throttle.attempt("dr-a", "10.0.0.1", lambda: True).ok
    for _ in range(2):  # without the clearing, the second of these would reach the limit
        throttle.attempt("dr-a", "10.0.0.1", lambda: False)
    assert throttle.retry_after("dr-a", "10.0.0.1") == 0


def test_the_address_limit_counts_failures_over_all_names():
    throttle = LoginThrottle("3 per 15 minutes", "4 per 15 minutes")
    for name in ("x1", "x2", "x3", "x4"):
        throttle.attempt(name, "10.0.0.1", lambda: False)
    assert throttle.attempt("dr-b", "10.0.0.1", lambda: True).throttled
    assert throttle.attempt("dr-b", "10.0.0.2", lambda: True).ok


def test_a_concurrent_flood_runs_only_the_allowed_checks():
    """Twelve guesses at once: with one check at a time, exactly the limit's three run scrypt."""
    throttle = LoginThrottle("3 per 15 minutes", "100 per 15 minutes", concurrent_checks=1)
    calls, results = [], []
    start = threading.Barrier(12)

    def guess():
        start.wait()
        results.append(throttle.attempt("dr-a", "10.0.0.1",
                                        lambda: calls.append(1) or time.sleep(0.01) or False))

    threads = [threading.Thread(target=guess) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(calls) == 3
    assert sorted(r.throttled for r in results) == [False] * 3 + [True] * 9


def test_bad_limits_are_named():
    with pytest.raises(ValueError, match="per-account sign-in limit 'five a minute'"):
        LoginThrottle("five a minute")
    with pytest.raises(ValueError, match="concurrent_checks"):
        LoginThrottle(concurrent_checks=0)


def test_login_answers_429_with_retry_after_before_scrypt(tmp_path, queue, monkeypatch):
    db = tmp_path / "fb.db"
    add_accounts(db, "dr-a", "dr-b")
    runs = []
    real = auth.verify_password
    monkeypatch.setattr(auth, "verify_password", lambda *a: runs.append(1) or real(*a))
    app = create_app(db, queue, throttle=LoginThrottle("2 per 15 minutes", "4 per 15 minutes"))
    try:
        clinic = TestClient(app, client=("10.0.0.1", 5000))
        for _ in range(2):
            assert try_login(clinic, "dr-a", "wrong password").status_code == 401
        assert len(runs) == 2
        r = try_login(clinic, "dr-a", PASSWORD)
        assert r.status_code == 429 and "Too many failed sign-ins" in r.text
        assert FIFTEEN_MIN - 5 <= int(r.headers["retry-after"]) <= FIFTEEN_MIN
        assert "Try again in 15 minutes" in r.text
        assert len(runs) == 2  # refused before the password was checked
        # a colleague at the same address signs in: dr-a's failures are dr-a's
        assert try_login(TestClient(app, client=("10.0.0.1", 5001)), "dr-b").status_code == 303
        # two more failures from this address, under other names, use up its 4
        for name in ("nobody", "dr-c"):
            assert try_login(clinic, name, "wrong password").status_code == 401
        assert try_login(TestClient(app, client=("10.0.0.1", 5002)), "dr-b").status_code == 429
        assert try_login(TestClient(app, client=("10.0.0.2", 5000)), "dr-b").status_code == 303
    finally:
        app.state.review.close()


def test_a_name_with_a_final_newline_is_refused_and_replace_says_what_it_did(tmp_path, monkeypatch,
                                                                           capsys):
    # found in review: 'dr-a\n' passed the name check (an account nobody could sign in to), and
    # --replace on a misspelled name created a second account while printing "updated"
    from ecgrisk.review.auth import AuthError, check_name

    with pytest.raises(AuthError):
        check_name("dr-a\n")
    db = str(tmp_path / "fb.db")
    for argv, said in ((["dr-a"], "added"), (["dr-a", "--replace"], "updated"), (["dr-b", "--replace"], "added")):
        monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
        with cheap_hashes():
            assert review_main(["review", "add-user", *argv, "--db", db, "--password-stdin"]) == 0
        assert f"annotator {argv[0]!r} {said}" in capsys.readouterr().out


def test_an_ecg_whose_file_name_holds_url_characters_still_shows_its_plot(ptbxl_root, tmp_path,
                                                                         monkeypatch):
    # found in review: '/plot/b#1.png' was cut at '#', and the cardiologist saw a blank sheet
    import numpy as np

    from ecgrisk.io import read_ecg

    ecg = read_ecg(copy_records(ptbxl_root, tmp_path / "src") / "00001_lr")
    data = tmp_path / "data"  # the one ECG, whatever the queue would choose among several
    data.mkdir()
    np.savez(data / "Patient #1?.npz", signal=ecg.signal, fs=ecg.fs)
    bundle = Bundle.load(make_bundle(tmp_path / "model.pt", [2.0, -2.0, 1.5, -2.0, -2.0]))
    queue = ReviewQueue.build(bundle, data, plot_dir=tmp_path / "plots")
    db = str(tmp_path / "fb.db")
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    with cheap_hashes():
        assert review_main(["review", "add-user", "dr-a", "--db", db, "--password-stdin"]) == 0
    app = create_app(db, queue)
    try:
        client = TestClient(app)
        login(client)
        odd = next(i for i in client.get("/api/queue").json()["items"] if "#" in i["ecg_id"])
        assert odd["plot_url"] == "/plot/Patient%20%231%3F.png"
        r = client.get(odd["plot_url"])
        assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        app.state.review.close()
