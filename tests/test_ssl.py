"""Self-supervised objectives and augmentations: shapes, masks, hand-computed losses, learning."""

import math

import pytest
import torch

from ecgrisk.models import create_encoder
from ecgrisk.pretrain import augment as A
from ecgrisk.pretrain.contrastive import ContrastiveModel, nt_xent
from ecgrisk.pretrain.masked import MaskedAutoencoder, MaskedSignalModel, n_masked
from ecgrisk.pretrain.objectives import build_objective

torch.set_num_threads(1)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _tiny_vit(leads=3, **kw):
    return create_encoder("vit1d", in_leads=leads, patch_size=10, max_patches=20, dim=16, depth=1,
                          heads=2, **kw)


def _sines(b=8, leads=3, t=100, seed=0):
    """Structured signals: one random-phase sinusoid per recording, lead-scaled."""
    g = _gen(seed)
    freq = 1 + 3 * torch.rand(b, 1, 1, generator=g)
    phase = 2 * math.pi * torch.rand(b, 1, 1, generator=g)
    time = torch.arange(t)[None, None, :] / 100.0
    gain = torch.linspace(0.5, 1.5, leads)[None, :, None]
    return gain * torch.sin(2 * math.pi * freq * time + phase)


# -- augmentations ------------------------------------------------------------------------
AUGS = [
    lambda x, g: A.baseline_wander(x, 0.3, 100.0, 0.5, g),
    lambda x, g: A.gaussian_noise(x, 0.1, g),
    lambda x, g: A.amplitude_scale(x, 0.5, 2.0, g),
    lambda x, g: A.time_warp(x, 0.2, g),
    lambda x, g: A.lead_dropout(x, 0.5, g),
    A.Compose([A.TimeWarp(0.1, p=0.5), A.AmplitudeScale(p=0.5), A.BaselineWander(p=0.5),
               A.GaussianNoise(p=0.5), A.LeadDropout(p=0.5)]),
]


@pytest.mark.parametrize("aug", AUGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_augmentations_keep_shape_dtype_and_are_reproducible(aug, dtype):
    x = _sines(4, 12, 250).to(dtype)
    y1, y2 = aug(x, _gen(7)), aug(x, _gen(7))
    assert y1.shape == x.shape and y1.dtype == dtype
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    assert not torch.equal(aug(x, _gen(8)), y1)  # another seed, another view
    assert not torch.equal(y1, x)


def test_random_crop_takes_a_contiguous_window_per_sample():
    x = torch.arange(3 * 2 * 50, dtype=torch.float32).reshape(3, 2, 50)
    y = A.random_crop(x, 20, _gen(1))
    assert y.shape == (3, 2, 20)
    for b in range(3):
        s = int(y[b, 0, 0] - x[b, 0, 0])
        assert 0 <= s <= 30
        torch.testing.assert_close(y[b], x[b, :, s:s + 20], rtol=0, atol=0)
    assert torch.equal(A.random_crop(x, 50), x)
    with pytest.raises(ValueError, match="length=51"):
        A.random_crop(x, 51)


def test_augmentation_values_by_hand():
    ones = torch.ones(16, 4, 30)
    scaled = A.amplitude_scale(ones, 0.5, 2.0, _gen())
    per_sample = scaled[:, 0, 0]
    assert torch.equal(scaled, per_sample[:, None, None].expand_as(scaled))  # all leads alike
    assert per_sample.min() >= 0.5 and per_sample.max() <= 2.0
    x = torch.randn(2, 3, 40)
    torch.testing.assert_close(A.time_warp(x, 0.0), x)  # factor 1: identity
    kept = A.lead_dropout(ones, 1.0, _gen()).amax(dim=2)  # p=1: exactly one lead survives
    assert torch.equal(kept.sum(dim=1), torch.ones(16))
    wander = A.baseline_wander(torch.zeros(8, 2, 500), amplitude=0.3, generator=_gen())
    assert wander.abs().max() <= 0.3 + 1e-6 and wander.abs().max() > 0.05
    noise = A.gaussian_noise(torch.zeros(4, 12, 2000), 0.1, _gen())
    assert abs(float(noise.std()) - 0.1) < 0.005


def test_per_sample_probability_and_build_augment():
    x = _sines(64, 2, 50)
    y = A.GaussianNoise(std=1.0, p=0.5)(x, _gen(3))
    changed = (y != x).flatten(1).any(dim=1)
    assert 16 < int(changed.sum()) < 48  # about half of 64 recordings, not all or none
    aug = A.build_augment({"crop": {"seconds": 0.3}, "gaussian_noise": {"std": 0.1},
                           "lead_dropout": None, "time_warp": {"enabled": False}}, fs=100)
    assert [type(m).__name__ for m in aug.augments] == ["RandomCrop", "GaussianNoise"]
    assert aug(x, _gen()).shape == (64, 2, 30)
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        A.build_augment({"flip": {}})


# -- masking ------------------------------------------------------------------------------
@pytest.mark.parametrize("masking,ratio", [("random", 0.75), ("time", 0.5), ("lead", 0.4)])
def test_mae_mask_counts_and_shapes(masking, ratio):
    vit = _tiny_vit(leads=3)
    mae = MaskedAutoencoder(vit, masking=masking, mask_ratio=ratio, decoder_dim=8, decoder_depth=1,
                            decoder_heads=2)
    x = _sines(5, 3, 100)  # 3 leads x 10 patches = 30 tokens
    tokens, grid = vit.tokenize(x)
    kept, mask, ids_restore = mae.random_masking(tokens, grid, _gen())
    assert grid == (3, 10) and mask.shape == (5, 30) and ids_restore.shape == (5, 30)
    expected = {"random": round(ratio * 30), "time": 3 * round(ratio * 10),
                "lead": 10 * round(ratio * 3)}[masking]
    assert (mask.sum(dim=1) == expected).all()
    assert kept.shape == (5, 30 - expected, 16)
    for b in range(5):  # the kept tokens are exactly the unmasked ones, in order
        torch.testing.assert_close(kept[b], tokens[b][mask[b] == 0])
    grid_mask = mask.reshape(5, 3, 10)
    if masking == "time":  # whole time columns: every lead masked alike
        assert (grid_mask == grid_mask[:, :1, :]).all()
    if masking == "lead":
        assert (grid_mask == grid_mask[:, :, :1]).all()
    loss, info = mae(x, _gen())
    assert info["pred"].shape == (5, 30, 10) and loss.ndim == 0 and torch.isfinite(loss)


def test_mae_loss_counts_masked_patches_only():
    mae = MaskedAutoencoder(_tiny_vit(), mask_ratio=0.5, decoder_dim=8, decoder_depth=1, decoder_heads=2)
    x = _sines(2, 3, 100)
    target = mae.patchify(x)
    mask = torch.zeros(2, 30)
    mask[:, :15] = 1
    pred = target.clone()
    pred[:, 15:] += 100.0  # wrong only where visible: no loss
    assert float(mae.forward_loss(x, pred, mask)) == 0.0
    pred = target.clone()
    pred[:, :15] += 2.0  # off by 2 on every masked sample: MSE 4
    assert float(mae.forward_loss(x, pred, mask)) == pytest.approx(4.0)


def test_signal_masking_hides_spans_per_lead():
    enc = create_encoder("xresnet1d18", in_leads=4, base_channels=8)
    model = MaskedSignalModel(enc, mask_ratio=0.3, span=10, decoder_channels=8)
    x = _sines(3, 4, 95)  # 10 spans, the last one 5 samples long
    mask = model.random_masking(x, _gen())
    assert mask.shape == (3, 4, 95) and mask.dtype == torch.bool
    spans = model.patchify(mask.float())  # [B, L, S, span]
    assert spans.shape == (3, 4, 10, 10)
    span_masked = spans[..., 0] > 0
    assert (span_masked.sum(dim=2) == round(0.3 * 10)).all()
    full = spans[:, :, :9]  # complete spans are masked whole or not at all
    assert ((full.sum(-1) == 0) | (full.sum(-1) == 10)).all()
    loss, info = model(x, _gen())
    assert info["pred"].shape == x.shape and torch.isfinite(loss)
    masked_in = model.forward_encoder(x, mask)
    assert masked_in.shape[0] == 3 and masked_in.shape[1] == enc.feature_dim


def test_mask_ratio_and_encoder_checks():
    assert n_masked(30, 0.75) == 22 and n_masked(4, 0.01) == 1 and n_masked(4, 0.99) == 3
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="mask ratio"):
            n_masked(10, bad)
    with pytest.raises(TypeError, match="ViT1d"):
        MaskedAutoencoder(create_encoder("xresnet1d18", base_channels=8))
    with pytest.raises(ValueError, match="masking must be"):
        MaskedAutoencoder(_tiny_vit(), masking="diagonal")
    vit, cnn = _tiny_vit(), create_encoder("xresnet1d18", in_leads=3, base_channels=8)
    assert isinstance(build_objective({"name": "masked"}, vit), MaskedAutoencoder)
    assert isinstance(build_objective({"name": "masked"}, cnn), MaskedSignalModel)
    assert isinstance(build_objective({"name": "masked", "kind": "signal"}, vit), MaskedSignalModel)
    assert isinstance(build_objective({"name": "contrastive"}, cnn), ContrastiveModel)
    with pytest.raises(ValueError, match="unknown ssl objective 'byol'"):
        build_objective({"name": "byol"}, cnn)


# -- contrastive --------------------------------------------------------------------------
def test_nt_xent_by_hand():
    e = torch.eye(2)
    loss, acc = nt_xent(e, e, temperature=0.5)
    # row 0 sees similarities (self excluded) 0, 1, 0 with the positive at 1
    assert float(loss) == pytest.approx(math.log(2 + math.exp(2.0)) - 2.0)
    assert float(acc) == 1.0
    one = torch.tensor([[1.0, 2.0]])
    assert float(nt_xent(one, -one)[0]) == pytest.approx(0.0)  # the only candidate is the positive
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(e, e, 0.0)


# -- each objective learns on tiny data ------------------------------------------------------
def _fit(objective, x, steps=25, lr=3e-3):
    torch.manual_seed(0)
    opt = torch.optim.Adam(objective.parameters(), lr=lr)
    g = _gen(0)
    losses = []
    for _ in range(steps):
        loss, _ = objective(x, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("kind", ["mae", "signal", "contrastive"])
def test_loss_falls(kind):
    torch.manual_seed(0)
    if kind == "mae":
        obj = MaskedAutoencoder(_tiny_vit(), masking="time", mask_ratio=0.5, decoder_dim=16,
                                decoder_depth=1, decoder_heads=2)
        x = _sines(16, 3, 100)
    elif kind == "signal":
        obj = MaskedSignalModel(create_encoder("xresnet1d18", in_leads=3, base_channels=8),
                                mask_ratio=0.3, span=10, decoder_channels=16)
        x = _sines(16, 3, 128)
    else:
        aug = A.build_augment({"crop": {"seconds": 0.8}, "gaussian_noise": {"std": 0.05}})
        obj = ContrastiveModel(create_encoder("xresnet1d18", in_leads=3, base_channels=8), aug,
                               proj_dim=16, hidden_dim=32, temperature=0.2)
        x = _sines(16, 3, 128)
    losses = _fit(obj, x, steps=30, lr=1e-2 if kind == "signal" else 3e-3)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses
