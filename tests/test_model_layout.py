"""The xresnet1d's row-image layout ([B, C, 1, T], channels-last) and pairwise-mean pool against
the [B, C, T] layout and AvgPool1d they replaced, and scripts/bench_model_layout.py, which
measures them side by side."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from script_support import load_script

from ecgrisk.bundle import Bundle
from ecgrisk.data.ptbxl import PTBXL
from ecgrisk.data.synthetic import make_synthetic_ptbxl
from ecgrisk.io import read_ecg
from ecgrisk.metrics import macro_auroc
from ecgrisk.models import create_encoder
from ecgrisk.models.classifier import ECGClassifier
from ecgrisk.models.layers import RowConv1d
from ecgrisk.preprocess import Preprocessing, Scaler
from ecgrisk.scoring.predict import Predictor

bench = load_script("bench_model_layout")


def _model(name: str, n_classes: int = 3, seed: int = 0) -> ECGClassifier:
    torch.manual_seed(seed)
    model = ECGClassifier(create_encoder(name, base_channels=8), num_classes=n_classes, head="benchmark")
    # BN statistics and scales away from their initial values, so every BN shows in the output
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", ["xresnet1d18", "xresnet1d50"])
@pytest.mark.parametrize("length", [250, 251, 1000])
def test_the_row_image_gives_the_logits_of_the_one_d_layout(name, length):
    # in float64, where the two kernels' different summation orders do not show
    model = _model(name).eval().double()
    x = torch.randn(4, 12, length, dtype=torch.float64)
    with torch.no_grad():
        features = model.encoder.forward_features(x)
        now = model(x)
        for torch_pool in (False, True):
            torch.testing.assert_close(now, bench.one_d_forward(model, x, torch_pool), rtol=1e-10, atol=1e-10)
    assert features.shape == (4, model.encoder.feature_dim, -(-length // 32))


def test_the_row_image_trains_as_the_one_d_layout_does():
    # train mode: batch statistics, running-stat updates and gradients all the same (float64:
    # in fp32, BN's backward over 6 short records amplifies rounding to ~1% in the stem)
    x = torch.randn(6, 12, 250, dtype=torch.float64)
    y = (torch.rand(6, 3) < 0.3).double()
    grads, stats = [], []
    for forward in (bench.FORWARD["now"], bench.FORWARD["before"]):
        model = _model("xresnet1d50").train().double()  # _model seeds: the same dropout masks
        F.binary_cross_entropy_with_logits(forward(model, x), y).backward()
        grads.append([p.grad for p in model.parameters()])
        stats.append([b.clone() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))])
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    for a, b in zip(stats[0], stats[1], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kwargs", [dict(padding=2), dict(padding="same"), dict(padding=0, stride=2),
                                    dict(padding=2, dilation=2, groups=2, bias=True)])
def test_a_row_conv_on_a_row_image_is_the_conv1d_on_the_signal(kwargs):
    torch.manual_seed(0)
    conv = RowConv1d(4, 6, 5, **kwargs).double()
    x = torch.randn(3, 4, 17, dtype=torch.float64)
    rows = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(conv(rows).squeeze(2), conv(x))


def test_a_row_conv_refuses_padding_it_would_not_apply():
    with pytest.raises(ValueError, match="zeros only, got padding_mode='reflect'"):
        RowConv1d(4, 6, 5, padding=2, padding_mode="reflect")


def test_the_state_dict_is_that_of_plain_conv1d_and_batchnorm1d_layers():
    # shipped bundles saved before the row image load into it unchanged
    model = _model("xresnet1d18")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    conv = shapes["encoder.stem.0.0.weight"]
    assert conv == (4, 12, 5)  # [out, in, kernel]: a Conv1d weight, no 2-D kernel axis
    plain = torch.nn.Conv1d(12, 4, 5, bias=False)
    assert set(model.encoder.stem[0][0].state_dict()) == set(plain.state_dict())
    assert set(model.encoder.stem[0][1].state_dict()) == set(torch.nn.BatchNorm1d(4).state_dict())


def test_speed_rows_compare_the_two_layouts_on_the_same_batches():
    model = _model("xresnet1d18").eval()
    rows = bench.speed(model, batch=8, train_batch=4, reps=1)
    assert [(r["mode"], r["precision"], r["threads"]) for r in rows] == [
        (mode, precision, threads) for threads in (1, 2) for precision in ("bf16", "fp32")
        for mode in ("inference", "training")]
    for r in rows:
        variants = bench.VARIANTS if r["mode"] == "inference" else bench.TRAINING_VARIANTS
        assert set(r["per_s"]) == set(variants) and min(r["per_s"].values()) > 0
        assert ("folded" in r["per_s"]) == (r["mode"] == "inference")
        assert r["ratio"] == pytest.approx(r["per_s"]["now"] / r["per_s"]["before"])
    # the timed copies trained; the model handed in did not
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_fidelity_scores_fold_9_with_the_bundle_before_now_and_folded(tmp_path):
    root = make_synthetic_ptbxl(tmp_path / "ptbxl", n_records=60, progress=False)
    data = PTBXL(root)
    model = _model("xresnet1d18", n_classes=len(data.classes)).eval()
    path = tmp_path / "model.pt"
    Bundle(model=model, classes=list(data.classes), preprocessing=Preprocessing(fs=100.0),
           scaler=Scaler(0.0, 0.2), temperature=np.ones(len(data.classes)), name="tiny", version="1",
           config="data:\n  task: superdiagnostic\n", precision="32-true").save(path)
    f = bench.fidelity(str(path), root)
    idx = np.flatnonzero(data.folds == 9)
    assert f["records"] == len(idx) > 0 and f["task"] == "superdiagnostic" and not f["bf16"]
    predictor = Predictor(Bundle.load(path))
    probs = predictor.predict_prepared([predictor.spec.prepare(e.signal, e.fs)
                                        for e in (read_ecg(data.paths[i]) for i in idx)])
    expected = macro_auroc(data.labels[idx], probs, skip_degenerate=True)
    # the predictor scores with the folded model; in fp32 all three agree to rounding
    for variant in ("before", "now", "folded"):
        assert f["macro_auroc"][variant] == pytest.approx(expected, abs=1e-6, nan_ok=True)
    assert set(f["abs_diff"]) == {"before", "folded"}
    assert all(d["max"] < 1e-5 for d in f["abs_diff"].values())
