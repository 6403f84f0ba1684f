"""A one-cycle schedule is sized for a whole run: resuming must keep that size."""

from __future__ import annotations

import lightning as L


def check_resumed_schedule(checkpoint: dict, trainer: L.Trainer) -> None:
    """Raise a clear error when a checkpoint's one-cycle schedule does not fit this run.

    ``OneCycleLR`` restores its ``total_steps`` from the checkpoint; a run resumed with more
    epochs (or another batch size) would otherwise fail deep inside the scheduler.
    """
    for state in checkpoint.get("lr_schedulers", []):
        total = state.get("total_steps")
        expected = int(trainer.estimated_stepping_batches)
        if total is not None and total != expected:
            raise ValueError(
                f"cannot resume: the checkpoint's one-cycle schedule spans {total} steps but this "
                f"run needs {expected}; resume with the same trainer.max_epochs, data and "
                f"batch size as the interrupted run")
