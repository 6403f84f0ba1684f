"""The batch scoring job: ECG files in, one calibrated row per record out, streamed to CSV/Parquet.

Reader processes (``workers``) read, preprocess, scale and quality-check records in small
chunks; the main process gathers their windows into batches of ``batch_size`` for the model and
writes rows as soon as a batch is done. At most ``4 * workers`` chunks are in flight, so memory
stays flat however many files there are. Rows go to ``.<out name>.<pid>.partial`` beside the
output and replace it with ``os.replace`` only at the end; an interrupted run leaves its partial
file, which ``resume=True`` reads (with the previous output) and carries forward.

Output columns (see :func:`output_columns`): ``record``, ``path``, ``prob/<class>`` per
statement (calibrated), ``risk`` (1 - P(NORM) when NORM is a class, else the max probability),
``risk_band``, the quality columns of :mod:`ecgrisk.scoring.quality`, ``n_windows``,
``model_name``, ``model_version``, ``error`` (empty when the record scored; otherwise
``"<ErrorClass>: <reason>"`` and empty probabilities).
"""

from __future__ import annotations

import glob
import os
import time
from collections import deque
from pathlib import Path

import numpy as np

from ecgrisk.scoring.predict import InputSpec
from ecgrisk.scoring.quality import QUALITY_COLUMNS, quality_flags
from ecgrisk.scoring.report import ScoreSummary, risk_band

__all__ = ["InputError", "OutputError", "TableWriter", "collect_records", "output_columns",
           "make_rows", "read_chunk", "read_rows", "score_files"]

_GLOB_CHARS = set("*?[")
_WFDB_SUFFIXES = (".hea", ".dat", ".mat")


class InputError(ValueError):
    """The INPUT arguments name nothing to score, or a manifest is malformed."""


def output_columns(classes: list[str]) -> list[str]:
    """Column order of the output table for a bundle with ``classes``."""
    return ["record", "path", *[f"prob/{c}" for c in classes], "risk", "risk_band",
            *QUALITY_COLUMNS, "n_windows", "model_name", "model_version", "error"]


# ----------------------------------------------------------------------------- inputs
def _as_record(path: Path) -> tuple[str, str]:
    """``(record id, path given to read_ecg)``; WFDB records by their name without extension."""
    if path.suffix.lower() in _WFDB_SUFFIXES:
        path = path.with_suffix("")
        return path.name, os.path.abspath(path)
    return path.stem, os.path.abspath(path)


def _manifest(path: Path) -> list[tuple[str, str]]:
    import csv

    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise InputError(f"manifest {path}: needs a 'path' column (has {reader.fieldnames})")
        out = []
        for line, row in enumerate(reader, start=2):
            if not (row.get("path") or "").strip():
                raise InputError(f"manifest {path}: line {line} has an empty path")
            p = Path(row["path"].strip())
            rec, abspath = _as_record(p if p.is_absolute() else path.parent / p)
            out.append(((row.get("record") or "").strip() or rec, abspath))
    return out


def _expand(arg: str) -> list[tuple[str, str]]:
    from ecgrisk.data.folder import ECGFolder

    p = Path(arg).expanduser()
    if p.is_dir():
        try:
            folder = ECGFolder(p)
        except FileNotFoundError:
            return []
        return list(zip(folder.record_ids, folder.paths, strict=True))
    if p.is_file() and p.suffix.lower() == ".csv":
        return _manifest(p)
    if not p.exists() and _GLOB_CHARS & set(arg):
        out = []
        for match in sorted(glob.glob(os.path.expanduser(arg), recursive=True)):
            out += _expand(match)
        return out
    # a file, a WFDB name without extension, or a missing path (it becomes an error row)
    return [_as_record(p)]


def collect_records(inputs: list[str]) -> list[tuple[str, str]]:
    """``(record id, path)`` of every record INPUT names, in order, each path once.

    INPUT items are files (any format ``read_ecg`` reads; ``.hea``/``.dat``/``.mat`` name their
    record), folders (searched recursively like :class:`ECGFolder`), globs (``**`` recursive)
    or manifest ``.csv`` files with a ``path`` column (relative to the manifest) and an optional
    ``record`` column. A path that does not exist is kept: it becomes a row with its error.
    """
    if not inputs:
        raise InputError("no INPUT given")
    seen: dict[str, str] = {}
    for arg in inputs:
        found = _expand(str(arg))
        if not found:
            raise InputError(f"INPUT {arg!r}: no ECG record found (folders hold WFDB .hea, "
                             f".npy or .npz files; globs must match something)")
        for rec, path in found:
            seen.setdefault(path, rec)
    return [(rec, path) for path, rec in seen.items()]


# ----------------------------------------------------------------------------- reader side
def _clean(msg: str) -> str:
    return " ".join(str(msg).split())  # one line: CSV rows stay one line each


def read_chunk(jobs: list[tuple[str, str]], spec: InputSpec, missing_leads: str = "pad",
               npy_fs: float | None = None) -> list[dict]:
    """Read, check and prepare records (runs in reader processes; never raises for a record).

    Returns
    -------
    one dict per job: ``record``, ``path``, ``x`` (``[12, T]`` float32 ready for windows, or None),
    the quality fields, ``error`` (``""`` or ``"<ErrorClass>: <reason>"``).
    """
    from ecgrisk.io import ECGReadError, read_ecg

    out = []
    for rec, path in jobs:
        item = {"record": rec, "path": path, "x": None, "error": ""}
        try:
            fs = npy_fs if str(path).lower().endswith((".npy", ".npz")) else None
            ecg = read_ecg(path, fs=fs, missing_leads=missing_leads)
            item.update(quality_flags(ecg.signal, ecg.fs, ecg.lead_mask, spec.preprocessing.fs))
            x = spec.prepare(ecg.signal, ecg.fs)
            if not np.isfinite(x).all():
                raise ValueError("preprocessing produced non-finite values")
            item["x"] = x
        except ECGReadError as e:
            item["error"] = _clean(f"{type(e).__name__}: {e.reason}")
        except Exception as e:  # a filter failing on one pathological record must not stop the run
            item["error"] = _clean(f"{type(e).__name__}: {e}")
        out.append(item)
    return out


def _chunks(records, size):
    for i in range(0, len(records), size):
        yield records[i:i + size]


def _read_stream(records, spec, workers, chunk_size, missing_leads, npy_fs):
    """Yield read records in input order with a bounded number of chunks in flight."""
    if workers <= 0:
        for chunk in _chunks(records, chunk_size):
            yield from read_chunk(chunk, spec, missing_leads, npy_fs)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # forkserver: reader processes never inherit the main process's torch threads
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method)) as ex:
        pending: deque = deque()
        it = _chunks(records, chunk_size)
        for chunk in it:
            pending.append(ex.submit(read_chunk, chunk, spec, missing_leads, npy_fs))
            if len(pending) >= 4 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


# ----------------------------------------------------------------------------- rows
def make_rows(items: list[dict], probs: np.ndarray | None, spec: InputSpec, classes: list[str],
              bands: tuple[float, float], bundle) -> list[dict]:
    """Output rows for read records; ``probs [n_ok, C]`` belong, in order, to the scored items.

    An item scored when it has a prepared signal ``x`` (or, without one, its ``length``).
    """
    norm = classes.index("NORM") if "NORM" in classes else None
    rows, k = [], 0
    for it in items:
        row = {"record": it["record"], "path": it["path"], "model_name": bundle.name,
               "model_version": bundle.version, "error": it["error"]}
        row.update({c: it.get(c) for c in QUALITY_COLUMNS})
        length = it["x"].shape[1] if it.get("x") is not None else it.get("length")
        if length is None:
            row.update({f"prob/{c}": None for c in classes}, risk=None, risk_band="", n_windows=0)
        else:
            p = probs[k]
            k += 1
            risk = float(1.0 - p[norm]) if norm is not None else float(p.max())
            n_win = max(length - spec.window, 0) // spec.stride + 1
            row.update({f"prob/{c}": float(v) for c, v in zip(classes, p, strict=True)},
                       risk=risk, risk_band=risk_band(risk, bands), n_windows=n_win)
        rows.append(row)
    return rows


def check_bands(bands) -> tuple[float, float]:
    b = tuple(float(v) for v in bands)
    if len(b) != 2 or not 0.0 <= b[0] <= b[1] <= 1.0:
        raise ValueError(f"risk bands must be two thresholds 0 <= low <= high <= 1, got {bands}")
    return b


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
        the same model; failed rows and rows of another model version are scored again.
    bands : ``(low, high)`` risk thresholds; default ``bundle.risk_bands``.
    backend, onnx_path : ``"torch"`` or ``"onnx"`` (see :class:`Predictor`).
    missing_leads : ``"pad"`` scores records with absent leads (flagged); ``"refuse"`` fails them.
    npy_fs : sampling rate of bare ``.npy`` files (they carry none).
    progress : show a progress bar with rate and ETA.
    top_n : highest-risk records the summary keeps for the report.

    Returns
    -------
    ScoreSummary of the whole table (carried-over rows included).
    """
    from ecgrisk.bundle import Bundle
    from ecgrisk.progress import progress_bar
    from ecgrisk.scoring.predict import Predictor

    if batch_size < 1 or chunk_size < 1 or workers < 0:
        raise ValueError(f"need batch_size >= 1, chunk_size >= 1, workers >= 0; got "
                         f"{batch_size}, {chunk_size}, {workers}")
    out = Path(out)
    t0 = time.perf_counter()
    bundle = Bundle.load(bundle_path)
    bands = check_bands(bands if bands is not None else bundle.risk_bands)
    predictor = Predictor(bundle, backend=backend, onnx_path=onnx_path, bundle_path=bundle_path)
    classes = list(bundle.classes)
    columns = output_columns(classes)
    records = collect_records(inputs)
    summary = ScoreSummary(top_n=top_n)

    old = [out] + stale_partials(out)
    writer = TableWriter(out, columns)
    try:
        done: set[str] = set()
        if resume:
            wanted = {path for _, path in records}
            for row in read_rows(old, columns, writer.fmt):
                same_model = (row["model_name"] == bundle.name
                              and str(row["model_version"]) == str(bundle.version))
                if row["error"] or not same_model or row["path"] in done or row["path"] not in wanted:
                    continue
                done.add(row["path"])
                writer.write([row])
                summary.add(row, classes, resumed=True)
        todo = [r for r in records if r[1] not in done]
        pending, n_windows = [], 0
        with progress_bar(len(todo), "scoring", enabled=progress) as advance:
            stream = _read_stream(todo, predictor.spec, workers, chunk_size, missing_leads, npy_fs)
            for item in stream:
                pending.append(item)
                if item["x"] is not None:
                    n_windows += item["x"].shape[1] // predictor.spec.stride
                if n_windows >= batch_size:
                    _flush(pending, writer, summary, predictor, classes, bands, batch_size, bundle)
                    advance(len(pending))
                    pending, n_windows = [], 0
            _flush(pending, writer, summary, predictor, classes, bands, batch_size, bundle)
            advance(len(pending))
    except BaseException:
        writer.close()  # a finished partial file: --resume continues from it
        raise
    writer.commit()
    for p in old[1:]:
        p.unlink(missing_ok=True)
    summary.wall_s = time.perf_counter() - t0
    return summary


def _flush(pending, writer, summary, predictor, classes, bands, batch_size, bundle) -> None:
    if not pending:
        return
    good = [it["x"] for it in pending if it["x"] is not None]
    probs = predictor.predict_prepared(good, batch_size) if good else None
    rows = make_rows(pending, probs, predictor.spec, classes, bands, bundle)
    writer.write(rows)
    for row in rows:
        summary.add(row, classes)


# ----------------------------------------------------------------------------- the table
class OutputError(ValueError):
    """The output path or an existing output cannot be used."""


_FLOAT_COLS = ("risk", "fs_in", "duration_s")


def _table_format(out: Path) -> str:
    fmt = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(out.suffix.lower())
    if fmt is None:
        raise OutputError(f"--out {out}: use a .csv or .parquet file name")
    return fmt


def stale_partials(out: Path) -> list[Path]:
    """Partial files interrupted runs left beside ``out``."""
    return sorted(out.parent.glob(f".{glob.escape(out.name)}.*.partial"))


def _typed(row: dict, columns: list[str]) -> dict:
    """A CSV row (strings) with the column types the Parquet schema and the summary use."""
    out = {}
    for c in columns:
        v = row.get(c)
        if c.startswith("prob/") or c in _FLOAT_COLS:
            v = float(v) if v not in (None, "") else None
        elif c == "n_windows":
            v = int(v) if v not in (None, "") else 0
        elif c == "resampled":
            v = {"True": True, "False": False}.get(v, v) if isinstance(v, str) else v
        else:
            v = "" if v is None else str(v)
        out[c] = v
    return out


class TableWriter:
    """Streams rows to ``.<name>.<pid>.partial`` beside ``out``; :meth:`commit` moves it in place."""

    def __init__(self, out: Path, columns: list[str], row_group: int = 2048):
        self.out, self.columns, self.fmt = Path(out), list(columns), _table_format(Path(out))
        self.out.parent.mkdir(parents=True, exist_ok=True)
        import uuid

        # unique per writer: a resumed run in the same process must not truncate what it reads
        token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp = self.out.parent / f".{self.out.name}.{token}.partial"
        self._buf: list[dict] = []
        self._row_group = row_group
        self._closed = False
        if self.fmt == "csv":
            import csv

            self._file = open(self.tmp, "w", newline="")
            self._csv = csv.writer(self._file)
            self._csv.writerow(self.columns)
            self._file.flush()
        else:
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError as e:
                raise OutputError(f"--out {out}: Parquet needs pyarrow "
                                  f"(pip install 'ecgrisk[parquet]')") from e

            def kind(c):
                if c.startswith("prob/") or c in _FLOAT_COLS:
                    return pa.float64()
                return {"n_windows": pa.int64(), "resampled": pa.bool_()}.get(c, pa.string())

            self._schema = pa.schema([(c, kind(c)) for c in self.columns])
            self._pq = pq.ParquetWriter(self.tmp, self._schema)

    def write(self, rows: list[dict]) -> None:
        if self.fmt == "csv":
            for r in rows:
                self._csv.writerow(["" if r.get(c) is None else r.get(c) for c in self.columns])
            self._file.flush()  # a killed run keeps every finished row
        else:
            self._buf += [_typed(r, self.columns) for r in rows]
            if len(self._buf) >= self._row_group:
                self._flush_parquet()

    def _flush_parquet(self) -> None:
        import pyarrow as pa

        if self._buf:
            self._pq.write_table(pa.Table.from_pylist(self._buf, schema=self._schema))
            self._buf = []

    def close(self) -> None:
        """Finish the partial file (Parquet footer) without moving it."""
        if self._closed:
            return
        self._closed = True
        if self.fmt == "csv":
            self._file.close()
        else:
            self._flush_parquet()
            self._pq.close()

    def commit(self) -> None:
        self.close()
        os.replace(self.tmp, self.out)


def read_rows(paths: list[Path], columns: list[str], fmt: str):
    """Yield typed rows of earlier outputs/partials that exist; a different header is refused.

    A CSV cut mid-line by a killed run loses only that line; an unreadable Parquet partial
    (killed before its footer) is skipped with a warning.
    """
    import logging

    for path in paths:
        if not path.is_file():
            continue
        if fmt == "csv":
            import csv
            import io

            text = path.read_text()
            if text and not text.endswith("\n"):
                text = text[: text.rfind("\n") + 1]
            reader = csv.DictReader(io.StringIO(text))
            if reader.fieldnames is None:
                continue
            if list(reader.fieldnames) != columns:
                raise OutputError(f"{path}: was written with other columns (another model's "
                                  f"classes?); remove it or choose another --out to resume")
            for row in reader:
                if None not in row.values() and None not in row:
                    yield _typed(row, columns)
        else:
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(path)
            except Exception as e:
                logging.getLogger(__name__).warning("skipping unreadable %s (%s)", path, e)
                continue
            if pf.schema_arrow.names != columns:
                raise OutputError(f"{path}: was written with other columns (another model's "
                                  f"classes?); remove it or choose another --out to resume")
            for batch in pf.iter_batches(batch_size=4096):
                yield from batch.to_pylist()
