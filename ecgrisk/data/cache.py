"""A compiled signal cache, so that training never parses WFDB.

Layout of one cache entry ``<cache_root>/<key>/``::

    signals.f32   float32 [total_samples, leads], time-major so a crop is one contiguous read
    index.npz     record_ids, offsets, lengths, lead_masks, labels, folds, classes
    meta.json     key, preprocessing, fs, shapes, a sampled checksum, failures; written last

The key hashes the source files (path, size, mtime), the labels and the preprocessing
settings, so a changed source or setting lands in a new entry. An entry is built in a temporary
folder and moved into place with one rename; an entry whose files disagree with its
``meta.json`` is treated as damaged and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from ecgrisk.data.base import RecordSet
from ecgrisk.preprocess import Preprocessing
from ecgrisk.progress import progress_bar
from ecgrisk.signals import worker_pool

log = logging.getLogger(__name__)

# in the key: raise it when what read_ecg or preprocessing returns changes, or old entries keep
# feeding training the old signals (2: an inverted '-aVR' is no longer read as aVR, and a
# Latin-1 header's uV no longer as mV, 2026-12-08)
CACHE_VERSION = 2
N_LEADS = 12
_CHECK_BLOCKS = 32
_CHECK_BLOCK_BYTES = 1 << 16


class CacheError(RuntimeError):
    """A cache entry is missing, stale or damaged."""


def _source_files(path: str) -> list[Path]:
    """The files a record's signal comes from: its file, or a header and the files it names."""
    from ecgrisk.io import ECGReadError
    from ecgrisk.io.header import parse_header
    from ecgrisk.io.read import locate_record

    try:
        kind, file = locate_record(path)  # the file read_ecg reads, found as it finds it
    except ECGReadError:
        return []  # the build will record why it is unreadable
    if kind != "wfdb":
        return [file]
    try:
        named = parse_header(file).files
    except ECGReadError:
        return [file]
    return [file, *(file.parent / f for f in dict.fromkeys(named))]


def cache_key(records: RecordSet, prep: Preprocessing) -> str:
    """Hash of everything the cached arrays depend on."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "name": records.name, "prep": prep.to_dict()}).encode())
    for rid, path in zip(records.record_ids, records.paths, strict=True):
        h.update(rid.encode())
        for f in _source_files(path):
            try:
                st = f.stat()
            except OSError:  # a missing signal file: the build records the failure
                h.update(f"{f.name}:absent".encode())
                continue
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(json.dumps(records.classes).encode())
    if records.labels is not None:
        h.update(np.ascontiguousarray(records.labels, dtype=np.uint8).tobytes())
    if records.folds is not None:
        h.update(np.ascontiguousarray(records.folds, dtype=np.int64).tobytes())
    return h.hexdigest()[:20]


def _sampled_checksum(path: Path) -> str:
    """SHA-256 over evenly spaced blocks: catches truncation and overwrites without reading GBs."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _CHECK_BLOCKS * _CHECK_BLOCK_BYTES:
            h.update(f.read())
        else:
            step = (size - _CHECK_BLOCK_BYTES) // (_CHECK_BLOCKS - 1)
            for i in range(_CHECK_BLOCKS):
                f.seek(i * step)
                h.update(f.read(_CHECK_BLOCK_BYTES))
    return h.hexdigest()


def _load_one(args: tuple[str, dict]):
    """Worker: read and preprocess one record -> (signal [T, leads], lead_mask) or an error string."""
    from ecgrisk.io import ECGReadError, read_ecg

    path, prep_dict = args
    prep = Preprocessing.from_dict(prep_dict)
    try:
        ecg = read_ecg(path)
        sig = prep.apply(ecg.signal, ecg.fs)
    except ECGReadError as e:
        return None, None, str(e)
    except Exception as e:  # a filter failing on a pathological record must not stop the build
        return None, None, f"{path}: {type(e).__name__}: {e}"
    return np.ascontiguousarray(sig.T, dtype=np.float32), ecg.lead_mask.astype(np.uint8), ""


class ECGCache:
    """Read-only view of one cache entry; the signal array is memory-mapped, never loaded whole.

    Safe to hand to DataLoader workers: the memmap is opened lazily in each process.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        try:
            self.meta = json.loads(meta_file.read_text())
            with np.load(self.path / "index.npz", allow_pickle=False) as z:
                self.record_ids = [str(r) for r in z["record_ids"]]
                self.offsets = z["offsets"].astype(np.int64)
                self.lengths = z["lengths"].astype(np.int64)
                self.lead_masks = z["lead_masks"].astype(bool)
                self.classes = [str(c) for c in z["classes"]]
                self.labels = z["labels"] if self.meta["has_labels"] else None
                self.folds = z["folds"] if self.meta["has_folds"] else None
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            raise CacheError(f"cache entry {self.path} is unreadable: {e}") from e
        self.fs = float(self.meta["fs"])
        self._signals = None

    def __len__(self) -> int:
        return len(self.record_ids)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_signals"] = None
        return state

    @property
    def signals(self) -> np.memmap:
        if self._signals is None:
            self._signals = np.memmap(
                self.path / "signals.f32", dtype=np.float32, mode="r",
                shape=(int(self.meta["total_samples"]), N_LEADS),
            )
        return self._signals

    def verify(self) -> None:
        """Raise CacheError when the files disagree with meta.json."""
        sig = self.path / "signals.f32"
        expected = int(self.meta["total_samples"]) * N_LEADS * 4
        if not sig.is_file() or sig.stat().st_size != expected:
            got = sig.stat().st_size if sig.is_file() else "missing"
            raise CacheError(f"cache entry {self.path}: signals.f32 has {got} bytes, expected {expected}")
        if _sampled_checksum(sig) != self.meta["checksum"]:
            raise CacheError(f"cache entry {self.path}: signals.f32 checksum mismatch")
        if len(self.record_ids) != self.meta["n_records"]:
            raise CacheError(f"cache entry {self.path}: index holds {len(self.record_ids)} records, meta says {self.meta['n_records']}")

    def record(self, i: int) -> np.ndarray:
        """Whole record ``i`` as ``[leads, samples]`` (a view on the memmap)."""
        o, n = self.offsets[i], self.lengths[i]
        return self.signals[o : o + n].T

    def window(self, i: int, start: int, length: int) -> np.ndarray:
        """``[leads, length]`` float32 copy from ``start``; zero-padded past the record's end."""
        o, n = int(self.offsets[i]), int(self.lengths[i])
        out = np.zeros((N_LEADS, length), dtype=np.float32)
        stop = min(start + length, n)
        if stop > start:
            out[:, : stop - start] = self.signals[o + start : o + stop].T
        return out


def build_cache(records: RecordSet, cache_root: str | os.PathLike, prep: Preprocessing,
                workers: int = 2, progress: bool = True, key: str | None = None) -> ECGCache:
    """Read, preprocess and compile ``records`` into a new cache entry (atomically).

    ``key`` is :func:`cache_key` of the arguments, when the caller has it already.
    """
    key = key or cache_key(records, prep)
    root = Path(cache_root)
    final = root / key
    tmp = root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        offsets, lengths, masks, keep, failures = [], [], [], [], {}
        total = 0
        jobs = [(p, prep.to_dict()) for p in records.paths]
        with open(tmp / "signals.f32", "wb") as out, progress_bar(len(jobs), f"caching {records.name}", progress) as tick:
            results = _map(_load_one, jobs, workers)
            for i, (sig, mask, err) in enumerate(results):
                tick()
                if err:
                    failures[records.record_ids[i]] = err
                    continue
                out.write(sig.tobytes())
                offsets.append(total)
                lengths.append(len(sig))
                masks.append(mask)
                keep.append(i)
                total += len(sig)
        if not keep:
            first = next(iter(failures.values()), "no records given")
            raise CacheError(f"no record of {records.name} could be read (first failure: {first})")
        if failures:
            named = "; ".join(f"{rid}: {err}" for rid, err in list(failures.items())[:3])
            log.warning("%d of %d records of %s could not be read and are left out of the cache "
                        "(%s%s; every one in %s/meta.json)", len(failures), len(records),
                        records.name, named, "; ..." if len(failures) > 3 else "", final)
        keep_a = np.asarray(keep, dtype=np.int64)
        labels = records.labels[keep_a] if records.labels is not None else np.zeros((len(keep), 0), np.uint8)
        folds = records.folds[keep_a] if records.folds is not None else np.zeros(len(keep), np.int64)
        np.savez(
            tmp / "index.npz",
            record_ids=np.asarray([records.record_ids[i] for i in keep], dtype=str),
            offsets=np.asarray(offsets, dtype=np.int64),
            lengths=np.asarray(lengths, dtype=np.int64),
            lead_masks=np.stack(masks).astype(np.uint8),
            classes=np.asarray(records.classes, dtype=str),
            labels=np.asarray(labels, dtype=np.uint8),
            folds=np.asarray(folds, dtype=np.int64),
        )
        meta = {
            "version": CACHE_VERSION, "key": key, "source": records.name, "fs": prep.fs,
            "preprocessing": prep.to_dict(), "n_records": len(keep), "total_samples": total,
            "has_labels": records.labels is not None, "has_folds": records.folds is not None,
            "checksum": _sampled_checksum(tmp / "signals.f32"), "failures": failures,
        }
        # meta.json last: its presence marks a complete entry
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ECGCache(final)


def get_or_build(records: RecordSet, cache_root: str | os.PathLike, prep: Preprocessing,
                 workers: int = 2, progress: bool = True) -> ECGCache:
    """Open the entry for ``records`` + ``prep``; build it when absent, rebuild it when damaged."""
    key = cache_key(records, prep)
    cache = _open_valid(Path(cache_root) / key, warn=True)
    if cache is not None:
        return cache
    return build_cache(records, cache_root, prep, workers=workers, progress=progress, key=key)


def _open_valid(path: Path, warn: bool = False) -> ECGCache | None:
    if not (path / "meta.json").is_file():
        return None
    try:
        cache = ECGCache(path)
        cache.verify()
        return cache
    except CacheError as e:
        if warn:
            log.warning("%s; rebuilding", e)
        return None


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished entry into place without ever deleting a valid one.

    Another process (a DDP rank, a parallel job) may finish the same entry first: then its
    entry stays and ``tmp`` is dropped. A damaged entry is renamed aside before it is deleted,
    so no reader sees a half-removed folder.
    """
    for _ in range(3):
        if _open_valid(final) is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if final.exists():
            trash = final.with_name(f".trash-{final.name}-{uuid.uuid4().hex[:8]}")
            try:
                os.replace(final, trash)
            except OSError:
                continue  # someone else moved it: look again
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, final)
            return
        except OSError:
            continue  # someone else published in between: look again
    raise CacheError(f"could not publish cache entry {final}: other processes keep replacing it")


def _map(fn, jobs, workers):
    if workers <= 1 or len(jobs) < 8:
        yield from map(fn, jobs)
        return
    # worker_pool: the workers die with this process, and an interruption does not first wait
    # for every queued record (Executor.map queues them all)
    with worker_pool(workers) as ex:
        yield from ex.map(fn, jobs, chunksize=max(1, min(64, len(jobs) // (workers * 8))))
