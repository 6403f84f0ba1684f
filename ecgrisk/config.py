"""Compose the shipped Hydra configs from Python (tests, the demo, benchmark scripts), and run
the three training commands as Hydra apps."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from omegaconf import DictConfig, ListConfig, OmegaConf

# Lightning takes a count, a list of device ids or "auto" here, whatever the default's kind
_ANY_KIND = frozenset({"trainer.devices"})
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


def run_app(hydra_main) -> None:
    """Console entry of a Hydra app: find the shipped config folder (wheel or checkout), then run.

    The folder goes on the command line rather than in ``@hydra.main(config_path=...)`` because
    an installed wheel and a checkout keep it in different places. A DDP child process inherits
    the parent's argv, which already carries it. A command line Hydra cannot compose (an unknown
    key or option) exits 2, as the mistakes :func:`plain_errors` reports do, not Hydra's 1.
    """
    import sys

    from hydra.core.hydra_config import HydraConfig

    from ecgrisk.paths import config_dir

    global _task_started
    if not any(a.startswith(("--config-dir", "-cd")) for a in sys.argv[1:]):
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
        raise SystemExit(2) from None


def check_override_kinds(cfg: DictConfig) -> None:
    """Refuse a command-line override whose value is not of its default's kind (a word where
    a number or true/false belongs, a fraction where a count does, one value where a list does),
    naming the key, before any work: otherwise it fails deep inside training with a traceback,
    refine's ``reward.epochs`` only after the first round's judgements. A null value, a key the
    default leaves null or a string, and a key added with ``+`` are not checked."""
    from hydra import compose as hydra_compose
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    groups = {g: c for g, c in hc.runtime.choices.items() if not g.startswith("hydra/") and c}
    defaults = hydra_compose(config_name=hc.job.config_name,
                             overrides=[f"{g}={c}" for g, c in groups.items()])
    for o in OverridesParser.create().parse_overrides(list(hc.overrides.task)):
        key = o.key_or_group
        if o.is_delete() or o.is_add() or o.package or key in groups or key in _ANY_KIND:
            continue
        default = OmegaConf.select(defaults, key, default=None, throw_on_resolution_failure=False)
        value = OmegaConf.select(cfg, key, default=None)
        expected = _misfit(default, value)
        if expected:
            raise ValueError(f"{key}={_shown(value)}: expected {expected} (default: {_shown(default)})")


def _misfit(default, value) -> str | None:
    """What ``value`` should be where it is not of ``default``'s kind; None where it fits."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if value is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if number and isinstance(value, int) else "a whole number"
    if isinstance(default, float):
        return None if number else "a number"
    if isinstance(default, ListConfig | list):
        return None if isinstance(value, ListConfig | list) else "a list, e.g. [a,b]"
    return None


def _shown(v) -> str:
    return str(OmegaConf.to_container(v)) if isinstance(v, ListConfig) else repr(v)
