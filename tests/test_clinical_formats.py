"""Clinical exports read by content into the same ECG, scored and converted like any record.

Real files: pydicom's own 12-lead ``waveform_ecg.dcm`` and a real GE MUSE export
(``tests/data/formats``, see its ATTRIBUTION.md). EDF files are written by edfio; HL7 aECG,
SCP-ECG and Philips XML by ``clinical_samples.py``.
"""

from __future__ import annotations

import csv
import datetime
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from clinical_samples import (
    EIGHT,
    FS,
    TWELVE,
    synthetic_uv,
    write_hl7_aecg,
    write_philips_xml,
    write_scp_ecg,
)

from ecgrisk.cli import main as cli_main
from ecgrisk.io import STANDARD_LEADS, read_ecg, read_header
from ecgrisk.io.errors import ECGReadError, HeaderParseError, UnknownFormatError

pytest.importorskip("ecgdatakit")
pydicom = pytest.importorskip("pydicom")
edfio = pytest.importorskip("edfio")

MUSE = Path(__file__).parent / "data" / "formats" / "muse_sinus_rhythm.xml"
IDX = {name: i for i, name in enumerate(STANDARD_LEADS)}


def _dicom_example() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("waveform_ecg.dcm"))


def _write_edf(path: Path, signal_mv: np.ndarray, leads: list[str], fs: float,
               plus: bool = True) -> Path:
    """EDF+ (with an annotation signal), or plain EDF with the same EDF+ style patient field."""
    signals = [edfio.EdfSignal(x, sampling_frequency=fs, label=f"ECG {name}",
                               physical_dimension="mV", physical_range=(-10, 10))
               for x, name in zip(signal_mv, leads, strict=True)]
    edf = edfio.Edf(signals, patient=edfio.Patient(code="P1", sex="F",
                                                   birthdate=datetime.date(1961, 3, 1)),
                    recording=edfio.Recording(startdate=datetime.date(2024, 3, 9)),
                    starttime=datetime.time(14, 30, 5),
                    annotations=[edfio.EdfAnnotation(0, None, "recording start")] if plus else None)
    edf.write(path)
    return path


def test_pydicom_example_matches_pydicom_and_has_no_suffix(tmp_path):
    plain = tmp_path / "ECG0001"  # PACS exports often carry no suffix
    shutil.copy(_dicom_example(), plain)
    ecg = read_ecg(plain)
    ds = pydicom.dcmread(_dicom_example())
    units = ds.WaveformSequence[0].ChannelDefinitionSequence[0].ChannelSensitivityUnitsSequence[0]
    assert units.CodeValue == "uV"
    expected = ds.waveform_array(0).T / 1000.0  # pydicom applies the channel sensitivity
    assert ecg.meta["source_format"] == "dicom" and ecg.fs == 1000.0
    assert ecg.signal.shape == (12, 10000) and ecg.lead_mask.all()
    np.testing.assert_allclose(ecg.signal, expected, atol=1e-6)
    assert (ecg.meta["age"], ecg.meta["sex"]) == (42.0, "F")
    assert ecg.meta["acquired"].startswith("2013-01-25T10:59")
    assert read_header(plain)["leads"] == STANDARD_LEADS


def test_the_common_dicom_is_read_as_ecgdatakit_and_pydicom_read_it():
    from ecgdatakit import FileParser

    ecg = read_ecg(_dicom_example())
    assert ecg.meta["reader"] == "ecgrisk.io.dicom"  # the fast path took it
    ref = FileParser.parse(_dicom_example(), units="mV")
    assert ecg.leads == tuple(lead.label for lead in ref.leads)
    np.testing.assert_allclose(ecg.signal, np.stack([lead.samples for lead in ref.leads]), atol=1e-6)
    assert ecg.fs == float(ref.leads[0].sampling_rate)
    assert (ecg.meta["age"], ecg.meta["sex"]) == (float(ref.patient.age), ref.patient.sex)
    assert ecg.meta["acquired"] == ref.recording.date.isoformat()
    # the same float32 values as pydicom's own scaling, in the file's lead order
    ds = pydicom.dcmread(_dicom_example())
    assert np.array_equal(ecg.signal, (ds.waveform_array(0) * 1e-3).T.astype(np.float32))



def test_corrupted_dicom_bytes_never_raise_from_the_byte_walk(tmp_path):
    from ecgrisk.io.dicom import read_dicom

    data = _dicom_example().read_bytes()
    rng = np.random.default_rng(0)
    path = tmp_path / "corrupt.dcm"
    outcomes = set()
    for _ in range(300):  # bytes of the elements' headers, annotations and channel definitions
        corrupt = bytearray(data)
        for pos in rng.integers(0, 60_000, size=rng.integers(1, 5)):
            corrupt[pos] = rng.integers(0, 256)
        path.write_bytes(bytes(corrupt))
        got = read_dicom(path)  # None (ecgdatakit decides) or a reading, never an exception
        outcomes.add(got is None)
        assert got is None or (got[0].dtype == np.float32 and got[0].shape[0] == len(got[1]))
    assert outcomes == {True, False}

def _defined_lengths(ds):
    for element in ds:
        if element.VR == "SQ":
            element.value.is_undefined_length = False
            for item in element.value:
                item.is_undefined_length_sequence_item = False
                _defined_lengths(item)


@pytest.mark.parametrize("edit", [
    lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian),
    _defined_lengths,
], ids=["implicit-vr", "defined-lengths"])
def test_the_byte_walk_reads_other_encodings_of_the_same_file(tmp_path, edit):
    from ecgrisk.io.dicom import read_dicom

    expected = read_dicom(_dicom_example())
    got = read_dicom(_edited_dicom(tmp_path, "other.dcm", edit))
    assert got is not None and np.array_equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_every_cut_of_the_dicom_example_reads_whole_or_is_left_to_ecgdatakit(tmp_path):
    from ecgrisk.io.dicom import read_dicom

    data = _dicom_example().read_bytes()
    full = read_dicom(_dicom_example())
    path = tmp_path / "cut.dcm"
    outcomes = set()
    for size in range(0, len(data), 1009):
        path.write_bytes(data[:size])
        got = read_dicom(path)  # never raises
        if got is not None:  # cut after the rhythm group, in the median-beat group
            assert np.array_equal(got[0], full[0]) and got[1:] == full[1:]
        outcomes.add(got is None)
    assert outcomes == {True, False}


def _edited_dicom(tmp_path, name, edit) -> Path:
    ds = pydicom.dcmread(_dicom_example())
    edit(ds)
    path = tmp_path / name
    ds.save_as(path)
    return path


def test_an_eight_lead_dicom_in_millivolts_gets_its_limb_leads_derived(tmp_path):
    keep = [0, 1, 6, 7, 8, 9, 10, 11]  # I, II, V1-V6 of the example's rhythm group

    def eight_leads_in_mv(ds):
        g = ds.WaveformSequence[0]
        raw = np.frombuffer(g.WaveformData, dtype="<i2").reshape(-1, 12)[:, keep]
        g.WaveformData = np.ascontiguousarray(raw).tobytes()
        g.NumberOfWaveformChannels = 8
        g.ChannelDefinitionSequence = pydicom.Sequence([g.ChannelDefinitionSequence[k] for k in keep])
        for ch in g.ChannelDefinitionSequence:
            ch.ChannelSensitivity = f"{float(ch.ChannelSensitivity) / 1000:g}"
            ch.ChannelSensitivityUnitsSequence[0].CodeValue = "mV"
        del ds.PatientAge  # then the age comes from the birth date and the acquisition date

    ecg = read_ecg(_edited_dicom(tmp_path, "eight.dcm", eight_leads_in_mv))
    full = read_ecg(_dicom_example())
    assert ecg.meta["reader"] == "ecgrisk.io.dicom" and ecg.meta["age"] == 42.0
    assert ecg.meta["derived_leads"] == ["III", "aVR", "aVL", "aVF"]
    for name in ("I", "II", "V1", "V6"):
        np.testing.assert_allclose(ecg.signal[IDX[name]], full.signal[IDX[name]], atol=1e-6)
    np.testing.assert_allclose(ecg.signal[IDX["aVF"]],
                               full.signal[IDX["II"]] - full.signal[IDX["I"]] / 2, atol=1e-5)


def test_a_dicom_age_past_130_is_none(tmp_path):
    def ancient(ds):
        ds.PatientAge = "999Y"

    assert read_ecg(_edited_dicom(tmp_path, "old.dcm", ancient)).meta["age"] is None


@pytest.mark.parametrize("edit", [
    lambda ds: ds.WaveformSequence[0].add_new(0x5400100A, "OW", b"\x00\x80"),  # padding value
    lambda ds: setattr(ds.WaveformSequence[0].ChannelDefinitionSequence[3]
                       .ChannelSensitivityUnitsSequence[0], "CodeValue", "mmHg"),
    lambda ds: setattr(ds.WaveformSequence[0].ChannelDefinitionSequence[0], "ChannelBaseline", "5"),
    lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", pydicom.uid.DeflatedExplicitVRLittleEndian),
], ids=["padding-value", "pressure-unit", "baseline", "deflated"])
def test_a_dicom_outside_the_common_case_is_left_to_ecgdatakit(tmp_path, edit):
    from ecgrisk.io.dicom import read_dicom

    path = _edited_dicom(tmp_path, "odd.dcm", edit)
    assert read_dicom(path) is None
    ecg = read_ecg(path)
    assert ecg.meta["reader"].startswith("ecgdatakit ") and ecg.lead_mask.all()


def test_real_muse_export_derives_the_limb_leads():
    ecg = read_ecg(MUSE)
    assert ecg.meta["source_format"] == "ge-muse-xml" and ecg.fs == 500.0
    assert ecg.signal.shape == (12, 5000) and ecg.lead_mask.all()
    assert ecg.meta["derived_leads"] == ["III", "aVR", "aVL", "aVF"]
    assert ecg.meta["missing_leads"] == []
    i, ii = ecg.signal[IDX["I"]], ecg.signal[IDX["II"]]
    np.testing.assert_allclose(ecg.signal[IDX["III"]], ii - i, atol=1e-6)
    np.testing.assert_allclose(ecg.signal[IDX["aVR"]], -(i + ii) / 2, atol=1e-6)
    # a real sinus-rhythm ECG: lead II has a QRS peak of roughly 1-2 mV
    assert 0.5 < np.abs(ii).max() < 3.0
    assert (ecg.meta["age"], ecg.meta["sex"]) == (11.0, "M")
    assert ecg.meta["acquired"] == "2024-01-01T10:35:17"


def test_the_standard_library_reads_the_common_muse_file_as_ecgdatakit_does():
    from ecgdatakit import FileParser

    ecg = read_ecg(MUSE)
    assert ecg.meta["reader"] == "ecgrisk.io.muse" and ecg.meta["reader_warnings"] == []
    ref = FileParser.parse(MUSE, units="mV")
    for lead in ref.leads:
        np.testing.assert_array_equal(ecg.signal[IDX[lead.label]], lead.samples.astype(np.float32))
    assert ecg.fs == float(ref.leads[0].sampling_rate)
    assert (ecg.meta["age"], ecg.meta["sex"]) == (float(ref.patient.age), ref.patient.sex)
    assert ecg.meta["acquired"] == ref.recording.date.isoformat()


def _edited_muse(tmp_path, old: bytes, new: bytes, count: int = 1) -> Path:
    text = MUSE.read_bytes()
    assert old in text
    path = tmp_path / "odd.xml"
    path.write_bytes(text.replace(old, new, count))
    return path


_LEAD_I_CRC = b"<LeadDataCRC32>3097469524</LeadDataCRC32>"  # the rhythm waveform's lead I


@pytest.mark.parametrize(("old", "new", "count", "then"), [
    (_LEAD_I_CRC, b"<LeadDataCRC32>1</LeadDataCRC32>", 1, "CRC32 mismatch"),
    (b"<FirstSampleBaseline>0<", b"<FirstSampleBaseline>7<", -1, "FirstSampleBaseline is non-zero"),
    (b"<AgeUnits>YEARS</AgeUnits>", b"<AgeUnits>MONTHS</AgeUnits>", 1, 0.0),
    (b"<AcquisitionDate>01-01-2024</AcquisitionDate>",
     b"<AcquisitionDate>2024-01-01</AcquisitionDate>", 1, "2024-01-01T10:35:17"),
    (b"<WaveformType>Median</WaveformType>", b"<WaveformType>Rhythm</WaveformType>", 1,
     "Additional rhythm waveform ignored"),
    (b"MICROVOLTS", b"COUNTS", -1, "carry no voltage scale"),
    (b'<RestingECG>', b'<!DOCTYPE RestingECG [<!ENTITY a "b">]><RestingECG>', 1,
     "entity declarations are not allowed"),
], ids=["crc", "baseline", "age-in-months", "iso-date", "two-rhythms", "no-unit", "entity"])
def test_a_muse_file_outside_the_common_case_is_left_to_ecgdatakit(tmp_path, old, new, count, then):
    from ecgrisk.io.muse import read_muse

    if old == b"<RestingECG>":  # the entity goes in place of the file's own DOCTYPE
        old, new = b'<!DOCTYPE RestingECG SYSTEM "restecg.dtd">\n<RestingECG>', new
    path = _edited_muse(tmp_path, old, new, count)
    assert read_muse(path) is None
    if then in ("carry no voltage scale", "entity declarations are not allowed"):
        with pytest.raises(ECGReadError, match=then):
            read_ecg(path)
        return
    ecg = read_ecg(path)
    assert ecg.meta["reader"].startswith("ecgdatakit ")
    if isinstance(then, float):
        assert ecg.meta["age"] == then  # 11 months
    elif then.startswith("2024"):
        assert ecg.meta["acquired"] == then
    else:
        assert any(then in w for w in ecg.meta["reader_warnings"])


def test_a_muse_file_in_utf16_is_left_to_ecgdatakit_where_a_declaration_cannot_hide(tmp_path):
    from ecgrisk.io.muse import read_muse

    text = MUSE.read_text(encoding="utf-8").replace('encoding="UTF-8"', 'encoding="UTF-16"')
    text = text.replace('<!DOCTYPE RestingECG SYSTEM "restecg.dtd">',
                        '<!DOCTYPE RestingECG [<!ENTITY a "b">]>')
    for encoding in ("utf-16", "utf-16-le"):  # with and without a byte-order mark
        path = tmp_path / f"{encoding}.xml"
        path.write_bytes(text.encode(encoding))
        assert read_muse(path) is None


@pytest.mark.parametrize(("writer", "leads", "kind"), [
    (write_hl7_aecg, TWELVE, "hl7-aecg"), (write_hl7_aecg, EIGHT, "hl7-aecg"),
    (write_scp_ecg, TWELVE, "scp-ecg"), (write_scp_ecg, EIGHT, "scp-ecg"),
    (write_philips_xml, TWELVE, "philips-xml"),
], ids=["aecg-12", "aecg-8", "scp-12", "scp-8", "philips-xli"])
def test_written_formats_read_by_content(tmp_path, writer, leads, kind):
    uv = synthetic_uv(leads)
    path = writer(tmp_path / "export.txt", uv, leads, FS, age=58, sex="M")  # misleading suffix
    ecg = read_ecg(path, fs=100)
    assert ecg.meta["source_format"] == kind and ecg.fs == 100.0 and ecg.signal.shape == (12, 1000)
    full = read_ecg(path)
    for k, name in enumerate(leads):
        np.testing.assert_allclose(full.signal[IDX[name]], uv[k] / 1000.0, atol=1e-6)
    assert full.meta["derived_leads"] == ([] if len(leads) == 12 else ["III", "aVR", "aVL", "aVF"])
    assert (full.meta["age"], full.meta["sex"]) == (58.0, "M")


@pytest.mark.parametrize("plus", [True, False], ids=["edf+", "edf"])
def test_edf_written_by_edfio(tmp_path, plus):
    # found in a walkthrough: a plain EDF's patient field (sex, birth date) went unread
    mv = synthetic_uv(TWELVE) / 1000.0
    path = _write_edf(tmp_path / "rec.edf", mv, TWELVE, FS, plus=plus)
    assert (path.read_bytes()[192:197] == b"EDF+C") == plus
    ecg = read_ecg(path)
    assert ecg.meta["source_format"] == "edf" and ecg.fs == FS and ecg.lead_mask.all()
    # 16-bit EDF over +-10 mV: resolution 20 mV / 65535 = 0.3 uV
    np.testing.assert_allclose(ecg.signal, mv, atol=3e-4)
    assert ecg.meta["sex"] == "F" and ecg.meta["age"] == 63.0
    assert ecg.meta["acquired"] == "2024-03-09T14:30:05"


def test_broken_and_unknown_files_name_the_reason(tmp_path):
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(_dicom_example().read_bytes()[:2000])
    with pytest.raises(ECGReadError, match="cut.dcm"):
        read_ecg(cut)
    other = tmp_path / "notes.xml"
    other.write_text("<?xml version='1.0'?><invoice><total>3</total></invoice>")
    with pytest.raises(UnknownFormatError, match="notes.xml: unsupported content"):
        read_ecg(other)
    bad = tmp_path / "bad.xml"
    bad.write_text("<?xml version='1.0'?><RestingECG><Waveform>oops")
    with pytest.raises(HeaderParseError, match="bad.xml: not a readable ge-muse-xml file"):
        read_ecg(bad)


def test_mixed_folder_scores_and_converts(tmp_path):
    d = tmp_path / "clinic"
    (d / "dicom").mkdir(parents=True)
    shutil.copy(_dicom_example(), d / "dicom" / "IM0001")
    shutil.copy(MUSE, d / "muse.xml")
    write_scp_ecg(d / "cart.scp", synthetic_uv(EIGHT), EIGHT, FS, age=70, sex="F")
    write_philips_xml(d / "philips.xml", synthetic_uv(TWELVE), TWELVE, FS, age=44, sex="M")
    _write_edf(d / "holter.edf", synthetic_uv(TWELVE) / 1000.0, TWELVE, FS)
    (d / "broken.dcm").write_bytes(_dicom_example().read_bytes()[:700])
    (d / "readme.txt").write_text("not an ECG, and not taken for one")

    scores = tmp_path / "scores.csv"
    assert cli_main(["score", str(d), "--out", str(scores), "--quiet"]) == 0  # shipped model
    with open(scores, newline="") as f:
        table = {r["record"]: r for r in csv.DictReader(f)}
    assert set(table) == {"dicom/IM0001", "muse", "cart", "philips", "holter", "broken"}
    assert table["broken"]["error"].startswith("HeaderParseError")
    for rec in ("dicom/IM0001", "muse", "cart", "philips", "holter"):
        assert table[rec]["error"] == "" and 0 <= float(table[rec]["risk"]) <= 1
    assert table["muse"]["derived_leads"] == "III;aVR;aVL;aVF"
    assert "derived" in table["cart"]["quality"] and table["philips"]["derived_leads"] == ""
    # the patient's age and sex as each file states them, for evaluate --by
    assert [(table[r]["age"], table[r]["sex"]) for r in ("cart", "philips")] == [
        ("70.0", "female"), ("44.0", "male")]
    for rec in ("dicom/IM0001", "muse"):
        ecg = read_ecg(d / ("dicom/IM0001" if rec.startswith("dicom") else "muse.xml"))
        assert table[rec]["sex"] == {"M": "male", "F": "female", None: ""}[ecg.meta["sex"]]
        assert table[rec]["age"] == ("" if ecg.meta["age"] is None else str(ecg.meta["age"]))
    # when each was recorded, where the file says: pydicom's example in January 2013
    assert table["dicom/IM0001"]["acquired"].startswith("2013-01-25T10:59")
    assert table["muse"]["acquired"] == (read_ecg(d / "muse.xml").meta["acquired"] or "")
    assert table["philips"]["acquired"] == (read_ecg(d / "philips.xml").meta["acquired"] or "")

    out = tmp_path / "converted"
    # a batch with a broken file is done (0), the manifest naming it; nothing written is 1
    assert cli_main(["convert", str(d), "--to", "wfdb", "--out", str(out), "--quiet"]) == 0
    assert cli_main(["convert", str(d / "broken.dcm"), "--to", "wfdb", "--out",
                     str(tmp_path / "none"), "--quiet"]) == 1
    with open(out / "manifest.csv", newline="") as f:
        manifest = {r["record"]: r for r in csv.DictReader(f)}
    assert manifest["broken"]["status"] == "failed" and "broken.dcm" in manifest["broken"]["source"]
    assert {r["status"] for k, r in manifest.items() if k != "broken"} == {"ok"}
    back = read_ecg(out / manifest["muse"]["output"])
    src = read_ecg(MUSE)
    np.testing.assert_allclose(back.signal, src.signal, atol=1e-3)  # 1 uV per count
    assert back.meta["derived_leads"] == ["III", "aVR", "aVL", "aVF"]
    assert (back.meta["age"], back.meta["sex"]) == (11.0, "M")
    dicom = read_ecg(out / manifest["dicom/IM0001"]["output"])
    assert dicom.fs == 1000.0 and dicom.lead_mask.all() and dicom.meta["derived_leads"] == []

    npz = tmp_path / "npz"
    assert cli_main(["convert", str(d / "cart.scp"), "--to", "npz", "--out", str(npz),
                     "--fs", "100", "--quiet"]) == 0
    cart = read_ecg(npz / "cart.npz")
    assert cart.fs == 100.0 and cart.signal.shape == (12, 1000) and cart.lead_mask.all()
    # found in a walkthrough: the npz lost what the WFDB header keeps
    assert cart.meta["derived_leads"] == ["III", "aVR", "aVL", "aVF"]
    assert (cart.meta["age"], cart.meta["sex"]) == (70.0, "F")
    assert cli_main(["convert", str(d / "dicom" / "IM0001"), "--to", "npz", "--out", str(npz),
                     "--quiet"]) == 0
    assert read_ecg(npz / "IM0001.npz").meta["acquired"] == read_ecg(d / "dicom" / "IM0001").meta["acquired"]


def test_converting_into_a_folder_adds_to_its_manifest(tmp_path):
    # found in a walkthrough: one more file converted into the folder replaced its 19-row
    # manifest with a 1-row one, the other records still there
    signal = synthetic_uv(TWELVE) / 1000.0
    for folder in ("first", "second"):
        (tmp_path / folder).mkdir()
    np.savez(tmp_path / "first" / "a.npz", signal=signal, fs=FS)
    np.savez(tmp_path / "first" / "b.npz", signal=signal, fs=FS)
    np.savez(tmp_path / "second" / "a.npz", signal=signal[::-1], fs=FS)  # another ECG named a
    out = tmp_path / "out"
    assert cli_main(["convert", str(tmp_path / "first"), "--to", "wfdb", "--out", str(out), "--quiet"]) == 0
    assert cli_main(["convert", str(tmp_path / "second" / "a.npz"), "--to", "wfdb", "--out", str(out),
                     "--quiet"]) == 0
    assert cli_main(["convert", str(tmp_path / "first" / "b.npz"), "--to", "wfdb", "--out", str(out),
                     "--quiet"]) == 0  # converted again: its row is replaced, not repeated
    with open(out / "manifest.csv", newline="") as f:
        rows = {r["record"]: r["source"] for r in csv.DictReader(f)}
    assert rows == {"a": str(tmp_path / "first" / "a.npz"), "a_2": str(tmp_path / "second" / "a.npz"),
                    "b": str(tmp_path / "first" / "b.npz")}
    np.testing.assert_allclose(read_ecg(out / "a_2").signal, signal[::-1], atol=1e-3)
    np.testing.assert_allclose(read_ecg(out / "a").signal, signal, atol=1e-3)


def test_a_challenge_records_diagnoses_survive_conversion(shared, tmp_path):
    src = read_ecg(shared / "cinc2021-sample" / "E07500")
    for to, name in (("wfdb", "E07500"), ("npz", "E07500.npz")):
        assert cli_main(["convert", str(shared / "cinc2021-sample" / "E07500"), "--to", to,
                         "--out", str(tmp_path / to), "--quiet"]) == 0
        back = read_ecg(tmp_path / to / name)
        assert back.meta["dx"] == src.meta["dx"] == ["67741000119109", "426177001"]
        assert (back.meta["age"], back.meta["sex"]) == (78.0, "M")


def _annotations_at(path: Path) -> tuple[int, int]:
    """Byte offsets where pydicom finds the annotation sequence's tag and the next element's."""
    ds = pydicom.dcmread(path, defer_size=0)  # value_tell: where each value starts
    tags = list(ds.keys())
    k = tags.index(0x0040B020)
    explicit = not ds.file_meta.TransferSyntaxUID.is_implicit_VR
    annotations, after = ds.get_item(tags[k]), ds.get_item(tags[k + 1])
    header = (12 if after.VR in ("OB", "OW", "SQ", "UN", "UT") else 8) if explicit else 8
    return _value_tell(annotations) - (12 if explicit else 8), _value_tell(after) - header


def _value_tell(element) -> int:
    return element.value_tell if hasattr(element, "value_tell") else element.file_tell  # raw or not


def _plain(ds, wanted: dict) -> dict:
    """A pydicom data set as ``_dataset`` returns one: the ``wanted`` elements by keyword."""
    out = {}
    for tag, (name, kind) in wanted.items():
        if tag in ds:
            value = ds[tag].value
            out[name] = ([_plain(item, kind) for item in value] if isinstance(kind, dict)
                         else bytes(value) if kind == "OB" else value if kind in ("US", "UL")
                         else str(value))
    return out


def _assert_read_as_pydicom_reads_it(read: dict, path: Path) -> None:
    """``_dataset``'s elements are pydicom's, its waveform sequence cut after the first group
    that is not a median one."""
    from ecgrisk.io.dicom import _TOP

    full = _plain(pydicom.dcmread(path), _TOP)
    groups, kept = full.pop("WaveformSequence"), read.pop("WaveformSequence")
    assert kept == groups[:len(kept)] and kept[-1]["MultiplexGroupLabel"] == "RHYTHM"
    assert all(g["MultiplexGroupLabel"].startswith("MEDIAN") for g in kept[:-1])
    assert read == full and full["PatientAge"] == "042Y"


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit-vr", "implicit-vr"])
def test_dicom_annotations_are_stepped_over_to_where_pydicom_ends_them(tmp_path, implicit):
    from ecgrisk.io.dicom import _SEQUENCE_END, _close, _dataset

    path = tmp_path / "ecg.dcm"
    ds = pydicom.dcmread(_dicom_example())
    for item in ds.WaveformAnnotationSequence[::3]:  # defined-length items among undefined ones
        item.is_undefined_length_sequence_item = False
    if implicit:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(path, implicit_vr=implicit, little_endian=True)
    start, end = _annotations_at(path)
    data = path.read_bytes()
    assert _close(data, start + (8 if implicit else 12), not implicit, _SEQUENCE_END) == end
    _assert_read_as_pydicom_reads_it(_dataset(data), path)


def test_dicom_with_broken_annotations_is_left_to_ecgdatakit(tmp_path):
    from ecgrisk.io.dicom import _SEQUENCE_END, _close, read_dicom

    start, _ = _annotations_at(_dicom_example())
    data = bytearray(_dicom_example().read_bytes())
    data[start + 12:start + 16] = b"\x08\x00\x20\x00"  # the first item's tag is not an item's
    path = tmp_path / "broken.dcm"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="no item"):
        _close(bytes(data), start + 12, True, _SEQUENCE_END)
    assert read_dicom(path) is None


@pytest.mark.parametrize("edit", [
    lambda ds: delattr(ds, "WaveformAnnotationSequence"),
    lambda ds: setattr(ds.WaveformAnnotationSequence, "is_undefined_length", False),
], ids=["no-annotations", "defined-length-annotations"])
def test_dicom_without_undefined_length_annotations_reads_as_pydicom_reads_it(tmp_path, edit):
    from ecgrisk.io.dicom import _dataset

    path = _edited_dicom(tmp_path, "ecg.dcm", edit)
    _assert_read_as_pydicom_reads_it(_dataset(path.read_bytes()), path)
    assert read_ecg(path).meta["reader"] == "ecgrisk.io.dicom"


def test_a_median_group_before_the_rhythm_group_is_read_over(tmp_path):
    from ecgrisk.io.dicom import _dataset, read_dicom

    def medians_first(ds):
        ds.WaveformSequence = pydicom.Sequence(list(ds.WaveformSequence)[::-1])

    path = _edited_dicom(tmp_path, "ecg.dcm", medians_first)
    read = _dataset(path.read_bytes())
    assert [g["MultiplexGroupLabel"] for g in read["WaveformSequence"]] == ["MEDIAN BEAT", "RHYTHM"]
    _assert_read_as_pydicom_reads_it(read, path)
    signal, _, fs, _ = read_dicom(path)
    assert np.array_equal(signal, read_ecg(_dicom_example()).signal)


def test_the_common_dicom_and_muse_files_read_without_the_formats_extra(tmp_path, monkeypatch):
    odd = _edited_dicom(tmp_path, "odd.dcm",  # a padding value: only ecgdatakit reads it
                        lambda ds: ds.WaveformSequence[0].add_new(0x5400100A, "OW", b"\x00\x80"))
    for name in ("ecgdatakit", "pydicom"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    ecg = read_ecg(_dicom_example())
    assert ecg.meta["reader"] == "ecgrisk.io.dicom" and ecg.signal.shape == (12, 10000)
    assert read_ecg(MUSE).meta["reader"] == "ecgrisk.io.muse"
    with pytest.raises(UnknownFormatError, match=r"no reader for it is installed.*ecgrisk\[formats\]"):
        read_ecg(odd)
