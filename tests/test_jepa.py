"""Latent prediction (JEPA): masks by hand, the moving-average target, the loss on masked
positions only, every encoder, and ``ecgrisk-pretrain ssl=jepa`` handing its encoder over and
resuming with its target encoder."""

import math

import lightning as L
import pytest
import torch

from ecgrisk.config import compose
from ecgrisk.finetune.app import build_classifier
from ecgrisk.models import create_encoder
from ecgrisk.pretrain.app import train
from ecgrisk.pretrain.jepa import LatentPredictionModel
from ecgrisk.pretrain.module import PretrainModule
from ecgrisk.pretrain.objectives import build_objective
from ecgrisk.runs import logged_metrics

torch.set_num_threads(1)


def _jepa(span=20, ratio=0.5, momentum=0.9):
    torch.manual_seed(0)
    return LatentPredictionModel(create_encoder("xresnet1d18", in_leads=3, base_channels=8),
                                 mask_ratio=ratio, span=span, predictor_channels=16,
                                 momentum=momentum)


def test_config_builds_it_with_spans_in_seconds():
    encoder = create_encoder("xresnet1d18", in_leads=3, base_channels=8)
    model = build_objective({"name": "jepa", "mask_ratio": 0.6, "span_s": 0.3,
                             "predictor_channels": 8, "momentum": 0.99}, encoder, fs=100)
    assert isinstance(model, LatentPredictionModel) and model.encoder is encoder
    assert (model.span, model.mask_ratio, model.momentum) == (30, 0.6, 0.99)
    assert not any(p.requires_grad for p in model.target_encoder.parameters())
    for bad, match in [({"mask_ratio": 1.0}, "mask ratio"), ({"momentum": 1.0}, "momentum")]:
        with pytest.raises(ValueError, match=match):
            build_objective({"name": "jepa", **bad}, encoder)


def test_masks_cover_whole_spans_across_every_lead():
    model = _jepa(span=20, ratio=0.5)
    x = torch.randn(4, 3, 210)  # 11 spans, the last one 10 samples long
    mask = model.random_masking(x, torch.Generator().manual_seed(1))
    assert mask.shape == (4, 210)
    spans = mask[:, :200].reshape(4, 10, 20)
    tail = mask[:, 200:]
    assert (spans.all(-1) | ~spans.any(-1)).all()  # each span all masked or all kept
    assert (tail.all(-1) | ~tail.any(-1)).all()
    assert (spans[:, :, 0].sum(1) + tail[:, 0] == round(0.5 * 11)).all()


def test_feature_positions_follow_the_share_of_their_stretch_masked():
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 1, 1],     # positions of 2: 1, 0.5, 0, 1
                         [0, 0, 0, 0, 0, 1, 0, 0]], dtype=torch.bool)  # 0, 0, 0.5, 0
    got = LatentPredictionModel.feature_mask(mask, 4)
    # > 0.5 counts; a sample with none keeps its most masked position
    assert got.tolist() == [[True, False, False, True], [False, False, True, False]]


def test_the_encoder_sees_masked_samples_as_zero_and_the_target_sees_everything():
    model = _jepa()
    seen = {}
    for name in ("encoder", "target_encoder"):
        plain = getattr(model, name).forward_features
        getattr(model, name).forward_features = (
            lambda x, plain=plain, name=name: plain(seen.setdefault(name, x.clone())))
    x = torch.randn(2, 3, 200) + 5.0
    loss, info = model(x, torch.Generator().manual_seed(0))
    masked = seen["encoder"] == 0
    assert masked.any() and (masked.all(dim=1) == masked.any(dim=1)).all()  # whole time steps
    assert masked[:, 0].float().mean() == pytest.approx(0.5)  # 5 of 10 spans
    torch.testing.assert_close(seen["target_encoder"], x)
    assert info["pred"].shape == info["target"].shape and info["mask"].dtype == torch.bool


def test_loss_is_the_mse_against_layer_normalised_targets_at_masked_positions_only():
    model = _jepa()
    x = torch.randn(3, 3, 200)
    g = torch.Generator().manual_seed(2)
    loss, info = model(x, g)
    z = model.target_encoder.forward_features(x).detach()
    mean, var = z.mean(1, keepdim=True), z.var(1, unbiased=False, keepdim=True)
    target = (z - mean) / torch.sqrt(var + 1e-5)
    torch.testing.assert_close(info["target"], target, atol=1e-5, rtol=1e-5)
    err = (info["pred"] - target).pow(2).mean(1)
    m = info["mask"].float()
    assert loss.item() == pytest.approx(((err * m).sum() / m.sum()).item(), rel=1e-5)
    assert 0 < m.mean() < 1  # unmasked positions exist and are left out


def test_the_target_follows_the_encoder_by_a_momentum_rising_to_one():
    model = _jepa(momentum=0.9)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
        stats = dict(model.encoder.named_buffers())
        first = next(k for k in stats if k.endswith("running_mean"))
        stats[first].fill_(3.0)
    before = [t.clone() for t in model.target_encoder.parameters()]
    online = [s.clone() for s in model.encoder.parameters()]
    model.update_target(0.5)  # momentum 0.9 + 0.1 * 0.5 = 0.95
    for t, b, s in zip(model.target_encoder.parameters(), before, online, strict=True):
        torch.testing.assert_close(t, 0.95 * b + 0.05 * s)
    assert (dict(model.target_encoder.named_buffers())[first] == 3.0).all()  # buffers copied
    frozen = [t.clone() for t in model.target_encoder.parameters()]
    model.update_target(1.0)  # at the end of training the target stands still
    for t, f in zip(model.target_encoder.parameters(), frozen, strict=True):
        torch.testing.assert_close(t, f, rtol=0, atol=0)


def test_the_pretraining_loop_steps_the_target_with_the_share_of_training_done():
    model = _jepa()
    calls = []
    model.update_target = calls.append
    module = PretrainModule(model, lr=1e-3)
    x = torch.randn(64, 3, 200)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=16)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, loader)
    assert calls == pytest.approx([k / 8 for k in range(1, 9)])  # after each of 8 steps


def test_it_learns_and_the_targets_do_not_collapse():
    model = _jepa(span=20, momentum=0.99)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses, spreads = [], []
    for step in range(40):
        freq = 1 + 3 * torch.rand(16, 1, 1, generator=g)
        t = torch.arange(200)[None, None, :] / 100.0
        x = torch.sin(2 * math.pi * freq * t) * torch.linspace(0.5, 1.5, 3)[None, :, None]
        loss, info = model(x, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_target(step / 40)
        losses.append(loss.item())
        spreads.append(info["target_std"].item())
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5  # 1.03 -> 0.69 when written
    assert min(spreads[-5:]) > 0.05


@pytest.mark.parametrize("name,kwargs", [
    ("xresnet1d50", {"base_channels": 8}),
    ("inception1d", {"nb_filters": 4, "bottleneck_size": 4, "depth": 3}),
    ("vit1d", {"patch_size": 10, "max_patches": 20, "dim": 16, "depth": 1, "heads": 2}),
    ("hybrid", {"stem_channels": [8], "dim": 16, "depth": 1, "heads": 2}),
])
def test_every_encoder_trains_under_jepa(name, kwargs):
    encoder = create_encoder(name, in_leads=3, **kwargs)
    model = build_objective({"name": "jepa", "span_s": 0.2, "predictor_channels": 8}, encoder, fs=100)
    loss, info = model(torch.randn(4, 3, 200))
    assert torch.isfinite(loss) and info["pred"].shape[1] == encoder.feature_dim
    loss.backward()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.target_encoder.parameters())


class _StopAfterOneEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def test_pretrain_ssl_jepa_hands_over_its_encoder_and_resumes_with_its_target(tmp_path, ptbxl_root,
                                                                               monkeypatch):
    import ecgrisk.pretrain.app as pt

    tiny = ["model=xresnet1d18", "model.kwargs.base_channels=8"]

    def cfg(out, *extra):
        return compose("pretrain", [
            "ssl=jepa", "ssl.predictor_channels=8", *tiny, f"data.root={ptbxl_root}",
            f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / out}",
            "data.batch_size=16", "trainer.limit_train_batches=2",
            "trainer.enable_progress_bar=false", *extra])

    metrics = train(cfg("run", "trainer.max_epochs=2"))
    assert metrics["ssl/objective"] == "LatentPredictionModel" and math.isfinite(metrics["train/loss_end"])
    spread = logged_metrics(tmp_path / "run" / "logs")["train/target_std"].dropna()
    assert len(spread) == 2 and (spread > 0).all()  # one per epoch, drawn in curves.png
    path = tmp_path / "run" / "encoder.pt"
    saved = torch.load(path, weights_only=True)
    assert saved["meta"]["objective"] == "jepa"
    assert not any(k.startswith(("target_encoder", "predictor", "mask_embedding"))
                   for k in saved["state_dict"])
    model = build_classifier(compose("finetune", [*tiny, f"model.pretrained={path}"]).model, 5)
    for k, v in saved["state_dict"].items():
        torch.testing.assert_close(model.encoder.state_dict()[k], v, rtol=0, atol=0, msg=k)
    # a run stopped after its first epoch: its checkpoint holds the target encoder, apart
    # from the encoder it follows ...
    make = pt.make_trainer
    monkeypatch.setattr(pt, "make_trainer",
                        lambda cfg, out, cbs, *a, **k: make(cfg, out, cbs + [_StopAfterOneEpoch()], *a, **k))
    train(cfg("stopped", "trainer.max_epochs=2"))
    monkeypatch.setattr(pt, "make_trainer", make)
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["state_dict"]
    target = {k: v for k, v in state.items() if ".target_encoder." in k}
    assert target and any(not torch.equal(v, state[k.replace(".target_encoder.", ".encoder.")])
                          for k, v in target.items() if v.is_floating_point())
    # ... so, resumed, it ends where the uninterrupted run did
    train(cfg("resumed", "trainer.max_epochs=2", f"resume={last}"))
    resumed = torch.load(tmp_path / "resumed" / "encoder.pt", weights_only=True)["state_dict"]
    for k, v in saved["state_dict"].items():
        torch.testing.assert_close(resumed[k], v, msg=k)
