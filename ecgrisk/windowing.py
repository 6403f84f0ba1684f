"""Evaluation windows: where a record's windows start, and their logits back to one per record.

The benchmark protocol evaluates a record on windows of ``window`` samples at ``stride`` samples
and aggregates the window outputs per record (max, or mean). Fine-tuning, refinement and scoring
all cut and aggregate windows with these two functions, so a record is evaluated the same way
everywhere.

Only numpy is imported at module level: scoring's reader processes import this module (through
:class:`~ecgrisk.input_spec.InputSpec`) and must never load torch, so
:func:`aggregate_windows` imports it when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["aggregate_windows", "evaluation_windows"]


def evaluation_windows(lengths, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets and record positions of the evaluation windows of records of ``lengths``.

    A record of ``T`` samples gets windows starting at ``0, stride, ...`` up to
    ``T - window``; a record no longer than one window gets one window at 0 (the reader pads it).

    Parameters
    ----------
    lengths : ``[N]`` record lengths in samples.
    window, stride : samples.

    Returns
    -------
    (starts, positions)
        ``[W]`` int64 each: window ``k`` starts at sample ``starts[k]`` of record
        ``positions[k]`` (0 .. N - 1); windows are in record order, then start order.
    """
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    counts = np.where(lengths <= window, 1, (lengths - window) // stride + 1)
    positions = np.repeat(np.arange(len(lengths), dtype=np.int64), counts)
    first = np.cumsum(counts) - counts  # index of each record's first window
    starts = (np.arange(len(positions), dtype=np.int64) - first[positions]) * stride
    return starts, positions


def aggregate_windows(window_idx: torch.Tensor, logits: torch.Tensor, positions: np.ndarray,
                      n_records: int, how: str = "max") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-record logits ``[n_records, C]`` from window logits ``[W, C]``, and which records had
    any window (all of them, unless evaluation was cut short by ``limit_*_batches``).

    ``window_idx`` are the windows' indices ``k``; ``positions`` maps ``k`` to the record
    position (see :func:`evaluation_windows`). Windows seen twice (DDP pads its last batch by
    repeating samples) count once. Max over logits equals the logit of the max over
    probabilities (sigmoid is monotone), so this matches the benchmark's max over predicted
    probabilities.
    """
    import torch  # here, not at the top: reader processes import this module (see above)

    window_idx = window_idx.long().cpu()
    uniq, first = np.unique(window_idx.numpy(), return_index=True)
    logits = logits[torch.from_numpy(first).to(logits.device)]
    positions = torch.from_numpy(np.asarray(positions)[uniq]).to(logits.device)
    C = logits.shape[1]
    if how == "max":
        out = torch.full((n_records, C), float("-inf"), dtype=logits.dtype, device=logits.device)
        out.scatter_reduce_(0, positions[:, None].expand(-1, C), logits, reduce="amax")
    elif how == "mean":
        probs = torch.sigmoid(logits)
        s = torch.zeros((n_records, C), dtype=probs.dtype, device=probs.device)
        s.index_add_(0, positions, probs)
        cnt = torch.bincount(positions, minlength=n_records).clamp(min=1).to(probs.dtype)
        p = (s / cnt[:, None]).clamp(1e-7, 1 - 1e-7)
        out = torch.log(p) - torch.log1p(-p)
    else:
        raise ValueError(f"aggregation must be 'max' or 'mean', got {how!r}")
    return out, torch.bincount(positions.cpu(), minlength=n_records).to(out.device) > 0
