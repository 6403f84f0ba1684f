"""Which ECGs refinement asks about, guards on and reports on (the ``pool`` config group).

``pool.kind``:

- ``val_half`` (default): ask about a seeded half of the validation fold, guard on the other
  half, report on the test fold (absent: nothing beyond the guard half).
- ``val``: ask and guard on the whole validation fold (the guard then checks ECGs the loop saw).
- ``folds``: the records of ``pool.folds`` the base was never trained on (the bundle lists its
  training records; a bundle without that list is taken to have seen all of the folds 1-8);
  guard on a seeded half of the validation fold, report on the test fold or, where it is
  absent, on the other half.
- ``folder``: the clinic's own ECG files, ``pool.root`` being anything ``ecgrisk score`` takes
  (a folder, glob or manifest ``.csv``), with the ids the review app gives them, so judgements
  made there on the same folder (``feedback=store``) are about this pool. No labels: a
  simulated cardiologist cannot answer for it. Guard and report as ``folds``.

The pool's window embeddings are computed once by the frozen base encoder and cached on disk
(``<data.cache_dir>/embeddings``), keyed by the bundle's digest and the records' windows, so a
sweep over arms embeds a large pool once.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgrisk.data.splits import TRAIN_FOLDS, record_folds
from ecgrisk.files import atomic_path
from ecgrisk.refine.windows import WindowSet, embed_windows

log = logging.getLogger(__name__)

KINDS = ("val_half", "val", "folds", "folder")


@dataclass
class Sets:
    """Where the loop asks (``pool``), what the guard checks (``guard``) and what is reported
    (``report``: None where there is nothing beyond the guard set); ``report_split`` names it."""

    pool: WindowSet
    guard: WindowSet
    report: WindowSet | None
    report_split: str = "test fold"
    own: WindowSet | None = None  # the base's own training records, for replay


def _halves(ws: WindowSet, seed: int) -> tuple[WindowSet, WindowSet]:
    if len(ws) < 4:
        raise ValueError(f"splitting the validation fold in halves needs at least 4 records, "
                         f"got {len(ws)}")
    order = np.random.default_rng(seed).permutation(len(ws))
    half = len(ws) // 2
    return ws.subset(np.sort(order[:half])), ws.subset(np.sort(order[half:]))


_WHAT = {"own": "the base's training ECGs", "folds": "the pool's ECGs", "folder": "the folder's ECGs",
         "val": "the validation ECGs", "test": "the test ECGs"}


class Embedder:
    """Embeds windows with the frozen base model, through an on-disk cache.

    Parameters
    ----------
    bundle
        The base :class:`~ecgrisk.bundle.Bundle`.
    cache_dir
        Folder of the cache (None: no cache).
    batch_size
        Windows per forward pass.
    keep_inputs
        Keep the window signals too (``refine.train=all``); such sets are not cached.
    progress
        A progress bar while windows are embedded.
    """

    def __init__(self, bundle: Any, cache_dir: str | Path | None, batch_size: int = 256,
                 keep_inputs: bool = False, progress: bool = False):
        self.model, self.batch_size, self.keep_inputs = bundle.model, batch_size, keep_inputs
        self.progress = progress
        self.cache_dir = None if cache_dir is None or keep_inputs else Path(cache_dir) / "embeddings"
        self.digest = bundle.digest()

    def __call__(self, dataset: Any, labels: np.ndarray, record_ids: list[str],
                 tag: str) -> WindowSet:
        """The :class:`WindowSet` of a :class:`~ecgrisk.data.windows.WindowDataset`;
        ``tag`` names what the windows are (cache identity beyond the record ids)."""
        path = None
        if self.cache_dir is not None:
            h = hashlib.sha256(f"{self.digest}|{tag}|{len(dataset)}".encode())
            h.update("\n".join(record_ids).encode())  # labels are not features: not keyed
            path = self.cache_dir / f"{h.hexdigest()[:32]}.pt"
            if path.is_file():
                d = torch.load(path, map_location="cpu", weights_only=True)
                log.info("pool embeddings from the cache %s", path)
                return WindowSet(list(record_ids), np.asarray(labels), d["positions"].numpy(),
                                 d["embeddings"])
        ws = embed_windows(self.model, dataset, labels, record_ids, self.batch_size,
                           self.keep_inputs,
                           f"embedding {_WHAT.get(tag.split(':')[0], 'ECGs')}" if self.progress else None)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                torch.save({"positions": torch.from_numpy(ws.positions),
                            "embeddings": ws.embeddings}, tmp)
        return ws


def _fold_pool(bundle: Any, dm: Any, folds: list[int], embed: Embedder) -> WindowSet:
    """Records of ``folds`` in the first source that the base was not trained on."""
    cache = dm.caches[0]
    folds_of = record_folds(cache.folds, cache.record_ids)  # as the DataModule splits them
    in_folds = np.flatnonzero(np.isin(folds_of, folds))
    trained = bundle.extra.get("train_records")
    if trained is None:
        trained_folds = set(TRAIN_FOLDS) & set(folds)
        log.warning("the base bundle does not list its training records: every record of "
                    "folds %s is taken as seen in training", sorted(trained_folds))
        keep = in_folds[~np.isin(folds_of[in_folds], list(trained_folds))]
    else:
        seen = set(map(str, trained))
        keep = np.asarray([i for i in in_folds if cache.record_ids[i] not in seen], dtype=np.int64)
    if len(keep) == 0:
        raise ValueError(f"pool=folds: no record of folds {list(folds)} is left that the base "
                         f"({bundle.name}@{bundle.version}) was not trained on; fine-tune it on part "
                         f"of the labels (data.train_fraction=0.05, as the scarce-labels benchmark "
                         f"does), or ask about another pool (pool=val_half, pool=folder pool.root=DIR)")
    overlap = set(folds) & set(dm.folds["val"])
    if overlap:
        raise ValueError(f"pool.folds {list(folds)} overlap the validation folds {sorted(overlap)}, "
                         "which guard and report")
    overlap = set(folds) & set(dm.folds["test"])
    if overlap:  # found in review: only the guard's folds were protected
        raise ValueError(f"pool.folds {list(folds)} overlap the test folds {sorted(overlap)}, on "
                         "which the refined model is reported")
    log.info("pool: %d records of folds %s the base was not trained on", len(keep), list(folds))
    return _embed_rows(dm, keep, embed, "folds")


def _embed_rows(dm: Any, idx: np.ndarray, embed: Embedder, tag: str,
                labels: np.ndarray | None = None) -> WindowSet:
    """Rows ``idx`` of the data's first cache, embedded with ``labels`` (default: the data's)."""
    from ecgrisk.data.windows import WindowDataset

    cache = dm.caches[0]
    ds = WindowDataset(cache, idx, dm.window, dm.stride, dm.scaler)
    return embed(ds, cache.labels[idx] if labels is None else labels,
                 [cache.record_ids[i] for i in idx], f"{tag}:{cache.path}")


def check_pool_root(pool) -> None:
    """Refuse ``pool=folder`` without a ``pool.root`` that names something, before any data
    loads (said as ``pool.root``, not as scoring's INPUT)."""
    from omegaconf import OmegaConf

    from ecgrisk.io.inputs import GLOB_CHARS, names_something

    if OmegaConf.is_missing(pool, "root") or not pool.root:
        raise ValueError("pool=folder needs pool.root=PATH: ECG files, a folder, a glob or a "
                         "manifest, as `ecgrisk score` takes")
    root = str(pool.root)
    if not GLOB_CHARS & set(root) and not names_something(Path(root).expanduser()):
        raise FileNotFoundError(f"pool.root={root}: no such file, folder or record")


def _folder_pool(bundle: Any, root: str, embed: Embedder, num_classes: int) -> WindowSet:
    """The ECG files under ``root`` (anything ``ecgrisk score`` takes), read and prepared as
    scoring does; unreadable files are logged and left out."""
    from torch.utils.data import Dataset

    from ecgrisk.input_spec import InputSpec
    from ecgrisk.io import read_ecg
    from ecgrisk.io.inputs import collect_records

    spec = InputSpec.from_bundle(bundle)
    ids, prepared, failed = [], [], []
    for rec, path in collect_records([str(root)]):
        try:
            ecg = read_ecg(path)
            prepared.append(spec.prepare(ecg.signal, ecg.fs))
            ids.append(rec)
        except Exception as e:  # one bad file must not stop the pool: it is left out
            failed.append(f"{path}: {type(e).__name__}: {e}")
    for line in failed:
        log.warning("pool=folder: left out %s", line)
    if not prepared:
        raise ValueError(f"pool.root={root}: none of its {len(failed)} ECG files could be read")
    windows, positions = spec.windows(prepared)

    class _Windows(Dataset):
        def __init__(self):
            self.positions = positions

        def __len__(self) -> int:
            return len(windows)

        def __getitem__(self, k: int):
            return torch.from_numpy(windows[k]), torch.zeros(0), k

    log.info("pool: %d ECG files under %s (%d left out)", len(ids), root, len(failed))
    labels = np.zeros((len(ids), num_classes), dtype=np.uint8)  # unknown: store feedback only
    return embed(_Windows(), labels, ids, f"folder:{Path(root).resolve()}")


def prepare_sets(bundle: Any, dm: Any, pool: Any, seed: int = 0, batch_size: int = 256,
                 keep_inputs: bool = False, cache_dir: str | Path | None = None,
                 own: bool = False, progress: bool = False) -> Sets:
    """Embed the pool, guard and report sets a ``pool`` config node describes.

    Parameters
    ----------
    bundle
        The base bundle (its frozen model embeds every window).
    dm
        A set-up :class:`~ecgrisk.data.datamodule.ECGDataModule` with the bundle's scaler.
    pool
        The ``pool`` node: ``kind`` (:data:`KINDS`), ``folds`` or ``root``.
    seed
        Seeds the halving of the validation fold.
    cache_dir
        Embedding cache folder (None: none).
    own
        Embed the base's own training records too (:attr:`Sets.own`, for ``refine.replay``),
        with the labels the base learned them under.
    progress
        Progress bars while the sets are embedded.
    """
    kind = pool.kind if hasattr(pool, "kind") else pool
    if kind not in KINDS:
        raise ValueError(f"pool.kind must be one of {KINDS}, got {kind!r}")
    embed = Embedder(bundle, cache_dir, batch_size, keep_inputs, progress)

    def split(name: str) -> WindowSet:
        return embed(dm.eval_dataset(name), dm.labels(name), dm.record_ids(name),
                     f"{name}:{dm.caches[0].path}")

    has_test = len(dm.record_ids("test")) > 0
    val = split("val")
    test = split("test") if has_test else None
    if kind == "val":
        sets = Sets(val, val, test)
    elif kind == "val_half":
        if test is None:
            log.warning("the test fold is absent: refinement reports the guard half of the "
                        "validation fold only")
        sets = Sets(*_halves(val, seed), test)
    else:
        guard, other = _halves(val, seed)
        if kind == "folds":
            asked = _fold_pool(bundle, dm, list(pool.folds), embed)
        else:
            if not pool.get("root"):
                raise ValueError("pool=folder needs pool.root=DIR (a folder, glob or manifest "
                                 ".csv)")
            asked = _folder_pool(bundle, pool.root, embed, len(dm.classes))
        if test is not None:
            sets = Sets(asked, guard, test)
        else:
            log.warning("the test fold is absent: refinement reports the other half of the "
                        "validation fold (%d records)", len(other))
            sets = Sets(asked, guard, other, "validation half")
    if own:
        sets.own = _own_records(bundle, dm, embed)
    return sets


def _own_records(bundle: Any, dm: Any, embed: Embedder) -> WindowSet:
    """The base's own training records (``extra.train_records``) in the data's first source,
    with the labels the base learned them under (:func:`_learned_labels`)."""
    trained = bundle.extra.get("train_records")
    if not trained:
        raise ValueError("refine.replay needs the base's training records, and the bundle does "
                         "not list them (extra.train_records)")
    cache, seen = dm.caches[0], set(map(str, trained))
    idx = np.asarray([i for i, r in enumerate(cache.record_ids) if r in seen], dtype=np.int64)
    if len(idx) == 0:
        raise ValueError(f"refine.replay: none of the base's {len(seen)} training records is in "
                         f"{cache.path}")
    log.info("replay: %d of the base's %d training records", len(idx), len(seen))
    ids = [cache.record_ids[i] for i in idx]
    return _embed_rows(dm, idx, embed, "own",
                       _learned_labels(bundle, dm.sources[0], ids, cache.labels[idx]))


def _learned_labels(bundle: Any, source: Any, ids: list[str], labels: np.ndarray) -> np.ndarray:
    """``labels`` (the data's) unless the run that made the bundle read PTB-XL under another
    likelihood rule (``data.min_likelihood`` in its config): then the labels under that rule.
    Replay refits what the base learned; in the house-style scenario the data carries the
    house's stricter labels, which the base never saw."""
    from ecgrisk.bundle import config_value

    rule = float(config_value(bundle.config, "data.min_likelihood", 0))
    if rule == float(getattr(source, "min_likelihood", 0) or 0):
        return labels
    if not hasattr(source, "labels_under"):
        raise ValueError(f"refine.replay: the base learned its labels under "
                         f"data.min_likelihood={rule:g}, and source {source.name!r} cannot "
                         f"relabel by likelihood")
    pos = {r: i for i, r in enumerate(source.record_ids)}
    log.info("replay: the base's records relabelled under its own rule, min_likelihood=%g", rule)
    return source.labels_under(rule)[[pos[r] for r in ids]]
