"""The reader side of scoring: read, quality-check and prepare records, in reader processes.

:func:`read_chunk` turns ``(record id, path)`` jobs into :class:`ReadRecord` s and never raises
for a record; :func:`read_records` streams them in input order from the processes of a
:func:`reader_pool`, with a bounded number of chunks in flight. Reader processes import this
module and must never load torch: it needs only numpy/scipy.
"""

from __future__ import annotations

import importlib
import itertools
import multiprocessing as mp
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ecgrisk.input_spec import InputSpec
from ecgrisk.io import ECGReadError, read_ecg
from ecgrisk.io.clinical import CLINICAL_IMPORTS, CLINICAL_SUFFIXES
from ecgrisk.io.ecg import SEX_WORDS
from ecgrisk.scoring.quality import quality_flags
from ecgrisk.signals import worker_pool

__all__ = ["ReadRecord", "read_chunk", "Readers", "read_records", "reader_pool"]

# Readers run at a lower priority than the model they feed. Otherwise, on cores they share, the
# scheduler preempts one of the model's threads for a reader and the rest of the model's parallel
# work waits for it. On 2 cores, mixed folders of 2,000 and 19,634 files went at 366-392 and
# 544-551 ECGs/s with readers at niceness 10, against 336-363 and 458-493 without (alternating
# runs; niceness 19 gained no more). The cost: where other jobs keep every core busy, the
# readers get less of them than they would.
READER_NICE = 10


@dataclass(frozen=True)
class ReadRecord:
    """One record as the reader side hands it to the model side.

    Attributes
    ----------
    record, path : the record id and the path given to ``read_ecg``.
    x : ``[12, T]`` float32 through :meth:`InputSpec.prepare`, ready for windows; None when the
        record failed, or once its windows were cut (``length`` still says it scored).
    length : ``T`` when the record was prepared, else None.
    flags : the quality columns of :func:`~ecgrisk.scoring.quality.quality_flags`; empty when
        the file could not be read.
    error : ``""``, or ``"<ErrorClass>: <reason>"`` when the record cannot be scored.
    patient : ``age`` (years) and ``sex`` (``male``, ``female``) where the file states them
        (DICOM, MUSE, Challenge headers, ...), for checking scores by subgroup, and ``acquired``
        (ISO 8601, where a clinical export states when it was recorded); empty otherwise.
    """

    record: str
    path: str
    x: np.ndarray | None = None
    length: int | None = None
    flags: dict = field(default_factory=dict)
    error: str = ""
    patient: dict = field(default_factory=dict)


def _clean(msg: str) -> str:
    return " ".join(str(msg).split())  # one line: CSV rows stay one line each


def read_chunk(jobs: list[tuple[str, str]], spec: InputSpec, missing_leads: str = "pad",
               npy_fs: float | None = None) -> list[ReadRecord]:
    """Read, check and prepare records (runs in reader processes; never raises for a record).

    Returns
    -------
    one :class:`ReadRecord` per ``(record id, path)`` job, in order.
    """
    out = []
    for rec, path in jobs:
        x, flags, error, patient = None, {}, "", {}
        try:
            ecg = read_ecg(path, missing_leads=missing_leads, array_fs=npy_fs)
            patient = {"age": ecg.meta.get("age"), "sex": SEX_WORDS.get(ecg.meta.get("sex")),
                       "acquired": ecg.meta.get("acquired")}
            flags = quality_flags(ecg.signal, ecg.fs, ecg.lead_mask, spec.preprocessing.fs,
                                  ecg.meta.get("derived_leads", ()),
                                  bool(ecg.meta.get("units_assumed_mv")))
            prepared = spec.prepare(ecg.signal, ecg.fs)
            if not np.isfinite(prepared).all():
                raise ValueError("preprocessing produced non-finite values")
            x = prepared
        except ECGReadError as e:
            error = _clean(f"{type(e).__name__}: {e.reason}")
        except Exception as e:  # a filter failing on one pathological record must not stop the run
            error = _clean(f"{type(e).__name__}: {e}")
        out.append(ReadRecord(rec, path, x, None if x is None else x.shape[1], flags, error, patient))
    return out


def _chunks(records, size):
    for i in range(0, len(records), size):
        yield records[i:i + size]


def _import(modules: tuple[str, ...]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:  # an extra that is not installed: its files fail with a named error
            pass


class Readers(NamedTuple):
    """Running reader processes: the pool and how many it holds."""

    executor: Executor
    workers: int


@contextmanager
def reader_pool(workers: int, records: list[tuple[str, str]]) -> Iterator[Readers | None]:
    """Reader processes for :func:`read_records`, started now (None for ``workers=0`` or no
    records).

    Open it before loading the model: the readers start, and import what ``records`` will need,
    while the main process imports torch and loads the bundle, one core's work that leaves the
    other idle. Leaving the context (an exception included) ends them.
    """
    if workers <= 0 or not records:
        yield None
        return
    clinical = any(Path(path).suffix.lower() in CLINICAL_SUFFIXES for _, path in records)
    # spawn: readers never inherit the main process's torch threads, and each is this process's
    # own child, so it dies with it (a forkserver's children die with the forkserver instead,
    # which outlived a killed scoring run together with its resource tracker)
    with worker_pool(workers, mp.get_context("spawn"), nice=READER_NICE) as ex:
        for _ in range(workers):  # one task each starts every process now, not at first read
            ex.submit(_import, CLINICAL_IMPORTS if clinical else ())
        yield Readers(ex, workers)


def read_records(records: list[tuple[str, str]], spec: InputSpec, readers: Readers | None,
                 chunk_size: int, missing_leads: str = "pad", npy_fs: float | None = None,
                 ahead: int = 0) -> Iterator[ReadRecord]:
    """Read records in input order with at most ``4 * workers + ahead`` chunks in flight.

    ``readers`` come from :func:`reader_pool`: the first chunks go to them at once, before the
    first record is asked for, so they read while the caller gets ready (imports torch and
    loads the model: 1.5-2 s on one core). None reads in the calling process, as records are
    asked for. A consumer that stops to work on what it took (the model on a batch) should ask
    for a batch's worth of chunks ``ahead``: chunks are only submitted as others are taken, so
    with less in flight the readers run dry during that work and the next batch waits for them.
    An exception leaving the :func:`reader_pool` ends the readers at once, with what is still
    queued.

    Spawned readers import the caller's main script again, as multiprocessing's spawn does: a
    script that imports torch at its top level costs every reader torch's import (seconds,
    and about 50 MB each) before its first record. ``ecgrisk score`` imports nothing heavy
    there, nor does ``scripts/bench_scoring.py``.
    """
    chunks = _chunks(records, chunk_size)
    if readers is None:
        return (rec for chunk in chunks for rec in read_chunk(chunk, spec, missing_leads, npy_fs))

    def submit(chunk):
        return readers.executor.submit(read_chunk, chunk, spec, missing_leads, npy_fs)

    pending = deque(submit(c) for c in itertools.islice(chunks, 4 * readers.workers + ahead))
    return _in_order(pending, chunks, submit)


def _in_order(pending: deque, chunks: Iterator, submit) -> Iterator[ReadRecord]:
    while pending:
        done = pending.popleft().result()
        chunk = next(chunks, None)  # one taken, one handed over: the bound stays
        if chunk is not None:
            pending.append(submit(chunk))
        yield from done
