"""Compose the shipped Hydra configs from Python (tests, the demo, benchmark scripts)."""

from __future__ import annotations

from omegaconf import DictConfig


def compose(name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config ``conf/<name>.yaml`` with command-line style overrides, as the app would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ecgrisk.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=name, overrides=list(overrides))
