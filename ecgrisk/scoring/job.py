"""The batch scoring job: ECG files in, one calibrated row per record out, streamed to CSV/Parquet.

Reader processes (``workers``, :mod:`ecgrisk.scoring.reading`) read, preprocess, scale and
quality-check records in small chunks; the main process gathers their windows into batches of
``batch_size`` for the model and writes rows (:mod:`ecgrisk.scoring.rows`) as soon as a batch is
done. Reading starts on the bundle's metadata, read without torch, while the main process
imports torch and loads the weights. At most ``4 * workers`` chunks and
:data:`READ_AHEAD_BATCHES` batches of 10 s records are in flight, so memory stays flat however
many files there are. Rows go to a partial file beside the output that
replaces it only at the end (:mod:`ecgrisk.scoring.table`); an interrupted run leaves its
partial file, which ``resume=True`` reads (with the previous output) and carries forward. An exception (or
:class:`~ecgrisk.signals.Interrupted`) ends the reader processes before it leaves.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ecgrisk.bundle_files import BundleError, check_kind, peek_meta, resolve
from ecgrisk.input_spec import InputSpec
from ecgrisk.io.inputs import collect_records
from ecgrisk.progress import progress_bar
from ecgrisk.scoring.quality import RESTING_ECG_S
from ecgrisk.scoring.reading import ReadRecord, read_records, reader_pool
from ecgrisk.scoring.report import ScoreSummary, risk_band
from ecgrisk.scoring.rows import check_bands, make_rows, output_columns
from ecgrisk.scoring.table import TableWriter, read_rows, stale_partials, table_format
from ecgrisk.signals import fault_point, raise_if_interrupted

if TYPE_CHECKING:
    from ecgrisk.scoring.predict import Predictor

__all__ = ["record_groups", "score_files"]

T = TypeVar("T")

# model batches of resting ECGs in flight beyond the readers' own queue. One would keep the
# readers a batch ahead of the model; more let them read through the 1-2 s the main process
# spends importing torch and loading the weights, which is one core's work. 2,000 mixed files
# on 2 cores, medians of 4 alternating runs: 464 ECGs/s at 1, 482 at 8, 479 at 16, against 462
# when reading waited for the model (at 8, 576 records of 10 s at 100 Hz, about 28 MB); 20
# alternating rounds against the code before: results/bench_scoring_read_ahead.md.
READ_AHEAD_BATCHES = 8


def score_files(inputs: list[str], bundle_path: str | os.PathLike, out: str | os.PathLike, *,
                workers: int = 2, batch_size: int = 512, chunk_size: int = 8,
                resume: bool = False, bands: tuple[float, float] | None = None,
                backend: str = "torch", onnx_path=None, missing_leads: str = "pad",
                npy_fs: float | None = None, progress: bool = True,
                top_n: int = 5) -> ScoreSummary:
    """Score every record INPUT names with a model bundle into ``out`` (``.csv`` or ``.parquet``).

    Parameters
    ----------
    inputs : files, folders, globs or manifest CSVs (see :func:`collect_records`).
    bundle_path : ``model.pt`` (refused with :class:`~ecgrisk.bundle.BundleError` when it is not
        ``weights_only``-loadable or was altered).
    out : output table; replaced atomically at the end.
    workers : reader processes (0 reads in the main process).
    batch_size : windows per model call.
    chunk_size : records per reader task.
    resume : keep rows already scored in ``out`` (and in an interrupted run's partial file) by
        the same model; failed rows, rows of another model version and rows read otherwise
        than this run reads them (padded leads when ``missing_leads="refuse"``, a ``.npy`` at
        another ``npy_fs``) are scored again. Kept rows take this run's ``bands``.
    bands : ``(low, high)`` risk thresholds; default ``bundle.risk_bands``.
    backend, onnx_path : ``"torch"`` or ``"onnx"`` (see :class:`Predictor`).
    missing_leads : ``"pad"`` scores records with absent leads (flagged); ``"refuse"`` fails them.
    npy_fs : sampling rate of ``.npy`` (and ``.npz``) files that carry none.
    progress : show a progress bar with rate and ETA.
    top_n : highest-risk records the summary keeps for the report.

    Returns
    -------
    ScoreSummary of the whole table (carried-over rows included).
    """
    if batch_size < 1 or chunk_size < 1 or workers < 0:
        raise ValueError(f"need batch_size >= 1, chunk_size >= 1, workers >= 0; got "
                         f"{batch_size}, {chunk_size}, {workers}")
    out = Path(out)
    t0 = time.perf_counter()
    records = collect_records(inputs)
    bundle_path = resolve(bundle_path)
    with reader_pool(workers, records) as readers:
        summary = _score(records, bundle_path, readers, out, resume, bands, batch_size,
                         chunk_size, missing_leads, npy_fs, progress, top_n,
                         lambda: _predictor(bundle_path, backend, onnx_path))
    summary.wall_s = time.perf_counter() - t0
    return summary


def _predictor(bundle_path: Path, backend: str, onnx_path) -> Predictor:
    # imported only here, with the readers reading: torch's import and the bundle's load keep
    # one core busy for 1-2 s, the readers take the other
    from ecgrisk.bundle import Bundle
    from ecgrisk.scoring.predict import Predictor

    return Predictor(Bundle.load(bundle_path), backend=backend, onnx_path=onnx_path,
                     bundle_path=bundle_path)


def _score(records, bundle_path: Path, readers, out: Path, resume: bool, bands, batch_size: int,
           chunk_size: int, missing_leads: str, npy_fs, progress: bool, top_n: int,
           load: Callable[[], Predictor]) -> ScoreSummary:
    # what the readers and the resumed rows need comes from the bundle's metadata, read
    # without torch; a file it cannot read is loaded first, and Bundle.load says what is wrong
    meta = peek_meta(bundle_path)
    if meta is not None:  # an encoder peeked has no windows: refuse it by name, as loading does
        check_kind(bundle_path, meta.get("kind"), "bundle")
    predictor = None if meta is not None else load()
    meta = meta if meta is not None else predictor.bundle.meta()
    spec = InputSpec.from_meta(meta)
    classes = list(meta["classes"])
    bands = check_bands(bands if bands is not None else tuple(meta["risk_bands"]))
    columns = output_columns(classes)
    old = [out] + stale_partials(out)
    model = (meta["name"], str(meta["version"]))
    wanted = {path for _, path in records}
    carried = partial(_carried, old, columns, out, model, wanted, missing_leads, npy_fs)
    done = {row["path"] for row in carried()} if resume else set()
    todo = [r for r in records if r[1] not in done]
    per_record = max(1, round(RESTING_ECG_S * spec.preprocessing.fs) // spec.stride)
    stream = read_records(todo, spec, readers, chunk_size, missing_leads, npy_fs,
                          ahead=READ_AHEAD_BATCHES * -(-batch_size // (per_record * chunk_size)))
    with closing(stream):
        if predictor is None:
            predictor = load()
            bundle = predictor.bundle
            if (predictor.spec != spec or list(bundle.classes) != classes
                    or (bundle.name, str(bundle.version)) != model):
                raise BundleError(f"{bundle_path}: changed while it was being loaded; score again")
        summary = ScoreSummary(top_n=top_n)
        writer = TableWriter(out, columns)
        try:
            if resume:
                for row in carried():
                    row["risk_band"] = risk_band(row["risk"], bands)  # this run's --bands
                    writer.write([row])
                    summary.add(row, classes, resumed=True)
            with progress_bar(len(todo), "scoring", enabled=progress) as advance:
                for group in record_groups(stream, lambda rec: (rec.length or 0) // spec.stride,
                                           batch_size):
                    _flush(group, predictor, writer, summary, bands, batch_size)
                    advance(len(group))
            fault_point(f"write:{out.name}")
        except BaseException:
            writer.close()  # a finished partial file: --resume continues from it
            raise
    writer.commit()
    for p in old[1:]:
        p.unlink(missing_ok=True)
    return summary


def _carried(old: list[Path], columns: list[str], out: Path, model: tuple[str, str],
             wanted: set[str], missing_leads: str, npy_fs: float | None) -> Iterator[dict]:
    """The rows of earlier outputs and partials a resumed run keeps: scored without error by
    the same model name and version, of a record asked for now, one per record, and read as
    this run would read it: not a record whose absent leads were padded when this run refuses
    them, nor a ``.npy`` read at another ``npy_fs``. (Their ``risk_band`` follows this run's
    bands: the caller sets it.)

    A resumed run reads them twice, streamed: once for what is left to read (before the model
    loads), once to copy them into the new table (after it loaded, so a bundle that fails to
    load leaves no partial file)."""
    seen: set[str] = set()
    for row in read_rows(old, columns, table_format(out)):
        if (row["error"] or (row["model_name"], str(row["model_version"])) != model
                or row["path"] in seen or row["path"] not in wanted
                or (missing_leads == "refuse" and row["missing_leads"])
                or (npy_fs is not None and row["path"].lower().endswith(".npy")
                    and row["fs_in"] != npy_fs)):
            continue
        seen.add(row["path"])
        yield row


def record_groups(items: Iterable[T], n_windows: Callable[[T], int], batch_size: int
                  ) -> Iterator[list[T]]:
    """Consecutive groups of ``items`` that each hold at least ``batch_size`` windows (the last
    group, what is left): the records the model scores together. Checks for an interrupting
    signal after every item, since taking one can wait on the readers."""
    group: list[T] = []
    windows = 0
    for item in items:
        raise_if_interrupted()
        group.append(item)
        windows += n_windows(item)
        if windows >= batch_size:
            yield group
            group, windows = [], 0
    if group:
        yield group


def _flush(pending: list[ReadRecord], predictor: Predictor, writer: TableWriter,
           summary: ScoreSummary, bands: tuple[float, float], batch_size: int) -> None:
    """Score the records read so far, write their rows, count them in the summary."""
    if not pending:
        return
    bundle = predictor.bundle
    good = [rec.x for rec in pending if rec.x is not None]
    probs = predictor.predict_prepared(good, batch_size) if good else None
    rows = make_rows(pending, probs, predictor.spec, bands, bundle)
    writer.write(rows)
    for row in rows:
        summary.add(row, list(bundle.classes))
