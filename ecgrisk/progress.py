"""One progress bar for every long loop in ecgrisk (cache builds, downloads, scoring)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def progress_bar(total: int | None, description: str, enabled: bool = True):
    """Yield ``advance(n=1)``; a rich bar with rate and ETA on stderr (stdout is left to what a
    command prints as its result), or a no-op when disabled."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
