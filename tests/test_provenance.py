import shlex
import sys

from ecgrisk.provenance import command_line


def test_the_command_line_pastes_back_into_a_shell_as_the_same_arguments():
    args = ["--root", "data/ptb-xl-full", "data.sources=[{source: ptbxl}]", "--sizes", 2000]
    line = command_line("/somewhere/scripts/bench_scoring.py", args)
    assert line.startswith("python scripts/bench_scoring.py --root data/ptb-xl-full ")
    assert shlex.split(line) == ["python", "scripts/bench_scoring.py", "--root", "data/ptb-xl-full",
                                 "data.sources=[{source: ptbxl}]", "--sizes", "2000"]


def test_no_arguments_are_no_arguments_and_none_means_the_processs_own(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_data.py", "--repeats", "3"])
    assert command_line("bench_data.py", []) == "python scripts/bench_data.py"
    assert command_line("bench_data.py") == "python scripts/bench_data.py --repeats 3"
