"""Subgroups of ECGs by one attribute: ``sex``, or ``age:40,60,80`` for bands of a number.

A model is checked within each group (``ecgrisk evaluate --by``), and the review band is fitted
within each so that its bound holds there too (fine-tuning's ``review_by``, ``ecgrisk
recalibrate --by``): one spelling and one naming of groups for both.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["MISSING", "as_text", "group_names", "parse_group", "record_groups", "usable_specs"]

log = logging.getLogger(__name__)

MISSING = "missing"


def parse_group(spec: str) -> tuple[str, list[float] | None]:
    """``spec`` as (attribute, band edges or None): ``sex``, or ``age:40,60,80`` for bands."""
    name, _, edges = spec.partition(":")
    if not name:
        raise ValueError(f"{spec!r}: name a column, e.g. sex or age:40,60,80")
    if not edges:
        return name, None
    try:
        cuts = [float(v) for v in edges.split(",")]
    except ValueError:
        raise ValueError(f"{spec!r}: band edges must be numbers, e.g. age:40,60,80") from None
    if cuts != sorted(set(cuts)):
        raise ValueError(f"{spec!r}: band edges must increase")
    return name, cuts


def group_names(values, spec: str) -> list[str]:
    """Each value's group under ``spec``: its band (``<40``, ``40-<60``, ``>=80``) or its text,
    :data:`MISSING` where it has none (None or NaN)."""
    cuts = parse_group(spec)[1]
    return [_band(v, cuts, spec) if cuts is not None else as_text(v) for v in values]


def usable_specs(records, by: list[str]) -> list[str]:
    """The ``review_by`` specs a :class:`~ecgrisk.data.base.RecordSet`'s records can be grouped
    by. A spec naming an attribute the records lack (a folder has none; Challenge headers give
    age and sex, not the device) is dropped with a warning, so one default serves every source."""
    kept = []
    for spec in by:
        try:
            name = parse_group(spec)[0]
        except ValueError as e:
            raise ValueError(f"review_by {e}") from None
        if name in records.attributes:
            kept.append(spec)
        else:
            log.warning("review_by %r: %s records carry %s, not %r; the review band is fitted "
                        "without it", spec, records.name, sorted(records.attributes) or "no attributes",
                        name)
    return kept


def record_groups(records, ids: list[str], by: list[str]) -> dict[str, list[str]]:
    """Each spec's group of every record in ``ids`` (record ids of ``records``)."""
    row = {r: i for i, r in enumerate(records.record_ids)}
    return {spec: group_names([records.attributes[parse_group(spec)[0]][row[r]] for r in ids], spec)
            for spec in by}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def as_text(value) -> str:
    """A value as its group is named: ``70`` for 70.0, :data:`MISSING` for None or NaN."""
    return MISSING if _missing(value) else f"{value:g}" if isinstance(value, float) else str(value)


def _band(value, cuts: list[float], spec: str) -> str:
    if _missing(value):
        return MISSING
    if isinstance(value, str):
        raise ValueError(f"{spec!r}: bands need numbers, and this column holds {value!r}")
    fmt = lambda v: f"{v:g}"  # noqa: E731
    i = int(np.searchsorted(cuts, value, side="right"))
    if i == 0:
        return f"<{fmt(cuts[0])}"
    if i == len(cuts):
        return f">={fmt(cuts[-1])}"
    return f"{fmt(cuts[i - 1])}-<{fmt(cuts[i])}"
