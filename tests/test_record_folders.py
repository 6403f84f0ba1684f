"""Challenge folders, arbitrary ECG folders and pooling: indexes only, no signal reading."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import wfdb

from ecgrisk.data.base import RecordSet
from ecgrisk.data.challenge import ChallengeFolder, parse_challenge_header
from ecgrisk.data.folder import ECGFolder, pool


def test_challenge_sample_labels(challenge_root):
    root = challenge_root
    ds = ChallengeFolder(root)
    heas = sorted(root.glob("*.hea"))
    assert len(ds) == len(heas) and ds.missing == [] and ds.folds is None
    assert ds.record_ids == [h.stem for h in heas]
    assert ds.paths[0] == str(root.resolve() / heas[0].stem)
    # classes: every code seen, sorted; counted independently from the header text
    dx = {}
    for hea in heas:
        for line in hea.read_text().splitlines():
            if line.startswith("# Dx:"):
                dx[hea.stem] = {c.strip() for c in line[5:].split(",")}
    assert ds.classes == sorted(set().union(*dx.values()))
    for i, rid in enumerate(ds.record_ids):
        assert {ds.classes[j] for j in np.flatnonzero(ds.labels[i])} == dx.get(rid, set()), rid


def test_shared_challenge_sample_figures(shared):
    root = shared / "cinc2021-sample"
    ds = ChallengeFolder(root)
    assert len(ds) == 50
    assert ds.record_ids[:2] == ["E07500", "E07501"] and ds.record_ids[-1] == "JS20019"
    i = ds.record_ids.index("E07500")
    assert {ds.classes[j] for j in np.flatnonzero(ds.labels[i])} == {"67741000119109", "426177001"}
    assert ds.meta.loc[i, "age"] == 78.0 and ds.meta.loc[i, "sex"] == "M"
    # E07500's header: "# Age: 78", "# Sex: Male"; what the review band's groups read
    assert {k: v[i] for k, v in ds.attributes.items()} == {"age": 78.0, "sex": "male"}


def test_challenge_fixed_classes_and_missing(challenge_root, tmp_path):
    first, second, third = (h.stem for h in sorted(challenge_root.glob("*.hea"))[:3])
    (tmp_path / "georgia").mkdir()
    for stem in (first, second):
        for ext in (".hea", ".mat"):
            shutil.copy(challenge_root / f"{stem}{ext}", tmp_path / "georgia")
    shutil.copy(challenge_root / f"{third}.hea", tmp_path)  # header without its .mat
    ds = ChallengeFolder(tmp_path, classes=["426177001", "164889003"])  # sinus brady, AF
    assert ds.record_ids == [first, second] and ds.missing == [third]
    want = [[int("426177001" in d), int("164889003" in d)] for d in ds.meta["dx"]]
    assert ds.labels.tolist() == want and ds.labels.any()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no record found"):
        ChallengeFolder(tmp_path / "empty")


def test_parse_header_without_dx(tmp_path):
    hea = tmp_path / "x.hea"
    hea.write_text("x 1 500 10\nx.mat 16 1000/mV 16 0 0 0 0 I\n# Age: 50\n")
    assert parse_challenge_header(hea) == {"dx": [], "age": 50.0, "sex": None}


def _wfdb(folder, name, fmt="16"):
    folder.mkdir(parents=True, exist_ok=True)
    sig = np.zeros((20, 2))
    sig[:, 0] = np.linspace(0, 1, 20)
    wfdb.wrsamp(name, fs=100, units=["mV", "mV"], sig_name=["I", "II"], p_signal=sig,
                fmt=[fmt, fmt], write_dir=str(folder))


@pytest.fixture
def ecg_tree(tmp_path, challenge_record):
    root = tmp_path / "ecgs"
    _wfdb(root / "records100/00000", "00001_lr")
    (root / "challenge").mkdir()
    for ext in (".hea", ".mat"):  # a Challenge record: its .mat is named by the header
        shutil.copy(challenge_record.with_suffix(ext), root / "challenge")
    (root / "arrays").mkdir()
    np.save(root / "arrays" / "a.npy", np.zeros((12, 10)))
    np.savez(root / "arrays" / "b.npz", signal=np.zeros((12, 10)))
    (root / "arrays" / "notes.txt").write_text("not an ECG")
    (root / ".cache").mkdir()
    np.save(root / ".cache" / "hidden.npy", np.zeros(3))
    return root


def test_ecg_folder_lists_each_record_once(ecg_tree, challenge_record):
    challenge = f"challenge/{challenge_record.name}"  # challenge/E07500 with the shared sample
    ds = ECGFolder(ecg_tree)
    assert ds.record_ids == ["arrays/a", "arrays/b", challenge, "records100/00000/00001_lr"]
    assert ds.paths == [str(ecg_tree / "arrays/a.npy"), str(ecg_tree / "arrays/b.npz"),
                        str(ecg_tree / challenge),
                        str(ecg_tree / "records100/00000/00001_lr")]
    assert ds.labels is None and ds.classes == [] and ds.name == "folder"
    only_wfdb = ECGFolder(ecg_tree, pattern="*.hea")
    assert only_wfdb.record_ids == [challenge, "records100/00000/00001_lr"]


def test_ecg_folder_scan_order_and_what_it_skips(tmp_path):
    root = tmp_path / "scan"
    for rel in ("a/b.npy", "a-c.npy", "a/.hidden.npy", "a/x.y/z.npy", "B.npy", ".cache/h.npy"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / rel, np.zeros((12, 10)))
    (root / "0linked").symlink_to(root / "a", target_is_directory=True)  # a folder seen already
    (root / "a/up").symlink_to(root, target_is_directory=True)  # a loop
    (root / "b.npy").symlink_to(root / "B.npy")  # a symlinked file is a file
    (root / "broken.npy").symlink_to(root / "gone.npy")
    (root / "gone").symlink_to(root / "nowhere", target_is_directory=True)
    elsewhere = tmp_path / "share"  # found in a walkthrough: linked shares were left out, unsaid
    (elsewhere / "deep").mkdir(parents=True)
    np.save(elsewhere / "deep" / "e.npy", np.zeros((12, 10)))
    (root / "share").symlink_to(elsewhere, target_is_directory=True)
    ds = ECGFolder(root)
    # sorted as paths sort, part by part: "a/..." before "a-c" although "-" < "/" as characters;
    # a folder reached as itself and through a link keeps its own path
    assert ds.record_ids == ["B", "a/b", "a/x.y/z", "a-c", "b", "share/deep/e"]
    assert sorted(ds.paths) == sorted(str(root / f"{r}.npy") for r in ds.record_ids)
    assert ds.paths[1] == str(root / "a/b.npy")
    assert ECGFolder(root, pattern="a/*").record_ids == ["a/b", "a/x.y/z"]


def test_ecg_folder_ids_unique(ecg_tree, tmp_path):
    np.save(ecg_tree / "records100/00000/00001_lr.npy", np.zeros((12, 10)))
    ds = ECGFolder(ecg_tree)
    assert "records100/00000/00001_lr.hea" in ds.record_ids
    assert "records100/00000/00001_lr.npy" in ds.record_ids
    assert len(set(ds.record_ids)) == len(ds)
    other = tmp_path / "more"
    _wfdb(other, "00001_lr")
    two = ECGFolder([ecg_tree, other])
    assert "more/00001_lr" in two.record_ids and "ecgs/arrays/a" in two.record_ids
    assert len(two) == len(ds) + 1


def test_export_files_holding_no_ecg_are_named_and_become_error_rows_when_scored(ecg_tree, caplog):
    from ecgrisk.input_spec import InputSpec
    from ecgrisk.io.inputs import collect_records
    from ecgrisk.preprocess import Preprocessing, Scaler
    from ecgrisk.scoring.reading import read_chunk

    (ecg_tree / "arrays" / "image.dcm").write_bytes(b"\0" * 200)  # no DICM preamble
    (ecg_tree / "arrays" / "report.xml").write_text("<report>no waveform</report>")
    with caplog.at_level("WARNING", logger="ecgrisk.data.folder"):
        ds = ECGFolder(ecg_tree)
    assert len(ds) == 4  # the ECGs of test_ecg_folder_lists_each_record_once, no more
    assert ds.unrecognised == [("arrays/image.dcm", str(ecg_tree / "arrays/image.dcm")),
                               ("arrays/report.xml", str(ecg_tree / "arrays/report.xml"))]
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "2 file(s) named like an ECG export" in msg
    assert "arrays/image.dcm, arrays/report.xml" in msg and "notes.txt" not in msg
    # ecgrisk score and convert: each is a record whose read fails with a named reason
    records = collect_records([str(ecg_tree)])
    assert records[:4] == list(zip(ds.record_ids, ds.paths, strict=True))
    assert records[4:] == ds.unrecognised
    spec = InputSpec(Preprocessing(fs=100.0), Scaler(0.0, 1.0), window=250, stride=125)
    rows = read_chunk(records[4:], spec)
    assert [r.error.split(";")[0] for r in rows] == ["UnknownFormatError: unsupported content"] * 2
    # a folder of such files alone is rows with their errors too, not "no ECG record found"
    only = ecg_tree.parent / "only-broken"
    only.mkdir()
    shutil.copy(ecg_tree / "arrays" / "report.xml", only / "report.xml")
    assert collect_records([str(only)]) == [("report.xml", str((only / "report.xml").resolve()))]


def test_ecg_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ECGFolder(tmp_path / "absent")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="no ECG file"):
        ECGFolder(tmp_path)


def test_pool_prefixes_sources(ecg_tree, challenge_root):
    folder = ECGFolder(ecg_tree)
    challenge = ChallengeFolder(challenge_root)
    extra = RecordSet(name="extra", record_ids=["1"], paths=["/x/1"], missing=["2"])
    pooled = pool(folder, challenge, extra)
    assert len(pooled) == len(folder) + len(challenge) + 1
    assert pooled.record_ids[0] == "folder/arrays/a"
    assert pooled.record_ids[len(folder)] == f"challenge/{challenge.record_ids[0]}"
    assert pooled.paths[len(folder)] == challenge.paths[0]
    assert pooled.labels is None and pooled.missing == ["extra/2"]
    with pytest.raises(ValueError, match="distinct names"):
        pool(folder, ECGFolder(ecg_tree))
    renamed = pool(folder, ECGFolder(ecg_tree, name="again"))
    assert len(set(renamed.record_ids)) == 2 * len(folder)
