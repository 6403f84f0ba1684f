"""ecgrisk.io: real PTB-XL / Challenge / MIT-BIH records, tiny WFDB and numpy records, bad input."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
import scipy.io
import wfdb

from ecgrisk.io import (
    STANDARD_LEADS,
    ECGReadError,
    EmptyFileError,
    HeaderParseError,
    HeaderSignalMismatchError,
    InvalidSignalError,
    MissingLeadsError,
    MissingSignalFileError,
    SamplingRateError,
    TruncatedSignalError,
    UnknownFormatError,
    normalise_lead_name,
    read_ecg,
    read_header,
)

IDX = {name: i for i, name in enumerate(STANDARD_LEADS)}


def _write(tmp_path, name, x, names, fmt="16", fs=100, units="mV"):
    """wrsamp a ``[samples, channels]`` array; returns the record path without extension."""
    wfdb.wrsamp(
        name,
        fs=fs,
        units=[units] * len(names),
        sig_name=list(names),
        p_signal=x,
        fmt=[fmt] * len(names),
        write_dir=str(tmp_path),
    )
    return tmp_path / name


def _distinct(n_samples, n_ch, seed=0):
    """Channels told apart by offset k and a random wiggle: ``[samples, n_ch]`` in mV."""
    rng = np.random.default_rng(seed)
    return np.arange(n_ch)[None, :] * 0.25 + 0.1 * rng.standard_normal((n_samples, n_ch))


# ----------------------------------------------------------------------------- real records


def test_ptbxl_100hz_record(ptbxl_root):
    base = ptbxl_root / "records100/00000/00001_lr"
    ecg = read_ecg(base)
    assert ecg.signal.shape == (12, 1000) and ecg.signal.dtype == np.float32
    assert ecg.fs == 100.0 and ecg.leads == STANDARD_LEADS and ecg.lead_mask.all()
    assert ecg.record_id == "00001_lr" and ecg.path.endswith("00001_lr.hea")
    assert ecg.duration_s == pytest.approx(10.0)
    peak = np.abs(ecg.signal).max(axis=1)
    assert (peak > 0.05).all() and (peak < 5).all()  # mV, not uV or raw ADC units
    # The numpy fast path for format 16 gives what wfdb gives (header 'AVR' etc. land in order).
    ref = wfdb.rdrecord(str(base)).p_signal.T
    np.testing.assert_allclose(ecg.signal, ref, atol=1e-6)
    for variant in (f"{base}.hea", f"{base}.dat", str(base)):
        np.testing.assert_array_equal(read_ecg(variant).signal, ecg.signal)


def test_ptbxl_500hz_resampled_to_100_matches_100hz_version(ptbxl_root):
    hr = read_ecg(ptbxl_root / "records500/00000/00001_hr")
    assert hr.signal.shape == (12, 5000) and hr.fs == 500.0 and not hr.meta["resampled"]
    lr = read_ecg(ptbxl_root / "records100/00000/00001_lr")
    down = read_ecg(ptbxl_root / "records500/00000/00001_hr", fs=100)
    assert down.signal.shape == (12, 1000) and down.fs == 100.0
    assert down.meta["resampled"] is True and down.meta["original_fs"] == 500.0
    r = np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(down.signal, lr.signal, strict=True)])
    # PTB-XL made its 100 Hz files with its own filter; measured r = 0.970-0.996 for this record.
    assert r.min() > 0.95 and np.median(r) > 0.98


@pytest.mark.parametrize("comment,age", [("Age: 54", 54.0), ("Age: -1", None), ("Age: 200", None),
                                         ("Age: NaN", None), ("Age: unknown", None),
                                         ("69 M 1085 1629 x1", 69.0), ("230 F", None)])
def test_a_header_age_outside_0_to_130_is_none_as_in_every_clinical_reader(tmp_path, comment, age):
    # found in review: WFDB headers kept any number, and it landed in the age bands of evaluate
    path = _write(tmp_path, "r", _distinct(200, 12), STANDARD_LEADS)
    hea = path.with_suffix(".hea")
    hea.write_text(hea.read_text() + f"# {comment}\n")
    assert read_ecg(path).meta["age"] == age


def test_an_upper_case_header_is_found_wherever_a_lower_case_one_is(tmp_path):
    # found in review: the folder scan listed 'r.HEA', and reading it then looked for 'r.hea'
    from ecgrisk.io.inputs import collect_records

    path = _write(tmp_path, "r", _distinct(200, 12), STANDARD_LEADS)
    path.with_suffix(".hea").rename(path.with_suffix(".HEA"))
    want = _distinct(200, 12).T
    assert collect_records([str(tmp_path)]) == [("r", str(path))]
    for name in (path, path.with_suffix(".HEA"), path.with_suffix(".dat")):
        np.testing.assert_allclose(read_ecg(name).signal, want, atol=1e-3)


def test_challenge_mat_record(shared):
    ecg = read_ecg(shared / "cinc2021-sample/E07500")
    assert ecg.signal.shape == (12, 5000) and ecg.fs == 500.0 and ecg.lead_mask.all()
    assert ecg.meta["age"] == 78.0 and ecg.meta["sex"] == "M"
    assert ecg.meta["dx"] == ["67741000119109", "426177001"]
    assert ecg.meta["source_format"] == "challenge-mat" and ecg.meta["hx"] == "Unknown"
    val = scipy.io.loadmat(shared / "cinc2021-sample/E07500.mat")["val"]
    np.testing.assert_allclose(ecg.signal, val / 1000.0, atol=1e-6)  # header: gain 1000, baseline 0
    np.testing.assert_array_equal(
        read_ecg(shared / "cinc2021-sample/E07500.mat").signal, ecg.signal
    )
    female = read_ecg(shared / "cinc2021-sample/HR06009")  # lower-case 'mv' units
    assert (
        female.meta["sex"] == "F"
        and female.meta["age"] == 61.0
        and np.abs(female.signal).max() < 10
    )


def test_header_parser_and_readers_agree_with_wfdb_on_challenge_sample(shared):
    heas = sorted((shared / "cinc2021-sample").glob("*.hea"))
    assert len(heas) == 50
    for hea in heas:
        ref = wfdb.rdrecord(str(hea.with_suffix("")))
        h = read_header(hea)
        assert (h["fs"], h["n_samples"]) == (ref.fs, ref.sig_len)
        assert h["leads"] == tuple(normalise_lead_name(n) for n in ref.sig_name) == STANDARD_LEADS
        np.testing.assert_allclose(read_ecg(hea).signal, ref.p_signal.T, atol=1e-5, err_msg=hea.name)


@pytest.mark.parametrize("record, chest", [("100", "V5"), ("105", "V1")])
def test_mitdb_two_leads_padded_or_refused(shared, record, chest):
    path = shared / "mitdb-sample" / record
    ecg = read_ecg(path)
    assert ecg.signal.shape == (12, 650000) and ecg.fs == 360.0
    assert [STANDARD_LEADS[i] for i in np.flatnonzero(ecg.lead_mask)] == ["II", chest]
    assert len(ecg.meta["missing_leads"]) == 10 and not ecg.signal[~ecg.lead_mask].any()
    ref = wfdb.rdrecord(str(path)).p_signal.T  # format 212, MLII -> II
    np.testing.assert_allclose(ecg.signal[[IDX["II"], IDX[chest]]], ref, atol=1e-6)
    with pytest.raises(MissingLeadsError, match=record):
        read_ecg(path, missing_leads="refuse")


def test_mitdb_comment_age_sex_and_read_header(shared):
    h = read_header(shared / "mitdb-sample/100")
    assert h["fs"] == 360.0 and h["n_samples"] == 650000 and h["leads"] == ("II", "V5")
    assert h["raw_leads"] == ["MLII", "V5"] and h["meta"]["age"] == 69.0 and h["meta"]["sex"] == "M"
    c = read_header(shared / "cinc2021-sample/E07500.hea")
    assert c["leads"] == STANDARD_LEADS and c["meta"]["dx"] == ["67741000119109", "426177001"]


# ----------------------------------------------------------------------------- tiny records


@pytest.mark.parametrize("fmt, atol", [("16", 1e-3), ("212", 5e-3)])
def test_shuffled_aliased_leads_land_in_their_rows(tmp_path, fmt, atol):
    names = ["v1", "AVR", "avl", "I", "MLII", "Lead III", "V6", "CM5"]
    x = _distinct(400, len(names))
    ecg = read_ecg(_write(tmp_path, f"shuf{fmt}", x, names, fmt=fmt))
    for k, name in enumerate(names[:-1]):
        np.testing.assert_allclose(ecg.signal[IDX[normalise_lead_name(name)]], x[:, k], atol=atol)
    assert ecg.meta["unknown_leads"] == ["CM5"]
    # with I and II present the absent limb lead is derived (aVF = II - I/2), never zero-filled
    assert ecg.meta["derived_leads"] == ["aVF"]
    np.testing.assert_allclose(ecg.signal[IDX["aVF"]], x[:, 4] - x[:, 3] / 2, atol=2 * atol)
    assert ecg.meta["missing_leads"] == ["V2", "V3", "V4", "V5"]
    assert ecg.lead_mask.sum() == 8 and not ecg.signal[~ecg.lead_mask].any()


def test_an_inverted_avr_is_not_read_as_avr(tmp_path):
    # found in review: '-aVR' (Cabrera display) lost its minus and was read upside down as aVR
    x = _distinct(300, 12)
    names = [*STANDARD_LEADS]
    names[IDX["aVR"]] = "-aVR"
    x[:, IDX["aVR"]] = (x[:, IDX["I"]] + x[:, IDX["II"]]) / 2  # what -aVR holds
    ecg = read_ecg(_write(tmp_path, "cabrera", x, names))
    assert ecg.meta["unknown_leads"] == ["-aVR"] and ecg.meta["derived_leads"] == ["aVR"]
    np.testing.assert_allclose(ecg.signal[IDX["aVR"]], -x[:, IDX["aVR"]], atol=2e-3)
    assert normalise_lead_name("\u2212aVR") is None and normalise_lead_name("V-1") == "V1"


def test_microvolt_units_become_millivolts(tmp_path):
    x = _distinct(300, 12) * 1000.0
    ecg = read_ecg(_write(tmp_path, "uv", x, STANDARD_LEADS, units="uV"))
    np.testing.assert_allclose(ecg.signal, x.T / 1000.0, atol=2e-3)
    assert "units_assumed_mv" not in ecg.meta


def test_a_unit_nobody_knows_is_read_as_millivolts_named_and_flagged(tmp_path):
    from ecgrisk.scoring.quality import quality_flags

    x = _distinct(300, 12)
    ecg = read_ecg(_write(tmp_path, "odd", x, STANDARD_LEADS, units="counts"))
    np.testing.assert_allclose(ecg.signal, x.T, atol=2e-3)
    assert ecg.meta["units_assumed_mv"] == ["counts"]
    # found in review: nothing in the scores showed it (quality "ok"); now a reason to review
    flags = quality_flags(ecg.signal, ecg.fs, ecg.lead_mask, ecg.fs,
                          units_assumed=bool(ecg.meta["units_assumed_mv"]))
    assert flags["quality"].split(",")[-1] == "units"


def test_a_latin_1_header_reads_its_microvolts(tmp_path):
    # found in review: 'µV' written by an older tool as the Latin-1 byte 0xB5 decoded to
    # U+FFFD, and the record was read as mV, 1,000 times too large
    x = _distinct(300, 12) * 1000.0
    path = _write(tmp_path, "uv", x, STANDARD_LEADS, units="uV")
    hea = path.with_suffix(".hea")
    hea.write_bytes(hea.read_bytes().replace(b"/uV", b"/\xb5V"))
    ecg = read_ecg(path)
    np.testing.assert_allclose(ecg.signal, x.T / 1000.0, atol=2e-3)
    assert "units_assumed_mv" not in ecg.meta


def test_nan_samples_inside_a_lead_become_zero(tmp_path):
    x = _distinct(300, 12)
    x[10:15, 2] = np.nan
    ecg = read_ecg(_write(tmp_path, "nan", x, STANDARD_LEADS))
    assert ecg.meta["nan_samples"] == 5 and (ecg.signal[2, 10:15] == 0).all()
    assert np.isfinite(ecg.signal).all() and ecg.signal[2, 16] == pytest.approx(x[16, 2], abs=1e-3)


def test_wfdb_record_resampled_on_request(tmp_path):
    ecg = read_ecg(_write(tmp_path, "rs", _distinct(1000, 12), STANDARD_LEADS, fs=200), fs=100)
    assert ecg.signal.shape == (12, 500) and ecg.fs == 100.0 and ecg.meta["original_fs"] == 200.0


def test_npy_both_orientations_and_npz(tmp_path):
    x = _distinct(250, 12).T.astype(np.float32)  # [12, 250]
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", x.T)
    for name in ("a.npy", "b.npy", "a"):
        ecg = read_ecg(tmp_path / name, fs=250)
        np.testing.assert_array_equal(ecg.signal, x)
        assert ecg.fs == 250.0 and ecg.meta["source_format"] == "npy"
    assert read_header(tmp_path / "b.npy", fs=250)["n_samples"] == 250
    order = [5, 0, 11, 3]  # aVF, I, V6, aVR
    np.savez(
        tmp_path / "c.npz", signal=x[order], fs=500.0, leads=np.array(["avf", "I", "v6", "AVR"])
    )
    ecg = read_ecg(tmp_path / "c.npz")
    assert ecg.fs == 500.0 and ecg.lead_mask.sum() == 4
    np.testing.assert_array_equal(ecg.signal[order], x[order])
    assert read_header(tmp_path / "c.npz")["n_samples"] == 250
    assert read_ecg(tmp_path / "c.npz", fs=250).signal.shape == (12, 125)
    np.savez(tmp_path / "d.npz", signal=x)
    assert read_ecg(tmp_path / "d.npz", fs=100).fs == 100.0


@pytest.mark.parametrize(
    "raw, std",
    [
        ("AVR", "aVR"),
        ("avr", "aVR"),
        ("aVR", "aVR"),
        ("MLII", "II"),
        ("v1", "V1"),
        ("V6", "V6"),
        ("lead_ii", "II"),
        ("CM5", None),
    ],
)
def test_normalise_lead_name(raw, std):
    assert normalise_lead_name(raw) == std


# ----------------------------------------------------------------------------- bad input


def _raises(cls, path, fname, **kw):
    with pytest.raises(cls) as info:
        read_ecg(path, **kw)
    assert fname in str(info.value) and info.value.reason in str(info.value)
    return info.value


def test_truncated_dat(tmp_path):
    for fmt in ("16", "212"):
        base = _write(tmp_path, f"t{fmt}", _distinct(400, 3), ["I", "II", "V1"], fmt=fmt)
        dat = tmp_path / f"t{fmt}.dat"
        dat.write_bytes(dat.read_bytes()[:600])
        _raises(TruncatedSignalError, base, f"t{fmt}.dat")


def test_header_without_dat_and_missing_record(tmp_path):
    base = _write(tmp_path, "nodat", _distinct(100, 12), STANDARD_LEADS)
    os.remove(tmp_path / "nodat.dat")
    err = _raises(MissingSignalFileError, base, "nodat.dat")
    assert isinstance(err, FileNotFoundError)
    _raises(MissingSignalFileError, tmp_path / "ghost", "ghost")
    _raises(MissingSignalFileError, tmp_path / "ghost.hea", "ghost.hea")


def test_header_fields_as_wfdb_reads_them(tmp_path):
    """Format, samples per frame, skew, byte offset, gain, baseline and units of every signal
    line, against wfdb's own parser; the parsed fields are cached, so the same text twice must
    give the same values, and a bad field still names its line."""
    from ecgrisk.io.header import parse_header

    lines = ["rec 5 250 1000",
             "a.dat 16 1000.0(0)/mV 16 0 -119 1508 0 I",
             "a.dat 16x2 200(-12)/uV 16 0 0 0 0 II",  # 2 samples a frame, baseline -12
             "b.dat 212:1+24 0/mV 12 0 0 0 0 V1",  # skewed, 24-byte offset, gain 0 -> 200
             "c.dat 16 1000.0(0)/mV 16 5 0 0 0 V2",  # no baseline: the ADC zero, 5
             "c.dat 80 2.5e2 8 0 0 0 0 V3"]  # no unit: mV
    (tmp_path / "rec.hea").write_text("\n".join(lines) + "\n")
    for _ in range(2):
        h, ref = parse_header(tmp_path / "rec.hea"), wfdb.rdheader(str(tmp_path / "rec"))
        assert (h.fs, h.n_samples, h.names) == (ref.fs, ref.sig_len, ref.sig_name)
        assert (h.files, h.fmts, h.spf) == (ref.file_name, ref.fmt, ref.samps_per_frame)
        assert h.offsets == [o or 0 for o in ref.byte_offset] == [0, 0, 24, 0, 0]
        assert h.skewed and [s or 0 for s in ref.skew] == [0, 0, 1, 0, 0]
        np.testing.assert_array_equal(h.gains, [1000.0, 200.0, 200.0, 1000.0, 250.0])
        np.testing.assert_array_equal(h.gains[[0, 1, 3, 4]], np.array(ref.adc_gain)[[0, 1, 3, 4]])
        np.testing.assert_array_equal(h.baselines, ref.baseline)
        assert h.units == ref.units == ["mV", "uV", "mV", "mV", "mV"]
    (tmp_path / "bad.hea").write_text("bad 1 100 10\nbad.dat 16 1000x/mV 16 0 0 0 0 I\n")
    err = _raises(HeaderParseError, tmp_path / "bad", "bad.hea")
    assert "invalid gain '1000x/mV' on signal line 1" in err.reason
    (tmp_path / "fmt.hea").write_text("fmt 1 100 10\nfmt.dat 16q 1000/mV 16 0 0 0 0 I\n")
    assert "invalid signal line 1" in _raises(HeaderParseError, tmp_path / "fmt", "fmt.hea").reason


def test_unparseable_and_empty_files(tmp_path):
    (tmp_path / "junk.hea").write_bytes(np.random.default_rng(1).bytes(300))
    _raises(HeaderParseError, tmp_path / "junk", "junk.hea")
    (tmp_path / "words.hea").write_text("this is not\na header\n")
    _raises(HeaderParseError, tmp_path / "words.hea", "words.hea")
    (tmp_path / "empty.hea").write_bytes(b"")
    _raises(EmptyFileError, tmp_path / "empty", "empty.hea")
    base = _write(tmp_path, "emptydat", _distinct(100, 12), STANDARD_LEADS)
    (tmp_path / "emptydat.dat").write_bytes(b"")
    _raises(EmptyFileError, base, "emptydat.dat")
    (tmp_path / "e.npy").write_bytes(b"")
    _raises(EmptyFileError, tmp_path / "e.npy", "e.npy", fs=100)


def test_flat_and_all_nan_signals(tmp_path):
    _raises(
        InvalidSignalError,
        _write(tmp_path, "flat", np.full((200, 12), 0.3), STANDARD_LEADS),
        "flat",
    )
    np.save(tmp_path / "nan.npy", np.full((12, 200), np.nan, dtype=np.float32))
    _raises(InvalidSignalError, tmp_path / "nan.npy", "nan.npy", fs=100)
    x = _distinct(200, 12).T
    x[3] = np.nan  # a dead lead among valid ones is treated as absent...
    np.save(tmp_path / "dead.npy", x)
    ecg = read_ecg(tmp_path / "dead.npy", fs=100)
    # ...and, being a limb lead, derived from I and II: aVR = -(I + II) / 2
    assert ecg.meta["nan_leads"] == ["aVR"] and ecg.meta["derived_leads"] == ["aVR"]
    np.testing.assert_allclose(ecg.signal[3], -(x[0] + x[1]) / 2, atol=1e-6)
    np.save(tmp_path / "three.npy", x[:3])
    _raises(InvalidSignalError, tmp_path / "three.npy", "three.npy", fs=100)


def test_unknown_extension(tmp_path):
    (tmp_path / "rec.csv").write_text("1,2,3\n")
    _raises(UnknownFormatError, tmp_path / "rec.csv", "rec.csv")


def test_sampling_rate_errors(tmp_path):
    np.save(tmp_path / "x.npy", _distinct(100, 12).T)
    _raises(SamplingRateError, tmp_path / "x.npy", "x.npy")
    for bad in (0, -100, float("nan"), 10):
        _raises(SamplingRateError, tmp_path / "x.npy", "x.npy", fs=bad)
    base = _write(tmp_path, "nofs", _distinct(100, 12), STANDARD_LEADS)
    text = (tmp_path / "nofs.hea").read_text().splitlines()
    (tmp_path / "nofs.hea").write_text("\n".join(["nofs 12"] + text[1:]) + "\n")
    _raises(SamplingRateError, base, "nofs.hea")


def test_challenge_mat_mismatch_truncated_and_missing(tmp_path, challenge_record):
    name = challenge_record.name  # E07500 in the shared sample
    shutil.copy(challenge_record.with_suffix(".hea"), tmp_path / f"{name}.hea")
    _raises(MissingSignalFileError, tmp_path / name, f"{name}.mat")
    assert read_header(tmp_path / name)["n_samples"] == 5000  # header alone is enough
    scipy.io.savemat(tmp_path / f"{name}.mat", {"val": np.zeros((12, 4000), dtype=np.int16)})
    _raises(HeaderSignalMismatchError, tmp_path / name, f"{name}.mat")
    full = challenge_record.with_suffix(".mat").read_bytes()
    (tmp_path / f"{name}.mat").write_bytes(full[:5000])
    _raises(TruncatedSignalError, tmp_path / name, f"{name}.mat")


def test_truncated_and_garbage_npy(tmp_path):
    np.save(tmp_path / "t.npy", np.ones((12, 1000), dtype=np.float32))
    (tmp_path / "t.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:3000])
    _raises(TruncatedSignalError, tmp_path / "t.npy", "t.npy", fs=100)
    (tmp_path / "g.npy").write_bytes(b"not numpy at all")
    _raises(HeaderParseError, tmp_path / "g.npy", "g.npy", fs=100)


def test_errors_pickle_and_bad_argument(tmp_path):
    err = pickle.loads(pickle.dumps(TruncatedSignalError("/x/r.dat", "short")))
    assert isinstance(err, ECGReadError) and str(err) == "/x/r.dat: short"
    with pytest.raises(ValueError, match="missing_leads"):
        read_ecg(tmp_path / "x", missing_leads="drop")
