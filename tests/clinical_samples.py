"""Writers of small, realistic clinical ECG files, for testing the readers on them.

Each writer takes digital values in microvolts (an integer array ``[n_leads, n_samples]``), the
lead names (``I II III aVR aVL aVF V1..V6`` spelling), the sampling rate in Hz and optionally the
patient's age in years and sex (``"M"``/``"F"``), and writes one file. Only numpy and the standard
library are used, so tests need nothing else to make their samples.

``write_hl7_aecg``
    HL7 V3 Annotated ECG XML (ANSI/HL7 V3 ECG R1-2004, with the FDA aECG implementation guide):
    ``AnnotatedECG`` with one RHYTHM ``series`` whose ``sequenceSet`` holds a TIME_ABSOLUTE
    ``GLIST_TS`` (increment 1/fs s) and one ``SLIST_PQ`` per lead (origin 0 uV, scale 1 uV, the
    samples as ``<digits>``), lead codes ``MDC_ECG_LEAD_*`` from ISO/IEEE 11073-10101. Sex is the
    trial subject's ``administrativeGenderCode``; age is a related observation coded LOINC
    21612-7 (reported age) in years, under ``AnnotatedECG/controlVariable``.
``write_scp_ecg``
    SCP-ECG 2.0 binary (EN 1064:2005 / ISO 11073-91064:2009): the record CRC and length, then
    section 0 (pointers for sections 0-11), section 1 (patient and acquisition tags, among them
    age tag 4 and sex tag 8, closed by tag 255), section 3 (lead definition with the standard's
    lead codes) and section 6 (rhythm data stored as plain 16-bit amplitudes: no Huffman
    encoding, no difference encoding, no bimodal compression, no reference beat subtraction;
    AVM 1000 nV, sample interval in microseconds). Every section and the record carry the
    CRC-CCITT the standard defines.
``write_philips_xml``
    Philips Sierra ECG XML, document type PhilipsECG version 1.04 (``restingecgdata``), with
    the leads in ``waveforms/parsedwaveforms``: 16-bit samples at 1 uV per count, either plain
    Base64 or XLI compressed and then Base64 encoded. Philips publishes no description of XLI;
    the scheme written here is the one public decoders implement (one chunk per lead: an 8-byte
    header, then 10-bit LZW over the high bytes and then the low bytes of second-difference
    codes). As on a Philips cart, XLI data stores leads III, aVR, aVL and aVF as residuals
    against what leads I and II predict; the readers rebuild them, and get the input back
    exactly whether or not it obeys Einthoven's law.
"""

from __future__ import annotations

import base64
import binascii
import struct
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

__all__ = ["EIGHT", "FS", "TWELVE", "synthetic_uv", "write_hl7_aecg", "write_philips_xml", "write_scp_ecg"]

# One acquisition time for every sample, so files written twice are identical
ACQUIRED = datetime(2024, 1, 15, 9, 30, 0)
PATIENT_ID = "TEST-0001"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

FS = 500
TWELVE = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
EIGHT = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]


def synthetic_uv(leads: list[str], seconds: float = 10.0) -> np.ndarray:
    """Integer microvolts, within +-3000: sines of a different amplitude per independent lead,
    a spike train for QRS-like slopes and a little noise; III, aVR, aVL and aVF follow from I
    and II by Einthoven's and Goldberger's relations (rounded), as on a real recording."""
    t = np.arange(int(seconds * FS)) / FS
    rng = np.random.default_rng(0)
    spikes = np.clip(1 - np.abs((t % 0.8) - 0.4) / 0.02, 0, None)
    independent = {}
    for k, name in enumerate(["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]):
        amp = 200 + 180 * k
        wave = amp * np.sin(2 * np.pi * (1.1 + 0.2 * k) * t) + 0.3 * amp * np.sin(
            2 * np.pi * 7.3 * t + k) + 0.6 * amp * spikes
        independent[name] = np.rint(wave) + rng.integers(-3, 4, t.size)
    i, ii = independent["I"], independent["II"]
    derived = {"III": ii - i, "aVR": np.rint(-(i + ii) / 2), "aVL": np.rint(i - ii / 2),
               "aVF": np.rint(ii - i / 2)}
    signal = np.stack([independent.get(name, derived.get(name)) for name in leads])
    assert np.abs(signal).max() <= 3000
    return signal.astype(np.int64)



def _digital(signal_uv, leads) -> np.ndarray:
    signal = np.asarray(signal_uv)
    if signal.ndim != 2 or signal.shape[0] != len(leads):
        raise ValueError(f"signal shape {signal.shape} does not match {len(leads)} leads")
    as_int = np.rint(signal).astype(np.int64)
    if not np.array_equal(as_int, signal):
        raise ValueError("samples must be integer microvolts")
    return as_int


def _int16(signal: np.ndarray, what: str) -> np.ndarray:
    if signal.size and (signal.min() < -32768 or signal.max() > 32767):
        raise ValueError(f"{what} does not fit 16-bit samples")
    return signal.astype(np.int16)


def _check_sex(sex: str | None) -> None:
    if sex not in (None, "M", "F"):
        raise ValueError(f"sex must be 'M', 'F' or None, not {sex!r}")


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    el.text = text
    return el


def _write_xml(root: ET.Element, path: Path) -> Path:
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="UTF-8", xml_declaration=True)
    return path


# ---------------------------------------------------------------------------
# HL7 aECG
# ---------------------------------------------------------------------------

_ACT_CODES = "2.16.840.1.113883.5.4"  # HL7 ActCode: RHYTHM, TIME_ABSOLUTE
_MDC = "2.16.840.1.113883.6.24"


def _hl7_ts(when: datetime) -> str:
    return when.strftime("%Y%m%d%H%M%S")


def write_hl7_aecg(path, signal_uv, leads, fs, age=None, sex=None) -> Path:
    """Write an HL7 aECG file holding ``signal_uv`` as its rhythm series."""
    signal, path = _digital(signal_uv, leads), Path(path)
    _check_sex(sex)
    end = ACQUIRED + timedelta(seconds=signal.shape[1] / fs)
    span = {"low": _hl7_ts(ACQUIRED), "high": _hl7_ts(end)}

    # Namespaces are written as plain attributes: ElementTree would otherwise invent prefixes
    root = ET.Element("AnnotatedECG", {"xmlns": "urn:hl7-org:v3", "xmlns:xsi": XSI})
    _sub(root, "id", root="2.16.840.1.113883.3.1", extension="ecgrisk-test-1")
    _sub(root, "code", code="93000", codeSystem="2.16.840.1.113883.6.12", codeSystemName="CPT-4")
    effective = _sub(root, "effectiveTime")
    for edge, value in span.items():
        _sub(effective, edge, value=value)

    assignment = _sub(_sub(_sub(_sub(root, "componentOf"), "timepointEvent"), "componentOf"),
                      "subjectAssignment")
    subject = _sub(_sub(assignment, "subject"), "trialSubject")
    _sub(subject, "id", root="2.16.840.1.113883.3.1", extension=PATIENT_ID)
    person = _sub(subject, "subjectDemographicPerson")
    if sex is not None:
        _sub(person, "administrativeGenderCode", code=sex, codeSystem="2.16.840.1.113883.5.1")
    trial = _sub(_sub(assignment, "componentOf"), "clinicalTrial")
    _sub(trial, "id", root="2.16.840.1.113883.3.1", extension="ecgrisk-tests")

    if age is not None:
        # The subject's age at the ECG, as the reported-age observation (unit "a": years)
        observation = _sub(_sub(root, "controlVariable"), "relatedObservation")
        _sub(observation, "code", code="21612-7", codeSystem="2.16.840.1.113883.6.1",
             codeSystemName="LOINC", displayName="Age")
        _sub(observation, "value", **{"xsi:type": "PQ", "value": str(int(age)), "unit": "a"})

    series = _sub(_sub(root, "component"), "series")
    _sub(series, "code", code="RHYTHM", codeSystem=_ACT_CODES)
    effective = _sub(series, "effectiveTime")
    for edge, value in span.items():
        _sub(effective, edge, value=value)
    sequences = _sub(_sub(series, "component"), "sequenceSet")

    time = _sub(_sub(sequences, "component"), "sequence")
    _sub(time, "code", code="TIME_ABSOLUTE", codeSystem=_ACT_CODES)
    value = _sub(time, "value", **{"xsi:type": "GLIST_TS"})
    _sub(value, "head", value=_hl7_ts(ACQUIRED) + ".000")
    _sub(value, "increment", value=f"{1 / fs:.12g}", unit="s")

    for name, samples in zip(leads, signal, strict=True):
        sequence = _sub(_sub(sequences, "component"), "sequence")
        # MDC spells the augmented leads in capitals: MDC_ECG_LEAD_AVR
        _sub(sequence, "code", code=f"MDC_ECG_LEAD_{name.upper()}", codeSystem=_MDC,
             codeSystemName="MDC")
        value = _sub(sequence, "value", **{"xsi:type": "SLIST_PQ"})
        _sub(value, "origin", value="0", unit="uV")
        _sub(value, "scale", value="1", unit="uV")
        _sub(value, "digits", " ".join(map(str, samples.tolist())))
    return _write_xml(root, path)


# ---------------------------------------------------------------------------
# SCP-ECG
# ---------------------------------------------------------------------------

_SCP_VERSION = 20  # protocol and section version 2.0
_SCP_LEAD_CODES = {"I": 1, "II": 2, "V1": 3, "V2": 4, "V3": 5, "V4": 6, "V5": 7, "V6": 8,
                   "III": 61, "aVR": 62, "aVL": 63, "aVF": 64}
_SCP_AVM_NV = 1000  # one count is 1 uV


def _crc_ccitt(data: bytes) -> int:
    # CRC-CCITT as SCP-ECG defines it: polynomial 0x1021, initial value 0xFFFF, no reflection
    return binascii.crc_hqx(data, 0xFFFF)


def _scp_section(sid: int, body: bytes) -> bytes:
    if len(body) % 2:
        body += b"\0"  # an even length keeps the 16-bit fields of the next section aligned
    # Section 0's reserved header bytes identify the record, from SCP-ECG 2.0 on
    reserved = b"SCPECG" if sid == 0 else bytes(6)
    rest = struct.pack("<HIBB6s", sid, 16 + len(body), _SCP_VERSION, _SCP_VERSION, reserved)
    rest += body
    return struct.pack("<H", _crc_ccitt(rest)) + rest


def _scp_tag(tag: int, value: bytes) -> bytes:
    return struct.pack("<BH", tag, len(value)) + value


def _scp_patient(age, sex) -> bytes:
    # Tag 14, the acquiring device: only the protocol revision is stated, the codes we cannot
    # vouch for stay 0 (unspecified), then its five NUL-terminated strings
    device = struct.pack("<3H2B6s5B16sB", 0, 0, 0, 0, 0, b"", _SCP_VERSION, 0, 0, 0, 0, b"", 1)
    device += b"\0" + b"\0" + b"ecgrisk tests\0" + b"\0" + b"\0"
    tags = [_scp_tag(2, PATIENT_ID.encode("ascii") + b"\0")]
    if age is not None:
        tags.append(_scp_tag(4, struct.pack("<HB", int(age), 1)))  # unit 1: years
    if sex is not None:
        tags.append(_scp_tag(8, bytes([{"M": 1, "F": 2}[sex]])))
    tags += [
        _scp_tag(14, device),
        _scp_tag(25, struct.pack("<HBB", ACQUIRED.year, ACQUIRED.month, ACQUIRED.day)),
        _scp_tag(26, struct.pack("<BBB", ACQUIRED.hour, ACQUIRED.minute, ACQUIRED.second)),
        _scp_tag(255, b""),
    ]
    return b"".join(tags)


def write_scp_ecg(path, signal_uv, leads, fs, age=None, sex=None) -> Path:
    """Write an SCP-ECG record holding ``signal_uv`` as uncompressed rhythm data."""
    signal, path = _int16(_digital(signal_uv, leads), "signal"), Path(path)
    _check_sex(sex)
    unknown = [name for name in leads if name not in _SCP_LEAD_CODES]
    if unknown:
        raise ValueError(f"no SCP-ECG lead code for {unknown}")
    n_leads, n_samples = signal.shape
    if 2 * n_samples > 0xFFFF:
        raise ValueError("section 6 counts each lead's bytes in 16 bits: at most 32767 samples")

    # Bit 2: all leads recorded at once; bits 3-7: how many
    leads_def = struct.pack("<BB", n_leads, 0x04 | (n_leads << 3))
    for name in leads:
        leads_def += struct.pack("<IIB", 1, n_samples, _SCP_LEAD_CODES[name])
    rhythm = struct.pack("<HHBB", _SCP_AVM_NV, round(1_000_000 / fs), 0, 0)
    rhythm += struct.pack(f"<{n_leads}H", *[2 * n_samples] * n_leads)
    rhythm += signal.astype("<i2").tobytes()
    sections = {1: _scp_section(1, _scp_patient(age, sex)), 3: _scp_section(3, leads_def),
                6: _scp_section(6, rhythm)}

    # Section 0 points at sections 0-11, the absent ones with length 0 and index 0
    sec0_length = 16 + 10 * 12
    index = {0: 7}  # 1-based byte index: section 0 follows the 6-byte record header
    position = 7 + sec0_length
    for sid, data in sections.items():
        index[sid], position = position, position + len(data)
    pointers = b"".join(
        struct.pack("<HII", sid, sec0_length if sid == 0 else len(sections.get(sid, b"")),
                    index.get(sid, 0))
        for sid in range(12)
    )
    body = _scp_section(0, pointers) + b"".join(sections.values())
    record = struct.pack("<I", 6 + len(body)) + body
    path.write_bytes(struct.pack("<H", _crc_ccitt(record)) + record)
    return path


# ---------------------------------------------------------------------------
# Philips Sierra XML
# ---------------------------------------------------------------------------

_LIMB_LEADS = ["I", "II", "III", "aVR", "aVL", "aVF"]
_LZW_BITS = 10


def _limb_residuals(signal: np.ndarray) -> np.ndarray:
    """III, aVR, aVL, aVF as a Philips cart stores them under XLI: the difference from what
    leads I and II predict (with floor division, as the readers rebuild them)."""
    i, ii, iii, avr, avl, avf = signal[:6]
    out = signal.copy()
    out[2] = ii - i - iii
    out[3] = -avr - (i + ii) // 2
    out[4] = (i - iii) // 2 - avl
    out[5] = (ii + iii) // 2 - avf
    return out


def _lzw(data: bytes) -> bytes:
    """LZW with fixed 10-bit codes, most significant bit first, no clear or stop code.

    The table grows to code 1022 and then stays as it is; the all-ones code is never given
    out, and the stream ends when fewer than 10 bits are left.
    """
    last_code = (1 << _LZW_BITS) - 2
    table: dict[tuple[int, int], int] = {}
    next_code = 256
    codes = []
    current = data[0]
    for byte in data[1:]:
        longer = table.get((current, byte))
        if longer is not None:
            current = longer
            continue
        codes.append(current)
        if next_code <= last_code:
            table[current, byte] = next_code
            next_code += 1
        current = byte
    codes.append(current)

    out = bytearray()
    bits = pending = 0
    for code in codes:
        bits = (bits << _LZW_BITS) | code
        pending += _LZW_BITS
        while pending >= 8:
            pending -= 8
            out.append((bits >> pending) & 0xFF)
        bits &= (1 << pending) - 1
    if pending:
        out.append((bits << (8 - pending)) & 0xFF)
    return bytes(out)


def _xli_chunk(samples: np.ndarray) -> bytes:
    """One lead as an XLI chunk.

    Codes 0 and 1 are the first two samples. From sample 2 on each sample is predicted
    linearly from the two before it, and the miss ``2*x[n-1] - x[n-2] - x[n]`` is kept; the
    first miss goes in the chunk header, each later one is stored plus 64 in the code before
    it (so the code stream runs one step ahead of the samples and its last code is unused).
    """
    x = samples.astype(np.int64)
    if len(x) < 3:
        raise ValueError("XLI needs at least 3 samples per lead")
    miss = 2 * x[1:-1] - x[:-2] - x[2:]  # miss[k] belongs to sample k + 2
    codes = np.empty_like(x)
    codes[:2] = x[:2]
    codes[2:-1] = miss[1:] + 64
    codes[-1] = 64
    codes = _int16(codes, "XLI second differences").view(np.uint16)
    head = _int16(miss[:1], "XLI first second difference")[0]
    # All high bytes, then all low bytes: the slowly varying high bytes compress well
    high, low = (codes >> 8).astype(np.uint8), (codes & 0xFF).astype(np.uint8)
    packed = _lzw(high.tobytes() + low.tobytes())
    return struct.pack("<ihh", len(packed), 0, head) + packed


def write_philips_xml(path, signal_uv, leads, fs, age=None, sex=None, compressed=True) -> Path:
    """Write a Philips Sierra ECG XML (PhilipsECG 1.04) file holding ``signal_uv``."""
    signal, path = _int16(_digital(signal_uv, leads), "signal"), Path(path)
    _check_sex(sex)
    n_leads, n_samples = signal.shape
    if compressed:
        stored = signal.astype(np.int64)
        if list(leads[:6]) == _LIMB_LEADS:
            stored = _limb_residuals(stored)
        payload = b"".join(_xli_chunk(lead) for lead in stored)
    else:
        payload = signal.astype("<i2").tobytes()  # one lead after another, not interleaved

    root = ET.Element("restingecgdata", {"xmlns": "http://www3.medical.philips.com",
                                         "xmlns:xsi": XSI})
    info = _sub(root, "documentinfo")
    _sub(info, "documentname", f"{PATIENT_ID}.xml")
    _sub(info, "documenttype", "PhilipsECG")
    _sub(info, "documentversion", "1.04")

    acquisition = _sub(root, "dataacquisition", date=ACQUIRED.strftime("%Y-%m-%d"),
                       time=ACQUIRED.strftime("%H:%M:%S"))
    _sub(acquisition, "machine", "PageWriter", machineid="1")
    signal_node = _sub(acquisition, "signalcharacteristics")
    for tag, text in (("samplingrate", fs), ("resolution", 1), ("acquisitiontype", "STD-12"),
                      ("bitspersample", 16), ("signaloffset", 0), ("signalsigned", 1),
                      ("numberchannelsvalid", n_leads), ("numberchannelsallocated", n_leads)):
        _sub(signal_node, tag, str(text))

    patient = _sub(_sub(root, "patient"), "generalpatientdata")
    _sub(patient, "patientid", PATIENT_ID)
    if age is not None:
        _sub(_sub(patient, "age"), "years", str(int(age)))
    if sex is not None:
        _sub(patient, "sex", {"M": "Male", "F": "Female"}[sex])

    attrs = {
        "durationperchannel": f"{1000 * n_samples / fs:g}",  # ms
        "samplespersecond": str(fs),
        "leadlabels": " ".join(leads),
        "numberofleads": str(n_leads),
        "dataencoding": "Base64",
        "compressflag": "True" if compressed else "False",
    }
    if compressed:
        attrs["compression"] = "XLI"
    _sub(_sub(root, "waveforms"), "parsedwaveforms", base64.b64encode(payload).decode("ascii"),
         **attrs)
    return _write_xml(root, path)
