"""The feedback store: concurrency, round trips, duplicates/conflicts, agreement, migrations."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sqlite3
import sys

import numpy as np
import pytest

from ecgrisk.feedback.agreement import cohen_kappa
from ecgrisk.feedback.records import FeedbackError, Preference, Verdict
from ecgrisk.feedback.store import (
    SCHEMA_VERSION,
    FeedbackImportError,
    FeedbackStore,
    SchemaError,
    _open_backend,
    migrate,
)

CLASSES = ["NORM", "MI", "STTC"]


# Set ECGRISK_TEST_POSTGRES_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres,
# with `pip install ecgrisk[postgres]`) to run the store tests on PostgreSQL too; its tables
# are dropped before each test.
_PG_URL = os.environ.get("ECGRISK_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh, empty store location for each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "fb.db")
    if not _PG_URL:
        pytest.skip("ECGRISK_TEST_POSTGRES_URL is not set")
    import sqlalchemy

    engine = sqlalchemy.create_engine(_PG_URL)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(
            "DROP TABLE IF EXISTS verdicts, preferences, annotators, accounts, sessions, "
            "schema_version"))
    engine.dispose()
    return _PG_URL


def _verdict(ecg_id="1", annotator="dr-a", reading=None, marks=None, missed=(), **kw):
    return Verdict(ecg_id=ecg_id, ecg_path=f"records/{ecg_id}", annotator=annotator,
                   reading=reading if reading is not None else {"NORM": 1, "MI": 0},
                   marks=marks if marks is not None else {"NORM": "right"}, missed=list(missed),
                   **kw)


def _preference(ecg_id="1", annotator="dr-a", choice="a", **kw):
    return Preference(ecg_id=ecg_id, ecg_path="", reading_a=["NORM"], reading_b=["MI", "STTC"],
                      choice=choice, annotator=annotator, **kw)


def _writer(path: str, annotator: str, n: int, barrier) -> None:
    store = FeedbackStore(path)
    barrier.wait()  # both processes start writing at the same moment
    for i in range(n):
        store.add_many([_verdict(ecg_id=str(i), annotator=annotator)])  # one transaction each
    store.close()


def test_two_processes_writing_at_once_lose_nothing(store_url):
    path = store_url
    FeedbackStore(path).close()  # schema exists before the race on the rows
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, f"dr-{k}", 200, barrier)) for k in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    with FeedbackStore(path) as store:
        assert store.count() == 400
        rows = store.rows("verdict")
        assert len({row_id for row_id, _, _ in rows}) == 400
        assert {a: sum(r.annotator == a for _, _, r in rows) for a in ("dr-a", "dr-b")} \
            == {"dr-a": 200, "dr-b": 200}
        assert store.annotators().keys() == {"dr-a", "dr-b"}
        if store._backend.dialect == "sqlite":
            mode = store._backend.conn.execute("PRAGMA journal_mode").fetchone()[0]
            assert mode == "wal"


def _mixed_records():
    return [
        _verdict(ecg_id="10", note="ST depression, V4–V6, \"borderline\"",
                 created_at="2024-03-01T10:00:00+00:00", model_version="m1"),
        _verdict(ecg_id="11", annotator="dr-b", reading={"NORM": 1, "STTC": 1},
                 marks={"NORM": "wrong", "STTC": "right"}, missed=["MI"],
                 created_at="2024-03-01T11:00:00+00:00"),
        _preference(ecg_id="10", choice="b", created_at="2024-03-01T12:00:00+00:00"),
        _preference(ecg_id="12", choice="tie", note="both fine",
                    created_at="2024-03-01T13:00:00+00:00"),
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_import_round_trip(tmp_path, store_url, fmt):
    records = _mixed_records()
    with FeedbackStore(tmp_path / "a.db") as store:
        store.add_many(records)
        out = tmp_path / f"export.{fmt}"
        n = store.export(out)
    assert n == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    with FeedbackStore(store_url) as other:
        summary = other.import_file(out)
        assert (summary["verdicts"], summary["preferences"]) == (2, 2)
        assert summary["duplicates"] == [] and summary["conflicts"] == []
        back = other.verdicts() + other.preferences()
        assert [r.to_dict() for r in back] == [r.to_dict() for r in records]
        assert {s for _, s, _ in other.rows("verdict")} == {f"import:export.{fmt}"}


def test_duplicates_and_conflicts_are_kept_and_reported(tmp_path, store_url):
    store = FeedbackStore(store_url)
    original = _verdict(ecg_id="7", annotator="dr-a")
    store.add_many([original])
    lines = [
        original.to_dict(),  # duplicate of what is stored
        # dr-b says NORM is wrong and MI was missed: two statements in conflict with dr-a
        _verdict(ecg_id="7", annotator="dr-b", marks={"NORM": "wrong"}, missed=["MI"]).to_dict(),
        _preference(ecg_id="7", annotator="dr-a", choice="a").to_dict(),
        # the same two readings listed the other way round, and dr-b chose the same reading
        Preference(ecg_id="7", reading_a=["MI", "STTC"], reading_b=["NORM"], choice="b",
                   annotator="dr-b").to_dict(),
        _preference(ecg_id="7", annotator="dr-c", choice="b").to_dict(),  # disagrees
    ]
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in lines) + "\n")
    summary = store.import_file(path)
    assert store.count() == 6  # nothing dropped
    assert summary["duplicates"] == [{"kind": "verdict", "ecg_id": "7", "annotator": "dr-a",
                                      "count": 2}]
    verdict_conflicts = [c for c in summary["conflicts"] if c["kind"] == "verdict"]
    # the stored dr-a verdict and its imported duplicate each disagree with dr-b on 2 statements
    assert sorted((c["statement"], tuple(c["annotators"])) for c in verdict_conflicts) == [
        ("MI", ("dr-a", "dr-b")), ("MI", ("dr-a", "dr-b")),
        ("NORM", ("dr-a", "dr-b")), ("NORM", ("dr-a", "dr-b"))]
    pref_conflicts = [c for c in summary["conflicts"] if c["kind"] == "preference"]
    assert sorted(tuple(sorted(c["annotators"])) for c in pref_conflicts) == [
        ("dr-a", "dr-c"), ("dr-b", "dr-c")]
    stats = store.stats()
    assert stats["duplicates"] == {"verdict": 1, "preference": 0}
    assert stats["conflicts"] == {"verdict": 4, "preference": 2}
    assert stats["by_annotator"]["dr-a"] == {"verdict": 2, "preference": 1}
    assert stats["preference_agreement"]["n_pairs"] == 3
    assert stats["preference_agreement"]["agreement"] == pytest.approx(1 / 3)
    store.close()


def test_kappa_on_planted_two_annotator_example(store_url):
    # judgements over (ECG, statement) in CLASSES order, both annotators shown the same readings
    #   dr-a: ECG1 [1, 1, 0]  ECG2 [0, 1, 0]
    #   dr-b: ECG1 [1, 0, 0]  ECG2 [0, 1, 1]
    # p_o = 4/6, each rater says 1 three times: p_e = 0.5 * 0.5 + 0.5 * 0.5 = 0.5
    # kappa = (2/3 - 1/2) / (1 - 1/2) = 1/3
    shown1, shown2 = {"NORM": 1, "MI": 1}, {"MI": 1}
    records = [
        _verdict("1", "dr-a", shown1, {"NORM": "right", "MI": "right"}),
        _verdict("1", "dr-b", shown1, {"NORM": "right", "MI": "wrong"}),
        _verdict("2", "dr-a", shown2, {"MI": "right"}),
        _verdict("2", "dr-b", shown2, {"MI": "right"}, missed=["STTC"]),
    ]
    with FeedbackStore(store_url) as store:
        store.add_many(records)
        stats = store.stats(classes=CLASSES)
    (pair,) = stats["kappa"]
    assert pair["annotators"] == ["dr-a", "dr-b"] and pair["n_items"] == 6
    assert pair["kappa"] == pytest.approx(1 / 3)
    assert pair["agreement"] == pytest.approx(4 / 6)
    from sklearn.metrics import cohen_kappa_score

    assert pair["kappa"] == pytest.approx(cohen_kappa_score([1, 1, 0, 0, 1, 0],
                                                            [1, 0, 0, 0, 1, 1]))
    assert stats["statement_agreement"] == {
        "MI": {"n_pairs": 2, "agreement": 0.5}, "NORM": {"n_pairs": 2, "agreement": 1.0},
        "STTC": {"n_pairs": 2, "agreement": 0.5}}
    assert stats["conflicts"]["verdict"] == 2


def test_cohen_kappa_helper():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    from sklearn.metrics import cohen_kappa_score

    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert cohen_kappa([1, 0, 1], [1, 0, 1]) == pytest.approx(1.0)
    assert np.isnan(cohen_kappa([0, 0], [0, 0]))  # chance agreement 1: undefined
    with pytest.raises(ValueError, match="equal length"):
        cohen_kappa([0, 1], [0])


_V1_DDL = [
    """CREATE TABLE verdicts (id INTEGER PRIMARY KEY AUTOINCREMENT, ecg_id TEXT NOT NULL,
        ecg_path TEXT NOT NULL, reading TEXT NOT NULL, marks TEXT NOT NULL, missed TEXT NOT NULL,
        annotator TEXT NOT NULL, created_at TEXT NOT NULL, model_version TEXT NOT NULL,
        note TEXT)""",
    """CREATE TABLE preferences (id INTEGER PRIMARY KEY AUTOINCREMENT, ecg_id TEXT NOT NULL,
        ecg_path TEXT NOT NULL, reading_a TEXT NOT NULL, reading_b TEXT NOT NULL,
        choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie')), annotator TEXT NOT NULL,
        created_at TEXT NOT NULL, model_version TEXT NOT NULL, note TEXT)""",
    "CREATE INDEX verdicts_ecg ON verdicts (ecg_id)",
    "CREATE INDEX preferences_ecg ON preferences (ecg_id)",
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "INSERT INTO schema_version (version) VALUES (1)",
    """INSERT INTO verdicts (ecg_id, ecg_path, reading, marks, missed, annotator, created_at,
        model_version, note) VALUES ('5', 'r/5', '{"MI": 1}', '{"MI": "wrong"}', '["STTC"]',
        'dr-old', '2023-01-02T00:00:00+00:00', 'm0', NULL)""",
]


def test_opening_a_v1_store_runs_the_migration(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # what the first release wrote
        for sql in _V1_DDL:
            conn.execute(sql)
    conn.close()
    with FeedbackStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 3
        (old,) = store.verdicts()
        assert (old.annotator, old.marks, old.missed) == ("dr-old", {"MI": "wrong"}, ["STTC"])
        assert store.annotators() == {"dr-old": "2023-01-02T00:00:00+00:00"}
        store.add_many([_verdict(ecg_id="6")], source="app")
        assert [s for _, s, _ in store.rows("verdict")] == [None, "app"]
    with sqlite3.connect(path) as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM schema_version")] == [1, 2, 3]
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    conn.close()
    with pytest.raises(SchemaError, match="v99"):
        FeedbackStore(path)


def test_migrations_run_one_step_at_a_time_on_each_backend(store_url):
    backend = _open_backend(store_url, 5.0)
    assert migrate(backend, target=1) == 1
    with backend.transaction(write=True) as tx:  # a row written by a v1 release
        tx.execute("""INSERT INTO preferences (ecg_id, ecg_path, reading_a, reading_b, choice,
            annotator, created_at, model_version) VALUES ('3', '', '["MI"]', '[]', 'a', 'dr-v1',
            '2023-05-01T00:00:00+00:00', '')""")
    backend.close()
    with FeedbackStore(store_url) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.preferences()[0].reading_a == ["MI"]
        assert store.annotators() == {"dr-v1": "2023-05-01T00:00:00+00:00"}


def test_bad_import_file_names_file_and_line(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    good = json.dumps(_verdict().to_dict())
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(good + "\n{not json\n")
    with pytest.raises(FeedbackImportError, match=r"bad\.jsonl:2: not valid JSON"):
        store.import_file(bad_json)
    bad_choice = tmp_path / "choice.jsonl"
    pref = _preference().to_dict() | {"choice": "c"}
    bad_choice.write_text(good + "\n\n" + json.dumps(pref) + "\n")
    with pytest.raises(FeedbackImportError, match=r"choice\.jsonl:3: choice must be one of"):
        store.import_file(bad_choice)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("kind,ecg_id,annotator,reading,marks,missed\n"
                       'verdict,1,dr-a,"{""NORM"": 1}","{}","[]"\n'
                       'verdict,2,,"{""NORM"": 1}","{}","[]"\n')
    with pytest.raises(FeedbackImportError, match=r"bad\.csv:3: .*annotator"):
        store.import_file(bad_csv)
    with pytest.raises(FeedbackImportError, match=r"notes\.txt: unknown feedback file type"):
        store.import_file(tmp_path / "notes.txt")
    assert store.count() == 0  # a bad file adds nothing
    store.close()


def test_filters(store_url):
    url = store_url if "://" in store_url else f"sqlite:///{store_url}"
    with FeedbackStore(url) as store:
        store.add_many(_mixed_records())
        assert [v.ecg_id for v in store.verdicts(annotator="dr-b")] == ["11"]
        assert [p.ecg_id for p in store.preferences(ecg_id=["10", "12"])] == ["10", "12"]
        assert [v.ecg_id for v in store.verdicts(since="2024-03-01T10:30:00+00:00")] == ["11"]
        # bounds in another zone or form compare as times (found in review: they were text)
        assert [v.ecg_id for v in store.verdicts(since="2024-03-01T12:30:00+02:00")] == ["11"]
        assert [v.ecg_id for v in store.verdicts(since="2024-03-01T11:00:00Z")] == ["11"]  # inclusive
        assert [v.ecg_id for v in store.verdicts(until="2024-03-01T06:00:00-05:00")] == ["10"]
        with pytest.raises(ValueError, match="since '2024-03-01' has no time zone"):
            store.verdicts(since="2024-03-01")
        assert store.verdicts(model_version="m1")[0].note.startswith("ST depression")
        assert store.count("preference") == 2 and store.count() == 4


def test_records_validate_their_fields():
    with pytest.raises(FeedbackError, match="choice must be one of"):
        _preference(choice="maybe")
    with pytest.raises(FeedbackError, match="annotator must not be empty"):
        _verdict(annotator=" ")
    with pytest.raises(FeedbackError, match="only shown positive"):
        _verdict(reading={"NORM": 0}, marks={"NORM": "right"})
    with pytest.raises(FeedbackError, match="identical"):
        Preference(ecg_id="1", reading_a=["MI"], reading_b={"MI": 1, "NORM": 0}, choice="a",
                   annotator="x")
    with pytest.raises(FeedbackError, match="time zone"):
        _verdict(created_at="2024-01-01T00:00:00")
    v = _verdict(reading={"NORM": 1, "MI": 1, "STTC": 0}, marks={"NORM": "wrong"},
                 missed=["STTC"])
    # NORM wrong -> 0, MI shown but unjudged -> keeps 1, STTC missed -> 1
    np.testing.assert_array_equal(v.corrected_reading(CLASSES), [0, 1, 1])
    assert v.judgements(CLASSES) == {"NORM": 0, "STTC": 1}
    with pytest.raises(FeedbackError, match="not in the label list"):
        v.corrected_reading(["NORM", "MI"])


@pytest.mark.skipif("sqlalchemy" in sys.modules or __import__("importlib").util.find_spec(
    "sqlalchemy") is not None, reason="SQLAlchemy installed: the missing-extra error can't show")
def test_postgres_url_without_sqlalchemy_says_what_to_install():
    with pytest.raises(ImportError, match=r"pip install ecgrisk\[postgres\]"):
        FeedbackStore("postgresql://user@localhost/feedback")
