"""Batch scoring: agreement with the model's direct evaluation, bad files as rows, resume, refusal."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from ecgrisk.bundle import Bundle
from ecgrisk.bundle_files import BundleError, peek_meta
from ecgrisk.cli import main as cli_main
from ecgrisk.input_spec import InputSpec
from ecgrisk.io import read_ecg
from ecgrisk.io.inputs import InputError, collect_records
from ecgrisk.models import create_encoder
from ecgrisk.models.classifier import ECGClassifier
from ecgrisk.models.layers import fold_batchnorm
from ecgrisk.preprocess import Preprocessing, Scaler
from ecgrisk.scoring import job
from ecgrisk.scoring.job import record_groups, score_files
from ecgrisk.scoring.predict import Predictor, predict_proba
from ecgrisk.scoring.quality import quality_flags
from ecgrisk.scoring.report import risk_band

CLASSES = ["NORM", "MI", "STTC", "CD", "HYP"]
TEMPS = np.array([1.0, 2.0, 0.5, 1.5, 0.8])
BIAS = np.array([0.3, -1.0, 0.0, 0.5, -0.2])  # non-zero, so a dropped calibration bias shows


def _make_bundle(path, seed=0, version="1"):
    torch.manual_seed(seed)
    model = ECGClassifier(create_encoder("xresnet1d18", base_channels=8), num_classes=5).eval()
    Bundle(model=model, classes=CLASSES, preprocessing=Preprocessing(fs=100.0),
           scaler=Scaler(mean=0.01, std=0.2), temperature=TEMPS, bias=BIAS, name="tiny",
           version=version).save(path)
    return path


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return _make_bundle(tmp_path_factory.mktemp("bundle") / "model.pt")


def direct_probs(bundle: Bundle, path) -> np.ndarray:
    """Hand evaluation: read, preprocess, pad, window by window through the model, max, T, sigmoid."""
    ecg = read_ecg(path)
    x = bundle.preprocessing.apply(ecg.signal, ecg.fs)
    fs = bundle.preprocessing.fs
    w, s = round(bundle.window_s * fs), round(bundle.stride_s * fs)
    if x.shape[1] < w:
        x = np.pad(x, ((0, 0), (0, w - x.shape[1])))
    starts = [0] if x.shape[1] <= w else list(range(0, x.shape[1] - w + 1, s))
    with torch.no_grad():
        logits = [bundle.model(torch.from_numpy(bundle.scaler(x[:, a:a + w]))[None])[0].numpy()
                  for a in starts]
    z = np.max(np.stack(logits), axis=0).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-(z / TEMPS + BIAS)))


def read_table(path) -> dict[str, dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len({r["path"] for r in rows}) == len(rows), "a record appears twice"
    return {r["record"]: r for r in rows}


def probs_of(row) -> np.ndarray:
    return np.array([float(row[f"prob/{c}"]) for c in CLASSES])


def _copy_record(src_base, dst_dir, name=None):
    """Copy a WFDB record's files (header + signal) under a new folder, keeping its name."""
    name = name or src_base.name
    for f in src_base.parent.glob(src_base.name + ".*"):
        shutil.copy(f, dst_dir / (name + f.suffix))
    return dst_dir / name


def test_scores_equal_direct_predictions(ptbxl_root, bundle_path, tmp_path):
    bundle = Bundle.load(bundle_path)
    recs = [ptbxl_root / "records100" / "00000" / f"{i:05d}_lr" for i in (1, 2, 3, 7, 11)]
    recs.append(ptbxl_root / "records500" / "00000" / "00001_hr")  # 500 Hz, resampled to 100
    out = tmp_path / "scores.csv"
    summary = score_files([str(r) + ".hea" for r in recs], bundle_path, out, workers=0,
                          batch_size=16, progress=False)
    table = read_table(out)
    assert summary.scored == 6 and summary.failed == 0 and len(table) == 6
    for r in recs:
        row = table[r.name]
        want = direct_probs(bundle, r)
        np.testing.assert_allclose(probs_of(row), want, atol=1e-5, rtol=0)
        assert float(row["risk"]) == pytest.approx(1 - want[0], abs=1e-5)
        assert row["n_windows"] == "7" and row["error"] == "" and row["model_name"] == "tiny"
        assert row["resampled"] == str(r.name.endswith("_hr"))
    # the one-record function gives the same numbers
    ecg = read_ecg(recs[0])
    np.testing.assert_allclose(predict_proba(bundle, ecg.signal, ecg.fs),
                               probs_of(table[recs[0].name]), atol=1e-6)


def _write_wfdb(folder, name, sig, fs, leads):
    import wfdb

    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(leads), sig_name=list(leads), p_signal=sig,
                fmt=["16"] * len(leads), adc_gain=[1000.0] * len(leads),
                baseline=[0] * len(leads), write_dir=str(folder))


def test_broken_files_are_rows_not_crashes(ptbxl_root, challenge_record, bundle_path, tmp_path):
    src = ptbxl_root / "records100" / "00000"
    d = tmp_path / "in"
    d.mkdir()
    good = [_copy_record(src / "00001_lr", d), _copy_record(src / "00002_lr", d)]
    trunc = _copy_record(src / "00003_lr", d)
    dat = trunc.with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[:5000])
    shutil.copy(src / "00004_lr.hea", d / "00004_lr.hea")  # header without its .dat
    (d / "garbage.hea").write_bytes(b"\x00" + np.random.default_rng(0).bytes(300))
    (d / "empty.hea").write_bytes(b"")
    t = np.arange(1000) / 100.0
    _write_wfdb(d, "flat", np.full((1000, 12), 0.5), 100, [
        "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"])
    np.savez(d / "allnan.npz", signal=np.full((12, 1000), np.nan, np.float32), fs=100.0)
    two = np.stack([np.sin(2 * np.pi * 1.2 * t), 0.8 * np.sin(2 * np.pi * 1.2 * t + 0.3)], 1)
    _write_wfdb(d, "twolead", two, 100, ["I", "II"])
    hr = _copy_record(ptbxl_root / "records500" / "00000" / "00001_hr", d)
    mat = _copy_record(challenge_record, d)  # a Challenge .hea + .mat at 500 Hz

    out = tmp_path / "scores.csv"
    rc = cli_main(["score", str(d), "--model", str(bundle_path), "--out", str(out),
                   "--workers", "2", "--quiet"])
    assert rc == 0
    table = read_table(out)
    assert len(table) == 11
    errors = {k: r["error"].split(":")[0] for k, r in table.items() if r["error"]}
    assert errors == {"00003_lr": "TruncatedSignalError", "00004_lr": "MissingSignalFileError",
                      "garbage": "HeaderParseError", "empty": "EmptyFileError",
                      "flat": "InvalidSignalError", "allnan": "InvalidSignalError"}
    for k in errors:
        assert table[k]["prob/NORM"] == "" and table[k]["risk"] == ""
    bundle = Bundle.load(bundle_path)
    for rec in [*good, hr, mat, d / "twolead"]:
        row = table[rec.name]
        np.testing.assert_allclose(probs_of(row), direct_probs(bundle, rec), atol=1e-5, rtol=0)
    assert table["twolead"]["missing_leads"] == "V1;V2;V3;V4;V5;V6"
    assert table["twolead"]["derived_leads"] == "III;aVR;aVL;aVF"
    assert table["twolead"]["quality"] == "missing,derived"
    assert table["00001_hr"]["resampled"] == "True" and table["00001_hr"]["fs_in"] == "500.0"
    assert table[mat.name]["resampled"] == "True"
    assert table["00001_lr"]["resampled"] == "False"
    # age and sex where the file states them (the Challenge header's comments), empty elsewhere
    said = dict(line[2:].split(": ", 1) for line in mat.with_suffix(".hea").read_text().splitlines()
                if line.startswith("# ") and ": " in line)
    assert float(table[mat.name]["age"]) == float(said["Age"])
    assert table[mat.name]["sex"] == {"Male": "male", "Female": "female"}[said["Sex"]]
    assert table["00001_lr"]["age"] == table["00001_lr"]["sex"] == table["garbage"]["sex"] == ""
    # nothing scorable at all -> exit 1, and the table still lists every failure
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(d / "empty.hea", bad / "empty.hea")
    shutil.copy(d / "garbage.hea", bad / "garbage.hea")
    out2 = tmp_path / "bad.csv"
    assert cli_main(["score", str(bad), "--model", str(bundle_path), "--out", str(out2),
                     "--workers", "0", "--quiet"]) == 1
    assert len(read_table(out2)) == 2


def test_interrupted_run_resumes_without_duplicates(ptbxl_root, bundle_path, tmp_path,
                                                    monkeypatch):
    inputs = [str(ptbxl_root / "records100" / "00000" / f"{i:05d}_lr") for i in range(1, 13)]
    (tmp_path / "broken.npy").write_bytes(b"")
    inputs.append(str(tmp_path / "broken.npy"))  # an error row, scored again on resume
    full = tmp_path / "full.csv"
    score_files(inputs, bundle_path, full, workers=0, batch_size=8, progress=False)
    want = read_table(full)

    out = tmp_path / "scores.csv"
    real = Predictor.window_logits
    calls = {"n": 0}

    def dying(self, windows):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, windows)

    monkeypatch.setattr(Predictor, "window_logits", dying)
    with pytest.raises(KeyboardInterrupt):
        score_files(inputs, bundle_path, out, workers=0, batch_size=8, progress=False)
    monkeypatch.setattr(Predictor, "window_logits", real)
    assert not out.exists()  # the output is only ever replaced whole
    partial = list(tmp_path.glob(".scores.csv.*.partial"))
    assert len(partial) == 1
    n_done = len(read_table(partial[0]))
    assert 0 < n_done < len(inputs)
    # a hard kill can cut the last line: that row alone is lost and scored again
    text = partial[0].read_text()
    partial[0].write_text(text[:-25])

    summary = score_files(inputs, bundle_path, out, resume=True, workers=0, batch_size=8,
                          progress=False)
    assert summary.resumed == n_done - 1 and summary.total == len(inputs)
    got = read_table(out)
    assert set(got) == set(want)
    for k in want:
        if want[k]["error"]:
            assert got[k]["error"] == want[k]["error"]
        else:
            np.testing.assert_allclose(probs_of(got[k]), probs_of(want[k]), atol=1e-6)
    assert not list(tmp_path.glob(".scores.csv.*.partial"))
    # resuming a complete table scores nothing new and keeps it intact
    again = score_files(inputs, bundle_path, out, resume=True, workers=0, progress=False)
    assert again.resumed == 12 and len(read_table(out)) == len(inputs)


def test_a_resumed_run_keeps_only_rows_read_as_it_reads_them(ptbxl_root, bundle_path, tmp_path):
    # found in review: carried rows kept the bands, the lead padding and the .npy rate of the
    # run that wrote them
    ecg = read_ecg(ptbxl_root / "records100" / "00000" / "00001_lr")
    np.save(tmp_path / "a.npy", ecg.signal)
    limbless = ecg.signal.copy()
    limbless[1:6] = np.nan  # II, III, aVR, aVL, aVF absent (all-NaN): nothing to derive them from
    np.save(tmp_path / "limbless.npy", limbless)
    wfdb = [str(ptbxl_root / "records100" / "00000" / f"{i:05d}_lr") for i in (2, 3)]
    inputs = [*wfdb, str(tmp_path / "a.npy"), str(tmp_path / "limbless.npy")]
    out = tmp_path / "scores.csv"
    score_files(inputs, bundle_path, out, workers=0, progress=False, npy_fs=100.0)
    first = read_table(out)
    assert first["limbless"]["missing_leads"] and not first["limbless"]["error"]

    summary = score_files(inputs, bundle_path, out, resume=True, workers=0, progress=False,
                          npy_fs=500.0, missing_leads="refuse", bands=(0.0, 0.0))
    got = read_table(out)
    assert summary.resumed == 2  # the two WFDB records; a.npy at 500 Hz and limbless.npy again
    assert {k: r["risk_band"] for k, r in got.items() if not r["error"]} == {
        "00002_lr": "high", "00003_lr": "high", "a": "high"}  # every row under this run's bands
    assert got["a"]["fs_in"] == "500.0" and first["a"]["fs_in"] == "100.0"
    assert got["limbless"]["error"].startswith("MissingLeadsError")
    for k in ("00002_lr", "00003_lr"):
        np.testing.assert_allclose(probs_of(got[k]), probs_of(first[k]))


def test_npy_fs_is_the_rate_of_arrays_that_carry_none_and_nothing_more(ptbxl_root, bundle_path,
                                                                       tmp_path):
    # found in review: an .npy named without its suffix ignored --npy-fs; an .npz with its own
    # rate was resampled to --npy-fs and reported at that rate
    ecg = read_ecg(ptbxl_root / "records100" / "00000" / "00001_lr")
    np.save(tmp_path / "bare.npy", ecg.signal)
    np.savez(tmp_path / "own.npz", signal=ecg.signal, fs=100.0)
    out = tmp_path / "scores.csv"
    score_files([str(tmp_path / "bare"), str(tmp_path / "own.npz")], bundle_path, out, workers=0,
                progress=False, npy_fs=100.0)
    got = read_table(out)
    assert got["bare"]["error"] == "" and got["bare"]["fs_in"] == "100.0"
    score_files([str(tmp_path / "own.npz")], bundle_path, tmp_path / "own.csv", workers=0,
                progress=False, npy_fs=500.0)
    own = read_table(tmp_path / "own.csv")["own"]
    assert own["fs_in"] == "100.0" and own["resampled"] == "False"
    np.testing.assert_allclose(probs_of(own), probs_of(got["own"]), atol=1e-6)
    np.testing.assert_allclose(probs_of(own), direct_probs(Bundle.load(bundle_path), ecg.path),
                               atol=1e-5)


class NotAWeight:  # a custom class: torch.load(weights_only=True) must refuse it
    def __init__(self):
        self.payload = "code could run here"


def test_unsafe_and_tampered_bundles_are_refused(bundle_path, tmp_path, ptbxl_root, capsys):
    rec = str(ptbxl_root / "records100" / "00000" / "00001_lr")
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"meta": {}, "state_dict": {}, "obj": NotAWeight()}, unsafe)
    out = tmp_path / "s.csv"
    assert cli_main(["score", rec, "--model", str(unsafe), "--out", str(out), "--quiet"]) == 2
    assert "weights_only" in capsys.readouterr().err
    tampered = tmp_path / "tampered.pt"
    obj = torch.load(bundle_path, weights_only=True)
    key = next(iter(obj["state_dict"]))
    obj["state_dict"][key] = obj["state_dict"][key] + 1.0
    torch.save(obj, tampered)
    assert cli_main(["score", rec, "--model", str(tampered), "--out", str(out), "--quiet"]) == 2
    assert "altered" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".s.csv.*"))  # no partial file either


class RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling it would create the file


def test_peek_meta_reads_the_metadata_without_torch_and_runs_nothing(bundle_path, tmp_path):
    assert peek_meta(bundle_path) == torch.load(bundle_path, weights_only=True)["meta"]
    marker = tmp_path / "ran"
    code = tmp_path / "code.pt"
    torch.save({"meta": {"kind": "bundle"}, "state_dict": {}, "obj": RunsCode(marker)}, code)
    assert peek_meta(code) is None and not marker.exists()
    (tmp_path / "text.pt").write_text("not a zip archive")
    assert peek_meta(tmp_path / "text.pt") is None
    assert peek_meta(tmp_path / "absent.pt") is None
    code = ("import sys\nfrom ecgrisk.bundle_files import peek_meta\n"
            "assert peek_meta(sys.argv[1])['name'] == 'tiny'\nassert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code, str(bundle_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_bundle_unreadable_without_torch_is_loaded_first_and_scores_the_same(
        ptbxl_root, bundle_path, tmp_path, monkeypatch):
    recs = [str(ptbxl_root / "records100" / "00000" / f"{i:05d}_lr") for i in (1, 2)]
    score_files(recs, bundle_path, tmp_path / "a.csv", workers=0, progress=False)
    monkeypatch.setattr(job, "peek_meta", lambda path: None)
    score_files(recs, bundle_path, tmp_path / "b.csv", workers=0, progress=False)
    a, b = read_table(tmp_path / "a.csv"), read_table(tmp_path / "b.csv")
    assert a.keys() == b.keys() == {"00001_lr", "00002_lr"}
    for r in a:
        assert np.array_equal(probs_of(a[r]), probs_of(b[r]))


@pytest.mark.parametrize("change", [{"window_s": 5.0}, {"version": "2"}, {"classes": CLASSES[::-1]}])
def test_a_bundle_whose_loaded_metadata_differs_from_what_the_readers_used_is_refused(
        ptbxl_root, bundle_path, tmp_path, monkeypatch, change):
    """The readers start on the metadata read before torch; if the file was replaced before the
    weights loaded, the rows would mix two models' inputs or names."""
    real = job.peek_meta
    monkeypatch.setattr(job, "peek_meta", lambda path: real(path) | change)
    rec = str(ptbxl_root / "records100" / "00000" / "00001_lr")
    with pytest.raises(BundleError, match="changed while it was being loaded"):
        score_files([rec], bundle_path, tmp_path / "s.csv", workers=0, progress=False)
    assert not list(tmp_path.glob("*s.csv*"))


def test_bands_quality_and_inputs(ptbxl_root, bundle_path, tmp_path):
    assert [risk_band(r, (0.2, 0.5)) for r in (0.0, 0.19, 0.2, 0.49, 0.5, 1.0)] == [
        "low", "low", "moderate", "moderate", "high", "high"]
    # quality: lead I flat, II clipped, III 50 Hz mains, V6 absent; the rest clean
    fs, t = 500.0, np.arange(5000) / 500.0
    sig = np.tile(0.5 * np.sin(2 * np.pi * 1.1 * t), (12, 1)).astype(np.float32)
    sig[0] = 0.001
    sig[1] = np.clip(3 * np.sin(2 * np.pi * 1.1 * t), -1, 1)
    sig[2] += 1.0 * np.sin(2 * np.pi * 50 * t)
    sig[11] = 0
    mask = np.ones(12, bool)
    mask[11] = False
    q = quality_flags(sig, fs, mask, model_fs=100.0)
    assert (q["flat_leads"], q["saturated_leads"], q["noisy_leads"], q["missing_leads"]) == (
        "I", "II", "III", "V6")
    assert q["quality"] == "flat,saturated,noisy,missing" and q["resampled"] is True
    # length: the bundles were calibrated on 10-s records; 9-11 s passes
    clean = np.tile(0.5 * np.sin(2 * np.pi * 1.1 * np.arange(6000) / 100.0), (12, 1))
    lengths = {seconds: quality_flags(clean[:, :round(seconds * 100)], 100.0, np.ones(12, bool),
                                      model_fs=100.0) for seconds in (2.5, 8.9, 9.0, 10.0, 11.0, 11.1, 60.0)}
    assert {s: q["quality"] for s, q in lengths.items()} == {
        2.5: "length", 8.9: "length", 9.0: "ok", 10.0: "ok", 11.0: "ok", 11.1: "length", 60.0: "length"}
    assert lengths[60.0]["duration_s"] == 60.0
    # inputs: a glob matching .hea and .dat names each record once; a manifest with relative paths
    src = ptbxl_root / "records100" / "00000"
    recs = collect_records([str(src / "0000[12]_lr.*")])
    assert [r for r, _ in recs] == ["00001_lr", "00002_lr"]
    man = tmp_path / "m.csv"
    rel = src.relative_to(tmp_path.anchor)
    man.write_text(f"record,path\na,{'../' * (len(tmp_path.parts) - 1)}{rel}/00001_lr.hea\n")
    assert collect_records([str(man)]) == [("a", str(src / "00001_lr"))]
    # an INPUT naming nothing is a typo, refused before the model loads; a manifest's missing
    # path is a record whose row says so; a record named without its extension is found
    with pytest.raises(InputError, match="no such file, folder or record"):
        collect_records([str(src / "00001_l")])
    man.write_text("path\nnot_there.hea\n")
    assert collect_records([str(man)]) == [("not_there", str(tmp_path / "not_there"))]
    assert collect_records([str(src / "00001_lr"), str(src / "00001_lr.dat")]) == [
        ("00001_lr", str(src / "00001_lr"))]
    # one name in two INPUT folders: two ids (found in a walkthrough: one record id, two rows)
    twin = tmp_path / "twin"
    twin.mkdir()
    _copy_record(src / "00001_lr", twin)
    assert collect_records([str(src / "00001_lr"), str(twin)]) == [
        ("00001_lr", str(src / "00001_lr")), ("00001_lr_2", str(twin / "00001_lr"))]
    (tmp_path / "orphan.dat").write_bytes(b"\0" * 24)  # a file, though no header names it: a row
    assert collect_records([str(tmp_path / "orphan.dat")]) == [("orphan", str(tmp_path / "orphan"))]
    assert cli_main(["score", str(tmp_path / "typo"), "--model", str(bundle_path),
                     "--out", str(tmp_path / "x.csv"), "--quiet"]) == 2
    assert not (tmp_path / "x.csv").exists()
    # --bands overrides the bundle's thresholds
    out = tmp_path / "s.csv"
    assert cli_main(["score", str(src / "00001_lr"), str(src / "00002_lr"), "--model",
                     str(bundle_path), "--out", str(out), "--bands", "0.3,0.32", "--workers",
                     "0", "--quiet"]) == 0
    for row in read_table(out).values():
        assert row["risk_band"] == risk_band(float(row["risk"]), (0.3, 0.32))
    with pytest.raises(SystemExit):
        cli_main(["score", str(src), "--model", str(bundle_path), "--out", str(out),
                  "--bands", "0.6,0.2"])


def test_onnx_backend_agrees_with_torch(ptbxl_root, bundle_path, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    recs = [str(ptbxl_root / "records100" / "00000" / f"{i:05d}_lr") for i in range(1, 9)]
    onnx_file = tmp_path / "model.onnx"
    assert cli_main(["export", str(bundle_path), "--onnx", str(onnx_file)]) == 0
    a, b = tmp_path / "torch.csv", tmp_path / "onnx.csv"
    score_files(recs, bundle_path, a, workers=0, progress=False)
    score_files(recs, bundle_path, b, workers=0, progress=False, backend="onnx",
                onnx_path=onnx_file)
    ta, tb = read_table(a), read_table(b)
    assert set(ta) == set(tb) and len(ta) == 8
    for k in ta:
        np.testing.assert_allclose(probs_of(tb[k]), probs_of(ta[k]), atol=1e-5, rtol=0)
    # an ONNX file exported from another bundle is refused
    other = _make_bundle(tmp_path / "other.pt", seed=1)
    rc = cli_main(["score", recs[0], "--model", str(other), "--out", str(tmp_path / "x.csv"),
                   "--backend", "onnx", "--onnx", str(onnx_file), "--quiet"])
    assert rc == 2


def test_parquet_output_and_resume(ptbxl_root, bundle_path, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    recs = [str(ptbxl_root / "records100" / "00000" / f"{i:05d}_lr") for i in range(1, 6)]
    out = tmp_path / "s.parquet"
    score_files(recs[:3], bundle_path, out, workers=0, progress=False)
    summary = score_files(recs, bundle_path, out, resume=True, workers=0, progress=False)
    assert summary.resumed == 3 and summary.scored == 5
    table = pq.read_table(out)
    assert table.num_rows == 5 and table.schema.field("prob/NORM").type == "double"
    csv_out = tmp_path / "s.csv"
    score_files(recs, bundle_path, csv_out, workers=0, progress=False)
    want = read_table(csv_out)
    for row in table.to_pylist():
        assert row["prob/MI"] == pytest.approx(float(want[row["record"]]["prob/MI"]), abs=1e-12)


def test_windows_of_prepared_records_start_where_evaluation_windows_say():
    spec = InputSpec(Preprocessing(fs=100.0), Scaler(0.0, 1.0), window=250, stride=125)
    records = [np.arange(12 * 1000, dtype=np.float32).reshape(12, 1000),
               np.ones((12, 250), np.float32)]
    windows, positions = spec.windows(records)
    assert windows.shape == (8, 12, 250) and windows.dtype == np.float32
    np.testing.assert_array_equal(positions, [0, 0, 0, 0, 0, 0, 0, 1])
    for k, start in enumerate([0, 125, 250, 375, 500, 625, 750]):
        np.testing.assert_array_equal(windows[k], records[0][:, start:start + 250])
    np.testing.assert_array_equal(windows[7], records[1])


def test_reader_side_loads_scipy_signal_only_for_records_at_a_fractional_multiple_of_the_model_rate(
        tmp_path):
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    sig = np.random.default_rng(0).standard_normal((1000, 12)) * 0.3
    _write_wfdb(tmp_path, "r100", sig, 100, leads)
    _write_wfdb(tmp_path, "r500", np.repeat(sig, 5, axis=0), 500, leads)
    _write_wfdb(tmp_path, "r250", np.repeat(sig, 5, axis=0)[::2], 250, leads)
    code = (
        "import sys\n"
        "import ecgrisk.io.inputs  # noqa: F401\n"
        "from ecgrisk.input_spec import InputSpec\n"
        "from ecgrisk.preprocess import Preprocessing, Scaler\n"
        "from ecgrisk.scoring.reading import read_chunk\n"
        "spec = InputSpec(Preprocessing(fs=100.0), Scaler(0.0, 1.0), window=250, stride=125)\n"
        "(r,) = read_chunk([('r100', sys.argv[1])], spec)\n"
        "assert r.error == '' and r.length == 1000, r\n"
        "assert 'torch' not in sys.modules and 'scipy.signal' not in sys.modules\n"
        "(r,) = read_chunk([('r500', sys.argv[2])], spec)\n"
        "assert r.error == '' and r.length == 1000, r\n"
        "assert 'scipy.signal' not in sys.modules  # 500 -> 100 Hz: scipy.fft\n"
        "(r,) = read_chunk([('r250', sys.argv[3])], spec)\n"
        "assert r.error == '' and r.length == 1000, r\n"
        "assert 'scipy.signal' in sys.modules  # 250 -> 100 Hz: resample_poly\n")
    proc = subprocess.run([sys.executable, "-c", code, *(str(tmp_path / r) for r in ("r100", "r500", "r250"))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("native", [True, False])
def test_a_bf16_bundle_scores_in_bf16_only_where_bf16_is_native(bundle_path, monkeypatch, native):
    import ecgrisk.scoring.predict as predict

    monkeypatch.setattr(predict, "bf16_is_native", lambda device="cpu": native)
    bundle = Bundle.load(bundle_path)
    bundle.precision = "bf16-mixed"
    windows = np.random.default_rng(0).standard_normal((4, 12, round(bundle.window_s * 100))).astype(np.float32)
    got = Predictor(bundle).window_logits(windows)
    model = fold_batchnorm(bundle.model)  # what the predictor runs
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=native):
        want = model(torch.from_numpy(windows)).float().numpy()
    np.testing.assert_array_equal(got, want)
    with torch.inference_mode():  # the two precisions do differ, so the check above can tell them apart
        fp32 = model(torch.from_numpy(windows)).numpy()
    assert np.array_equal(got, fp32) != native


def test_a_large_batch_runs_as_single_threaded_shards_on_the_model_threads(bundle_path, monkeypatch):
    import ecgrisk.scoring.predict as predict

    bundle = Bundle.load(bundle_path)
    bundle.precision = "32-true"
    predictor = Predictor(bundle)
    windows = np.random.default_rng(1).standard_normal(
        (3 * predict.MIN_SHARD_WINDOWS + 5, 12, round(bundle.window_s * 100))).astype(np.float32)
    seen = []
    real = Predictor._logits

    def spy(self, w):
        seen.append((len(w), torch.get_num_threads(), threading.get_ident()))
        return real(self, w)

    monkeypatch.setattr(Predictor, "_logits", spy)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        got = predictor.window_logits(windows)
        assert torch.get_num_threads() == 3  # restored after the call
    finally:
        torch.set_num_threads(threads)
    assert sorted(n for n, _, _ in seen) == [65, 66, 66]
    assert {t for _, t, _ in seen} == {1}
    # on the model threads, not the caller's (which of them takes which shard is the pool's
    # choice: under load one idle thread can take two)
    assert threading.get_ident() not in {ident for _, _, ident in seen}
    with torch.inference_mode():
        want = bundle.model(torch.from_numpy(windows)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    seen.clear()
    predictor.window_logits(windows[:2 * predict.MIN_SHARD_WINDOWS - 1])  # too few to split
    assert [n for n, _, _ in seen] == [2 * predict.MIN_SHARD_WINDOWS - 1]


def test_records_are_scored_in_groups_of_at_least_a_batch_of_windows():
    windows = [3, 4, 0, 5, 1, 1, 2, 6, 1]  # a failed record contributes no window
    groups = list(record_groups(range(len(windows)), windows.__getitem__, batch_size=6))
    assert groups == [[0, 1], [2, 3, 4], [5, 6, 7], [8]]  # 7, 6, 9 windows, then what is left
    assert list(record_groups([], len, batch_size=6)) == []


def test_ecgrisk_score_starts_its_readers_before_torch_is_imported(tmp_path):
    """The readers' start-up runs while the main process imports torch (score_files): the CLI
    must not have imported it already, resolving --model by its shipped name."""
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    _write_wfdb(tmp_path, "r1", np.random.default_rng(0).standard_normal((1000, 12)) * 0.3, 100, leads)
    code = (
        "import sys\n"
        "import ecgrisk.scoring.job as job\n"
        "from ecgrisk.cli import main\n"
        "seen = []\n"
        "pool = job.reader_pool\n"
        "def spy(*a, **k):\n"
        "    seen.append('torch' in sys.modules)\n"
        "    return pool(*a, **k)\n"
        "job.reader_pool = spy\n"
        "status = main(['score', sys.argv[1], '--model', 'ptbxl-superdiagnostic', '--out', sys.argv[2],"
        " '--quiet'])\n"
        "assert status == 0 and seen == [False], (status, seen)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r1.hea"), str(tmp_path / "s.csv")],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "s.csv") as f:
        assert [r["error"] for r in csv.DictReader(f)] == [""]


def test_the_summary_rate_counts_only_what_this_run_read():
    from rich.console import Console

    from ecgrisk.scoring.report import ScoreSummary, print_summary

    # a resumed run: 512 rows carried over took no time; 488 read in 3.2 s is 152.5 a second
    s = ScoreSummary(total=1000, scored=480, failed=8, resumed=512)
    s.wall_s = 3.2
    console = Console(record=True, width=120)
    print_summary(s, "scores.csv", console)
    assert "3.2 s, 152.5 records/s (488 read in this run)" in console.export_text()
