"""Contrastive predictive coding: InfoNCE by hand, causality, learning a predictable future,
every encoder, and ``ecgrisk-pretrain ssl=cpc`` handing its encoder to fine-tuning."""

import math

import pytest
import torch
from torch.nn import functional as F

from ecgrisk.config import compose
from ecgrisk.finetune.app import build_classifier
from ecgrisk.models import create_encoder
from ecgrisk.pretrain.app import train
from ecgrisk.pretrain.cpc import CPCModel, info_nce
from ecgrisk.pretrain.objectives import build_objective

torch.set_num_threads(1)


def _cnn(leads=3):
    return create_encoder("xresnet1d18", in_leads=leads, base_channels=8)


def _cpc(window=20, steps=3, leads=3, dim=16):
    torch.manual_seed(0)
    return CPCModel(_cnn(leads), window=window, steps=steps, proj_dim=dim, context_dim=dim)


def _sines(b=8, leads=3, t=200, generator=None):
    """One sinusoid per recording, 1-4 Hz at 100 Hz, random phase, lead-scaled: a future that
    the past predicts."""
    freq = 1 + 3 * torch.rand(b, 1, 1, generator=generator)
    phase = 2 * math.pi * torch.rand(b, 1, 1, generator=generator)
    time = torch.arange(t)[None, None, :] / 100.0
    gain = torch.linspace(0.5, 1.5, leads)[None, :, None]
    return gain * torch.sin(2 * math.pi * freq * time + phase)


def test_info_nce_by_hand():
    pred = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    # scores pred @ target.T: row 0 -> [1, 0] (positive 1), row 1 -> [2, 2] (positive 2, a tie)
    row0 = -math.log(math.exp(1) / (math.exp(1) + math.exp(0)))
    row1 = -math.log(0.5)
    loss, acc = info_nce(pred, target)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert acc.item() == 0.5  # row 0 picks its positive; row 1's tie goes to the first candidate
    with pytest.raises(ValueError, match="one shape"):
        info_nce(pred, target[:1])


def test_loss_is_the_mean_over_every_valid_t_and_k_with_the_batch_at_that_offset_as_candidates():
    model = _cpc(steps=3)
    z, c = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    terms, hits = [], []
    for k in range(1, 4):
        candidates = z[:, k:].reshape(-1, 16)  # every recording's z_{k..T'-1}
        for b in range(2):
            for t in range(5 - k):
                scores = candidates @ model.predictors[k - 1](c[b, t])
                positive = b * (5 - k) + t
                terms.append(-F.log_softmax(scores, dim=0)[positive])
                hits.append(float(scores.argmax() == positive))
    assert len(terms) == 2 * (4 + 3 + 2)
    loss, acc = model.forward_loss(z, c)
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    assert acc.item() == pytest.approx(sum(hits) / len(hits))


def test_context_at_t_ignores_later_latents():
    model = _cpc()
    z = torch.randn(2, 8, 16)
    later = z.clone()
    later[:, 4:] = torch.randn(2, 4, 16)
    c, c_later = model.forward_context(z), model.forward_context(later)
    torch.testing.assert_close(c[:, :4], c_later[:, :4], rtol=0, atol=0)
    assert not torch.allclose(c[:, 4:], c_later[:, 4:])


def test_latents_and_context_ignore_the_input_after_their_window():
    # eval mode: BatchNorm uses running statistics, so windows are encoded independently
    model = _cpc(window=20).eval()
    x = _sines(4, t=200)
    later = x.clone()
    later[..., 80:] = torch.randn(4, 3, 120)  # windows 4-9 changed, windows 0-3 kept
    with torch.no_grad():
        z, z_later = model.forward_encoder(x), model.forward_encoder(later)
        c, c_later = model.forward_context(z), model.forward_context(z_later)
    torch.testing.assert_close(z[:, :4], z_later[:, :4], rtol=0, atol=0)
    torch.testing.assert_close(c[:, :4], c_later[:, :4], rtol=0, atol=0)
    assert not torch.allclose(z[:, 4:], z_later[:, 4:])


def test_learns_a_predictable_future_beyond_chance():
    model = _cpc(window=20, steps=3)  # 200 samples -> 10 latent steps
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses, accs = [], []
    for _ in range(50):
        loss, info = model(_sines(8, generator=g))  # a fresh batch each step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        accs.append(info["accuracy"].item())
    counts = [8 * (10 - k) for k in (1, 2, 3)]  # candidates (= predictions) at each offset
    chance_loss = sum(n * math.log(n) for n in counts) / sum(counts)
    chance_acc = len(counts) / sum(counts)
    assert losses[0] == pytest.approx(chance_loss, abs=0.1)
    assert sum(losses[-5:]) / 5 < chance_loss - 0.8
    assert sum(accs[-5:]) / 5 > 4 * chance_acc > sum(accs[:5]) / 5


@pytest.mark.parametrize("name,kwargs", [
    ("xresnet1d18", {"base_channels": 8}),
    ("xresnet1d50", {"base_channels": 8}),
    ("inception1d", {"nb_filters": 4, "bottleneck_size": 4, "depth": 3}),
    ("vit1d", {"patch_size": 10, "max_patches": 8, "dim": 16, "depth": 1, "heads": 2}),
    ("hybrid", {"stem_channels": [8], "dim": 16, "depth": 1, "heads": 2}),
])
def test_every_encoder_trains_under_cpc(name, kwargs):
    encoder = create_encoder(name, in_leads=3, **kwargs)
    model = build_objective({"name": "cpc", "window_s": 0.4, "steps": 2, "proj_dim": 8,
                             "context_dim": 8}, encoder, fs=100)
    assert isinstance(model, CPCModel) and model.window == 40 and model.encoder is encoder
    loss, info = model(_sines(4, t=200))
    assert info["z"].shape == (4, 5, 8) and info["c"].shape == (4, 5, 8)
    assert torch.isfinite(loss) and 0 <= info["accuracy"].item() <= 1
    loss.backward()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


def test_a_segment_too_short_for_the_offsets_is_named():
    with pytest.raises(ValueError, match=r"ssl.segment_s=2.5 is too short.*segment_s >= 5"):
        build_objective({"name": "cpc", "segment_s": 2.5, "window_s": 1.0, "steps": 4}, _cnn())
    model = build_objective({"name": "cpc", "segment_s": None, "window_s": 1.0, "steps": 4}, _cnn())
    with pytest.raises(ValueError, match=r"250 samples holds 2 windows.*ssl.segment_s"):
        model(torch.randn(2, 3, 250))


def test_pretrain_ssl_cpc_writes_an_encoder_that_finetune_loads(tmp_path, ptbxl_root):
    tiny = ["model=xresnet1d18", "model.kwargs.base_channels=8"]
    cfg = compose("pretrain", [
        "ssl=cpc", "ssl.proj_dim=16", "ssl.context_dim=16", *tiny, f"data.root={ptbxl_root}",
        f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'run'}",
        "data.batch_size=16", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false"])
    assert cfg.ssl.segment_s == 10.0 and cfg.ssl.steps < cfg.ssl.segment_s / cfg.ssl.window_s
    metrics = train(cfg)
    assert metrics["ssl/objective"] == "CPCModel" and math.isfinite(metrics["train/loss_end"])
    path = tmp_path / "run" / "encoder.pt"
    saved = torch.load(path, weights_only=True)
    assert saved["meta"]["objective"] == "cpc"
    assert not any(k.startswith(("project", "context", "predictors")) for k in saved["state_dict"])
    model = build_classifier(compose("finetune", [*tiny, f"model.pretrained={path}"]).model, 5)
    for k, v in saved["state_dict"].items():
        torch.testing.assert_close(model.encoder.state_dict()[k], v, rtol=0, atol=0, msg=k)
