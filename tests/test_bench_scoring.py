"""scripts/bench_scoring.py's readers-only run: the time of every file, split by format."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from script_support import load_script

from ecgrisk.bundle import Bundle
from ecgrisk.data.synthetic import make_synthetic_ptbxl
from ecgrisk.models import create_encoder
from ecgrisk.models.classifier import ECGClassifier
from ecgrisk.preprocess import Preprocessing, Scaler

pytest.importorskip("pydicom")  # the mixed folder's DICOM files


def test_the_readers_time_splits_by_format_over_every_file(tmp_path, monkeypatch):
    bench = load_script("bench_scoring")
    root = make_synthetic_ptbxl(tmp_path / "ptbxl", n_records=12, progress=False)
    folder = tmp_path / "mixed"
    formats = bench.build_folder(root / "records100", folder, 20, 0.2)
    assert formats == {"wfdb": 16, "npz": 2, "dicom": 1, "muse": 1}
    torch.manual_seed(0)
    model = ECGClassifier(create_encoder("xresnet1d18", base_channels=8), num_classes=5).eval()
    path = tmp_path / "model.pt"
    Bundle(model=model, classes=list("ABCDE"), preprocessing=Preprocessing(fs=100.0),
           scaler=Scaler(0.0, 0.2), temperature=np.ones(5), name="tiny", version="1").save(path)
    real_load = Bundle.load

    def costly_load(*args, **kwargs):  # 0.4 core-s before the timed loop, which must not count it
        end = time.process_time() + 0.4
        while time.process_time() < end:
            pass
        return real_load(*args, **kwargs)

    monkeypatch.setattr(Bundle, "load", costly_load)
    r = bench.run_read(str(folder), str(path))
    assert r["scored"] == 20 and r["failed"] == 0
    assert set(r["read_ms_per_file"]) == {k for k, v in formats.items() if v}
    assert min(r["read_ms_per_file"].values()) > 0
    assert sum(r["read_share"].values()) == pytest.approx(1.0)
    # shares are each format's count x its time per file over the total
    total = sum(formats[k] * ms for k, ms in r["read_ms_per_file"].items())
    for k, ms in r["read_ms_per_file"].items():
        assert r["read_share"][k] == pytest.approx(formats[k] * ms / total)
    assert r["timed_s"] * 1e3 >= total * 0.999
    # CPU of the timed loop only (20 small files, a few hundredths of a second), not of the
    # bundle's load before it
    assert 0 < r["timed_cpu_s"] < 0.4
    # each format's first file is one of its files: at most that format's whole time
    assert set(r["first_file_ms"]) == set(r["read_ms_per_file"])
    for k, ms in r["first_file_ms"].items():
        assert 0 < ms <= formats[k] * r["read_ms_per_file"][k] * 1.000001


def test_repeated_runs_summarise_to_the_median_run_with_their_range_and_largest_memory():
    bench = load_script("bench_scoring")

    def run(mode, n, rate, rss, rep):
        return {"mode": mode, "n": n, "ecg_per_s": rate, "wall_s": n / rate, "peak_rss_mb": rss,
                "peak_rss_children_mb": rss / 2, "scored": n, "failed": 0, "repeat": rep}
    runs = [run("pipeline", 100, 300.0, 50, 0), run("naive", 100, 90.0, 40, 0),
            run("pipeline", 100, 250.0, 70, 1), run("naive", 100, 110.0, 30, 1),
            run("pipeline", 100, 330.0, 60, 2), run("naive", 100, 95.0, 35, 2),
            run("pipeline", 100, 200.0, 80, 3)]
    by = bench.summarise(runs)
    assert set(by) == {("pipeline", 100), ("naive", 100)}
    pipe, naive = by[("pipeline", 100)], by[("naive", 100)]
    # four pipeline runs (200, 250, 300, 330): the lower middle one, 250, from repeat 1
    assert pipe["ecg_per_s"] == 250.0 and pipe["wall_s"] == pytest.approx(100 / 250.0)
    assert pipe["range"] == [200.0, 330.0] and pipe["repeats"] == 4 and "repeat" not in pipe
    assert pipe["peak_rss_mb"] == 80 and pipe["peak_rss_children_mb"] == 40
    assert naive["ecg_per_s"] == 95.0 and naive["range"] == [90.0, 110.0] and naive["peak_rss_mb"] == 40


def test_cpu_seconds_count_children_once_they_have_ended():
    bench = load_script("bench_scoring")
    main0, kids0 = bench.cpu_seconds()
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], check=True)
    main1, kids1 = bench.cpu_seconds()
    assert kids1 - kids0 > 0.05  # the child's work, a few tenths of a second
    assert main1 - main0 < kids1 - kids0  # this process only waited


def test_the_work_bound_spreads_a_runs_cpu_seconds_over_the_cores():
    bench = load_script("bench_scoring")
    run = {"scored": 2000, "cpu_main_s": 6.0, "cpu_readers_s": 2.0}
    # 8 core-s of work on 2 cores that never idle: 4 s, so 500 ECGs/s at most
    assert bench.work_bound(run, cores=2) == pytest.approx(500.0)
    assert bench.work_bound(run, cores=1) == pytest.approx(250.0)
