"""Review app: login, sessions on every route, CSRF, judgements in the store, progress, resume."""

from __future__ import annotations

import csv
import io
import re
import shutil
import warnings
from datetime import datetime, timezone

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("httpx")
pytest.importorskip("jinja2")
pytest.importorskip("multipart")

from starlette.routing import Mount, Route  # noqa: E402

with warnings.catch_warnings():  # starlette >= 1.x nudges towards httpx2; httpx still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from review_support import (  # noqa: E402
    CLASSES,
    PASSWORD,
    add_accounts,
    cheap_hashes,
    copy_records,
    form_token,
    login,
    make_bundle,
    post_feedback,
)

from ecgrisk.bundle import Bundle  # noqa: E402
from ecgrisk.feedback import FeedbackStore, select  # noqa: E402
from ecgrisk.io import read_ecg  # noqa: E402
from ecgrisk.models import create_encoder  # noqa: E402
from ecgrisk.models.classifier import ECGClassifier  # noqa: E402
from ecgrisk.preprocess import Preprocessing, Scaler  # noqa: E402
from ecgrisk.review import auth  # noqa: E402
from ecgrisk.review.app import create_app  # noqa: E402
from ecgrisk.review.cli import main as review_main  # noqa: E402
from ecgrisk.review.demographics import ptbxl_demographics  # noqa: E402
from ecgrisk.review.queue import ReviewQueue  # noqa: E402
from ecgrisk.scoring.predict import predict_proba  # noqa: E402


@pytest.fixture(scope="module")
def env(ptbxl_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    bundle_path = make_bundle(root / "model.pt", [2.0, -2.0, 1.5, -2.0, -2.0])
    other_path = make_bundle(root / "other.pt", [-2.0, 2.0, 1.5, -2.0, -2.0], version="8",
                             name="other", seed=1)
    data = copy_records(ptbxl_root, root / "data")
    bundle = Bundle.load(bundle_path)
    queue = ReviewQueue.build(bundle, data, plot_dir=root / "plots")
    template = root / "template.db"
    add_accounts(template, "dr-a", "dr-b")
    return {"root": root, "bundle": bundle, "bundle_path": bundle_path, "other": other_path,
            "data": data, "queue": queue, "template": template}


@pytest.fixture
def db(env, tmp_path):
    path = tmp_path / "feedback.db"
    shutil.copy(env["template"], path)  # the accounts, without paying scrypt per test
    return path


@pytest.fixture
def app(env, db):
    app = create_app(db, env["queue"])
    yield app
    app.state.review.close()


# ------------------------------------------------------------------------------- auth


def test_password_hash_is_salted_and_verifies():
    h1, h2 = auth.hash_password(PASSWORD), auth.hash_password(PASSWORD)
    assert h1.startswith("scrypt$32768$8$1$") and h1 != h2  # fresh salt each time
    assert PASSWORD not in h1
    assert auth.verify_password(PASSWORD, h1) and auth.verify_password(PASSWORD, h2)
    assert not auth.verify_password(PASSWORD + "!", h1)
    assert not auth.verify_password(PASSWORD, "md5$abc")


def test_login_refuses_wrong_password_and_unknown_user(app):
    client = TestClient(app)
    token = form_token(client)
    for name, pw in (("dr-a", "wrong password"), ("nobody", PASSWORD), ("bad name!", PASSWORD)):
        r = client.post("/login", data={"username": name, "password": pw, "csrf_token": token},
                        follow_redirects=False)
        assert r.status_code == 401 and "wrong password" in r.text
        assert client.get("/", follow_redirects=False).status_code == 302
    login(client)
    r = client.get("/")
    assert r.status_code == 200 and "dr-a" in r.text


def test_session_cookie_flags(app):
    client = TestClient(app)
    client.get("/login")
    r = client.post("/login", data={"username": "dr-a", "password": PASSWORD,
                                    "csrf_token": form_token(client)},
                    follow_redirects=False)
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]



def test_every_route_needs_a_session(app, env):
    ecg_id = env["queue"].items[0].ecg_id
    probes = {  # every route of the app; a new route without a probe fails below
        ("GET", "/"): ("/", 302),
        ("GET", "/agreement"): ("/agreement", 302),
        ("GET", "/export/judgements.{fmt}"): ("/export/judgements.csv", 302),
        ("GET", "/plot/{ecg_id:path}.png"): (f"/plot/{ecg_id}.png", 401),
        ("GET", "/evidence/{ecg_id:path}.png"): (f"/evidence/{ecg_id}.png", 401),
        ("GET", "/api/queue"): ("/api/queue", 401),
        ("POST", "/api/feedback"): ("/api/feedback", 401),
        ("POST", "/logout"): ("/logout", 302),
    }
    public = {"/login", "/static"}
    routes = {(m, r.path) for r in app.routes if isinstance(r, Route) and r.path not in public
              for m in r.methods - {"HEAD"}}
    assert routes == set(probes)
    assert {r.path for r in app.routes if isinstance(r, Mount)} == {"/static"}
    client = TestClient(app)
    for (method, _), (url, status) in probes.items():
        r = client.request(method, url, follow_redirects=False)
        assert r.status_code == status, (method, url, r.status_code)
        if status == 302:
            assert r.headers["location"] == "/login"
        else:
            assert r.json() == {"error": "login required"}
    # a forged cookie is no session either
    client.cookies.set("ecgrisk_review", "eyJ1c2VyIjogImRyLWEifQ==.forged.sig")
    assert client.get("/api/queue").status_code == 401


def test_csrf_and_origin_refused_nothing_written(app, env, db):
    client = TestClient(app)
    token = login(client)
    body = {"ecg_id": env["queue"].items[0].ecg_id, "marks": {}, "missed": []}
    assert client.post("/api/feedback", json=body).status_code == 403
    assert post_feedback(client, "not-the-token", body).status_code == 403
    assert post_feedback(client, token, body, Origin="http://evil.example").status_code == 403
    assert post_feedback(client, token, body, **{"Sec-Fetch-Site": "cross-site"}).status_code == 403
    # logging out is a POST too
    assert client.post("/logout", data={"csrf_token": "x"}).status_code == 403
    # a login form posted without the page's token is refused before the password is checked
    fresh = TestClient(app)
    r = fresh.post("/login", data={"username": "dr-a", "password": PASSWORD})
    assert r.status_code == 403
    with FeedbackStore(db) as store:
        assert store.count() == 0
    # the same request with the token and our own origin goes through
    ok = post_feedback(client, token, body, Origin="http://testserver")
    assert ok.status_code == 201
    with FeedbackStore(db) as store:
        assert store.count() == 1


# ------------------------------------------------------------------------------- judgements


def test_queue_scores_and_order(app, env):
    queue, bundle = env["queue"], env["bundle"]
    probs = np.stack([it.probs for it in queue.items])
    # the probabilities are the shared predict function's, record by record
    for it in queue.items:
        ecg = read_ecg(it.path)
        np.testing.assert_allclose(it.probs, predict_proba(bundle, ecg.signal, ecg.fs), atol=1e-6)
    # items are in uncertainty order: select() over them returns the identity
    np.testing.assert_array_equal(select(probs, len(probs)), np.arange(len(probs)))
    client = TestClient(app)
    login(client)
    data = client.get("/api/queue", params={"limit": 2}).json()
    assert data["progress"] == {"judged": 0, "total": 4}
    assert data["model"] == {"name": "tiny", "version": "7"}
    assert [it["ecg_id"] for it in data["items"]] == [it.ecg_id for it in queue.items[:2]]
    first = data["items"][0]
    # bias +2 and +1.5 put NORM and STTC above 0.5; the list is sorted by probability
    assert [s["name"] for s in first["statements"] if s["positive"]] == ["NORM", "STTC"]
    ps = [s["p"] for s in first["statements"]]
    assert ps == sorted(ps, reverse=True)
    assert ps[0] == pytest.approx(queue.items[0].probs[0], abs=1e-4)


def test_judgement_lands_in_store(app, env, db):
    client = TestClient(app)
    token = login(client)
    item = env["queue"].items[0]
    before = datetime.now(timezone.utc).isoformat()
    r = post_feedback(client, token, {"ecg_id": item.ecg_id,
                                      "marks": {"NORM": "right", "STTC": "wrong"},
                                      "missed": ["CD"], "note": "borderline QT"})
    after = datetime.now(timezone.utc).isoformat()
    assert r.status_code == 201
    assert r.json()["progress"] == {"judged": 1, "total": 4}
    with FeedbackStore(db) as store:
        rows = store.rows("verdict")
    assert len(rows) == 1
    row_id, source, v = rows[0]
    assert row_id == r.json()["id"] and source == "review"
    assert (v.ecg_id, v.annotator, v.model_version) == (item.ecg_id, "dr-a", "7")
    assert before <= v.created_at <= after
    assert v.ecg_path == item.path
    assert v.reading == {"NORM": 1, "MI": 0, "STTC": 1, "CD": 0, "HYP": 0}
    assert v.marks == {"NORM": "right", "STTC": "wrong"} and v.missed == ["CD"]
    assert v.note == "borderline QT"
    assert v.corrected_reading(CLASSES).tolist() == [1, 0, 0, 1, 0]


def test_bad_judgements_refused_nothing_written(app, env, db):
    client = TestClient(app)
    token = login(client)
    ecg_id = env["queue"].items[0].ecg_id
    cases = [
        ({"ecg_id": ecg_id, "marks": {"MI": "wrong"}}, 400, "only shown positive"),
        ({"ecg_id": ecg_id, "missed": ["XYZ"]}, 400, "not in the label list"),
        ({"ecg_id": ecg_id, "marks": {"NORM": "maybe"}}, 400, "must be one of"),
        ({"ecg_id": ecg_id, "reading": {"MI": 1}}, 400, "unknown field"),
        ({"ecg_id": "../../etc/passwd"}, 404, "no ECG"),
    ]
    for body, status, text in cases:
        r = post_feedback(client, token, body)
        assert r.status_code == status and text in r.json()["error"], (body, r.text)
    r = client.post("/api/feedback", content=b"ecg_id=1", headers={
        "X-CSRF-Token": token, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    with FeedbackStore(db) as store:
        assert store.count() == 0


def test_progress_is_per_annotator(app, env):
    a, b = TestClient(app), TestClient(app)
    ta, _ = login(a, "dr-a"), login(b, "dr-b")
    for item in env["queue"].items[:2]:
        assert post_feedback(a, ta, {"ecg_id": item.ecg_id, "marks": {}}).status_code == 201
    assert a.get("/api/queue").json()["progress"] == {"judged": 2, "total": 4}
    assert b.get("/api/queue").json()["progress"] == {"judged": 0, "total": 4}
    assert [it["ecg_id"] for it in b.get("/api/queue", params={"limit": 1}).json()["items"]] == [
        env["queue"].items[0].ecg_id]


def test_resume_after_browser_closed(app, env, db):
    items = env["queue"].items
    first = TestClient(app)
    token = login(first)
    assert post_feedback(first, token, {"ecg_id": items[0].ecg_id, "marks": {}}).status_code == 201
    first.close()  # the browser closes: the cookie is gone
    again = TestClient(app)
    token = login(again)
    data = again.get("/api/queue", params={"limit": 4}).json()
    assert data["progress"] == {"judged": 1, "total": 4}
    assert [it["ecg_id"] for it in data["items"]] == [it.ecg_id for it in items[1:]]
    # a skipped ECG is left out only while the page asks so
    skip = again.get("/api/queue", params=[("limit", "4"), ("skip", items[1].ecg_id)]).json()
    assert [it["ecg_id"] for it in skip["items"]] == [it.ecg_id for it in items[2:]]
    # judging the same ECG twice is refused and writes nothing
    r = post_feedback(again, token, {"ecg_id": items[0].ecg_id, "marks": {}})
    assert r.status_code == 409
    with FeedbackStore(db) as store:
        assert store.count() == 1
    # a server restart (new secret, new app) on the same store keeps the position
    restarted_app = create_app(db, env["queue"])
    restarted = TestClient(restarted_app)
    login(restarted)
    assert restarted.get("/api/queue").json()["progress"]["judged"] == 1
    restarted_app.state.review.close()


def test_plot_is_a_cached_png(app, env):
    client = TestClient(app)
    login(client)
    item = env["queue"].items[0]
    r = client.get(f"/plot/{item.ecg_id}.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert env["queue"].plot_png(item).read_bytes() == r.content
    assert client.get("/plot/nope.png").status_code == 404


def test_evidence_overlay_is_the_same_sheet_coloured_for_the_top_statement(app, env):
    pytest.importorskip("captum")
    from PIL import Image

    client = TestClient(app)
    login(client)
    item = env["queue"].items[0]
    plain = client.get(f"/plot/{item.ecg_id}.png")
    r = client.get(f"/evidence/{item.ecg_id}.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    top = env["queue"].classes[int(np.argmax(item.probs))]
    assert r.headers["x-evidence-for"] == top
    assert client.get("/api/queue").json()["items"][0]["evidence_url"] == f"/evidence/{item.ecg_id}.png"
    a, b = (np.asarray(Image.open(io.BytesIO(x.content)).convert("RGB"), dtype=int)
            for x in (plain, r))
    assert a.shape == b.shape  # laid over the plain sheet on the page, pixel for pixel
    changed = (a != b).any(axis=2)
    # only the trace changes, and where it does it turns red or blue (the grid is pale pink)
    coloured = changed & ((b[..., 0] - b[..., 1] > 80) | (b[..., 2] - b[..., 1] > 80))
    assert coloured.sum() > 50 and changed.mean() < 0.05


def test_review_page_shows_model_keys_links_and_an_overlay_slot(app):
    client = TestClient(app)
    login(client)
    html = client.get("/").text
    assert "tiny v7" in html and "toggle right/wrong" in html and "/static/review.js" in html
    assert client.get("/static/review.js").status_code == 200
    for link in ('href="/agreement"', 'href="/export/judgements.csv"',
                 'href="/export/judgements.jsonl"'):
        assert link in html
    # the place an attribution overlay will use: an image over the plot, hidden until then
    assert 'id="ecg-overlay" class="overlay hidden"' in html


# ------------------------------------------------------------------------------- comparison


def test_comparison_mode_stores_preference(env, db):
    other = Bundle.load(env["other"])
    queue = ReviewQueue.build(env["bundle"], env["data"], compare=other,
                              plot_dir=env["root"] / "plots")
    app = create_app(db, queue)
    client = TestClient(app)
    token = login(client)
    data = client.get("/api/queue", params={"limit": 4}).json()
    assert data["mode"] == "compare" and data["progress"]["total"] == 4
    item = data["items"][0]
    readings = {k: [s["name"] for s in v] for k, v in item["readings"].items()}
    assert sorted(map(tuple, readings.values())) == [("MI", "STTC"), ("NORM", "STTC")]
    assert post_feedback(client, token, {"ecg_id": item["ecg_id"], "choice": "x"}
                         ).status_code == 400
    r = post_feedback(client, token, {"ecg_id": item["ecg_id"], "choice": "a"})
    assert r.status_code == 201 and r.json()["kind"] == "preference"
    with FeedbackStore(db) as store:
        (pref,) = store.preferences()
    assert (pref.reading_a, pref.reading_b) == (readings["a"], readings["b"])
    assert pref.choice == "a" and pref.annotator == "dr-a" and pref.model_version == "7"
    shown_a = "tiny@7" if readings["a"] == ["NORM", "STTC"] else "other@8"
    assert pref.note.startswith(f"A={shown_a}")
    app.state.review.close()


def test_compare_needs_same_labels(env, tmp_path):
    torch.manual_seed(0)
    model = ECGClassifier(create_encoder("xresnet1d18", base_channels=8), num_classes=4).eval()
    Bundle(model=model, classes=CLASSES[:4], preprocessing=Preprocessing(fs=100.0),
           scaler=Scaler(0.0, 1.0), temperature=np.ones(4)).save(tmp_path / "four.pt")
    with pytest.raises(ValueError, match="not the same list"):
        ReviewQueue.build(env["bundle"], env["data"], compare=Bundle.load(tmp_path / "four.pt"))


# ------------------------------------------------------------------------------- CLI


def test_add_user_cli(tmp_path, monkeypatch, capsys):
    db = tmp_path / "fb.db"
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    with cheap_hashes():
        assert review_main(["review", "add-user", "dr-c", "--db", str(db),
                            "--password-stdin"]) == 0
    with FeedbackStore(db) as store:
        assert auth.authenticate(store, "dr-c", PASSWORD)
        assert not auth.authenticate(store, "dr-c", "wrong password")
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))  # --db before add-user works
    assert review_main(["review", "--db", str(db), "add-user", "dr-c", "--password-stdin"]) == 1
    assert "already exists" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert review_main(["review", "add-user", "dr-d", "--db", str(db), "--password-stdin"]) == 1
    assert "at least 8" in capsys.readouterr().err
    with FeedbackStore(db) as store:
        assert auth.list_users(store) == ["dr-c"]
        with pytest.raises(auth.AuthError, match="user name"):
            auth.add_user(store, "bad name!", PASSWORD)
        # accounts share the store's database without disturbing its records
        assert store.count() == 0
    # a database that cannot be reached is named, with the reason, and nothing else happens
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    rc = review_main(["review", "add-user", "dr-e", "--db", "postgresql+psycopg://x@127.0.0.1:1/none",
                      "--password-stdin"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot open the feedback store postgresql+psycopg://x@127.0.0.1:1/none" in err


def test_serve_refuses_without_accounts_or_with_a_bad_limit(tmp_path, env, capsys):
    args = ["review", "--db", str(tmp_path / "empty.db"), "--model", str(env["bundle_path"]),
            "--data", str(env["data"])]
    assert review_main(args) == 2 and "add-user" in capsys.readouterr().err
    assert review_main(["review", "--db", str(tmp_path / "x.db")]) == 2
    assert "--model --data" in capsys.readouterr().err
    assert review_main([*args, "--login-limit-account", "five a minute"]) == 2
    assert "per-account sign-in limit 'five a minute'" in capsys.readouterr().err


def test_a_signal_dropped_while_the_queue_is_scored_stops_serve_before_the_server(
        env, db, monkeypatch, capsys):
    """SIGTERM's exception can be dropped where it cannot propagate (an at-fork hook, a
    ``__del__``); serving must not start as if no signal had come."""
    import os
    import signal
    import time

    import uvicorn

    from ecgrisk.cli import main as ecgrisk_main  # its stop_on_signals handles SIGTERM

    build = ReviewQueue.build

    def build_and_drop_a_sigterm(*args, **kwargs):
        queue = build(*args, **kwargs)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises Interrupted here at once...
        except BaseException:  # noqa: BLE001 - ...and this drops it, as such places do
            pass
        return queue

    served = []
    monkeypatch.setattr(ReviewQueue, "build", staticmethod(build_and_drop_a_sigterm))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: served.append(a))
    with pytest.raises(SystemExit) as stop:
        ecgrisk_main(["review", "--db", str(db), "--model", str(env["bundle_path"]),
                      "--data", str(env["data"])])
    assert stop.value.code == 143 and served == []
    assert "ecgrisk review: interrupted by SIGTERM" in capsys.readouterr().err


def test_simultaneous_submissions_store_one_judgement(app, env, db):
    """A double-click or a retried request: eight identical posts at once, one row."""
    import asyncio

    import httpx

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            page = await c.get("/login")
            tok = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
            await c.post("/login", data={"username": "dr-a", "password": PASSWORD, "csrf_token": tok})
            csrf = re.search(r'name="csrf-token" content="([^"]+)"', (await c.get("/")).text).group(1)
            first = (await c.get("/api/queue")).json()["items"][0]["ecg_id"]
            body = {"ecg_id": first, "marks": {}, "missed": []}
            posts = [c.post("/api/feedback", json=body, headers={"X-CSRF-Token": csrf})
                     for _ in range(8)]
            return first, sorted(r.status_code for r in await asyncio.gather(*posts))

    ecg_id, codes = asyncio.run(run())
    assert codes == [201] + [409] * 7
    with FeedbackStore(db) as store:
        assert len(store.verdicts(ecg_id=ecg_id)) == 1


def test_changing_a_password_ends_open_sessions(app, env, db):
    client = TestClient(app)
    login(client)
    assert client.get("/api/queue").status_code == 200
    with cheap_hashes(), FeedbackStore(db) as store:
        auth.add_user(store, "dr-a", "a-new-password-123", replace=True)
    assert client.get("/api/queue").status_code == 401
    assert client.get("/", follow_redirects=False).headers["location"].endswith("/login")
    assert login(client, "dr-a", "a-new-password-123")  # the new password works


# ------------------------------------------------------------------------------- age and sex


def test_ptbxl_age_and_sex_come_from_its_database_csv(tmp_path):
    root = tmp_path / "ptb-xl"
    (root / "records100" / "00000").mkdir(parents=True)
    (root / "ptbxl_database.csv").write_text(
        "ecg_id,age,sex,filename_lr,filename_hr\n"
        "1,56.0,1,records100/00000/00001_lr,records500/00000/00001_hr\n"
        "2,300.0,0,records100/00000/00002_lr,records500/00000/00002_hr\n"  # PTB-XL's "> 89"
        "3,,1,records100/00000/00003_lr,records500/00000/00003_hr\n")
    # found from the root and from a folder two levels inside it
    for where in (root, root / "records100" / "00000"):
        table = ptbxl_demographics(where)
        assert table[str(root / "records100/00000/00001_lr")] == (56.0, "F")
        assert table[str(root / "records500/00000/00001_hr")] == (56.0, "F")
        assert table[str(root / "records100/00000/00002_lr")] == (90.0, "M")
        assert table[str(root / "records100/00000/00003_lr")] == (None, "F")
    assert ptbxl_demographics(tmp_path / "elsewhere") == {}


def test_review_items_carry_age_and_sex_from_file_or_ptbxl_csv(env, ptbxl_root, tmp_path):
    # PTB-XL records read in place: the headers lack age and sex, the database CSV has them
    queue = ReviewQueue.build(env["bundle"], ptbxl_root, pattern="records100/00000/0000[12]_lr.hea",
                              plot_dir=tmp_path / "plots")
    with open(ptbxl_root / "ptbxl_database.csv", newline="") as fh:
        rows = {r["filename_lr"]: r for r in csv.DictReader(fh)}
    assert len(queue.items) == 2
    for item in queue.items:
        assert read_ecg(item.path).meta["age"] is None  # so it did come from the CSV
        row = rows[item.ecg_id]
        assert item.age == pytest.approx(min(float(row["age"]), 90.0))
        assert item.sex == {"0": "M", "1": "F"}[row["sex"].split(".")[0]]
        assert queue.to_json(item)["age"] == item.age and queue.to_json(item)["sex"] == item.sex
    # a Challenge-style header says it itself, and wins
    data = copy_records(ptbxl_root, tmp_path / "data")
    with open(data / "00001_lr.hea", "a") as fh:
        fh.write("# Age: 61\n# Sex: Female\n")
    queue = ReviewQueue.build(env["bundle"], data, pattern="0000[12]_lr.hea",
                              plot_dir=tmp_path / "plots")
    facts = {it.ecg_id: (it.age, it.sex) for it in queue.items}
    assert facts == {"00001_lr": (61.0, "F"), "00002_lr": (None, None)}
