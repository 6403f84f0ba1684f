"""Data-layer benchmark: cache build time, cached vs per-sample WFDB batch throughput, memory.

    python scripts/bench_data.py [--root ../shared/data/ptb-xl] [--repeats 3] [--scale 10]
    python scripts/bench_data.py --root data/ptb-xl-full --scale 1     # all 19,634 records

The cache build (target: the full PTB-XL folds 1-9 in at most 60 s on 2 cores) is timed from
scratch ``--repeats`` times; reuse is the time ``get_or_build`` takes to find, verify and open
the entry it built (what every later run pays).

Writes results/bench_data.json and results/bench_data.md. Speeds are compared as a ratio
measured side by side in one run (medians of ``--repeats``); absolute times are context only.
Memory: the peak private (anonymous) resident memory of a process iterating a cache ``--scale``
times the subset's size, next to the size of the array it iterates: a memory-mapped cache keeps
the array in the page cache, not in the process's own memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ecgrisk.data.base import RecordSet
from ecgrisk.data.cache import build_cache, get_or_build
from ecgrisk.data.ptbxl import PTBXL
from ecgrisk.data.windows import CropDataset
from ecgrisk.files import atomic_write_text
from ecgrisk.paths import shared_data
from ecgrisk.preprocess import Preprocessing, Scaler
from ecgrisk.provenance import command_line

CROP, BATCH = 250, 128


class WfdbPerSample(Dataset):
    """The baseline: parse the WFDB record for every training sample, as a naive loader would."""

    def __init__(self, paths, labels, scaler):
        self.paths, self.labels, self.scaler = paths, labels, scaler

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import wfdb

        sig, _ = wfdb.rdsamp(self.paths[i])
        start = int(torch.randint(0, sig.shape[0] - CROP + 1, (1,)))
        x = self.scaler(sig[start:start + CROP].T.astype(np.float32))
        return torch.from_numpy(x), torch.from_numpy(self.labels[i].astype(np.float32))


def batches_per_s(ds, n_batches: int) -> float:
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=0)
    t0, done = time.perf_counter(), 0
    while done < n_batches:
        for _ in loader:
            done += 1
            if done >= n_batches:
                break
    return done / (time.perf_counter() - t0)


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def iterate_for_memory(cache_path: str) -> dict:
    """Child process: one epoch of random crops over the whole cache, sampling RssAnon/RssFile."""
    from ecgrisk.data.cache import ECGCache

    cache = ECGCache(cache_path)
    ds = CropDataset(cache, np.arange(len(cache)), CROP, Scaler(0.0, 1.0))
    base_anon = _status_kb("RssAnon")
    peak_anon, peak_file = base_anon, 0
    for b, _ in enumerate(DataLoader(ds, batch_size=BATCH, shuffle=True)):
        if b % 5 == 0:
            peak_anon = max(peak_anon, _status_kb("RssAnon"))
            peak_file = max(peak_file, _status_kb("RssFile"))
    return {"rss_anon_before_mb": base_anon / 1024, "rss_anon_peak_mb": peak_anon / 1024,
            "rss_file_peak_mb": peak_file / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str((shared_data() or Path("data")) / "ptb-xl"))
    p.add_argument("--task", default="all", help="PTB-XL task: which records are labelled (all: every one)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, default=20, help="batches per throughput measurement")
    p.add_argument("--scale", type=int, default=10, help="memory test: the subset repeated this often")
    p.add_argument("--workers", type=int, default=2, help="cache build processes")
    p.add_argument("--out", default="results")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        print(json.dumps(iterate_for_memory(args._child)))
        return

    torch.set_num_threads(1)
    rs = PTBXL(args.root, task=args.task, fs=100)
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        builds, reuses = [], []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            cache = build_cache(rs, tmp / f"build{r}", Preprocessing(fs=100), workers=args.workers, progress=False)
            builds.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            get_or_build(rs, tmp / f"build{r}", Preprocessing(fs=100), workers=args.workers, progress=False)
            reuses.append(time.perf_counter() - t0)
        scaler = Scaler(0.0, 1.0)
        cached_ds = CropDataset(cache, np.arange(len(cache)), CROP, scaler)
        wfdb_ds = WfdbPerSample(rs.paths, rs.labels, scaler)
        cached, naive = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            cached.append(batches_per_s(cached_ds, args.batches))
            naive.append(batches_per_s(wfdb_ds, max(2, args.batches // 10)))

        big = RecordSet("scaled", [f"{k}/{r}" for k in range(args.scale) for r in rs.record_ids],
                        list(rs.paths) * args.scale)
        big_cache = build_cache(big, tmp / "big", Preprocessing(fs=100), workers=args.workers, progress=False)
        array_mb = (big_cache.path / "signals.f32").stat().st_size / 2**20
        child = subprocess.run([sys.executable, __file__, "--_child", str(big_cache.path)],
                               capture_output=True, text=True, check=True)
        mem = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    c, n = statistics.median(cached), statistics.median(naive)
    result = {
        "data": f"{args.root}: {len(rs)} PTB-XL records (task {args.task}), 100 Hz",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads 1",
        "command": command_line(__file__),
        "cache_build_s_median": statistics.median(builds), "cache_build_s": builds,
        "cache_reuse_s_median": statistics.median(reuses), "target_build_s_full": 60,
        "cache_build_workers": args.workers,
        "batch": BATCH, "crop": CROP,
        "cached_batches_per_s_median": c, "wfdb_per_sample_batches_per_s_median": n,
        "speedup_cached_vs_wfdb": c / n, "target_speedup": 50,
        "memory_records": len(big), "memory_array_mb": array_mb, **mem,
        "memory_anon_growth_mb": mem["rss_anon_peak_mb"] - mem["rss_anon_before_mb"],
    }
    out = Path(args.out)
    atomic_write_text(out / "bench_data.json", json.dumps(result, indent=1))
    md = [
        f"`{result['command']}` on {result['machine']}; medians of {args.repeats}.", "",
        "| measure | value |", "|---|---|",
        f"| data | {result['data']} |",
        f"| cache build from scratch ({args.workers} processes; target for the 19,634 records: <= 60 s) | {result['cache_build_s_median']:.2f} s |",
        f"| cache reuse (find, verify and open the built entry) | {result['cache_reuse_s_median']:.2f} s |",
        f"| training batches/s from the cache (batch {BATCH}, 2.5 s crops) | {c:.1f} |",
        f"| training batches/s reading WFDB per sample | {n:.2f} |",
        f"| **speed-up, cache vs WFDB** (target >= 50x) | **{c / n:.0f}x** |",
        f"| memory test: array iterated ({len(big)} records) | {array_mb:.0f} MB |",
        f"| private memory growth while iterating it | {result['memory_anon_growth_mb']:.1f} MB |",
        f"| peak file-backed (page cache) resident | {mem['rss_file_peak_mb']:.0f} MB |",
    ]
    atomic_write_text(out / "bench_data.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
