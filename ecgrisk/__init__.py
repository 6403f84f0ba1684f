"""ecgrisk: ECG heart-risk modelling from 12-lead ECGs."""

from ecgrisk.io import ECG, ECGReadError, read_ecg

__version__ = "0.1.0"
__all__ = ["ECG", "ECGReadError", "read_ecg", "__version__"]
