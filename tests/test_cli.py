import json
import socket

from ecgrisk.cli import build_parser, main


def test_every_documented_command_is_registered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"download", "inspect", "score", "export", "feedback", "review"} <= set(sub.choices)


def test_inspect_prints_what_ecgrisk_reads_and_plots(ptbxl_root, tmp_path, capsys):
    png = tmp_path / "ecg.png"
    assert main(["inspect", str(ptbxl_root / "records100/00000/00001_lr"), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[: out.rindex("}") + 1])
    assert summary["fs"] == 100 and summary["samples"] == 1000 and len(summary["leads_present"]) == 12
    assert summary["quality"]["quality"] == "ok"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_names_a_bad_file_and_fails(tmp_path, capsys):
    bad = tmp_path / "junk.hea"
    bad.write_bytes(b"\x00\xff garbage")
    assert main(["inspect", str(bad)]) == 1
    assert "junk.hea" in capsys.readouterr().err


def test_inspect_refuses_a_path_that_names_nothing_before_reading_any(ptbxl_root, tmp_path, capsys):
    record = str(ptbxl_root / "records100/00000/00001_lr")
    assert main(["inspect", record, str(tmp_path / "0001_lr")]) == 2  # a typo: exit 2, as score
    captured = capsys.readouterr()
    assert "0001_lr'" in captured.err and "no such file or record" in captured.err
    assert captured.out == ""
    assert main(["inspect", record, "--explain", str(tmp_path / "e.png"),
                 "--model", str(tmp_path / "no-model.pt")]) == 2
    assert "no-model.pt" in capsys.readouterr().err


def test_output_cut_short_by_its_reader_ends_without_a_traceback(ptbxl_root):
    # found in a walkthrough: `ecgrisk inspect ... | head -3` printed a BrokenPipeError traceback
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "from ecgrisk.entry import ecgrisk; ecgrisk()",
                             "inspect", str(ptbxl_root / "records100/00000/00001_lr")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and err == "", err


def test_download_offline_is_a_clear_error(tmp_path, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["download", "ptbxl", "--root", str(tmp_path / "ptb-xl"), "--records", "2", "--quiet",
                 "--base-url", f"http://127.0.0.1:{port}/ptb-xl/1.0.3/"])
    assert code == 1
    assert "cannot reach" in capsys.readouterr().err


def test_every_console_script_in_pyproject_names_a_callable():
    import importlib
    from pathlib import Path

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())[
        "project"]["scripts"]
    assert {"ecgrisk", "ecgrisk-pretrain", "ecgrisk-finetune", "ecgrisk-refine"} <= set(scripts)
    for name, target in scripts.items():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), name
