"""``ecgrisk convert``: any ECG files ecgrisk reads -> WFDB or npz, with a manifest.

    ecgrisk convert exports/*.xml dicom/ --to wfdb --out data/clinic

Clinical exports (DICOM, MUSE/Philips XML, HL7 aECG, SCP-ECG, EDF) become records every stage
takes (``data=folder data.root=data/clinic``). Each record is read as ``read_ecg`` reads it (12
standard leads in mV; 8-lead files with III, aVR, aVL, aVF derived) and written with its present
leads. A file that cannot be read is a manifest row with its error and the batch goes on; the
manifest (``manifest.csv`` in ``--out``: record, source, source_format, output, leads,
derived_leads, age, sex, status, error) is written atomically at the end and lists every input.
Converting into a folder that has a manifest adds to it: the rows of files not converted again
stay, and their record names are not given to new records.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ecgrisk.files import atomic_write_text
from ecgrisk.io import STANDARD_LEADS, ECGReadError, read_ecg
from ecgrisk.io.write import write_ecg
from ecgrisk.signals import raise_if_interrupted

__all__ = ["MANIFEST_COLUMNS", "convert_records"]

MANIFEST_COLUMNS = ("record", "source", "source_format", "output", "leads", "derived_leads",
                    "age", "sex", "status", "error")


def _safe_name(record_id: str) -> str:
    """A record id as a relative path WFDB accepts: letters, digits, '-' and '_' per part."""
    parts = [re.sub(r"[^A-Za-z0-9_-]+", "_", p).strip("_") or "record"
             for p in Path(record_id).parts if p not in ("", ".", "..", "/")]
    return "/".join(parts) or "record"


def convert_records(records: list[tuple[str, str]], out: str | Path, to: str,
                    fs: float | None = None, progress: bool = True) -> list[dict]:
    """Convert ``(record id, path)`` pairs into ``out``; return and write the manifest rows."""
    from ecgrisk.progress import progress_bar

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    again = {path for _, path in records}
    kept = [r for r in _earlier_rows(out / "manifest.csv") if r["source"] not in again]
    rows, used = [], {r["record"].lower() for r in kept}
    with progress_bar(len(records), f"converting to {to}", enabled=progress) as advance:
        for record_id, path in records:
            raise_if_interrupted()  # a Ctrl-C whose exception Python dropped stops here
            name = _safe_name(record_id)
            stem, k = name, 1
            while name.lower() in used:  # a.xml and a.dcm are two records
                k += 1
                name = f"{stem}_{k}"
            used.add(name.lower())
            row = dict.fromkeys(MANIFEST_COLUMNS, "") | {"record": name, "source": path}
            try:
                ecg = read_ecg(path, fs=fs)
                written = write_ecg(ecg, out / name, to)
                row.update(source_format=ecg.meta.get("source_format", ""),
                           output=str(written.relative_to(out)), status="ok",
                           leads=";".join(lead for lead, m in zip(STANDARD_LEADS, ecg.lead_mask,
                                                                  strict=True) if m),
                           derived_leads=";".join(ecg.meta.get("derived_leads", [])),
                           age="" if ecg.meta.get("age") is None else f"{ecg.meta['age']:g}",
                           sex=ecg.meta.get("sex") or "")
            except ECGReadError as e:
                row.update(status="failed", error=f"{type(e).__name__}: {e.reason}")
            except OSError as e:  # a write that failed (disk full, permissions) is this row's
                row.update(status="failed", error=f"{type(e).__name__}: {e}")
            rows.append(row)
            advance()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept + rows)
    atomic_write_text(out / "manifest.csv", buf.getvalue())
    return rows


def _earlier_rows(manifest: Path) -> list[dict]:
    """The rows of an earlier conversion into the same folder (none if it has no manifest)."""
    if not manifest.is_file():
        return []
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [{c: r.get(c) or "" for c in MANIFEST_COLUMNS} for r in rows if r.get("record")]
