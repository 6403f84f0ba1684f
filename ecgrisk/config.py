"""Compose the shipped Hydra configs from Python (tests, the demo, benchmark scripts), and run
the three training commands as Hydra apps."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from omegaconf import DictConfig


def compose(name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config ``conf/<name>.yaml`` with command-line style overrides, as the app would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ecgrisk.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=name, overrides=list(overrides))


def run_app(hydra_main) -> None:
    """Console entry of a Hydra app: find the shipped config folder (wheel or checkout), then run.

    The folder goes on the command line rather than in ``@hydra.main(config_path=...)`` because
    an installed wheel and a checkout keep it in different places. A DDP child process inherits
    the parent's argv, which already carries it.
    """
    import sys

    from hydra.core.hydra_config import HydraConfig

    from ecgrisk.paths import config_dir

    if not any(a.startswith(("--config-dir", "-cd")) for a in sys.argv[1:]):
        sys.argv.insert(1, f"--config-dir={config_dir()}")
    try:
        hydra_main()
    finally:
        # Hydra leaves the finished app's config set; a run started later in this process
        # (compose + train) would otherwise record this app's overrides as its own command
        HydraConfig.instance().cfg = None


@contextmanager
def plain_errors(command: str) -> Iterator[None]:
    """What a user got wrong (a bad value, a missing file, a run directory in use: the
    ``ValueError``, ``FileNotFoundError`` and ``FileExistsError`` the apps raise after checking)
    as one line and exit status 2, where Hydra would print a traceback; ``HYDRA_FULL_ERROR=1``
    keeps the traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{command}: error: {e}\n(HYDRA_FULL_ERROR=1 shows where it was raised)",
              file=sys.stderr, flush=True)
        raise SystemExit(2) from None
