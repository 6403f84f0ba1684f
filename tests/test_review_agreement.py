"""Agreement (per-statement Cohen's kappa, checked by hand) and exports of an annotator's
judgements, on the review app's pages and through ``ecgrisk feedback export``."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import warnings

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
pytest.importorskip("jinja2")
pytest.importorskip("multipart")

with warnings.catch_warnings():  # starlette >= 1.x nudges towards httpx2; httpx still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from review_support import (  # noqa: E402
    add_accounts,
    copy_records,
    login,
    make_bundle,
    post_feedback,
)

from ecgrisk.bundle import Bundle  # noqa: E402
from ecgrisk.feedback import FeedbackStore  # noqa: E402
from ecgrisk.feedback.agreement import model_kappa, statement_kappa  # noqa: E402
from ecgrisk.feedback.cli import add_parsers as add_feedback_parsers  # noqa: E402
from ecgrisk.feedback.records import Verdict, read_feedback_file, record_from_dict  # noqa: E402
from ecgrisk.review.app import create_app  # noqa: E402
from ecgrisk.review.queue import ReviewQueue  # noqa: E402

# ------------------------------------------------------------------------------- kappa by hand


def _v(ecg, annotator, norm_shown, norm_mark=None, missed=(), t="2024-05-01T10:00:00+00:00"):
    reading = {"NORM": int(norm_shown), "MI": 0, "STTC": 0}
    marks = {"NORM": norm_mark} if norm_mark else {}
    return Verdict(ecg_id=str(ecg), reading=reading, marks=marks, missed=list(missed),
                   annotator=annotator, created_at=t)


def _hand_verdicts():
    """Six ECGs judged by A and B; the model shows NORM on ECGs 1-4 only.

    ====  =====  ===================  ===================
    ECG   model  A: NORM / MI          B: NORM / MI
    ====  =====  ===================  ===================
    1     NORM   right / missed MI    right / missed MI
    2     NORM   right / missed MI    wrong / -
    3     NORM   right / -            right / -
    4     NORM   wrong / -            right / -
    5     -      - / missed MI        missed NORM, MI
    6     -      - / -                missed NORM, MI
    7     NORM   unmarked / -         (not judged by B)
    ====  =====  ===================  ===================
    """
    return [
        _v(1, "A", True, "wrong", t="2024-05-01T09:00:00+00:00"),  # superseded by the next
        _v(1, "A", True, "right", ["MI"]), _v(2, "A", True, "right", ["MI"]),
        _v(3, "A", True, "right"), _v(4, "A", True, "wrong"),
        _v(5, "A", False, missed=["MI"]), _v(6, "A", False), _v(7, "A", True),
        _v(1, "B", True, "right", ["MI"]), _v(2, "B", True, "wrong"),
        _v(3, "B", True, "right"), _v(4, "B", True, "right"),
        _v(5, "B", False, missed=["NORM", "MI"]), _v(6, "B", False, missed=["NORM", "MI"]),
    ]


def _kappa(p_o, p_e):
    return (p_o - p_e) / (1 - p_e)


def test_statement_kappa_between_annotators_by_hand():
    rows = {(r["statement"], *r["annotators"]): r
            for r in statement_kappa(_hand_verdicts(), ["NORM", "MI", "STTC"])}
    assert set(rows) == {("NORM", "A", "B"), ("MI", "A", "B"), ("STTC", "A", "B")}
    # NORM over ECGs 1-6 (7: B never judged it): A 1,1,1,0,0,0  B 1,0,1,1,1,1
    # equal on 1 and 3: p_o = 2/6; chance p_e = 3/6 * 5/6 + 3/6 * 1/6 = 1/2
    norm = rows[("NORM", "A", "B")]
    assert (norm["n_items"], norm["agreement"]) == (6, pytest.approx(2 / 6))
    assert norm["kappa"] == pytest.approx(_kappa(2 / 6, 1 / 2)) == pytest.approx(-1 / 3)
    # MI: A 1,1,0,0,1,0  B 1,0,0,0,1,1 -> p_o = 4/6, p_e = 3/6 * 3/6 + 3/6 * 3/6 = 1/2
    mi = rows[("MI", "A", "B")]
    assert (mi["n_items"], mi["agreement"]) == (6, pytest.approx(4 / 6))
    assert mi["kappa"] == pytest.approx(1 / 3)
    # STTC: nobody saw it anywhere: chance agreement is 1 and kappa is undefined
    assert rows[("STTC", "A", "B")]["kappa"] is None
    assert rows[("STTC", "A", "B")]["agreement"] == 1.0


def test_model_kappa_per_annotator_by_hand():
    rows = {(r["statement"], r["annotator"]): r
            for r in model_kappa(_hand_verdicts(), ["NORM", "MI", "STTC"])}
    # A on NORM: ECG 7 is shown but unmarked, so not judged: model 1,1,1,1,0,0 vs A 1,1,1,0,0,0
    # p_o = 5/6; p_e = 4/6 * 3/6 + 2/6 * 3/6 = 1/2
    a = rows[("NORM", "A")]
    assert (a["n_items"], a["agreement"]) == (6, pytest.approx(5 / 6))
    assert a["kappa"] == pytest.approx(_kappa(5 / 6, 1 / 2)) == pytest.approx(2 / 3)
    # B on NORM: model 1,1,1,1,0,0 vs B 1,0,1,1,1,1 -> p_o = 3/6, p_e = 4/6*5/6 + 2/6*1/6 = 11/18
    b = rows[("NORM", "B")]
    assert (b["n_items"], b["agreement"]) == (6, pytest.approx(1 / 2))
    assert b["kappa"] == pytest.approx(_kappa(1 / 2, 11 / 18)) == pytest.approx(-2 / 7)
    # MI is never shown: the model's column is all 0, so kappa is 0 whatever A says; ECG 7
    # counts here (A judged MI absent there), unlike for NORM
    assert rows[("MI", "A")]["n_items"] == 7 and rows[("MI", "A")]["kappa"] == 0.0
    assert rows[("MI", "A")]["agreement"] == pytest.approx(4 / 7)


# ------------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def env(ptbxl_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("review-agreement")
    bundle = Bundle.load(make_bundle(root / "model.pt", [2.0, -2.0, 1.5, -2.0, -2.0]))
    queue = ReviewQueue.build(bundle, copy_records(ptbxl_root, root / "data"),
                              plot_dir=root / "plots")
    template = root / "template.db"
    add_accounts(template, "dr-a", "dr-b")
    return {"queue": queue, "template": template}


@pytest.fixture
def judged(env, tmp_path):
    """dr-a and dr-b judged the four ECGs (NORM and STTC shown on each); the app and store.

    STTC: dr-a right, right, wrong, wrong; dr-b right, wrong, wrong, wrong. NORM: all right.
    """
    db = tmp_path / "feedback.db"
    shutil.copy(env["template"], db)
    app = create_app(db, env["queue"])
    clients = {}
    for name, sttc in (("dr-a", "RRWW"), ("dr-b", "RWWW")):
        client = TestClient(app)
        token = login(client, name)
        for item, mark in zip(env["queue"].items, sttc, strict=True):
            body = {"ecg_id": item.ecg_id,
                    "marks": {"NORM": "right", "STTC": "right" if mark == "R" else "wrong"}}
            assert post_feedback(client, token, body).status_code == 201
        clients[name] = client
    yield app, clients, db
    app.state.review.close()


def _table(html: str, table_id: str) -> list[list[str]]:
    """The text of each body row's cells of one table of the page."""
    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row,
                                                                   re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def test_agreement_page_shows_kappa_per_statement(judged):
    _, clients, _ = judged
    r = clients["dr-a"].get("/agreement")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    between = {(row[0], row[1]): row[2:] for row in _table(r.text, "kappa-annotators")}
    # STTC: dr-a 1,1,0,0 and dr-b 1,0,0,0: p_o = 3/4, p_e = 1/2 * 1/4 + 1/2 * 3/4 = 1/2
    assert between[("STTC", "dr-a · dr-b")] == ["4", "75%", "0.50"]
    # NORM: both said "right" every time: kappa undefined, shown as a dash
    assert between[("NORM", "dr-a · dr-b")] == ["4", "100%", "–"]
    model = {(row[0], row[1]): row[2:] for row in _table(r.text, "kappa-model")}
    # the model showed STTC on all four: dr-a agreed twice, and a constant call earns kappa 0
    assert model[("STTC", "dr-a")] == ["4", "50%", "0.00"]
    assert model[("STTC", "dr-b")] == ["4", "25%", "0.00"]
    assert "Agreement on tiny v7" in r.text
    assert "8 verdict(s)" in r.text and "2 annotator(s)" in r.text


def test_download_holds_only_my_judgements_in_this_review(judged, env, tmp_path):
    _, clients, _ = judged
    ids = [it.ecg_id for it in env["queue"].items]
    r = clients["dr-b"].get("/export/judgements.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="judgements-tiny-v7-dr-b.csv"'
    assert r.headers["cache-control"] == "no-store"
    (tmp_path / "mine.csv").write_bytes(r.content)
    back = read_feedback_file(tmp_path / "mine.csv")  # the store's own import reads it
    assert [(v.ecg_id, v.annotator) for v in back] == [(i, "dr-b") for i in ids]
    assert [v.marks["STTC"] for v in back] == ["right", "wrong", "wrong", "wrong"]
    r = clients["dr-a"].get("/export/judgements.jsonl")
    assert r.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert [(x["ecg_id"], x["annotator"], x["source"]) for x in rows] == [
        (i, "dr-a", "review") for i in ids]
    assert [record_from_dict(x).marks["STTC"] for x in rows] == ["right", "right", "wrong",
                                                                 "wrong"]
    assert clients["dr-a"].get("/export/judgements.xml").status_code == 404


def _feedback_cli(argv):
    parser = argparse.ArgumentParser(prog="ecgrisk")
    add_feedback_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_feedback_export_filters_by_annotator_atomically(judged, tmp_path, capsys):
    _, _, db = judged
    out = tmp_path / "out" / "dr-b.jsonl"
    assert _feedback_cli(["feedback", "export", str(out), "--store", str(db),
                          "--annotator", "dr-b", "--model-version", "7"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 4
    assert {r.annotator for r in read_feedback_file(out)} == {"dr-b"}
    assert [p.name for p in out.parent.iterdir()] == ["dr-b.jsonl"]  # no partial file left
    with FeedbackStore(db) as store:  # the same bytes the page serves
        assert out.read_text() == judged[1]["dr-b"].get("/export/judgements.jsonl").text
        assert store.export(tmp_path / "none.csv", kind="preference") == 0
    assert _feedback_cli(["feedback", "export", str(out), "--store", str(db),
                          "--annotator", "nobody"]) == 0
    assert out.read_text() == ""
