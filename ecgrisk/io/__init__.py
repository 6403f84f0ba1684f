"""Read one ECG file into a 12-lead ``ECG`` (mV, standard lead order); one clear error per file.

Formats read
------------
- WFDB records: ``name.hea`` + signal file(s) in any format ``wfdb.rdrecord`` reads (16, 212, 80,
  24, 32, 310, 311, FLAC, ...), e.g. PTB-XL ``records100/00000/00001_lr`` and MIT-BIH ``100``.
  Single-file format-16 records (PTB-XL) are decoded directly with numpy; the result equals
  ``wfdb.rdrecord``'s, ten times faster.
- PhysioNet/CinC Challenge 2020-2021 records: ``name.hea`` + ``name.mat`` (key ``val``, int16
  ``[leads, samples]``; gain, baseline and units from the header), read with ``scipy.io.loadmat``.
  ``# Age:``, ``# Sex:``, ``# Dx:`` comments (and MIT-BIH's ``# 69 M ...``) go into ``meta``.
- ``.npy``: ``[12, samples]`` (or ``[samples, 12]``) in mV and standard lead order; ``fs`` must
  be passed. ``.npz``: key ``signal``, optional ``fs`` and ``leads``.
- Clinical exports, recognised from their content whatever their suffix: DICOM General ECG,
  GE MUSE XML, Philips (Sierra) XML, HL7 aECG, SCP-ECG and EDF (see ``ecgrisk.io.clinical``;
  needs the ``formats`` extra).

Files that store 8 leads (I, II, V1-V6, as MUSE and many carts do) get III, aVR, aVL and aVF
derived from I and II (Einthoven's and Goldberger's relations, exact for a 12-lead recording),
listed in ``meta["derived_leads"]``; other absent leads are zero-filled and masked.

A record path may be given with or without extension (``00001_lr``, ``00001_lr.hea``,
``00001_lr.dat``, ``E07500.mat``). Headers are parsed by ``ecgrisk.io.header`` rather than by
``wfdb.rdheader`` (which costs ~3 ms a header through pandas) so ``read_header`` stays cheap over
20,000 files.

Modules: ``ecg`` (the ``ECG`` record and lead names), ``read`` (``read_ecg``, ``read_header``),
``wfdb_signal``, ``arrays`` and ``clinical`` (one per kind of file), ``header``, ``errors``;
``write`` for the other direction; ``scan`` (which files in a folder are ECGs) and ``inputs``
(what ``ecgrisk score``'s INPUT arguments name) for finding records.
Every failure raises a subclass of ``ECGReadError`` naming the file and the reason.
"""

from ecgrisk.io.ecg import ECG, STANDARD_LEADS, normalise_lead_name
from ecgrisk.io.errors import (
    ECGReadError,
    EmptyFileError,
    HeaderParseError,
    HeaderSignalMismatchError,
    InvalidSignalError,
    MissingLeadsError,
    MissingSignalFileError,
    SamplingRateError,
    TruncatedSignalError,
    UnknownFormatError,
)
from ecgrisk.io.read import MIN_FS, read_ecg, read_header

__all__ = [
    "ECG", "MIN_FS", "STANDARD_LEADS", "ECGReadError", "EmptyFileError", "HeaderParseError",
    "HeaderSignalMismatchError", "InvalidSignalError", "MissingLeadsError",
    "MissingSignalFileError", "SamplingRateError", "TruncatedSignalError", "UnknownFormatError",
    "normalise_lead_name", "read_ecg", "read_header",
]
