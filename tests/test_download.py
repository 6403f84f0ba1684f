"""PTB-XL downloader against a local HTTP server in PhysioNet's layout (no network needed)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import threading
import time

import pytest

from ecgrisk.data.download import ChecksumError, DownloadError, download_ptbxl, read_checksums
from ecgrisk.data.ptbxl import PTBXL

RECORDS = [f"records100/00000/{k:05d}_lr{ext}" for k in range(1, 6) for ext in (".hea", ".dat")]


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, honours ``Range: bytes=N-`` with 206, and logs (path, range) requests."""

    log: list  # set per server via a subclass

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        self.log.append((self.path, self.headers.get("Range")))
        rng = self.headers.get("Range")
        if rng is None:
            return super().do_GET()
        path = self.translate_path(self.path)
        try:
            data = open(path, "rb").read()
        except OSError:
            return self.send_error(404)
        start = int(rng.removeprefix("bytes=").split("-")[0])
        if start >= len(data):
            return self.send_error(416)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


class PlainHandler(RangeHandler):
    """Ignores Range, as ``SimpleHTTPRequestHandler`` does: always the whole file with 200."""

    def do_GET(self):
        self.log.append((self.path, self.headers.get("Range")))
        return http.server.SimpleHTTPRequestHandler.do_GET(self)


@pytest.fixture
def mirror(ptbxl_root, tmp_path):
    """A served copy: the two CSVs, SHA256SUMS.txt, LICENSE.txt and records 1-5 at 100 Hz."""
    site = tmp_path / "site"
    for rel in ["ptbxl_database.csv", "scp_statements.csv", *RECORDS]:
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ptbxl_root / rel, site / rel)
    if not (ptbxl_root / "SHA256SUMS.txt").is_file():  # a synthetic tree: the mirror lists its own
        (site / "LICENSE.txt").write_text("synthetic records, no license\n")
        sums = {p.relative_to(site).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(site.rglob("*")) if p.is_file()}
        (site / "SHA256SUMS.txt").write_text("".join(f"{h} {p}\n" for p, h in sums.items()))
        return site
    shutil.copy(ptbxl_root / "LICENSE.txt", site / "LICENSE.txt")
    sums = read_checksums(ptbxl_root / "SHA256SUMS.txt")
    # the shared list is PhysioNet's original: it holds these records as they are...
    for rel in RECORDS:
        assert sums[rel] == hashlib.sha256((site / rel).read_bytes()).hexdigest(), rel
    # ...but the shared CSV is trimmed to 500 rows, so a consistent mirror lists its own hash
    sums["ptbxl_database.csv"] = hashlib.sha256((site / "ptbxl_database.csv").read_bytes()).hexdigest()
    (site / "SHA256SUMS.txt").write_text("".join(f"{h} {p}\n" for p, h in sums.items()))
    return site


@pytest.fixture
def serve():
    servers = []

    def start(site, handler=RangeHandler):
        log = []
        cls = type("H", (handler,), {"log": log})
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(cls, directory=str(site)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/", log

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _fetched(log):
    return sorted(p.lstrip("/") for p, _ in log)


def test_download_records_then_load(mirror, serve, tmp_path):
    url, log = serve(mirror)
    root = download_ptbxl(tmp_path / "data", records=5, base_url=url, progress=False)
    for rel in RECORDS:
        assert (root / rel).read_bytes() == (mirror / rel).read_bytes()
    assert not list(root.rglob("*.part"))
    # the CSV stays whole: 500 rows although 5 records came
    assert (root / "ptbxl_database.csv").read_bytes() == (mirror / "ptbxl_database.csv").read_bytes()
    assert _fetched(log) == sorted(["SHA256SUMS.txt", "ptbxl_database.csv", "scp_statements.csv",
                                    "LICENSE.txt", *RECORDS])
    ds = PTBXL(root, task="all")
    assert ds.record_ids == ["1", "2", "3", "4", "5"] and len(ds.missing) == 495

    log.clear()
    download_ptbxl(root, records=5, base_url=url, progress=False)
    assert log == []  # everything present and verified: no request at all


def test_optional_license_may_be_absent(mirror, serve, tmp_path):
    (mirror / "LICENSE.txt").unlink()
    url, log = serve(mirror)
    root = download_ptbxl(tmp_path / "data", records=1, base_url=url, progress=False)
    assert not (root / "LICENSE.txt").exists() and (root / "records100/00000/00001_lr.dat").is_file()


def test_altered_file_raises_and_leaves_nothing(mirror, serve, tmp_path):
    bad = mirror / "records100/00000/00003_lr.dat"
    data = bytearray(bad.read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    url, _ = serve(mirror)
    root = tmp_path / "data"
    with pytest.raises(ChecksumError, match="00003_lr.dat"):
        download_ptbxl(root, records=5, base_url=url, progress=False, workers=1)
    assert not (root / "records100/00000/00003_lr.dat").exists()
    assert not list(root.rglob("*.part"))


def test_original_checksums_catch_trimmed_csv(mirror, serve, real_ptbxl_root, tmp_path):
    # served with PhysioNet's original list, the trimmed CSV is (rightly) rejected
    shutil.copy(real_ptbxl_root / "SHA256SUMS.txt", mirror / "SHA256SUMS.txt")
    url, _ = serve(mirror)
    with pytest.raises(ChecksumError, match="ptbxl_database.csv"):
        download_ptbxl(tmp_path / "data", records=1, base_url=url, progress=False)
    assert not (tmp_path / "data" / "ptbxl_database.csv").exists()


@pytest.mark.parametrize("handler", [RangeHandler, PlainHandler])
def test_interrupted_part_resumes(mirror, serve, tmp_path, handler):
    url, log = serve(mirror, handler)
    root = download_ptbxl(tmp_path / "data", records=2, base_url=url, progress=False)
    rel = "records100/00000/00002_lr.dat"
    whole = (root / rel).read_bytes()
    (root / rel).unlink()
    (root / (rel + ".part")).write_bytes(whole[:1000])
    log.clear()
    download_ptbxl(root, records=2, base_url=url, progress=False)
    assert log == [("/" + rel, "bytes=1000-")]
    assert (root / rel).read_bytes() == whole and not (root / (rel + ".part")).exists()


def test_stale_local_file_is_replaced(mirror, serve, tmp_path):
    url, log = serve(mirror)
    root = download_ptbxl(tmp_path / "data", records=1, base_url=url, progress=False)
    rel = "records100/00000/00001_lr.hea"
    (root / rel).write_text("damaged")
    log.clear()
    download_ptbxl(root, records=1, base_url=url, progress=False)
    assert _fetched(log) == [rel]
    assert (root / rel).read_bytes() == (mirror / rel).read_bytes()


def test_unreachable_server_fails_fast(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"cannot reach http://127\.0\.0\.1:\d+/SHA256SUMS"):
        download_ptbxl(tmp_path / "data", records=1, base_url=f"http://127.0.0.1:{port}",
                       progress=False)
    assert time.monotonic() - start < 5


def test_bad_arguments(tmp_path):
    with pytest.raises(DownloadError, match="100 or 500"):
        download_ptbxl(tmp_path, fs=250)
    with pytest.raises(DownloadError, match="positive int"):
        download_ptbxl(tmp_path, records=0)
