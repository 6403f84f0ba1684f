"""Self-training: a fine-tuned model labels the training records whose labels a run leaves out.

With ``data.train_fraction < 1`` a run uses the labels of a fraction of the training folds;
``finetune.teacher`` names a bundle fine-tuned on that same fraction, which scores the rest, and
the new model trains on every training-fold record: towards the label where the run has one,
towards the teacher's probability elsewhere. A self-trained bundle can teach the next round: it
records which of its training records it knew only through its teacher. The probabilities are
the teacher's uncalibrated ones, because its calibration was fitted on the validation fold,
whose labels must not reach training.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import expit
from torch.utils.data import DataLoader

from ecgrisk.bundle import Bundle
from ecgrisk.data.datamodule import ECGDataModule
from ecgrisk.data.windows import WindowDataset
from ecgrisk.hardware import bf16_is_native
from ecgrisk.models.layers import fold_batchnorm
from ecgrisk.progress import progress_bar
from ecgrisk.windowing import aggregate_windows

BATCH_WINDOWS = 512


def teacher_targets(teacher: Bundle, dm: ECGDataModule, indices: np.ndarray, name: str,
                    progress: bool = True) -> np.ndarray:
    """The teacher's probabilities ``[len(indices), C]`` for the first cache's records at
    ``indices``, scored as the teacher was validated (its windows, aggregation and autocast).

    Raises ValueError (naming ``name``) when the teacher predicts other statements, expects
    other preprocessing, or trained on any of these records, whose targets would then carry
    the labels the run leaves out.
    """
    _check_teacher(teacher, dm, indices, name)
    fs = dm.prep.fs
    ds = WindowDataset(dm.caches[0], indices, round(teacher.window_s * fs),
                       round(teacher.stride_s * fs), teacher.scaler)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = fold_batchnorm(teacher.model).to(device)  # as its final validation and scoring run it
    # the autocast the teacher was validated under, where it runs at hardware speed
    bf16 = teacher.precision.startswith("bf16") and bf16_is_native(device)
    ks, logits = [], []
    with (progress_bar(len(ds), f"teacher {name} labels {len(indices)} records", progress) as advance,
          torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=bf16)):
        for x, _, k in DataLoader(ds, batch_size=BATCH_WINDOWS):
            logits.append(model(x.to(device)).float().cpu())
            ks.append(k)
            advance(len(k))
    record_logits, _ = aggregate_windows(torch.cat(ks), torch.cat(logits), ds.positions,
                                         len(indices), teacher.aggregation)
    return expit(record_logits.numpy()).astype(np.float32)


def _check_teacher(teacher: Bundle, dm: ECGDataModule, indices: np.ndarray, name: str) -> None:
    if list(teacher.classes) != list(dm.classes):
        raise ValueError(f"finetune.teacher {name} predicts {len(teacher.classes)} statements "
                         f"({', '.join(teacher.classes[:5])}, ...) but this run's data has "
                         f"{len(dm.classes)} ({', '.join(dm.classes[:5])}, ...): use a teacher "
                         f"fine-tuned on the same data.task")
    if teacher.preprocessing.to_dict() != dm.prep.to_dict():
        raise ValueError(f"finetune.teacher {name} was trained on ECGs preprocessed as "
                         f"{teacher.preprocessing.to_dict()}, this run uses {dm.prep.to_dict()}")
    trained = teacher.extra.get("train_records")
    if trained is None:
        raise ValueError(f"finetune.teacher {name} does not record which records it trained on, "
                         f"so it may know the labels this run leaves out: use a bundle written "
                         f"by ecgrisk-finetune")
    # a self-trained teacher trained on records its own teacher labelled: their labels it never saw
    labelled = set(map(str, trained)) - set(map(str, teacher.extra.get("teacher_records", [])))
    ids = dm.caches[0].record_ids
    seen = labelled & {str(ids[i]) for i in indices}
    if seen:
        raise ValueError(f"finetune.teacher {name} trained on the labels of {len(seen)} of the "
                         f"{len(indices)} records whose labels this run leaves out (e.g. "
                         f"{sorted(seen)[:3]}): use a teacher fine-tuned with this run's "
                         f"data.train_fraction and seed")
