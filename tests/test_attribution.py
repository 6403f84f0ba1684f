"""Attribution is faithful on real ECGs: deleting the most-attributed segment lowers the
statement's probability more than deleting a random segment of the same length.

Real records: the fold-9 ECGs of the PTB-XL sample the package ships (the shipped model never
trained on fold 9), explained with the shipped ``ptbxl-superdiagnostic`` bundle.
"""

from __future__ import annotations

import numpy as np
import pytest

from ecgrisk.bundle import Bundle
from ecgrisk.cli import main as cli_main
from ecgrisk.data.ptbxl import PTBXL
from ecgrisk.demo import unpack_sample
from ecgrisk.io import read_ecg
from ecgrisk.scoring.predict import Predictor

pytest.importorskip("captum")
from ecgrisk.scoring.attribution import explain, segment_deletion  # noqa: E402

RECORDS = 8


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return unpack_sample(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module")
def predictor():
    return Predictor(Bundle.load("ptbxl-superdiagnostic"))


def test_deleting_the_evidence_costs_more_than_deleting_at_random(sample, predictor):
    ds = PTBXL(sample)
    drops = []
    for i in np.flatnonzero(ds.folds == 9):
        ecg = read_ecg(ds.paths[i])
        (e,) = explain(predictor, ecg.signal, ecg.fs, top=1, steps=16)
        if e.probability < 0.5:  # explain confident readings: their evidence is what counts
            continue
        drops.append(segment_deletion(predictor, e, seconds=0.25, random_draws=10))
        if len(drops) == RECORDS:
            break
    top, rnd = np.array(drops).T
    assert len(drops) == RECORDS
    assert top.mean() > 2 * rnd.mean()
    assert (top > rnd).sum() >= RECORDS * 3 // 4


def test_report_and_inspect_draw_the_attribution(sample, tmp_path):
    records = sorted((sample / "records100").rglob("*_lr.hea"))[:3]
    folder = tmp_path / "in"
    folder.mkdir()
    for h in records:
        for ext in (".hea", ".dat"):
            (folder / (h.stem + ext)).symlink_to(h.with_suffix(ext))
    report = tmp_path / "report"
    assert cli_main(["score", str(folder), "--out", str(tmp_path / "s.csv"), "--report",
                     str(report), "--quiet"]) == 0
    drawn = sorted(p.name for p in report.glob("*_attribution.png"))
    assert len(drawn) == 3 and all(p.startswith("top0") for p in drawn)
    index = (report / "index.md").read_text()  # one page showing every plot, highest risk first
    shown = [line[line.index("(") + 1:-1] for line in index.splitlines() if line.startswith("![")]
    assert sorted(shown) == sorted(p.name for p in report.glob("*.png"))
    ranked = [name for name in shown if name.startswith("top")]
    assert ranked == sorted(ranked) and len(ranked) == 6  # each record's plot, then its evidence
    assert "# Scores of 3 records" in index and "3 scored, 0 failed" in index
    png = tmp_path / "why.png"
    assert cli_main(["inspect", str(records[0].with_suffix("")), "--explain", str(png),
                     "--top", "2"]) == 0
    assert png.stat().st_size > 10_000
