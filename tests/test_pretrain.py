"""ecgrisk-pretrain end to end on tiny data: run directory, pooled sources, handoff to fine-tuning."""

import json
import sys

import lightning as L
import numpy as np
import pytest
import torch
import wfdb
from torch.utils.data import RandomSampler, WeightedRandomSampler

from ecgrisk.bundle_files import BundleError
from ecgrisk.config import compose
from ecgrisk.finetune.app import build_classifier
from ecgrisk.pretrain.app import build_sources, pretraining_datamodule, source_weights, train

TINY = ["model=xresnet1d18", "model.kwargs.base_channels=8", "data.batch_size=32",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache folder for the module: entries are keyed by content, so runs share them."""
    return tmp_path_factory.mktemp("cache")


def _cfg(tmp_path, ptbxl_root, cache, *extra, out="run"):
    return compose("pretrain", [f"data.root={ptbxl_root}", f"data.cache_dir={cache}",
                                f"output_dir={tmp_path / out}", *TINY, *extra])


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory, ptbxl_root, cache):
    tmp = tmp_path_factory.mktemp("pt")
    cfg = _cfg(tmp, ptbxl_root, cache, "ssl=masked", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
               "data.train_folds=[1,2,3,4,5,6,7,8]", "data.val_folds=[9]",
               "trainer.limit_val_batches=2")
    return tmp, train(cfg)


def test_run_directory_holds_everything(masked_run, ptbxl_split_sizes):
    tmp, metrics = masked_run
    run = tmp / "run"
    for f in (".hydra/config.yaml", "metrics.json", "encoder.pt", "curves.png",
              "checkpoints/last.ckpt", "logs/metrics.csv"):
        assert (run / f).is_file(), f
    saved = json.loads((run / "metrics.json").read_text())
    for k in ("train/loss_start", "train/loss_end", "train/samples_per_s", "train/wall_s",
              "val/loss_end"):
        assert isinstance(saved[k], float) and np.isfinite(saved[k]), k
    assert saved["train/epochs"] == 2 and len(saved["train/loss_per_epoch"]) == 2
    assert saved["train/loss_start"] == saved["train/loss_per_epoch"][0]
    # every record (task `all`) of folds 1-8 and of fold 9 (353 and 81 in the shared subset)
    sizes = ptbxl_split_sizes["all"]
    assert saved["train/records"] == sizes["train"] and saved["val/records"] == sizes["val"]
    assert saved["ssl/objective"] == "MaskedSignalModel"
    raw = torch.load(run / "encoder.pt", weights_only=True)
    assert raw["meta"]["kind"] == "encoder" and raw["meta"]["objective"] == "masked"
    assert raw["meta"]["spec"] == {"name": "xresnet1d18", "base_channels": 8, "kernel_size": 5,
                                   "kernel_size_stem": 5, "pooling": "last"}
    assert raw["meta"]["train_folds"] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_finetune_loads_exactly_the_pretrained_weights(masked_run):
    tmp, _ = masked_run
    path = tmp / "run" / "encoder.pt"
    saved = torch.load(path, weights_only=True)["state_dict"]
    cfg = compose("finetune", ["model=xresnet1d18", "model.kwargs.base_channels=8",
                               f"model.pretrained={path}"])
    enc = build_classifier(cfg.model, 5).encoder.state_dict()
    assert set(enc) == set(saved)
    for k, v in saved.items():
        torch.testing.assert_close(enc[k], v, rtol=0, atol=0, msg=k)
    fresh = build_classifier(compose("finetune", ["model=xresnet1d18", "model.kwargs.base_channels=8"]).model, 5)
    assert any(not torch.equal(fresh.encoder.state_dict()[k], v) for k, v in saved.items())


@pytest.mark.parametrize("overrides,match", [
    (["model=xresnet1d18", "model.kwargs.base_channels=16"], "shape mismatches"),
    (["model=vit1d", "model.kwargs.dim=16", "model.kwargs.depth=1", "model.kwargs.heads=2"],
     "holds a 'xresnet1d18' encoder"),
])
def test_mismatched_encoder_is_a_clear_error(masked_run, overrides, match):
    path = masked_run[0] / "run" / "encoder.pt"
    cfg = compose("finetune", [*overrides, f"model.pretrained={path}"])
    with pytest.raises(BundleError, match=match):
        build_classifier(cfg.model, 5)


def test_an_encoder_pretrained_on_other_input_is_refused_before_any_work(masked_run, tmp_path):
    # found in review: an encoder pretrained at another rate or filtering was fine-tuned on
    # this run's input without a word
    from ecgrisk.finetune.app import train as finetune

    path = masked_run[0] / "run" / "encoder.pt"
    cfg = compose("finetune", ["model=xresnet1d18", "model.kwargs.base_channels=8",
                               f"model.pretrained={path}", "data.preprocessing.bandpass=[0.5,40]",
                               f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match="was pretrained on input .* but data.preprocessing is"):
        finetune(cfg)
    assert not (tmp_path / "run").exists()


LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def _write_folder(root, n=6, fs=100, seconds=4):
    root.mkdir()
    rng = np.random.default_rng(0)
    t = np.arange(fs * seconds) / fs
    for i in range(n):
        sig = 0.5 * np.sin(2 * np.pi * (1 + i / 5) * t)[:, None] + 0.05 * rng.standard_normal((len(t), 12))
        wfdb.wrsamp(f"rec{i}", fs=fs, units=["mV"] * 12, sig_name=LEADS,
                    p_signal=sig, fmt=["16"] * 12, write_dir=str(root))
    return root


def test_vit_mae_fast_dev_run_on_pooled_sources_with_probe(tmp_path, ptbxl_root, cache):
    folder = _write_folder(tmp_path / "holter")
    sources = f"data.sources=[{{source: ptbxl, root: '{ptbxl_root}'}}, {{source: folder, root: '{folder}'}}]"
    cfg = compose("pretrain", [
        sources, f"data.cache_dir={cache}", f"output_dir={tmp_path / 'vit'}",
        "model=vit1d", "model.kwargs.dim=16", "model.kwargs.depth=1", "model.kwargs.heads=2",
        "ssl=masked", "ssl.masking=lead", "ssl.decoder.dim=8", "ssl.decoder.depth=1",
        "ssl.decoder.heads=2", "data.batch_size=16", "trainer.enable_progress_bar=false",
        "trainer.fast_dev_run=true", "probe.every_n_epochs=1",
        f"+probe.data={{source: ptbxl, root: '{ptbxl_root}'}}"])
    recs = build_sources(cfg.data)
    assert [r.name for r in recs] == ["ptbxl", "folder"] and all(r.labels is None for r in recs)
    metrics = train(cfg)
    run = tmp_path / "vit"
    assert metrics["ssl/objective"] == "MaskedAutoencoder"
    assert metrics["train/sources"] == ["ptbxl", "folder"]
    per_source = metrics["train/records_per_source"]
    assert len(per_source) == 2 and min(per_source) > 0 and sum(per_source) == metrics["train/records"]
    assert metrics["train/epochs"] == 1 and np.isfinite(metrics["train/loss_end"])
    assert 0.0 <= metrics["probe/val_macro_auroc"] <= 1.0
    # the encoder hands off to fine-tuning: the same architecture loads its weights
    ft = compose("finetune", ["model=vit1d", "model.kwargs.dim=16", "model.kwargs.depth=1",
                              "model.kwargs.heads=2", f"model.pretrained={run / 'encoder.pt'}"])
    enc = build_classifier(ft.model, 5).encoder
    assert enc.spec["name"] == "vit1d" and enc.embed(torch.zeros(2, 12, 250)).shape == (2, 16)


def _pooled(tmp_path, cache, weights, sizes=(6, 12)):
    """Two folder sources of ``sizes`` records (4 s each) with ``weights``, set up."""
    entries = ", ".join(f"{{source: folder, root: '{_write_folder(tmp_path / f'src{i}', n)}', weight: {w}}}"
                        for i, (n, w) in enumerate(zip(sizes, weights, strict=True)))
    cfg = compose("pretrain", [f"data.sources=[{entries}]", f"data.cache_dir={cache}",
                               "data.batch_size=4", "ssl.segment_s=2.5"])
    dm = pretraining_datamodule(cfg, progress=False)
    dm.setup()
    return cfg, dm


def test_source_weights_set_each_records_draw_rate(tmp_path, cache):
    cfg, dm = _pooled(tmp_path, cache, weights=(1, 3))
    assert source_weights(cfg.data) == [1.0, 3.0] and dm.source_weights == [1.0, 3.0]
    assert [r.name for r in build_sources(cfg.data)] == ["folder", "folder"]  # weight is no source field
    n = [len(i) for i in dm.split["train"]]  # the stable hash folds 1-9 of each folder
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, WeightedRandomSampler) and loader.sampler.replacement
    assert loader.sampler.num_samples == len(loader.dataset) == sum(n)  # epoch length unchanged
    torch.manual_seed(0)
    draws = torch.tensor([i for _ in range(400) for i in loader.sampler])
    share = (draws >= n[0]).float().mean().item()  # indices past the first source's records
    assert share == pytest.approx(3 * n[1] / (n[0] + 3 * n[1]), abs=0.02)


def test_equal_source_weights_keep_plain_shuffling(tmp_path, cache):
    _, dm = _pooled(tmp_path, cache, weights=(1, 1))
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, RandomSampler) and not loader.sampler.replacement
    assert sorted(loader.sampler) == list(range(len(loader.dataset)))  # every record once


def test_bad_source_weight_is_named(tmp_path, cache):
    for bad in (0, -1, "'x'"):
        cfg = compose("pretrain", [f"data.sources=[{{source: folder, root: /x}}, "
                                   f"{{source: folder, root: /y, weight: {bad}}}]"])
        with pytest.raises(ValueError, match=r"data.sources\[1\].weight must be a number > 0"):
            source_weights(cfg.data)


def test_contrastive_one_epoch(tmp_path, ptbxl_root, ptbxl_split_sizes, cache):
    cfg = _cfg(tmp_path, ptbxl_root, cache, "ssl=contrastive", "ssl.proj_dim=16", "ssl.hidden_dim=16",
               "trainer.max_epochs=1", "trainer.limit_train_batches=2")
    metrics = train(cfg)
    folds_1_to_9 = ptbxl_split_sizes["all"]["train"] + ptbxl_split_sizes["all"]["val"]  # 434 shared
    assert metrics["ssl/objective"] == "ContrastiveModel"
    assert metrics["train/records"] == folds_1_to_9
    assert metrics["train/loss_start"] == metrics["train/loss_end"] > 0
    assert torch.load(tmp_path / "run" / "encoder.pt", weights_only=True)["meta"]["objective"] == "contrastive"


def test_bad_config_is_named(tmp_path, ptbxl_root, cache):
    with pytest.raises(ValueError, match="data.sources must be a list"):
        build_sources(_cfg(tmp_path, ptbxl_root, cache, "data.sources=ptbxl").data)
    with pytest.raises(ValueError, match="probe.data is needed"):
        train(_cfg(tmp_path, ptbxl_root, cache, "probe.every_n_epochs=1", "trainer.fast_dev_run=true",
                   f"data.sources=[{{source: ptbxl, root: '{ptbxl_root}'}}]"))


def test_module_entry_point_composes_the_config(monkeypatch, capsys):
    import ecgrisk.pretrain.app as app

    monkeypatch.setattr(sys, "argv", ["ecgrisk-pretrain", "ssl=contrastive", "model=vit1d", "--cfg", "job"])
    app.main()  # what `python -m ecgrisk.pretrain` and the console script run
    printed = capsys.readouterr().out
    assert "name: contrastive" in printed and "name: vit1d" in printed
    assert compose("pretrain").ssl.name == "masked"  # Hydra state is left clean for later composes
    # and for later runs: one composed in this process must not record this command as its own
    from hydra.core.hydra_config import HydraConfig

    assert not HydraConfig.initialized()


class _StopAfterTwoEpochs(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            trainer.should_stop = True


def test_resumed_pretraining_keeps_its_history(tmp_path, ptbxl_root, cache, monkeypatch):
    import ecgrisk.pretrain.app as pt

    make = pt.make_trainer
    monkeypatch.setattr(pt, "make_trainer",
                        lambda cfg, out, cbs, *a, **k: make(cfg, out, cbs + [_StopAfterTwoEpochs()], *a, **k))
    common = ["ssl=masked", "trainer.max_epochs=3", "trainer.limit_train_batches=2"]
    first = train(_cfg(tmp_path, ptbxl_root, cache, *common, out="first"))
    assert first["train/epochs"] == 2
    monkeypatch.setattr(pt, "make_trainer", make)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = train(_cfg(tmp_path, ptbxl_root, cache, *common, f"resume={last}", out="resumed"))
    assert resumed["train/epochs"] == 3
    # the first part's fitting seconds up to its checkpoint, then this part's on top (not
    # "> first's wall_s": the first part's teardown after its checkpoint can outlast this
    # part's one short epoch on a loaded machine)
    assert 0 < resumed["train/resumed_wall_s"] <= first["train/wall_s"]
    assert resumed["train/wall_s"] > resumed["train/resumed_wall_s"]
    assert resumed["train/loss_start"] == pytest.approx(first["train/loss_start"])
    meta = torch.load(tmp_path / "resumed" / "encoder.pt", weights_only=True)["meta"]
    assert meta["epochs"] == 3
    # more epochs than the interrupted run planned: the one-cycle schedule cannot stretch
    with pytest.raises(ValueError, match="one-cycle schedule"):
        train(_cfg(tmp_path, ptbxl_root, cache, "ssl=masked", "trainer.max_epochs=5",
                   "trainer.limit_train_batches=2", f"resume={last}", out="longer"))


def test_a_command_line_run_into_output_dir_keeps_its_overrides(tmp_path, ptbxl_root, cache):
    import subprocess

    import yaml

    out = tmp_path / "run"
    args = [f"data.root={ptbxl_root}", f"data.cache_dir={cache}", f"output_dir={out}", *TINY,
            "ssl=masked", "trainer.fast_dev_run=true", f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.run([sys.executable, "-m", "ecgrisk.pretrain", *args], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Hydra's own settings (hydra.run.dir) are not part of the task's overrides
    assert yaml.safe_load((out / ".hydra" / "overrides.yaml").read_text()) == args[:-1]


def test_data_folder_pretrains_on_the_folder_data_root_names(tmp_path, cache):
    from ecgrisk.data.folder import ECGFolder
    from ecgrisk.data.splits import stable_folds

    folder = _write_folder(tmp_path / "clinic", n=12)
    cfg = compose("pretrain", ["data=folder", f"data.root={folder}", f"data.cache_dir={cache}",
                               f"output_dir={tmp_path / 'run'}", *TINY, "trainer.max_epochs=1"])
    metrics = train(cfg)
    folds = stable_folds(ECGFolder(folder).record_ids)
    assert metrics["train/sources"] == ["folder"]
    assert metrics["train/records"] == int((folds <= 9).sum()) > 0  # fold 10 is never read
    assert (tmp_path / "run" / "encoder.pt").is_file()


def test_a_folder_without_data_root_or_labels_is_a_clear_error(tmp_path, cache):
    from ecgrisk.data.datamodule import build_datamodule

    with pytest.raises(ValueError, match=r"data.root is not set: source 'folder'"):
        build_sources(compose("pretrain", ["data=folder"]).data)
    folder = _write_folder(tmp_path / "clinic")
    with pytest.raises(ValueError, match=r"data.source=folder .* has no labels"):
        build_datamodule(compose("finetune", ["data=folder", f"data.root={folder}"]).data, seed=0)


@pytest.mark.parametrize("model,masking,said", [
    ("xresnet1d18", "time", "ssl.masking=time chooses what the patch MAE of vit1d hides"),
    ("vit1d", "tme", "ssl.masking must be one of random, time, lead, got 'tme'"),
    ("xresnet1d18", "tme", "ssl.masking must be one of random, time, lead, got 'tme'"),
])
def test_a_masking_the_objective_would_not_use_is_refused(model, masking, said):
    # found in a walkthrough: with xresnet1d18, ssl.masking=tme trained with exit 0
    from ecgrisk.models import create_encoder
    from ecgrisk.pretrain.objectives import build_objective

    cfg = compose("pretrain", [f"model={model}", "ssl=masked", f"ssl.masking={masking}"])
    encoder = create_encoder(cfg.model.name, **cfg.model.kwargs)
    with pytest.raises(ValueError, match=said):
        build_objective(cfg.ssl, encoder)


def test_a_challenge_source_leaves_out_the_ptbxl_records_it_holds(shared):
    # found in review: the Challenge sample's HR06000 and HR06004 are PTB-XL fold-10 records,
    # read with folds of their own, so pooled pretraining read the test fold
    cfg = compose("pretrain", [f"data.root={shared / 'ptb-xl'}",
                               f"+data.sources=[{{source: challenge, root: {shared / 'cinc2021-sample'}}}]"])
    (challenge,) = build_sources(cfg.data)
    ids = [rid.rsplit("/", 1)[-1] for rid in challenge.record_ids]
    assert len(ids) == 40 and not any(i.startswith("HR") for i in ids)
    assert len(challenge.paths) == len(ids)
