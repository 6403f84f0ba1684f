"""``ecgrisk feedback import|export|stats`` through ``add_parsers`` on a fresh argparse parser."""

from __future__ import annotations

import argparse
import json

import pytest

from ecgrisk.feedback.cli import add_parsers
from ecgrisk.feedback.records import Preference, Verdict, read_feedback_file

CLASSES = "NORM,MI,STTC"


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ecgrisk")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _records() -> list:
    return [
        Verdict(ecg_id="17", reading={"NORM": 1, "MI": 0}, marks={"NORM": "wrong"},
                missed=["MI"], annotator="dr-a", created_at="2024-05-01T10:00:00+00:00"),
        Verdict(ecg_id="17", reading={"NORM": 1, "MI": 0}, marks={"NORM": "right"},
                annotator="dr-b", created_at="2024-05-01T11:00:00+00:00"),
        Preference(ecg_id="21", reading_a=["STTC"], reading_b=[], choice="a",
                   annotator="dr-a", created_at="2024-05-02T09:00:00+00:00"),
    ]


def _write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))


def test_import_export_stats_round_trip(tmp_path, capsys):
    src, store = tmp_path / "in.jsonl", tmp_path / "fb.db"
    _write_jsonl(src, _records())
    assert _run(["feedback", "import", str(src), "--store", str(store),
                 "--classes", CLASSES]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"] == 3
    assert out["imported"] == [{"file": str(src), "verdicts": 2, "preferences": 1,
                                "duplicates": 0, "conflicts": 2}]
    # ECG 17: dr-a says NORM wrong and MI missed, dr-b NORM right and (by omission) MI absent

    for name in ("out.jsonl", "out.csv"):
        assert _run(["feedback", "export", str(tmp_path / name), "--store", str(store)]) == 0
        assert json.loads(capsys.readouterr().out)["records"] == 3
        back = read_feedback_file(tmp_path / name)
        assert [r.content_key() for r in back] == [r.content_key() for r in _records()]

    # importing the export into a second store gives the same records
    store2 = tmp_path / "fb2.db"
    assert _run(["feedback", "import", str(tmp_path / "out.csv"), "--store", str(store2)]) == 0
    capsys.readouterr()

    assert _run(["feedback", "stats", "--store", str(store2), "--classes", CLASSES]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_verdicts"] == 2 and stats["n_preferences"] == 1
    assert stats["by_annotator"] == {"dr-a": {"verdict": 1, "preference": 1},
                                     "dr-b": {"verdict": 1, "preference": 0}}
    assert stats["conflicts"]["verdict"] == 2


def test_bad_file_gives_nonzero_exit_and_names_the_file(tmp_path, capsys):
    good, bad = tmp_path / "good.jsonl", tmp_path / "broken.jsonl"
    _write_jsonl(good, _records()[:1])
    bad.write_text(json.dumps(_records()[2].to_dict()) + "\n{not json\n")
    store = tmp_path / "fb.db"
    assert _run(["feedback", "import", str(bad), str(good), "--store", str(store)]) == 1
    captured = capsys.readouterr()
    assert f"{bad}:2" in captured.err  # file and line
    # the bad file added nothing (all or none); the good one still went in
    assert json.loads(captured.out)["total"] == 1

    assert _run(["feedback", "import", str(tmp_path / "notes.txt"), "--store", str(store)]) == 1
    assert "notes.txt" in capsys.readouterr().err


def test_import_with_a_label_list_refuses_a_file_naming_other_statements(tmp_path, capsys):
    # found in review: such records went in, and the refinement reading them stopped later
    odd_verdict = Verdict(ecg_id="30", reading={"NORM": 1}, missed=["BAR"], annotator="dr-a",
                          created_at="2024-05-03T09:00:00+00:00")
    odd_preference = Preference(ecg_id="31", reading_a=["FOO"], reading_b=["MI"], choice="b",
                                annotator="dr-a", created_at="2024-05-03T10:00:00+00:00")
    store = tmp_path / "fb.db"
    for i, odd in enumerate((odd_verdict, odd_preference)):
        path = tmp_path / f"batch{i}.jsonl"
        _write_jsonl(path, [*_records(), odd])
        assert _run(["feedback", "import", str(path), "--store", str(store), "--classes", CLASSES]) == 1
        err = capsys.readouterr().err
        assert f"{path}:4:" in err and ("'BAR'" in err or "'FOO'" in err), err
    # without a label list there is nothing to check them against: they go in
    assert _run(["feedback", "import", str(path), "--store", str(store)]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 4


def test_stats_and_export_of_a_missing_store_fail_clearly(tmp_path, capsys):
    missing = tmp_path / "nowhere.db"
    # arguments that cannot be used: exit 2, as ecgrisk score (1 is a file that failed)
    assert _run(["feedback", "stats", "--store", str(missing)]) == 2
    assert f"{missing}: no such feedback store" in capsys.readouterr().err
    assert _run(["feedback", "export", str(tmp_path / "o.jsonl"), "--store", str(missing)]) == 2
    assert not missing.exists()
    assert _run(["feedback", "export", str(tmp_path / "o.txt"), "--store", str(missing)]) == 2
    assert "o.txt" in capsys.readouterr().err
    assert _run(["feedback", "stats", "--store", str(missing), "--model", str(tmp_path / "no.pt")]) == 2
    assert "no.pt" in capsys.readouterr().err


def test_subcommand_is_required():
    with pytest.raises(SystemExit) as exc:
        _run(["feedback"])
    assert exc.value.code == 2
