"""Self-training (``finetune.teacher``): a teacher fine-tuned on a fraction of the labels labels
the training records that fraction leaves out, and a new run trains on every training record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb
from scipy.special import expit

from ecgrisk.bundle import Bundle
from ecgrisk.config import compose
from ecgrisk.data.datamodule import build_datamodule
from ecgrisk.finetune.app import train
from ecgrisk.finetune.teacher import teacher_targets
from ecgrisk.scoring.predict import Predictor

TINY = ["model=xresnet1d18", "model.kwargs.base_channels=8", "data.batch_size=32",
        "trainer.enable_progress_bar=false", "bootstrap=0", "early_stopping_patience=null",
        "trainer.max_epochs=1", "data.train_fraction=0.3"]


@pytest.fixture(scope="module")
def teacher(ptbxl_no_test_fold, tmp_path_factory):
    """A tiny teacher fine-tuned on 30% of folds 1-8 of a synthetic PTB-XL without fold 10."""
    tmp, root = tmp_path_factory.mktemp("selftrain"), ptbxl_no_test_fold
    db = pd.read_csv(root / "ptbxl_database.csv")
    common = [f"data.root={root}", f"data.cache_dir={tmp / 'cache'}", *TINY]
    m = train(compose("finetune", [*common, f"output_dir={tmp / 'teacher'}"]))
    return tmp, common, db[db.strat_fold <= 8], m


def _datamodule(common):
    cfg = compose("finetune", common)
    dm = build_datamodule(cfg.data, cfg.seed, progress=False)
    dm.setup()
    return dm


def test_the_teacher_labels_left_out_records_with_its_uncalibrated_scoring_probabilities(teacher):
    tmp, common, train_db, _ = teacher
    bundle = Bundle.load(tmp / "teacher" / "model.pt")
    dm = _datamodule(common)
    left = dm.left_out()
    ids = [dm.caches[0].record_ids[i] for i in left]
    assert set(ids) == set(map(str, train_db.ecg_id)) - set(bundle.extra["train_records"])
    probs = teacher_targets(bundle, dm, left, "teacher", progress=False)
    assert probs.shape == (len(left), len(dm.classes)) and probs.dtype == np.float32
    # the same records read from their WFDB files and scored as `ecgrisk score` does, before
    # the calibration the scorer applies
    predictor = Predictor(bundle)
    files = dict(zip(map(str, train_db.ecg_id), train_db.filename_lr, strict=True))
    root = Path(common[0].split("=", 1)[1])
    prepared = [predictor.spec.prepare(*_read(root / files[r])) for r in ids[:8]]
    windows, positions = predictor.spec.windows(prepared)
    expected = expit(predictor.aggregate(predictor.window_logits(windows), positions, len(prepared)))
    np.testing.assert_allclose(probs[:8], expected, atol=1e-2)
    assert not np.allclose(probs, np.round(probs))  # probabilities, not labels


def _read(stem):
    signal, fields = wfdb.rdsamp(str(stem))
    return signal.T.astype(np.float32), fields["fs"]


def test_training_draws_teacher_targets_for_left_out_records_and_labels_for_the_rest(teacher):
    tmp, common, _, _ = teacher
    dm = _datamodule(common)
    drawn, left = dm.split["train"][0].copy(), dm.left_out()
    probs = np.full((len(left), len(dm.classes)), 0.25, dtype=np.float32)
    dm.add_teacher_targets(left, probs)
    assert set(dm.split["train"][0]) == set(drawn) | set(left)
    ds = dm.train_dataloader().dataset
    position = {int(i): k for k, i in enumerate(ds.indices)}
    for i in left[:5]:
        assert np.array_equal(ds[position[int(i)]][1].numpy(), probs[0])
    for i in drawn[:5]:
        assert np.array_equal(ds[position[int(i)]][1].numpy(), dm.caches[0].labels[i].astype(np.float32))
    # what training reads (pos_weight too) never carries the left-out records' labels
    train_labels = dm.labels("train")
    assert np.all(train_labels[np.isin(dm.split["train"][0], left)] == 0.25)
    with pytest.raises(ValueError, match="already train on their labels"):
        dm.add_teacher_targets(drawn[:2], probs[:2])


def test_a_self_trained_run_trains_on_every_training_record_and_says_how_many_the_teacher_labelled(teacher):
    tmp, common, train_db, teacher_metrics = teacher
    m = train(compose("finetune", [*common, f"output_dir={tmp / 'student'}",
                                   f"finetune.teacher={tmp / 'teacher' / 'model.pt'}"]))
    assert m["train/records"] == teacher_metrics["train/records"]
    assert m["train/records"] + m["train/teacher_records"] == len(train_db)
    assert m["train/teacher"] == str(tmp / "teacher" / "model.pt") and len(m["train/teacher_sha256"]) == 64
    student = Bundle.load(tmp / "student" / "model.pt")
    assert sorted(student.extra["train_records"]) == sorted(map(str, train_db.ecg_id))
    # it saw the labels of the teacher's records only, so it can teach a second round
    taught = set(student.extra["teacher_records"])
    assert len(taught) == m["train/teacher_records"]
    assert taught.isdisjoint(Bundle.load(tmp / "teacher" / "model.pt").extra["train_records"])
    dm = _datamodule(common)
    probs = teacher_targets(student, dm, dm.left_out(), "student", progress=False)
    assert probs.shape == (len(taught), len(dm.classes))


def test_a_teacher_that_trained_on_left_out_records_is_refused_by_name(teacher):
    tmp, common, _, _ = teacher
    bundle = Bundle.load(tmp / "teacher" / "model.pt")
    dm = _datamodule(common)
    left = dm.left_out()
    bundle.extra["train_records"] = [*bundle.extra["train_records"], dm.caches[0].record_ids[left[0]]]
    with pytest.raises(ValueError, match=r"teacher T trained on the labels of 1 of the \d+ records"):
        teacher_targets(bundle, dm, left, "T", progress=False)
    del bundle.extra["train_records"]
    with pytest.raises(ValueError, match="does not record which records it trained on"):
        teacher_targets(bundle, dm, left, "T", progress=False)
    bundle.classes = [*bundle.classes[:-1], "OTHER"]
    with pytest.raises(ValueError, match="same data.task"):
        teacher_targets(bundle, dm, left, "T", progress=False)


def test_a_teacher_with_nothing_left_out_to_label_is_a_clear_error(teacher):
    tmp, common, _, _ = teacher
    with pytest.raises(ValueError, match="leaves out none"):
        train(compose("finetune", [*common, "data.train_fraction=1", f"output_dir={tmp / 'none'}",
                                   f"finetune.teacher={tmp / 'teacher' / 'model.pt'}"]))
