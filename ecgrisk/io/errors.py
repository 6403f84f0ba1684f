"""What ``read_ecg`` raises: one ``ECGReadError`` subclass per reason, each naming the file."""

from __future__ import annotations


class ECGReadError(Exception):
    """A file could not be read as an ECG. ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def __reduce__(self):  # survive pickling across worker processes
        return (type(self), (self.path, self.reason))


class MissingSignalFileError(ECGReadError, FileNotFoundError):
    """The record, its header or a signal file it names does not exist."""


class TruncatedSignalError(ECGReadError):
    """The signal file holds fewer samples than its header declares."""


class HeaderSignalMismatchError(ECGReadError):
    """The signal file's content disagrees with its header (shape, layout)."""


class HeaderParseError(ECGReadError):
    """The header (or .npy/.npz container) is not parseable."""


class UnknownFormatError(ECGReadError):
    """The file exists but is not a format this module reads."""


class EmptyFileError(ECGReadError):
    """A header or signal file is 0 bytes."""


class InvalidSignalError(ECGReadError):
    """The signal is unusable: all NaN, flat in every lead, no samples, or not a 12-lead array."""


class SamplingRateError(ECGReadError):
    """The sampling rate is missing, or not finite and >= ``MIN_FS`` Hz."""


class MissingLeadsError(ECGReadError):
    """Fewer than 12 standard leads and ``missing_leads="refuse"`` (or none recognised at all)."""
