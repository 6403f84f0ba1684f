"""Resumable, checksum-verified download of PTB-XL (all of it or its first N records).

Only the standard library talks HTTP here, so downloading adds no dependency. Every file goes
to ``<file>.part`` first, is checked against PhysioNet's ``SHA256SUMS.txt`` where that lists
it, and is then moved into place with ``os.replace``: a file at its final path is complete.
"""

from __future__ import annotations

import csv
import http.client
import logging
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from ecgrisk.files import file_sha256
from ecgrisk.progress import progress_bar

log = logging.getLogger(__name__)

PTBXL_URL = "https://physionet.org/files/ptb-xl/1.0.3/"
CHECKSUMS = "SHA256SUMS.txt"
REQUIRED = ("ptbxl_database.csv", "scp_statements.csv")
OPTIONAL = ("LICENSE.txt",)
CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A file could not be fetched (server unreachable, HTTP error, bad arguments)."""


class ChecksumError(DownloadError):
    """A downloaded file's SHA-256 differs from ``SHA256SUMS.txt``; the file was removed."""


def read_checksums(path: str | Path) -> dict[str, str]:
    """``{relative path: hex sha256}`` from a ``sha256sum``-style list (``<hash> <path>``)."""
    sums = {}
    for line in Path(path).read_text().splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2:
            sums[parts[1].lstrip("*").strip()] = parts[0].lower()
    return sums


class _Fetcher:
    """Fetches relative paths from ``base_url`` into ``root`` with resume and verification."""

    def __init__(self, base_url: str, root: Path, timeout: float):
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.root = root
        self.timeout = timeout
        self.sums: dict[str, str] = {}
        self.fetched = 0
        self._lock = threading.Lock()

    def url(self, rel: str) -> str:
        return self.base_url + urllib.parse.quote(rel)

    def is_done(self, rel: str) -> bool:
        """True when ``rel`` is in place and, where listed, matches its checksum."""
        dest = self.root / rel
        if not dest.is_file():
            return False
        expected = self.sums.get(rel)
        if expected is None or file_sha256(dest) == expected:
            return True
        log.warning("%s does not match %s; downloading it again", dest, CHECKSUMS)
        dest.unlink()
        return False

    def fetch(self, rel: str, optional: bool = False) -> bool:
        """Make ``root/rel`` present and verified; False only for an absent optional file."""
        if self.is_done(rel):
            return True
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        resumed = self._download(rel, part, optional)
        if resumed is None:
            return False
        expected = self.sums.get(rel)
        if expected is not None and file_sha256(part) != expected:
            if resumed:
                # the kept prefix may be what is wrong (a file changed since): retry from zero
                log.warning("%s failed its checksum after resuming; downloading it afresh", rel)
                part.unlink()
                self._download(rel, part, optional)
            got = file_sha256(part)
            if got != expected:
                part.unlink()
                raise ChecksumError(
                    f"{rel} from {self.url(rel)} has SHA-256 {got}, but {CHECKSUMS} lists "
                    f"{expected}; the corrupt file was removed, nothing was kept at {dest}"
                )
        os.replace(part, dest)
        with self._lock:
            self.fetched += 1
        return True

    def _download(self, rel: str, part: Path, optional: bool) -> bool | None:
        """Write ``rel`` to ``part``; True if resumed, False if fresh, None if absent+optional."""
        offset = part.stat().st_size if part.is_file() else 0
        request = urllib.request.Request(self.url(rel), headers={"User-Agent": "ecgrisk"})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset:
                # the server cannot serve past our .part (e.g. the file shrank): start over
                part.unlink()
                return self._download(rel, part, optional)
            if err.code == 404 and optional:
                return None
            raise DownloadError(f"{self.url(rel)}: HTTP {err.code} {err.reason}") from err
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise DownloadError(
                f"cannot reach {self.url(rel)}: {reason}; download manually from "
                f"{self.base_url} into {self.root}"
            ) from err
        with response:
            resumed = bool(offset) and response.status == 206
            # a 200 answer to a Range request is the whole file: the .part is rewritten
            with open(part, "ab" if resumed else "wb") as out:
                try:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        out.write(block)
                except (OSError, http.client.HTTPException) as err:
                    raise DownloadError(
                        f"download of {self.url(rel)} broke off ({err}); run again to resume "
                        f"from {part}"
                    ) from err
        return resumed


def record_files(database_csv: str | Path, records: int | None, fs: int) -> list[str]:
    """Relative ``.hea``/``.dat`` paths of the first ``records`` rows by ``ecg_id``.

    Parameters
    ----------
    database_csv : ``ptbxl_database.csv``.
    records : how many records (first by ``ecg_id``); None for all.
    fs : 100 (``filename_lr``) or 500 (``filename_hr``).

    Returns
    -------
    list of str
        ``[2 * n]`` paths such as ``records100/00000/00001_lr.hea``.
    """
    column = {100: "filename_lr", 500: "filename_hr"}[fs]
    with open(database_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and column not in rows[0]:
        raise DownloadError(f"{database_csv} has no {column} column")
    rows.sort(key=lambda r: int(float(r["ecg_id"])))
    if records is not None:
        rows = rows[:records]
    return [f"{r[column]}{ext}" for r in rows for ext in (".hea", ".dat")]


def download_ptbxl(
    root: str | Path,
    records: int | None = None,
    fs: int = 100,
    base_url: str = PTBXL_URL,
    progress: bool = True,
    workers: int = 4,
    timeout: float = 30.0,
) -> Path:
    """Download PTB-XL, or its first ``records`` records, into ``root`` (resumable).

    Fetches ``SHA256SUMS.txt``, ``ptbxl_database.csv``, ``scp_statements.csv``,
    ``LICENSE.txt`` (when the server has it), then ``<record>.hea`` and ``<record>.dat`` of the
    chosen sampling rate. Files already present and matching the checksum list are skipped;
    a ``.part`` left by an interrupted run resumes with an HTTP ``Range`` request. The CSV is
    kept whole even for a subset: :class:`ecgrisk.data.ptbxl.PTBXL` reports the absent records.

    Parameters
    ----------
    root : destination folder (created).
    records : number of records to fetch, first by ``ecg_id``; None for all 21799.
    fs : 100 (``records100/``, 1.2 GB in full) or 500 (``records500/``).
    base_url : the dataset's folder URL (a mirror or a local server works too).
    progress : show a progress bar over files.
    workers : parallel downloads.
    timeout : seconds to wait on a silent connection.

    Returns
    -------
    Path
        ``root``, resolved.

    Raises
    ------
    DownloadError
        The server cannot be reached or answers with an error.
    ChecksumError
        A file's SHA-256 differs from ``SHA256SUMS.txt`` (the file is removed).
    """
    if fs not in (100, 500):
        raise DownloadError(f"fs must be 100 or 500, got {fs!r}")
    if records is not None and (not isinstance(records, int) or records < 1):
        raise DownloadError(f"records must be a positive int or None, got {records!r}")
    if workers < 1:
        raise DownloadError(f"workers must be >= 1, got {workers!r}")
    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    fetcher = _Fetcher(base_url, root, timeout)

    fetcher.fetch(CHECKSUMS)
    fetcher.sums = read_checksums(root / CHECKSUMS)
    for rel in REQUIRED:
        fetcher.fetch(rel)
    for rel in OPTIONAL:
        fetcher.fetch(rel, optional=True)

    files = record_files(root / "ptbxl_database.csv", records, fs)
    todo = [rel for rel in files if not fetcher.is_done(rel)]
    log.info("PTB-XL %d Hz: %d of %d record files to fetch into %s", fs, len(todo), len(files), root)
    if todo:
        with progress_bar(len(todo), f"PTB-XL {fs} Hz", enabled=progress) as advance:
            with ThreadPoolExecutor(max_workers=min(workers, len(todo))) as pool:
                futures = {pool.submit(fetcher.fetch, rel): rel for rel in todo}
                for future in futures:
                    future.add_done_callback(lambda _f: advance())
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for future in pending:
                    future.cancel()
                for future in done:
                    if future.exception() is not None:
                        raise future.exception()
    log.info("PTB-XL: %d files downloaded into %s", fetcher.fetched, root)
    return root
