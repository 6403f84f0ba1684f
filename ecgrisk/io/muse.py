"""GE MUSE XML resting ECGs read with the standard library: the rhythm leads in mV, age, sex, time.

ecgdatakit (:mod:`ecgrisk.io.clinical`) reads MUSE too, but through defusedxml's pure-Python tree
builder and every section of the file (measurements, statements, pace spikes): 6.3 ms for the
real export in ``tests/data/formats`` against 2.4 ms here (means of 200 reads, one core). A MUSE
archive is MUSE throughout, so that is most of what a reader process does on it.
:func:`read_muse` takes the common case only: one rhythm waveform whose leads are whole
little-endian samples (``LeadSampleSize`` 1, 2 or 4) with the byte and sample counts and CRC32
they state, scaled in micro-, milli- or volts, with no baseline offset, the age in years and the
acquisition time in MUSE's ``MM-DD-YYYY``/``HH:MM:SS``. Anything else returns None and ecgdatakit
reads, warns about or refuses the file as it did before this module.

Safety: a file that declares entities is left to ecgdatakit, which refuses it (defusedxml), and
so is a file in UTF-16 or UTF-32, where a byte search would not find the declaration. The
parser here is expat's, which never fetches an external DTD or entity; MUSE's own ``<!DOCTYPE
RestingECG SYSTEM "restecg.dtd">`` only names one.
"""

from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np

from ecgrisk.io.ecg import normalise_age

__all__ = ["read_muse"]

_UNIT_TO_MV = {"MICROVOLTS": 1e-3, "MILLIVOLTS": 1.0, "VOLTS": 1e3}
_SEXES = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}
_OFFSETS = ("FirstSampleBaseline", "LeadOffsetFirstSample")  # undocumented: ecgdatakit warns


def read_muse(path: Path) -> tuple[np.ndarray, list[str], float, dict] | None:
    """The rhythm leads of a GE MUSE XML file, or None when the file is not the common case.

    Returns
    -------
    (signal ``[leads, samples]`` float32 in mV, lead names as the file spells them, fs in Hz,
    meta with ``age``, ``sex``, ``acquired`` and ``reader``), as
    :func:`~ecgrisk.io.clinical.read_clinical` returns.
    """
    raw = Path(path).read_bytes()
    # the search for a declaration holds in ASCII-compatible encodings; UTF-16 and UTF-32 (a
    # byte-order mark or a NUL among the first bytes) are left to ecgdatakit
    if b"\x00" in raw[:4] or raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"<!ENTITY" in raw:
        return None
    try:
        root = ET.fromstring(raw)
        if root.tag != "RestingECG":
            return None
        rhythm = [w for w in root.findall("Waveform")
                  if (_text(w, "WaveformType").lower() or "rhythm") == "rhythm"]
        if len(rhythm) != 1:
            return None
        fs = float(round(float(_text(rhythm[0], "SampleBase"))
                         * 10 ** float(_text(rhythm[0], "SampleExponent") or 0)))
        leads = [_lead(ld) for ld in rhythm[0].findall("LeadData")]
        meta = _meta(root)
    except (ET.ParseError, ValueError, TypeError, binascii.Error):  # ecgdatakit names the fault
        return None
    if fs <= 0 or not leads or None in leads or meta is None:
        return None
    names = [name for name, _ in leads]
    if len(set(names)) != len(names) or len({len(x) for _, x in leads}) != 1:
        return None
    return np.stack([x for _, x in leads]), names, fs, meta


def _text(node, tag: str) -> str:
    return (node.findtext(tag) or "").strip()


def _lead(ld) -> tuple[str, np.ndarray] | None:
    """(LeadID, samples in mV float32) of one ``LeadData``, or None outside the common case."""
    name, data = _text(ld, "LeadID"), ld.findtext("WaveFormData") or ""
    size = int(_text(ld, "LeadSampleSize") or 2)
    scale = _UNIT_TO_MV.get(_text(ld, "LeadAmplitudeUnits").upper())
    if not name or not data or size not in (1, 2, 4) or scale is None:
        return None
    if any(float(_text(ld, tag) or 0) for tag in _OFFSETS):
        return None
    payload = base64.b64decode("".join(data.split()), validate=True)
    crc = _text(ld, "LeadDataCRC32")
    if (len(payload) % size or (crc.isdigit() and zlib.crc32(payload) != int(crc))
            or int(_text(ld, "LeadByteCountTotal") or len(payload)) != len(payload)):
        return None
    samples = np.frombuffer(payload, dtype=f"<i{size}")
    if int(_text(ld, "LeadSampleCountTotal") or len(samples)) != len(samples):
        return None
    mv = samples * (float(_text(ld, "LeadAmplitudeUnitsPerBit")) * scale)
    return name, mv.astype(np.float32)


def _meta(root) -> dict | None:
    """Age (years), sex and acquisition time, or None where ecgdatakit would read them otherwise
    (another age unit, an age from the birth date, another date layout)."""
    demo, test = root.find("PatientDemographics"), root.find("TestDemographics")
    age_text = "" if demo is None else _text(demo, "PatientAge")
    units = "" if demo is None else _text(demo, "AgeUnits").upper()
    if age_text and units != "YEARS":
        return None
    if not age_text and demo is not None and _text(demo, "DateofBirth"):
        return None  # ecgdatakit takes the age from the birth date
    acquired = None
    day = "" if test is None else _text(test, "AcquisitionDate")
    at = "" if test is None else _text(test, "AcquisitionTime")
    if day and at:
        try:
            acquired = datetime.strptime(f"{day} {at}", "%m-%d-%Y %H:%M:%S").isoformat()
        except ValueError:
            return None
    # whole years, as ecgdatakit truncates them
    return {"age": normalise_age(int(float(age_text))) if age_text else None,
            "sex": _SEXES.get("" if demo is None else _text(demo, "Gender").upper()),
            "acquired": acquired, "reader": "ecgrisk.io.muse"}
