"""Cardiologist feedback, shared by refinement and the review app.

``records`` (a verdict on a reading, a preference between two readings), ``store`` (SQLite or
PostgreSQL, import/export; its ``backends``, schema ``migrations``, and the review app's
``accounts`` and sessions), ``agreement`` (between annotators, and with the model),
``simulated`` (a simulated cardiologist for benchmarks), ``acquisition`` (which ECGs to ask
about) and ``cli`` (``ecgrisk feedback ...``).
"""

from __future__ import annotations

from ecgrisk.feedback.acquisition import sample_readings, select, threshold_reading
from ecgrisk.feedback.agreement import cohen_kappa
from ecgrisk.feedback.records import FeedbackError, Preference, Verdict, record_from_dict
from ecgrisk.feedback.simulated import SimulatedCardiologist
from ecgrisk.feedback.store import FeedbackImportError, FeedbackStore

__all__ = [
    "FeedbackError", "FeedbackImportError", "FeedbackStore", "Preference",
    "SimulatedCardiologist", "Verdict", "cohen_kappa", "record_from_dict", "sample_readings",
    "select", "threshold_reading",
]
