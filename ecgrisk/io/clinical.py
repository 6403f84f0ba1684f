"""ECG files as hospital systems export them: DICOM, GE MUSE XML, Philips XML, HL7 aECG, SCP-ECG, EDF.

The format is told from the file's first bytes (:func:`sniff`), never from its suffix alone, so a
DICOM file without extension or an aECG saved as ``.txt`` is read all the same. Decoding is done
by ecgdatakit (pinned in the ``formats`` extra; DICOM through pydicom underneath): one well-kept
library that reads all six formats, including Philips' XLI-compressed waveforms, rather than six
parsers of our own. The common DICOM file is read from its bytes (:mod:`ecgrisk.io.dicom`), in a
twelfth of the time, and the common GE MUSE file by the standard library (:mod:`ecgrisk.io.muse`),
in less than half. The sniffing stays here so a file is recognised, and named in the error, even
where the extra is not installed.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from pathlib import Path

import numpy as np

from ecgrisk.io.dicom import read_dicom
from ecgrisk.io.ecg import normalise_age, normalise_sex
from ecgrisk.io.errors import (
    ECGReadError,
    EmptyFileError,
    HeaderParseError,
    HeaderSignalMismatchError,
    InvalidSignalError,
    UnknownFormatError,
)
from ecgrisk.io.muse import read_muse

__all__ = ["CLINICAL_FORMATS", "CLINICAL_IMPORTS", "CLINICAL_SUFFIXES", "read_clinical", "sniff"]

CLINICAL_FORMATS = ("dicom", "ge-muse-xml", "philips-xml", "hl7-aecg", "scp-ecg", "edf")
# suffixes worth sniffing when a folder is searched; files without a suffix are sniffed too
# (DICOM files from a PACS export often have none)
CLINICAL_SUFFIXES = (".dcm", ".dicom", ".xml", ".edf", ".scp", ".ecg")
# what reading the first common clinical file imports: scipy.fft, to bring such files (500 or
# 1000 Hz) to a model's rate (0.16-0.26 s). ecgdatakit and pydicom (0.2 s together) are
# imported only when a file falls back to them.
CLINICAL_IMPORTS = ("scipy.fft",)
_SNIFF_BYTES = 4096
# ecgdatakit's source_format -> ours
_ECGDATAKIT_NAMES = {"dicom_waveform": "dicom", "ge_muse_xml": "ge-muse-xml",
                     "sierra_xml": "philips-xml", "hl7_aecg": "hl7-aecg", "scp_ecg": "scp-ecg",
                     "edf": "edf", "edf_plus": "edf"}
# the common file of these formats, read in a fraction of ecgdatakit's time; None leaves a file
# to ecgdatakit
_COMMON_CASE_READERS = {"dicom": read_dicom, "ge-muse-xml": read_muse}
_INSTALL_HINT = "install the clinical readers: pip install 'ecgrisk[formats]'"


def sniff(path: Path) -> str | None:
    """The clinical format of ``path`` from its content (one of ``CLINICAL_FORMATS``), or None."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if head[128:132] == b"DICM":
        return "dicom"
    if len(head) >= 256 and head[:8] == b"0       " and head[184:192].strip().isdigit():
        return "edf"  # version "0" and a numeric header size, as EDF and EDF+ write them
    if _is_scp(path, head):
        return "scp-ecg"
    text = head.decode("utf-8", errors="ignore").lower()
    if "<restingecgdata" in text:
        return "philips-xml"
    if "<restingecg" in text or "<museinfo" in text:
        return "ge-muse-xml"
    if "<annotatedecg" in text:
        return "hl7-aecg"
    return None


def _is_scp(path: Path, head: bytes) -> bool:
    """SCP-ECG: record CRC, record length equal to the file size, then section 0's header."""
    if len(head) < 22:
        return False
    record_length = int.from_bytes(head[2:6], "little")
    section_id = int.from_bytes(head[8:10], "little")
    return section_id == 0 and record_length == path.stat().st_size and (
        head[16:22] == b"SCPECG" or int.from_bytes(head[10:14], "little") >= 16)


def read_clinical(path: Path, kind: str) -> tuple[np.ndarray, list[str], float, dict]:
    """Decode one clinical file.

    Parameters
    ----------
    path : the file.
    kind : its format, as :func:`sniff` named it.

    Returns
    -------
    (signal ``[channels, samples]`` float32 in mV, lead names as the file spells them, fs in Hz,
    meta with ``age``, ``sex`` ("M"/"F"/None), ``acquired`` (ISO time or None), ``source_format``
    (``kind``), ``reader`` and ``reader_warnings``).

    Raises
    ------
    ECGReadError subclass naming the file and the reason.
    """
    if path.stat().st_size == 0:
        raise EmptyFileError(path, "file is empty (0 bytes)")
    fast = _COMMON_CASE_READERS[kind](path) if kind in _COMMON_CASE_READERS else None
    if fast is not None:
        signal, leads, fs, meta = fast
        return signal, leads, fs, {**meta, "dx": [], "source_format": kind, "reader_warnings": []}
    try:
        from ecgdatakit import FileParser, __version__
    except ImportError:
        raise UnknownFormatError(path, f"a {kind} file, but no reader for it is installed; "
                                       f"{_INSTALL_HINT}") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rec = FileParser.parse(path, units="mV")
        except ImportError as exc:  # DICOM needs pydicom
            raise UnknownFormatError(path, f"{exc}; {_INSTALL_HINT}") from None
        except ECGReadError:
            raise
        except Exception as exc:  # ecgdatakit raises its own and plain parsing errors alike
            raise HeaderParseError(path, f"not a readable {kind} file "
                                         f"({type(exc).__name__}: {exc})") from exc
    got = _ECGDATAKIT_NAMES.get(rec.source_format, rec.source_format)
    if got != kind:
        raise UnknownFormatError(path, f"looks like {kind} but its reader took it for {got}")
    leads = [lead for lead in rec.leads if len(lead.samples)]
    if not leads:
        raise InvalidSignalError(path, f"the {kind} file holds no waveform")
    raw = [lead.label for lead in leads if lead.is_raw]
    if raw:
        raise InvalidSignalError(path, f"leads {raw} carry no voltage scale, so mV are unknown")
    rates = {float(lead.sampling_rate) for lead in leads}
    if len(rates) != 1:
        raise HeaderSignalMismatchError(path, f"leads sampled at different rates {sorted(rates)}")
    n = min(len(lead.samples) for lead in leads)
    signal = np.stack([np.asarray(lead.samples[:n], dtype=np.float32) for lead in leads])
    meta = {"age": normalise_age(rec.patient.age), "sex": normalise_sex(rec.patient.sex),
            "acquired": _iso(rec.recording.date), "dx": [], "source_format": kind,
            "reader": f"ecgdatakit {__version__}",
            "reader_warnings": sorted({str(w.message) for w in caught})}
    if kind == "edf" and meta["sex"] is None and meta["age"] is None:
        meta.update(_edf_patient(path, rec.recording.date))
    return signal, [lead.label for lead in leads], rates.pop(), meta


def _edf_patient(path: Path, recorded) -> dict:
    """Sex and age from an EDF header's patient field written the EDF+ way (``code sex
    birthdate name``: ``P1 F 01-MAR-1961 X``). ecgdatakit reads it only from files marked
    EDF+, but writers put it in plain EDF files too."""
    with open(path, "rb") as f:
        fields = f.read(88)[8:].decode("ascii", errors="ignore").split()
    if len(fields) < 3 or fields[1] not in ("M", "F", "X"):
        return {}
    out = {"sex": normalise_sex(fields[1])}
    try:
        born = datetime.strptime(fields[2].title(), "%d-%b-%Y")
    except ValueError:
        return out
    if isinstance(recorded, datetime):
        years = recorded.year - born.year - ((recorded.month, recorded.day) < (born.month, born.day))
        out["age"] = normalise_age(years)
    return out


def _iso(value) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None
