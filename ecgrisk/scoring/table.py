"""The scores table on disk: streamed to a partial file, moved in place at the end, read back.

:class:`TableWriter` writes rows to ``.<out name>.<token>.partial`` beside the output (CSV
flushed per batch, Parquet per row group) and :meth:`~TableWriter.commit` replaces the output
with ``os.replace``; an interrupted run leaves its partial file, which :func:`read_rows` reads
back (with the previous output) when a run resumes. pyarrow is imported only for Parquet (the
``parquet`` extra).
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import os
import uuid
from pathlib import Path

__all__ = ["OutputError", "TableWriter", "read_rows", "stale_partials"]

log = logging.getLogger(__name__)


class OutputError(ValueError):
    """The output path or an existing output cannot be used."""


_FLOAT_COLS = ("age", "risk", "fs_in", "duration_s")


def table_format(out: Path) -> str:
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
        self.out, self.columns, self.fmt = Path(out), list(columns), table_format(Path(out))
        self.out.parent.mkdir(parents=True, exist_ok=True)
        # unique per writer: a resumed run in the same process must not truncate what it reads
        token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp = self.out.parent / f".{self.out.name}.{token}.partial"
        self._buf: list[dict] = []
        self._row_group = row_group
        self._closed = False
        if self.fmt == "csv":
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
    for path in paths:
        if not path.is_file():
            continue
        if fmt == "csv":
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
                log.warning("skipping unreadable %s (%s)", path, e)
                continue
            if pf.schema_arrow.names != columns:
                raise OutputError(f"{path}: was written with other columns (another model's "
                                  f"classes?); remove it or choose another --out to resume")
            for batch in pf.iter_batches(batch_size=4096):
                yield from batch.to_pylist()
