"""Scale-out scoring: the same evaluation as :mod:`ecgrisk.scoring.job` as a Lightning ``predict``.

Each rank reads its share of the records (``DistributedSampler``; DataLoader workers do the
reading), scores them with the bundle's model and writes its rows to its own shard,
``<out dir>/.<out name>.shards/shard-<rank>.csv``, through :class:`ShardWriter` (a
``BasePredictionWriter``). After a barrier rank 0 merges the shards into ``out`` in input order,
each record once (Lightning's predict sampler repeats none, but a padding sampler would), and
removes them (with what killed earlier runs left there). With several nodes the output folder
must be on a filesystem they share. An interrupted run leaves ``out`` as it was; rerunning starts
over. Reader (DataLoader worker) processes die with their rank, however it ends.

    ecgrisk score /data/ecgs --model model.pt --out scores.parquet --devices 8 --num-nodes 2
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import os
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import Dataset

from ecgrisk.bundle import Bundle
from ecgrisk.data.datamodule import data_loader
from ecgrisk.input_spec import InputSpec
from ecgrisk.io.inputs import collect_records
from ecgrisk.models.layers import fold_batchnorm
from ecgrisk.runs import lightning_trainer
from ecgrisk.scoring.predict import aggregate_logits, calibrate, scores_in_bf16
from ecgrisk.scoring.reading import ReadRecord, read_chunk
from ecgrisk.scoring.report import ScoreSummary
from ecgrisk.scoring.rows import check_bands, make_rows, output_columns
from ecgrisk.scoring.table import TableWriter, read_rows
from ecgrisk.signals import raise_if_interrupted, reader_init

__all__ = ["RecordDataset", "ScoringModule", "ShardWriter", "merge_shards", "score_distributed"]


class RecordDataset(Dataset):
    """Item ``i``: ``(i, record i read and prepared by read_chunk)`` (``x`` None on error)."""

    def __init__(self, records: list[tuple[str, str]], spec: InputSpec,
                 missing_leads: str = "pad", npy_fs: float | None = None):
        self.records, self.spec = records, spec
        self.missing_leads, self.npy_fs = missing_leads, npy_fs

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[int, ReadRecord]:
        return i, read_chunk([self.records[i]], self.spec, self.missing_leads, self.npy_fs)[0]


class _Collate:
    """``(index, record)`` items -> ``{"windows": [W, 12, window], "positions": [W], "n_ok",
    "indices", "records"}``; the records leave their signals behind (``x`` None)."""

    def __init__(self, spec: InputSpec):
        self.spec = spec

    def __call__(self, items: list[tuple[int, ReadRecord]]) -> dict:
        good = [rec.x for _, rec in items if rec.x is not None]
        if good:
            windows, positions = self.spec.windows(good)
            windows, positions = torch.from_numpy(windows), torch.from_numpy(positions)
        else:
            windows = torch.zeros(0, 12, self.spec.window)
            positions = torch.zeros(0, dtype=torch.long)
        return {"windows": windows, "positions": positions, "n_ok": len(good),
                "indices": [i for i, _ in items],
                "records": [dataclasses.replace(rec, x=None) for _, rec in items]}


class ScoringModule(L.LightningModule):
    """``predict_step`` -> output rows (dicts with the table's columns) of one batch of records."""

    def __init__(self, bundle, bands: tuple[float, float]):
        super().__init__()
        self.model = fold_batchnorm(bundle.model)
        self.bundle, self.bands = bundle, bands
        self.spec = InputSpec.from_bundle(bundle)

    def transfer_batch_to_device(self, batch: dict, device, dataloader_idx: int) -> dict:
        # only the windows go to the device; Lightning's collection mapping would also walk
        # the records, and it refuses frozen dataclasses
        return {**batch, "windows": batch["windows"].to(device),
                "positions": batch["positions"].to(device)}

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        probs = None
        if batch["n_ok"]:
            # the autocast of the single-process path (Predictor), so both give the same scores
            with torch.autocast(self.device.type, torch.bfloat16,
                                enabled=scores_in_bf16(self.bundle, self.device)):
                logits = self.model(batch["windows"]).float().cpu().numpy()
            agg = aggregate_logits(logits, batch["positions"].cpu().numpy(), batch["n_ok"],
                                   self.bundle.aggregation)
            probs = calibrate(agg, self.bundle.temperature, self.bundle.bias)
        rows = make_rows(batch["records"], probs, self.spec, self.bands, self.bundle)
        for row, index in zip(rows, batch["indices"], strict=True):
            row["_index"] = index
        return rows


class ShardWriter(BasePredictionWriter):
    """Writes each rank's rows to ``shard_dir/shard-<rank>.csv`` as batches finish."""

    def __init__(self, shard_dir: str | os.PathLike, columns: list[str]):
        super().__init__(write_interval="batch")
        self.shard_dir, self.columns = Path(shard_dir), ["_index", *columns]
        self._writer: TableWriter | None = None

    def shard_path(self, rank: int) -> Path:
        return self.shard_dir / f"shard-{rank:03d}.csv"

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch,
                           batch_idx, dataloader_idx=0) -> None:
        raise_if_interrupted()
        if self._writer is None:
            self._writer = TableWriter(self.shard_path(trainer.global_rank), self.columns)
        self._writer.write(prediction)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._writer is None:  # a rank with no batch still leaves an (empty) shard
            self._writer = TableWriter(self.shard_path(trainer.global_rank), self.columns)
        self._writer.commit()
        self._writer = None


def merge_shards(shards: list[Path], out: str | os.PathLike, columns: list[str],
                 classes: list[str], top_n: int = 5) -> ScoreSummary:
    """Stream-merge shards (sorted by ``_index``, but for a padding sampler's repeats at a
    shard's end) into ``out`` in input order, each record once."""
    summary = ScoreSummary(top_n=top_n)

    def counted(shard: Path):
        for row in read_rows([shard], ["_index", *columns], "csv"):
            summary.shard_rows[shard.name] = summary.shard_rows.get(shard.name, 0) + 1
            yield row

    for s in shards:
        summary.shard_rows[s.name] = 0
    streams = [counted(s) for s in shards]
    writer = TableWriter(Path(out), columns)
    seen: set[int] = set()  # a padding sampler repeats the first records at a shard's end
    try:
        for row in heapq.merge(*streams, key=lambda r: int(r["_index"])):
            index = int(row["_index"])
            if index in seen:
                continue
            seen.add(index)
            row = {c: row[c] for c in columns}
            writer.write([row])
            summary.add(row, classes)
    except BaseException:
        writer.close()
        raise
    writer.commit()
    return summary


def score_distributed(inputs: list[str], bundle_path, out, *, devices: int = 1,
                      num_nodes: int = 1, accelerator: str = "auto", strategy: str = "ddp",
                      workers: int = 2, batch_size: int = 512, bands=None,
                      missing_leads: str = "pad", npy_fs: float | None = None,
                      top_n: int = 5) -> ScoreSummary | None:
    """Score with ``Trainer.predict`` on ``devices`` x ``num_nodes`` ranks; rank 0 merges.

    ``batch_size`` counts windows as in :func:`score_files`; a DataLoader batch holds
    ``batch_size // 8`` records (a 10 s record gives 7 windows at the default 2.5 s / 1.25 s).

    Returns
    -------
    The merged table's summary on global rank 0, None on the other ranks.
    """
    t0 = time.perf_counter()
    bundle = Bundle.load(bundle_path)
    bands = check_bands(bands if bands is not None else bundle.risk_bands)
    spec = InputSpec.from_bundle(bundle)
    records = collect_records(inputs)
    columns = output_columns(list(bundle.classes))
    out = Path(out)
    shard_dir = out.parent / f".{out.name}.shards"
    writer = ShardWriter(shard_dir, columns)
    loader = data_loader(RecordDataset(records, spec, missing_leads, npy_fs),
                         max(1, batch_size // 8), workers, collate_fn=_Collate(spec),
                         worker_init_fn=functools.partial(reader_init, os.getpid()))
    trainer = lightning_trainer(devices=devices, num_nodes=num_nodes, accelerator=accelerator,
                                strategy=strategy if devices * num_nodes > 1 else "auto",
                                callbacks=[writer], logger=False, enable_checkpointing=False,
                                enable_model_summary=False, enable_progress_bar=False)
    trainer.predict(ScoringModule(bundle, bands), dataloaders=loader, return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None
    shards = [writer.shard_path(r) for r in range(trainer.world_size)]
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise RuntimeError(f"ranks did not write their shards: {missing}")
    summary = merge_shards(shards, out, columns, list(bundle.classes), top_n)
    # also the partial shards of killed earlier runs, which no rank of this run will replace
    shutil.rmtree(shard_dir, ignore_errors=True)
    summary.wall_s = time.perf_counter() - t0
    return summary
