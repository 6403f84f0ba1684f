import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import wfdb

from ecgrisk.data.base import RecordSet
from ecgrisk.data.cache import ECGCache, build_cache, cache_key, get_or_build
from ecgrisk.data.datamodule import ECGDataModule, data_loader
from ecgrisk.data.splits import stable_folds
from ecgrisk.io import STANDARD_LEADS, read_ecg
from ecgrisk.preprocess import Preprocessing, Scaler

WFDB_NAMES = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def _write_records(folder, n, fs=100, seconds=10, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sig = (rng.normal(0, 0.3, (int(fs * seconds), 12)) + i * 0.01).astype(np.float64)
        name = f"r{i:03d}"
        wfdb.wrsamp(name, fs=fs, units=["mV"] * 12, sig_name=WFDB_NAMES, p_signal=sig,
                    fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))
        paths.append(str(folder / name))
    return paths


@pytest.fixture
def tiny(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    paths = _write_records(src, 12)
    labels = np.zeros((12, 2), np.uint8)
    labels[::2, 0] = 1
    labels[1::2, 1] = 1
    folds = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 10, 10])
    rs = RecordSet("tiny", [f"{i}" for i in range(12)], paths, ["A", "B"], labels, folds)
    return rs, tmp_path / "cache"


def test_cache_holds_exactly_what_read_ecg_reads(tiny):
    rs, root = tiny
    cache = build_cache(rs, root, Preprocessing(fs=100), workers=1, progress=False)
    assert len(cache) == 12 and cache.fs == 100
    for i in (0, 5, 11):
        np.testing.assert_array_equal(cache.record(i), read_ecg(rs.paths[i]).signal)
    np.testing.assert_array_equal(cache.labels, rs.labels)
    np.testing.assert_array_equal(cache.folds, rs.folds)
    assert cache.classes == ["A", "B"]
    # a window past the end is zero-padded, not wrapped
    w = cache.window(3, 900, 250)
    np.testing.assert_array_equal(w[:, :100], read_ecg(rs.paths[3]).signal[:, 900:])
    assert not w[:, 100:].any()
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]


def test_cache_resamples_at_build_time(tiny):
    rs, root = tiny
    cache = build_cache(rs, root, Preprocessing(fs=50), workers=1, progress=False)
    assert cache.record(0).shape == (12, 500)


def test_cache_is_reused_then_rebuilt_when_damaged_or_stale(tiny):
    rs, root = tiny
    prep = Preprocessing(fs=100)
    first = get_or_build(rs, root, prep, workers=1, progress=False)
    stamp = (first.path / "meta.json").stat().st_mtime_ns
    again = get_or_build(rs, root, prep, workers=1, progress=False)
    assert (again.path / "meta.json").stat().st_mtime_ns == stamp  # reused, not rebuilt

    # damaged: bytes overwritten inside the signal file -> checksum mismatch -> rebuilt
    sig = first.path / "signals.f32"
    with open(sig, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 64)
    rebuilt = get_or_build(rs, root, prep, workers=1, progress=False)
    np.testing.assert_array_equal(rebuilt.record(0), read_ecg(rs.paths[0]).signal)

    # truncated signal file -> rebuilt
    with open(sig, "r+b") as f:
        f.truncate(1000)
    rebuilt = get_or_build(rs, root, prep, workers=1, progress=False)
    assert sig.stat().st_size == 12 * 1000 * 12 * 4

    # stale: a source file changes -> a different key
    key = cache_key(rs, prep)
    st = os.stat(rs.paths[0] + ".dat")
    os.utime(rs.paths[0] + ".dat", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache_key(rs, prep) != key
    # other settings -> a different key
    assert cache_key(rs, Preprocessing(fs=100, bandpass=(0.5, 40.0))) != cache_key(rs, prep)


def test_unreadable_records_are_recorded_and_left_out(tiny, caplog):
    rs, root = tiny
    with open(rs.paths[2] + ".dat", "r+b") as f:
        f.truncate(10)
    with caplog.at_level("WARNING", logger="ecgrisk.data.cache"):
        cache = build_cache(rs, root, Preprocessing(fs=100), workers=1, progress=False)
    assert len(cache) == 11 and "2" not in cache.record_ids
    failures = json.loads((cache.path / "meta.json").read_text())["failures"]
    assert list(failures) == ["2"]
    assert "r002" in failures["2"]
    # the warning names the record and why, as well as where the full list is
    (msg,) = [r.getMessage() for r in caplog.records]
    assert f"(2: {failures['2']}; every one in {cache.path}/meta.json)" in msg


def test_parallel_build_matches_serial(tiny, tmp_path):
    rs, root = tiny
    a = build_cache(rs, root, Preprocessing(fs=100), workers=1, progress=False)
    b = build_cache(rs, tmp_path / "cache2", Preprocessing(fs=100), workers=2, progress=False)
    np.testing.assert_array_equal(np.asarray(a.signals), np.asarray(b.signals))


def test_stable_folds_are_deterministic_and_cover_1_to_10():
    ids = [f"rec{i}" for i in range(500)]
    f = stable_folds(ids)
    np.testing.assert_array_equal(f, stable_folds(ids))
    assert set(f) == set(range(1, 11))


def test_datamodule_on_ptbxl(ptbxl_root, ptbxl_split_sizes, tmp_path):
    from ecgrisk.data.ptbxl import PTBXL

    rs = PTBXL(ptbxl_root, task="superdiagnostic")
    dm = ECGDataModule(rs, tmp_path / "cache", batch_size=16, progress=False)
    dm.setup()
    sizes = ptbxl_split_sizes["superdiagnostic"]  # 352, 72, 64 on the shared subset
    assert [len(dm.split[s][0]) for s in ("train", "val", "test")] == list(sizes.values())
    # the scaler sees the training folds only
    train_ids = set(dm.record_ids("train"))
    vals = np.concatenate([read_ecg(p).signal.ravel() for r, p in zip(rs.record_ids, rs.paths, strict=True) if r in train_ids])
    assert dm.scaler.mean == pytest.approx(vals.mean(), abs=1e-6)
    assert dm.scaler.std == pytest.approx(vals.std(), rel=1e-5)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 12, 250) and y.shape == (16, 5)
    ds = dm.eval_dataset("test")
    assert len(ds) == sizes["test"] * 7
    x, y, k = ds[8]
    i = ds.indices[ds.positions[8]]
    raw = dm.caches[0].record(i)[:, ds.starts[8]: ds.starts[8] + 250]
    np.testing.assert_allclose(x.numpy(), Scaler(dm.scaler.mean, dm.scaler.std)(raw), rtol=1e-6)
    assert list(rs.classes) == dm.classes == ["CD", "HYP", "MI", "NORM", "STTC"]
    assert STANDARD_LEADS[0] == "I"


def test_cache_never_loads_the_whole_array(tiny):
    rs, root = tiny
    cache = build_cache(rs, root, Preprocessing(fs=100), workers=1, progress=False)
    assert isinstance(cache.signals, np.memmap)
    reopened = ECGCache(cache.path)
    assert reopened._signals is None  # opened lazily, per process


def test_concurrent_builds_of_one_entry_never_break_a_reader(tiny):
    """Processes (DDP ranks, parallel jobs) building the same entry again and again: every build
    returns a valid entry, and the entry stays readable throughout."""
    import multiprocessing as mp

    rs, root = tiny
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_build_and_read, [(rs, str(root), 6)] * 2)
    assert [r[1] for r in results] == [[], []]  # no failures in either process
    assert results[0][0] == results[1][0]
    cache = ECGCache(results[0][0])
    cache.verify()
    np.testing.assert_array_equal(cache.record(4), read_ecg(rs.paths[4]).signal)
    assert not [p for p in root.iterdir() if p.name.startswith((".tmp", ".trash"))]


def _build_and_read(rs, root, times):
    failures = []
    for _ in range(times):
        try:
            path = build_cache(rs, root, Preprocessing(fs=100), workers=1, progress=False).path
            c = ECGCache(path)
            c.verify()
            c.record(0)
        except Exception as e:  # noqa: BLE001 - reported to the parent as data
            failures.append(repr(e))
    return str(path), failures


def test_record_names_with_dots_are_cached(tmp_path):
    src = tmp_path / "dots"
    src.mkdir()
    paths = _write_records(src, 2)
    dotted = str(src / "rec.v2")
    for ext in (".hea", ".dat"):
        text = Path(paths[0] + ext).read_bytes().replace(b"r000", b"rec.v2")
        Path(dotted + ext).write_bytes(text)
    rs = RecordSet("dots", ["a", "b"], [dotted, paths[1]])
    cache = build_cache(rs, tmp_path / "cache", Preprocessing(fs=100), workers=1, progress=False)
    assert len(cache) == 2
    np.testing.assert_array_equal(cache.record(0), read_ecg(paths[0]).signal)


def test_datamodule_opens_its_caches_once(tiny, monkeypatch):
    import ecgrisk.data.datamodule as dmod

    rs, root = tiny
    calls = []
    real = dmod.get_or_build
    monkeypatch.setattr(dmod, "get_or_build", lambda *a, **k: calls.append(1) or real(*a, **k))
    dm = ECGDataModule(rs, root, batch_size=4, progress=False)
    dm.setup()
    for _ in range(3):  # fit, validate, test each call both
        dm.prepare_data()
        dm.setup()
    assert len(calls) == 1


# held by this process while a loader starts its worker: a forked worker inherits it locked
_HELD = threading.Lock()


class _NeedsTheLock(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        with _HELD:
            return torch.tensor([i])


def test_loader_workers_inherit_no_lock_this_process_holds():
    """Training processes have threads (DDP's, a running loader's queue feeders); a worker forked
    while one of them held a lock waits on it for ever. Spawned workers start clean."""
    loader = data_loader(_NeedsTheLock(), batch_size=2, num_workers=1, timeout=60)
    with _HELD:
        batch = next(iter(loader))  # forked: the worker hangs and this raises after 60 s
    assert batch.tolist() == [[0], [1]]


def test_datamodule_loaders_with_workers_give_what_the_main_process_gives(tiny):
    rs, root = tiny
    batches = {}
    for workers in (0, 1):
        dm = ECGDataModule(rs, root, batch_size=4, num_workers=workers, progress=False)
        dm.prepare_data()
        dm.setup()
        batches[workers] = [[t.clone() for t in b] for b in dm.val_dataloader()]
        x, y = next(iter(dm.train_dataloader()))  # crops are drawn in the worker: shapes only
        assert x.shape == (4, 12, dm.crop) and y.shape == (4, 2)
    assert len(batches[0]) == len(batches[1]) > 0
    for a, b in zip(batches[0], batches[1], strict=True):
        for ta, tb in zip(a, b, strict=True):
            assert torch.equal(ta, tb)
