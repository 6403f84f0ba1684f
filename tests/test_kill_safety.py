"""Killed at any point, a long-running command leaves no process, no half-written file, and its
resume (or rerun) gives what an uninterrupted run gives (issue 16).

``ecgrisk score``, ``ecgrisk convert``, ``ecgrisk-finetune``, ``ecgrisk-pretrain`` and
``ecgrisk-refine`` are each killed at three points with three signals, as a Latin square (every
command meets every signal and every point once); ``ecgrisk score`` also gets a terminal's
Ctrl-C (SIGINT to its whole process group), a two-rank DDP fine-tune gets SIGTERM and SIGKILL
after its first epoch, and ``ecgrisk review`` is stopped while starting (SIGTERM), while serving
(SIGINT) and, in ``test_store_writers``, killed (SIGKILL) while judgements arrive.

- early: before any result exists (reader processes starting, a cache being compiled, a
  server starting);
- mid-way: once part of the result exists (rows in the partial table, ``last.ckpt``, a
  round's model, acknowledged judgements), found by polling for it, never by sleeping;
- final write: the command waits inside the atomic write of its last output
  (``ECGRISK_TEST_PAUSE=write:<file>``, :func:`ecgrisk.signals.fault_point`) and is killed
  there.

Every kill checks: exit status 130 (SIGINT) or 143 (SIGTERM) with exactly one "interrupted ...
resume" line on stderr, or death by SIGKILL; no process of the command's session left (walked
in /proc: each command leads its own session, which all its descendants keep); no output half
there. Then the resume or rerun is compared with an uninterrupted run of the same seeds.
``test_store_writers`` runs the review app and ``ecgrisk feedback import`` against one store and
kills one of them: nothing either had committed is lost (SQLite, and PostgreSQL when
``ECGRISK_TEST_POSTGRES_URL`` names a server, as ``.ci/start-postgres`` sets it).

Commands run as forks of a "zygote", a Python process that imported ecgrisk, torch and
Lightning once, because a fresh interpreter pays ~10 s of imports per run on two slow cores. A
forked command is a real process (its own session, workers, signals, exit); only the
interpreter start is skipped. The DDP run's second rank is a fresh ``python`` that Lightning
starts.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from ecgrisk.bundle import Bundle
from ecgrisk.config import compose
from ecgrisk.io import read_ecg

SIGINT, SIGTERM, SIGKILL = signal.SIGINT, signal.SIGTERM, signal.SIGKILL
EXIT = {SIGINT: 130, SIGTERM: 143, SIGKILL: -9}
CLASSES = ["NORM", "MI", "STTC", "CD", "HYP"]
N_RECORDS = 120
N_CONVERT = 16
ROUNDS = 2
N_IMPORT = 2000
EPOCHS = 2
TRAIN = ["model=xresnet1d18", "model.kwargs.base_channels=8", "data.batch_size=32",
         "trainer.enable_progress_bar=false", f"trainer.max_epochs={EPOCHS}", "seed=0"]
FINETUNE = ["bootstrap=0", "early_stopping_patience=null"]
REFINE = ["progress=false", "bootstrap=0", f"rounds={ROUNDS}", "queries_per_round=2",
          "reward.epochs=10", "refine.steps=5"]
PASSWORD = "correct horse battery"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="walks /proc for the killed command's processes")


# --------------------------------------------------------------------------- running commands

_ZYGOTE = r"""
import ctypes, importlib, json, os, select, sys
ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL: ends with the test run
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError:  # an optional extra (review) that is not installed
        pass

def say(**msg):
    os.write(1, (json.dumps(msg) + "\n").encode())

say(ready=True)
buf = b""
while True:  # one thread only: a fork copies no lock another thread holds
    if select.select([0], [], [], 0.02)[0]:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            pid = os.fork()
            if pid == 0:
                os.setsid()
                for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                                        (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                        (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
                    opened = os.open(path, flags, 0o644)
                    os.dup2(opened, fd)
                    os.close(opened)
                os.environ.update(req["env"])
                os.chdir(req["cwd"])
                sys.argv = req["argv"]
                module, fn = req["entry"].split(":")
                raise SystemExit(getattr(importlib.import_module(module), fn)())
            say(id=req["id"], pid=pid)
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        say(exited=pid, rc=os.waitstatus_to_exitcode(status))
"""

PRELOAD = ["torch", "lightning", "ecgrisk.cli", "ecgrisk.scoring.job", "ecgrisk.convert",
           "ecgrisk.feedback.store", "ecgrisk.finetune.app", "ecgrisk.pretrain.app",
           "ecgrisk.refine.app", "ecgrisk.review.app", "uvicorn"]


class Run:
    """One command forked by the zygote: its pid (= its session id), output files, exit code."""

    def __init__(self, zygote: Zygote, pid: int, out: Path, err: Path):
        self.zygote, self.pid, self.out, self.err = zygote, pid, out, err

    def poll(self) -> int | None:
        return self.zygote.exited.get(self.pid)

    def wait(self, timeout: float = 120.0) -> int:
        with self.zygote.cond:
            if not self.zygote.cond.wait_for(lambda: self.pid in self.zygote.exited, timeout):
                raise AssertionError(f"pid {self.pid} still runs after {timeout} s:\n{self.stderr}")
        return self.zygote.exited[self.pid]

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.is_file() else ""

    def until(self, cond, what: str, timeout: float = 180.0) -> None:
        """Poll ``cond()`` every 10 ms until true; fail if the command ends first."""
        deadline = time.monotonic() + timeout
        while not cond():
            if self.poll() is not None:
                raise AssertionError(f"ended (rc {self.poll()}) before {what}:\n{self.stderr[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} after {timeout} s:\n{self.stderr[-3000:]}")
            time.sleep(0.01)


class Zygote:
    def __init__(self, cwd: Path):
        self.cwd = cwd
        # one torch thread, as in this process (see _one_torch_thread): tiny models run no
        # slower, and runs compared bit for bit must split their sums alike
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE, *PRELOAD], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=cwd)
        self.cond = threading.Condition()
        self.pids: dict[int, int] = {}
        self.exited: dict[int, int] = {}
        self.ready = False
        self.sessions: list[int] = []
        self._n = 0
        threading.Thread(target=self._read, daemon=True).start()
        with self.cond:
            self.cond.wait_for(lambda: self.ready or self.proc.poll() is not None, 300)
        assert self.ready, "the zygote did not start (an import failed?)"

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self.cond:
                if msg.get("ready"):
                    self.ready = True
                elif "exited" in msg:
                    self.exited[msg["exited"]] = msg["rc"]
                else:
                    self.pids[msg["id"]] = msg["pid"]
                self.cond.notify_all()
        with self.cond:  # the zygote is gone: wake whoever waits for it
            self.cond.notify_all()

    def run(self, entry: str, argv: list[str], logs: Path, env: dict | None = None) -> Run:
        self._n += 1
        logs.mkdir(parents=True, exist_ok=True)
        out, err = logs / f"run{self._n}.out", logs / f"run{self._n}.err"
        req = {"id": self._n, "entry": entry, "argv": [str(a) for a in argv], "cwd": str(self.cwd),
               "env": {k: str(v) for k, v in (env or {}).items()},
               "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        with self.cond:
            assert self.cond.wait_for(lambda: self._n in self.pids, 60)
        run = Run(self, self.pids[self._n], out, err)
        self.sessions.append(run.pid)
        return run

    def cleanup(self) -> None:
        """SIGKILL whatever a failed test left in the sessions of the commands it started."""
        for sid in self.sessions:
            for pid in session(sid):
                try:
                    os.kill(pid, SIGKILL)
                except ProcessLookupError:
                    pass
        self.sessions = []

    def close(self) -> None:
        self.cleanup()
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def session(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        if int(rest[3]) == sid and rest[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _describe(pids: list[int]) -> str:
    out = []
    for pid in pids:
        try:
            out.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:150]!r}")
        except OSError:
            pass
    return "\n".join(out)


def stop(run: Run, sig: int, *, group: bool = False, grace: float = 15.0) -> int:
    """Send ``sig`` to the command (or, as a terminal's Ctrl-C does, to its whole process
    group); check the exit status, the one-line hint and that the session empties.

    Returns how many processes the command's session held when it was killed (workers
    included), for the assertion that there was something to clean up.
    """
    held = len(session(run.pid))
    (os.killpg if group else os.kill)(run.pid, sig)
    rc = run.wait()
    assert rc == EXIT[sig], f"exit status {rc}, not {EXIT[sig]}:\n{run.stderr[-3000:]}"
    deadline = time.monotonic() + grace  # torch DataLoader workers check their parent each 5 s
    while (left := session(run.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes outlived the killed command:\n{_describe(left)}"
    if sig != SIGKILL:
        lines = [ln for ln in run.stderr.splitlines() if "interrupted by" in ln]
        assert len(lines) == 1, run.stderr[-3000:]
        assert signal.Signals(sig).name in lines[0]
    return held


def _hint(run: Run) -> str:
    return next(ln for ln in run.stderr.splitlines() if "interrupted by" in ln)


def _pause(point: str, marker: Path) -> dict:
    return {"ECGRISK_TEST_PAUSE": point, "ECGRISK_TEST_PAUSE_MARKER": marker}


# --------------------------------------------------------------------------- shared fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


@pytest.fixture(autouse=True)
def _no_leftovers(request):
    yield
    if "zygote" in request.fixturenames:
        request.getfixturevalue("zygote").cleanup()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small synthetic PTB-XL tree (100 Hz), and the cache every training run shares."""
    from ecgrisk.data.synthetic import make_synthetic_ptbxl

    tmp = tmp_path_factory.mktemp("kill-data")
    root = make_synthetic_ptbxl(tmp / "ptb-xl", n_records=N_RECORDS, fs=(100,), seed=0,
                                progress=False)
    # conversion writes WFDB through wfdb.wrsamp, ~0.1 s a record: a few records will do
    few = tmp / "few"
    few.mkdir()
    for hea in sorted(root.rglob("*.hea"))[:N_CONVERT]:
        for f in hea.parent.glob(hea.stem + ".*"):
            shutil.copy(f, few / f.name)
    return {"root": root, "cache": tmp / "cache", "records": root / "records100", "few": few}


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    torch.manual_seed(0)
    from ecgrisk.models import create_encoder
    from ecgrisk.models.classifier import ECGClassifier
    from ecgrisk.preprocess import Preprocessing, Scaler

    model = ECGClassifier(create_encoder("xresnet1d18", base_channels=8), num_classes=5).eval()
    with torch.no_grad():  # readings vary by record but always show NORM (a verdict can mark it)
        model.head[-1].weight.mul_(0.05)
        model.head[-1].bias.copy_(torch.tensor([2.0, -2.0, 0.0, -2.0, -2.0]))
    path = tmp_path_factory.mktemp("bundle") / "model.pt"
    Bundle(model=model, classes=CLASSES, preprocessing=Preprocessing(fs=100.0),
           scaler=Scaler(mean=0.0, std=0.2), temperature=np.ones(5), name="tiny",
           version="1").save(path)
    return path


def _same_weights(a: Path, b: Path) -> None:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert x["state_dict"].keys() == y["state_dict"].keys()
    for k, v in x["state_dict"].items():
        assert torch.equal(v, y["state_dict"][k]), k


# --------------------------------------------------------------------------- ecgrisk score


@pytest.fixture(scope="module")
def score_base(data, tiny_bundle, tmp_path_factory):
    from ecgrisk.scoring.job import score_files

    out = tmp_path_factory.mktemp("score-base") / "scores.csv"
    score_files([str(data["records"])], tiny_bundle, out, workers=0, progress=False)
    return pd.read_csv(out).set_index("path").sort_index()


def _partials(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*.partial"))


def _rows(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1)


@pytest.mark.parametrize("sig,point,group", [(SIGKILL, "early", False), (SIGTERM, "mid", False),
                                             (SIGINT, "final", False), (SIGINT, "mid", True),
                                             (SIGTERM, "mid", True)],
                         ids=["SIGKILL-early", "SIGTERM-mid", "SIGINT-final", "Ctrl-C-group-mid",
                              "SIGTERM-group-mid"])
def test_score(zygote, data, tiny_bundle, score_base, tmp_path, sig, point, group):
    from ecgrisk.scoring.job import score_files

    out = tmp_path / "scores.csv"
    marker = tmp_path / "paused"
    argv = ["ecgrisk", "score", data["records"], "--model", tiny_bundle, "--out", out,
            "--workers", "2", "--batch-size", "16", "--quiet"]
    run = zygote.run("ecgrisk.cli:main", argv, tmp_path / "logs",
                     _pause(f"write:{out.name}", marker) if point == "final" else {})
    if point == "early":  # the partial table exists, the reader processes are starting
        run.until(lambda: _partials(out), "a partial table")
    elif point == "mid":
        run.until(lambda: _partials(out) and _rows(_partials(out)[0]) >= 5, "5 scored rows")
    else:
        run.until(marker.exists, "the pause before the final write")
    held = stop(run, sig, group=group)
    if point == "mid":
        assert held >= 3, "the reader processes should have been running"
    assert not out.exists(), "the output is only ever replaced whole"
    if sig != SIGKILL:
        assert "--resume" in _hint(run)
        assert f"kept in {_partials(out)[0]};" in _hint(run), "the hint names where the rows are"
    kept = sum(_rows(p) for p in _partials(out))
    if point == "final":
        assert kept == N_RECORDS
    summary = score_files([str(data["records"])], tiny_bundle, out, workers=0, resume=True,
                          progress=False)
    # a SIGKILL may cut the last line: that row alone is scored again
    assert summary.resumed in ((kept, kept - 1) if sig == SIGKILL else (kept,))
    assert summary.total == N_RECORDS and not _partials(out)
    got = pd.read_csv(out).set_index("path").sort_index()
    assert got.index.is_unique and list(got.index) == list(score_base.index)
    probs = [f"prob/{c}" for c in CLASSES]
    np.testing.assert_allclose(got[probs].to_numpy(), score_base[probs].to_numpy(), atol=1e-6)
    assert (got["risk_band"] == score_base["risk_band"]).all()


# --------------------------------------------------------------------------- ecgrisk convert


@pytest.fixture(scope="module")
def convert_base(data, tmp_path_factory):
    from ecgrisk.convert import convert_records
    from ecgrisk.io.inputs import collect_records

    out = tmp_path_factory.mktemp("convert-base") / "out"
    convert_records(collect_records([str(data["few"])]), out, "wfdb", progress=False)
    return _tree(out)


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but hidden scratch files, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


@pytest.mark.parametrize("sig,point", [(SIGINT, "early"), (SIGKILL, "mid"), (SIGTERM, "final")],
                         ids=["SIGINT-early", "SIGKILL-mid", "SIGTERM-final"])
def test_convert(zygote, data, convert_base, tmp_path, sig, point):
    from ecgrisk.convert import convert_records
    from ecgrisk.io.inputs import collect_records

    out = tmp_path / "out"
    marker = tmp_path / "paused"
    argv = ["ecgrisk", "convert", data["few"], "--to", "wfdb", "--out", out, "--quiet"]
    run = zygote.run("ecgrisk.cli:main", argv, tmp_path / "logs",
                     _pause("write:manifest.csv", marker) if point == "final" else {})
    if point == "early":
        run.until(out.exists, "the output folder")
    elif point == "mid":
        run.until(lambda: out.exists() and len(list(out.rglob("*.hea"))) >= 5,
                  "5 converted records")
    else:
        run.until(marker.exists, "the pause before the manifest")
    stop(run, sig)
    written = _tree(out) if out.exists() else {}
    assert "manifest.csv" not in written, "the manifest is only ever written whole"
    for name, content in written.items():  # every record there is whole, and the one expected
        assert content == convert_base[name], name
        if name.endswith(".hea"):
            assert name[:-4] + ".dat" in written
            read_ecg(out / name[:-4])
    if point == "final":
        assert len(written) == len(convert_base) - 1
    convert_records(collect_records([str(data["few"])]), out, "wfdb", progress=False)
    assert _tree(out) == convert_base


# --------------------------------------------------------------------------- training stages


def _train_args(data, run_dir: Path, *extra, cache: Path | None = None) -> list[str]:
    """Overrides of a run; the command line adds ``hydra.run.dir`` (see :func:`_cli`)."""
    return [f"data.root={data['root']}", f"data.cache_dir={cache or data['cache']}", *TRAIN,
            f"output_dir={run_dir}", *extra]


def _cli(command: str, args: list[str], run_dir: Path) -> list[str]:
    return [command, *args, f"hydra.run.dir={run_dir}"]


@pytest.fixture(scope="module")
def finetune_base(data, tmp_path_factory):
    from ecgrisk.finetune.app import train

    run = tmp_path_factory.mktemp("ft-base") / "run"
    metrics = train(compose("finetune", _train_args(data, run, *FINETUNE)))
    return run, metrics


@pytest.fixture(scope="module")
def pretrain_base(data, tmp_path_factory):
    from ecgrisk.pretrain.app import train

    run = tmp_path_factory.mktemp("pt-base") / "run"
    return run, train(compose("pretrain", _train_args(data, run)))


def _compiling(cache: Path, run: Run) -> bool:
    return (cache.exists() and any(p.name.startswith(".tmp-") for p in cache.iterdir())
            and len(session(run.pid)) >= 3)


def _cache_is_sound(cache: Path) -> None:
    """Only complete entries (or hidden scratch that no reader opens) are in a cache folder."""
    from ecgrisk.data.cache import _open_valid

    for entry in cache.iterdir() if cache.exists() else []:
        if not entry.name.startswith("."):
            assert _open_valid(entry) is not None, f"{entry} looks complete but is not"


def _finished_epochs(ckpt: Path) -> int:
    state = torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["epoch_progress"]
    return int(state["current"]["processed"])


def _epoch_losses(run: Path, key: str = "train/loss_epoch") -> dict[int, float]:
    from ecgrisk.runs import logged_metrics

    log = logged_metrics(run / "logs")
    rows = log.dropna(subset=[key]) if log is not None and key in log else log.iloc[:0]
    assert rows["epoch"].is_unique, "an epoch was logged twice"
    return dict(zip(rows["epoch"].astype(int), rows[key], strict=True))


def _kill_training(zygote, stage, output, args, run_dir, marker, cache, tmp_path, sig, point):
    """Start ``ecgrisk-<stage>``, kill it with ``sig`` at ``point`` (early: its cache compiling;
    mid: after the first epoch's last.ckpt; final: inside the write of ``output``), check that
    ``output`` is not there; return the run and its last.ckpt path."""
    run = zygote.run(f"ecgrisk.{stage}.app:main", _cli(f"ecgrisk-{stage}", args, run_dir),
                     tmp_path / "logs",
                     _pause(f"write:{output}", marker) if point == "final" else {})
    last = run_dir / "checkpoints" / "last.ckpt"
    if point == "early":
        run.until(lambda: _compiling(cache, run), "the cache being compiled by its workers")
    elif point == "mid":
        run.until(last.exists, "the first epoch's checkpoint")
    else:
        run.until(marker.exists, f"the pause before {output}")
    stop(run, sig)
    assert not (run_dir / output).exists()
    return run, last


@pytest.mark.parametrize("sig,point", [(SIGTERM, "early"), (SIGKILL, "mid"), (SIGINT, "final")],
                         ids=["SIGTERM-early", "SIGKILL-mid", "SIGINT-final"])
def test_finetune(zygote, data, finetune_base, tmp_path, sig, point):
    from ecgrisk.finetune.app import train

    base_run, base_metrics = finetune_base
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    cache = tmp_path / "cache" if point == "early" else None  # a cache still to compile
    args = _train_args(data, run_dir, *FINETUNE, cache=cache)
    run, last = _kill_training(zygote, "finetune", "model.pt", args, run_dir, marker, cache,
                               tmp_path, sig, point)
    if point == "early":
        _cache_is_sound(cache)
        assert not last.exists() and "no epoch had finished" in _hint(run)
        return
    if sig != SIGKILL:
        assert f"resume={last}" in _hint(run)
    finished = _finished_epochs(last)
    metrics = train(compose("finetune", [*args, f"resume={last}"]))
    # the resumed run trains only the epochs the killed one had not finished
    # the resumed part's log, with the earlier one set aside as history-0.csv; where nothing was
    # left to train, the earlier log stays metrics.csv and there is no history (runs.settle_logs)
    log = run_dir / "logs" / "metrics.csv"
    assert log.is_file()
    resumed_part = any((run_dir / "logs").glob("history-*.csv"))
    own = pd.read_csv(log) if resumed_part else pd.DataFrame({"epoch": []})
    own = own.dropna(subset=["train/loss_epoch"]) if "train/loss_epoch" in own else own.iloc[:0]
    assert sorted(own["epoch"].astype(int)) == list(range(finished, EPOCHS))
    # ... exactly as the uninterrupted run did: same losses, same weights, same evaluation
    base_losses, losses = _epoch_losses(base_run), _epoch_losses(run_dir)
    assert losses == {e: base_losses[e] for e in losses}
    assert set(range(finished, EPOCHS)) <= set(losses)
    if sig != SIGKILL:  # a graceful stop also wrote out the log of every finished epoch
        assert losses == base_losses
    _same_weights(run_dir / "model.pt", base_run / "model.pt")
    a, b = Bundle.load(run_dir / "model.pt"), Bundle.load(base_run / "model.pt")
    np.testing.assert_array_equal(a.temperature, b.temperature)
    assert metrics["test/macro_auroc"] == base_metrics["test/macro_auroc"]


@pytest.mark.parametrize("sig,point", [(SIGKILL, "early"), (SIGINT, "mid"), (SIGTERM, "final")],
                         ids=["SIGKILL-early", "SIGINT-mid", "SIGTERM-final"])
def test_pretrain(zygote, data, pretrain_base, tmp_path, sig, point):
    from ecgrisk.pretrain.app import train

    base_run, base_metrics = pretrain_base
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    cache = tmp_path / "cache" if point == "early" else None
    args = _train_args(data, run_dir, cache=cache)
    run, last = _kill_training(zygote, "pretrain", "encoder.pt", args, run_dir, marker, cache,
                               tmp_path, sig, point)
    if point == "early":
        _cache_is_sound(cache)
        assert not last.exists()
        return
    metrics = train(compose("pretrain", [*args, f"resume={last}"]))
    assert metrics["train/loss_per_epoch"] == base_metrics["train/loss_per_epoch"]
    _same_weights(run_dir / "encoder.pt", base_run / "encoder.pt")


@pytest.mark.parametrize("sig", [SIGTERM, SIGKILL], ids=["SIGTERM-mid", "SIGKILL-mid"])
def test_finetune_ddp(zygote, data, tmp_path, sig):
    """Two CPU ranks with a DataLoader worker each; rank 0 is killed after the first epoch: the
    other rank and every loader worker end with it."""
    if shutil.which("ecgrisk-finetune", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("the ecgrisk-finetune console script is not installed next to python")
    run_dir = tmp_path / "run"
    args = _train_args(data, run_dir, *FINETUNE, "trainer=ddp", "trainer.accelerator=cpu",
                       "trainer.devices=2", "data.num_workers=1")
    # Lightning starts rank 1 as `python <argv[0]> <argv[1:]>` with its own hydra.run.dir
    script = str(Path(sys.executable).parent / "ecgrisk-finetune")
    run = zygote.run("ecgrisk.finetune.app:main", [script, *args], tmp_path / "logs")
    last = run_dir / "checkpoints" / "last.ckpt"
    run.until(last.exists, "the first epoch's checkpoint", timeout=300)
    held = stop(run, sig)
    assert held >= 4, f"two ranks and their loader workers should run, not {held} processes"
    assert _finished_epochs(last) >= 1  # the checkpoint it left is whole


# --------------------------------------------------------------------------- ecgrisk-refine


@pytest.fixture(scope="module")
def refine_base(data, finetune_base, tmp_path_factory):
    from ecgrisk.refine.app import refine

    run = tmp_path_factory.mktemp("rf-base") / "run"
    refine(compose("refine", _refine_args(data, finetune_base[0], run)))
    return run


def _refine_args(data, base_run: Path, run_dir: Path) -> list[str]:
    return [f"data.root={data['root']}", f"data.cache_dir={data['cache']}",
            f"base={base_run / 'model.pt'}", *REFINE, f"output_dir={run_dir}"]


def _judgements(db: Path) -> list[tuple]:
    from ecgrisk.feedback.store import FeedbackStore

    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with FeedbackStore(db) as store:
        return [(v.ecg_id, json.dumps(v.reading, sort_keys=True), json.dumps(v.marks, sort_keys=True),
                 tuple(v.missed), v.annotator, v.model_version) for v in store.verdicts()]


@pytest.mark.parametrize("sig,point", [(SIGINT, "early"), (SIGTERM, "mid"), (SIGKILL, "final")],
                         ids=["SIGINT-early", "SIGTERM-mid", "SIGKILL-final"])
def test_refine(zygote, data, finetune_base, refine_base, tmp_path, sig, point):
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    args = _refine_args(data, finetune_base[0], run_dir)
    run = zygote.run("ecgrisk.refine.app:main", _cli("ecgrisk-refine", args, run_dir),
                     tmp_path / "logs",
                     _pause("write:model.pt", marker) if point == "final" else {})
    if point == "early":  # the run's store is being created, no round has asked yet
        run.until((run_dir / "feedback.db").exists, "the run's feedback store")
    elif point == "mid":
        run.until((run_dir / "checkpoints" / "round_1.pt").exists, "the first round's model")
    else:
        run.until(marker.exists, "the pause before model.pt")
    stop(run, sig)
    assert not (run_dir / "model.pt").exists()
    if sig != SIGKILL:  # the run named its directory, which a rerun refuses: it says so
        assert "rerun the same command with another output_dir" in _hint(run)
    db = run_dir / "feedback.db"
    if point == "early":
        assert _judgements(db) == []
        return
    # every finished round's judgements, whole, and the same as the uninterrupted run's:
    # the rerun the hint asks for repeats the run exactly
    got, want = _judgements(db), _judgements(refine_base / "feedback.db")
    rounds = sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("round_*.pt"))
    assert rounds == list(range(1, len(rounds) + 1))
    assert got == want[:len(got)] and len(got) in (2 * len(rounds), 2 * len(rounds) + 2)
    for k in rounds:
        _same_weights(run_dir / "checkpoints" / f"round_{k}.pt",
                      refine_base / "checkpoints" / f"round_{k}.pt")
    if point == "final":
        assert got == want and rounds == list(range(1, ROUNDS + 1))


# --------------------------------------------------------------------------- review and store


@pytest.fixture(scope="module")
def review_env(data, tiny_bundle, tmp_path_factory):
    """A folder of 12 ECGs and a store template holding the annotator account."""
    from ecgrisk.cli import main as cli_main

    tmp = tmp_path_factory.mktemp("review")
    folder = tmp / "ecgs"
    folder.mkdir()
    for hea in sorted(data["records"].rglob("*.hea"))[:12]:
        for f in hea.parent.glob(hea.stem + ".*"):
            shutil.copy(f, folder / f.name)
    template = tmp / "template.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
        assert cli_main(["review", "add-user", "dr-a", "--db", str(template),
                         "--password-stdin"]) == 0
    imports = tmp / "batch.jsonl"
    _write_import(imports, N_IMPORT)
    return {"folder": folder, "template": template, "bundle": tiny_bundle, "batch": imports}


def _write_import(path: Path, n: int) -> None:
    from ecgrisk.feedback.records import Verdict

    with open(path, "w") as f:
        for i in range(n):
            v = Verdict(ecg_id=f"imp-{i}", ecg_path=f"batch/{i}", reading={"NORM": 1, "MI": 0},
                        marks={"NORM": "right"}, missed=[], annotator="dr-import",
                        model_version="1")
            f.write(json.dumps(v.to_dict()) + "\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Reviewer:
    """An annotator's browser session on a served review app, through its JSON API."""

    def __init__(self, port: int):
        import httpx

        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        page = self.client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        r = self.client.post("/login", data={"username": "dr-a", "password": PASSWORD,
                                             "csrf_token": token})
        assert r.status_code in (200, 303), r.text
        self.csrf = re.search(r'name="csrf-token" content="([^"]+)"',
                              self.client.get("/").text).group(1)
        self.queue = [it["ecg_id"] for it in
                      self.client.get("/api/queue", params={"limit": 20}).json()["items"]]
        self.acknowledged: list[tuple[int, str]] = []
        self.unanswered: str | None = None  # posted when the app died: stored or not

    def judge(self) -> None:
        ecg = self.queue.pop(0)
        self.unanswered = ecg
        r = self.client.post("/api/feedback", json={"ecg_id": ecg, "marks": {"NORM": "right"}},
                             headers={"X-CSRF-Token": self.csrf})
        assert r.status_code == 201, r.text
        self.acknowledged.append((r.json()["id"], ecg))
        self.unanswered = None


def _serve(zygote, env, db: str, logs: Path) -> tuple[Run, int]:
    port = _free_port()
    argv = ["ecgrisk", "review", "--db", db, "--model", env["bundle"], "--data", env["folder"],
            "--port", port]
    return zygote.run("ecgrisk.cli:main", argv, logs), port


def _up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("sig,point", [(SIGTERM, "early"), (SIGINT, "mid")],
                         ids=["SIGTERM-early", "SIGINT-mid"])
def test_review(zygote, review_env, tmp_path, sig, point):
    """(SIGKILL during a write is in test_store_writers, with a second writer.)"""
    from ecgrisk.feedback.store import FeedbackStore

    db = tmp_path / "feedback.db"
    shutil.copy(review_env["template"], db)
    run, port = _serve(zygote, review_env, str(db), tmp_path / "logs")
    acknowledged = []
    if point == "early":
        run.until(lambda: "scoring the ECGs" in run.stderr, "the queue being scored")
    else:
        run.until(lambda: _up(port), "the server", timeout=120)
        who = Reviewer(port)
        for _ in range(3):
            who.judge()
        acknowledged = who.acknowledged
        who.client.close()
    stop(run, sig)
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with FeedbackStore(db) as store:
        rows = {row_id: v.ecg_id for row_id, _, v in store.rows("verdict")}
    assert rows == dict(acknowledged)


def _store_url(backend: str, tmp_path: Path, template: Path, stack: ExitStack) -> str:
    if backend == "sqlite":
        db = tmp_path / "feedback.db"
        shutil.copy(template, db)
        return str(db)
    from review_support import fresh_store_url

    from ecgrisk.cli import main as cli_main

    # a schema of its own, dropped when the test ends: no other test's tables are touched
    url = stack.enter_context(fresh_store_url("postgresql", tmp_path))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
        if cli_main(["review", "add-user", "dr-a", "--db", url, "--password-stdin"]) != 0:
            pytest.skip("this review app cannot keep its accounts in PostgreSQL")
    return url


def _importing(url: str) -> bool:
    """Whether a writer holds the store's write transaction open right now (the test itself
    posts nothing meanwhile, so that writer is the import)."""
    if "://" not in url:
        conn = sqlite3.connect(url, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return bool(conn.execute(sqlalchemy.text(
                "SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
                "datname = current_database() AND xact_start IS NOT NULL AND "
                "query ILIKE 'INSERT%'")).first())
    finally:
        engine.dispose()


def _check_store(url: str, who: Reviewer, imported: int) -> None:
    from ecgrisk.feedback.store import FeedbackStore

    if "://" not in url:
        assert sqlite3.connect(url).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with FeedbackStore(url) as store:
        rows = store.rows("verdict")
    review = {row_id: v.ecg_id for row_id, source, v in rows if v.annotator == "dr-a"}
    acknowledged = dict(who.acknowledged)
    assert acknowledged.items() <= review.items(), "an acknowledged judgement was lost"
    extra = set(review.values()) - set(acknowledged.values())
    assert extra <= {who.unanswered}, f"judgements nobody posted: {extra}"
    batch = [v.ecg_id for _, _, v in rows if v.annotator == "dr-import"]
    assert sorted(batch) == sorted(f"imp-{i}" for i in range(imported)), "an import is partial"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("victim,sig", [("import", SIGKILL), ("import", SIGTERM),
                                        ("review", SIGKILL)],
                         ids=["import-SIGKILL", "import-SIGTERM", "review-SIGKILL"])
def test_store_writers(zygote, review_env, tmp_path, request, backend, victim, sig):
    """The review app and ``ecgrisk feedback import`` write to one store; one is killed in
    the middle of its write transaction (the import) or while judgements arrive (the app)."""
    stack = ExitStack()
    request.addfinalizer(stack.close)
    url = _store_url(backend, tmp_path, review_env["template"], stack)
    server, port = _serve(zygote, review_env, url, tmp_path / "logs")
    server.until(lambda: _up(port), "the server", timeout=120)
    who = Reviewer(port)
    who.judge()
    batch = ["ecgrisk", "feedback", "import", review_env["batch"], "--store", url]
    importer = zygote.run("ecgrisk.cli:main", batch, tmp_path / "logs")
    if victim == "import":
        importer.until(lambda: _importing(url), "the import's write transaction")
        stop(importer, sig)
        who.judge()  # the app still writes after the other writer died mid-transaction
        _check_store(url, who, imported=0)
        importer = zygote.run("ecgrisk.cli:main", batch, tmp_path / "logs")
        assert importer.wait() == 0, importer.stderr
        who.judge()
        stop(server, SIGTERM)
    else:
        # judgements keep arriving from another thread while the app is killed
        done = threading.Event()

        def judge_until_killed():
            while who.queue and not done.is_set():
                try:
                    who.judge()
                except Exception:
                    return  # the app is gone: this judgement was never acknowledged

        writer = threading.Thread(target=judge_until_killed)
        writer.start()
        server.until(lambda: len(who.acknowledged) >= 3, "3 more acknowledged judgements")
        stop(server, SIGKILL)
        done.set()
        writer.join(timeout=60)
        assert importer.wait() == 0, importer.stderr
    who.client.close()
    _check_store(url, who, imported=N_IMPORT)


def test_stopping_a_pool_whose_manager_thread_never_started():
    """ProcessPoolExecutor can fail while starting its manager thread (seen in CI, before submit
    deferred signals: SIGTERM inside ``submit``); stopping the pool then must not fail on the
    unstarted thread."""
    import threading
    from concurrent.futures import ProcessPoolExecutor

    from ecgrisk.signals import stop_workers

    ex = ProcessPoolExecutor(max_workers=1)
    ex._executor_manager_thread = threading.Thread(target=lambda: None)  # created, not started
    stop_workers(ex, grace=1.0)  # before the fix: RuntimeError("cannot join thread before ...")
    assert ex._shutdown_thread


_SIGNAL_AT_FORK = r"""
import os, signal
from multiprocessing.context import ForkContext, ForkProcess
from ecgrisk.signals import stop_on_signals, worker_pool

class SignalledProcess(ForkProcess):
    def start(self):  # SIGTERM lands after the fork, before the pool has recorded the worker
        super().start()
        os.kill(os.getpid(), signal.SIGTERM)

class Context(ForkContext):
    Process = SignalledProcess

with stop_on_signals(command="probe"), worker_pool(2, Context()) as ex:
    list(ex.map(abs, range(100)))
"""


_GROUP_SIGTERM_MID_TASK = r"""
import os, signal, sys, time
from ecgrisk.signals import stop_on_signals, worker_pool

def task(marker):
    os.killpg(0, signal.SIGTERM)  # as `timeout` or a container stop sends it: to every process
    time.sleep(0.5)
    open(marker, "w").close()  # the worker lived through it and finished its task
    return bytes(64 << 20)  # a result larger than a pipe's buffer

with stop_on_signals(command="probe"), worker_pool(1) as ex:
    ex.submit(task, sys.argv[1]).result()
    time.sleep(30)
"""


def test_sigterm_to_the_process_group_leaves_a_reader_its_task(tmp_path):
    """Found by a new user's `timeout ... ecgrisk score`: the group's SIGTERM killed a reader
    half-way through sending its chunk, the pool's manager thread waited for the rest of it,
    and the command hung at exit (1 run in 5 on the 500-record subset). Reader pools now leave
    SIGTERM to their parent, which stops them between tasks, as it does on Ctrl-C."""
    marker = tmp_path / "finished"
    proc = subprocess.run([sys.executable, "-c", _GROUP_SIGTERM_MID_TASK, str(marker)],
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert proc.returncode == EXIT[SIGTERM], proc.stderr
    assert proc.stderr.count("interrupted by SIGTERM") == 1, proc.stderr
    assert marker.exists(), "the reader was killed in the middle of its task"

def test_a_signal_while_the_pool_forks_a_worker_stops_the_command():
    """Seen once in CI (test_finetune[SIGTERM-early]): SIGTERM between a worker's fork and the
    pool recording it left a worker nobody stopped, and the interrupted command then waited
    for it at exit forever."""
    proc = subprocess.run([sys.executable, "-c", _SIGNAL_AT_FORK], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == EXIT[SIGTERM], proc.stderr
    assert proc.stderr.count("interrupted by SIGTERM") == 1, proc.stderr


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``sig`` (SigCgt in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_ctrl_c_while_a_command_imports_torch_is_one_line_and_130():
    """A new user's Ctrl-C in the first seconds of `ecgrisk-finetune` (torch and Lightning
    importing) printed a KeyboardInterrupt traceback: the console script imported the app before
    its handlers were in. Python catches SIGINT from the start, so the handlers' arrival shows
    as SIGTERM caught; the signal comes then, while the app is still importing."""
    proc = subprocess.Popen([sys.executable, "-c", "from ecgrisk.entry import finetune; finetune()",
                             "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _catches(proc.pid, SIGTERM):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.002)
    proc.send_signal(SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT[SIGINT], err
    assert err == "ecgrisk-finetune: interrupted by SIGINT; rerun the command to start again\n"
    assert out == ""  # stopped before Hydra printed the help


@pytest.mark.parametrize("sig", [SIGINT, SIGTERM])
def test_a_signal_after_the_command_finished_keeps_its_exit_status(data, tmp_path, sig):
    """Found in a walkthrough: Ctrl-C a tenth of a second after `ecgrisk score` printed its
    summary ended it with 130 and no line, while torch tore down; the work was all written."""
    marker = tmp_path / "at-exit"
    record = str(next((data["records"]).rglob("*.hea")).with_suffix(""))
    proc = subprocess.Popen([sys.executable, "-c", "from ecgrisk.entry import ecgrisk; ecgrisk()",
                             "inspect", record], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **_pause("exit", marker)})
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["samples"] > 0 and "interrupted" not in err


def test_a_command_started_ignoring_ctrl_c_keeps_ignoring_it():
    """A shell script's background job starts with SIGINT ignored, so that the Ctrl-C its
    terminal sends to the foreground command does not stop it; ecgrisk's handlers kept it
    ignored only where Python's default was in force, and stopped such a job with 130."""
    def ignore_sigint():
        signal.signal(SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, "-c", "from ecgrisk.entry import finetune; finetune()",
                             "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ignore_sigint)
    deadline = time.monotonic() + 60
    while not _catches(proc.pid, SIGTERM):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.002)
    assert not _catches(proc.pid, SIGINT)
    proc.send_signal(SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "ecgrisk-finetune" in out, err


class _SignalProbe(L.Callback):
    """Records the SIGTERM handler in force at each phase, then sends SIGTERM mid-training."""

    def __init__(self):
        self.handlers: dict[str, object] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.handlers["train"] = signal.getsignal(SIGTERM)
        if trainer.current_epoch == 1:
            os.kill(os.getpid(), SIGTERM)

    def on_validation_start(self, trainer, module):
        self.handlers["validate"] = signal.getsignal(SIGTERM)


def test_the_trainer_leaves_sigterm_to_ecgrisk(tmp_path):
    """Lightning's own SIGTERM handler broadcasts a tensor from inside the handler; in a
    two-rank fine-tune killed while the other rank sat in another collective, both waited for
    ever (test_finetune_ddp[SIGTERM-mid], twice in 24 runs). ecgrisk's handler must stay in
    force through training and validation, and SIGTERM must stop the run with status 143."""
    from torch.utils.data import DataLoader, TensorDataset

    from ecgrisk import signals
    from ecgrisk.runs import make_trainer

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            return self.lin(batch[0]).pow(2).mean()

        def validation_step(self, batch, _):
            self.log("val", self.lin(batch[0]).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    cfg = compose("finetune", ["trainer.accelerator=cpu", "trainer.max_epochs=3",
                               "trainer.enable_progress_bar=false"])
    probe = _SignalProbe()
    trainer = make_trainer(cfg, tmp_path, [probe], loggers=[])
    loader = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    with pytest.raises(SystemExit) as stopped, signals.stop_on_signals(command="probe"):
        trainer.fit(Tiny(), loader, loader)
    assert stopped.value.code == EXIT[SIGTERM]
    assert probe.handlers == {"train": signals._handler, "validate": signals._handler}
