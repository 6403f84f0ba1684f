"""Compose the shipped Hydra configs from Python (tests, the demo, benchmark scripts), and run
the three training commands as Hydra apps."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.errors import CompactHydraException
from omegaconf import DictConfig

# whether the running app's task began: Hydra exits 1 both for a command line it cannot compose
# and for a task that failed, and only the first is the user's mistake (exit 2)
_task_started = False


def compose(name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config ``conf/<name>.yaml`` with command-line style overrides, as the app would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ecgrisk.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=name, overrides=list(overrides))


def run_app(hydra_main, name: str, command: str) -> None:
    """Console entry of the Hydra app ``command`` on ``conf/<name>.yaml``: check its overrides
    (:func:`~ecgrisk.overrides.check_overrides`; ``--help``: its own groups), find the shipped
    config folder (wheel or checkout), then run.

    The folder goes on the command line rather than in ``@hydra.main(config_path=...)`` because
    an installed wheel and a checkout keep it in different places. A DDP child process inherits
    the parent's argv, which already carries it. A command line Hydra cannot compose exits 2, as
    the mistakes :func:`plain_errors` reports do, not Hydra's 1.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.hydra_config import HydraConfig

    from ecgrisk.overrides import check_overrides, help_text
    from ecgrisk.paths import config_dir

    global _task_started
    args, _ = get_args_parser().parse_known_args(sys.argv[1:])
    if not (args.config_dir or args.config_path or args.config_name):  # else not our config
        try:
            check_overrides(name, args.overrides)
        except ValueError as e:
            print(f"{command}: error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        if args.help:
            print(help_text(name, args.overrides))
            raise SystemExit(0)
        sys.argv.insert(1, f"--config-dir={config_dir()}")
    _task_started = False
    try:
        hydra_main()
    except SystemExit as e:
        if e.code == 1 and not _task_started:
            # an unknown key, group option or override syntax (Hydra printed which)
            raise SystemExit(2) from None
        raise
    finally:
        # Hydra leaves the finished app's config set; a run started later in this process
        # (compose + train) would otherwise record this app's overrides as its own command
        HydraConfig.instance().cfg = None


class JobFailed(CompactHydraException):
    """One job of a sweep (``-m``) stopped on a mistake it reported; Hydra's compact form prints
    that line again at the end, beside the job's overrides, instead of a stack trace."""


@contextmanager
def plain_errors(command: str) -> Iterator[None]:
    """What a user got wrong (a bad value, a missing file, a run directory in use: the
    ``ValueError``, ``FileNotFoundError`` and ``FileExistsError`` the apps raise after checking)
    as one line and exit status 2, where Hydra would print a traceback; ``HYDRA_FULL_ERROR=1``
    keeps the traceback."""
    global _task_started
    _task_started = True
    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{command}: error: {e}\n(HYDRA_FULL_ERROR=1 shows where it was raised)",
              file=sys.stderr, flush=True)
        _drop_unused_run_dir()
        if _in_sweep():
            # a job of a sweep fails alone: the others still run, and Hydra names it at the end
            raise JobFailed(f"{command}: error: {e}") from None
        raise SystemExit(2) from None


def _drop_unused_run_dir() -> None:
    """Remove the run directory Hydra made for a run that stopped on a mistake before writing
    anything: holding only Hydra's record and log, it would pass for the newest run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    if out.is_dir() and {p.name for p in out.iterdir()} <= {hc.output_subdir, f"{hc.job.name}.log"}:
        shutil.rmtree(out, ignore_errors=True)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN

