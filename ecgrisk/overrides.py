"""What a training command's line can take: its overrides, checked before Hydra runs any of
it, and its ``--help``.

Hydra reports a misspelled key or option in several lines (17 for an unknown model), takes
``+key=value`` for a key nothing reads without a word, and leaves a value of the wrong kind
(``finetune.lr=fast``) to fail deep inside training; in a sweep, only when that job's turn
comes, after the jobs before it ran. Here every value of every job is checked against the
shipped config first, and the first mistake is one line naming the override. Hydra's ``--help``
lists every config group of the shipped folder, ``ssl`` and ``pool`` to ``ecgrisk-finetune``
too; :func:`help_text` lists the command's own.
"""

from __future__ import annotations

import difflib
import itertools
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["check_overrides", "config_groups", "help_text"]

# Lightning takes a count, a list of device ids or "auto" here, whatever the default's kind
_ANY_KIND = frozenset({"trainer.devices"})
# more combinations of swept config groups than this: the values are checked under the first
_MAX_COMBINATIONS = 16
_ABSENT = object()


def check_overrides(name: str, overrides: list[str]) -> None:
    """Refuse, with a ``ValueError`` naming the override, what ``conf/<name>.yaml`` cannot take:

    - a config group this command has none of (``ssl=...`` to ``ecgrisk-finetune``), or an
      option its group lacks (``model=xresnet1d5``);
    - a key the config lacks (``data.taks=rhythm``), or one added with ``+`` whose name is a
      near miss of a key beside it (``+data.taks``: nothing would read it);
    - a value not of its default's kind: a word where a number or true/false belongs, a
      fraction where a whole number does, one value where a list does (every value of a sweep).

    A null value, a key whose default is null or a string, and ``hydra.*`` are not checked, nor
    is what Hydra's own parser refuses (it says why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return
    parsed = [o for o in parsed if not o.key_or_group.startswith("hydra")]
    every = _all_groups()
    groups = config_groups(name)
    asked: dict[str, list] = {}
    for o in parsed:
        group = o.key_or_group
        if group not in every:
            continue
        if group not in groups:
            raise ValueError(f"{_text(o)}: this command has no config group {group!r} (its groups: "
                             f"{', '.join(sorted(groups))})")
        values = _values(o)
        if o.is_delete() or values is None:
            continue
        for v in values:
            if str(v) not in groups[group]:
                raise ValueError(f"{group}={v}: no such {group}; one of {', '.join(groups[group])}"
                                 f"{_did_you_mean(str(v), groups[group])}")
        asked[group] = values
    combinations = list(itertools.product(*asked.values()))
    if len(combinations) > _MAX_COMBINATIONS:
        combinations = combinations[:1]
    for combination in combinations:
        chosen = [f"{g}={v}" for g, v in zip(asked, combination, strict=True)]
        defaults = _compose(name, chosen)
        for o in parsed:
            if o.key_or_group in groups or o.is_delete():
                continue
            try:
                _check(o, defaults)
            except ValueError as e:
                if len(combinations) > 1:  # which of the swept groups' options it fails with
                    raise ValueError(f"{e} (with {' '.join(chosen)})") from None
                raise


def _check(o, defaults: DictConfig) -> None:
    key = o.key_or_group
    default = OmegaConf.select(defaults, key, default=_ABSENT, throw_on_resolution_failure=False)
    if default is _ABSENT:
        if o.is_add() or o.is_force_add():
            near = _near_miss(defaults, key)
            if near:
                raise ValueError(f"{_text(o)}: the config has no {key!r}, and nothing would read "
                                 f"it; did you mean {near}?")
            return
        near = _near_miss(defaults, key)
        raise ValueError(f"{_text(o)}: no key {key!r} in this command's config"
                         + (f"; did you mean {near}?" if near else " (`--help` lists them)"))
    if key in _ANY_KIND:
        return
    for v in _values(o) or []:
        if isinstance(v, str) and "${" in v:  # an interpolation: its value is known only later
            continue
        expected = _misfit(default, v)
        if expected:
            raise ValueError(f"{key}={_shown(v)}: expected {expected} (default: {_shown(default)})")


def _text(o) -> str:
    return o.input_line or o.key_or_group


def _values(o) -> list | None:
    """The values an override sets, one per job of a sweep; None where they cannot be listed
    (``glob(...)``, ``interval(...)``)."""
    from hydra.errors import HydraException

    if not o.is_sweep_override():
        return [o.value()]
    try:
        return list(o.sweep_iterator())
    except HydraException:
        return None


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


def _near_miss(defaults: DictConfig, key: str) -> str | None:
    """The existing key closest to ``key`` where its first unknown part is a near miss of a
    name at that level (``data.taks`` -> ``data.task``)."""
    node: Any = defaults
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return None
        if part not in node:
            close = difflib.get_close_matches(part, [str(k) for k in node], n=1, cutoff=0.75)
            return ".".join([*parts[:i], close[0]]) if close else None
        node = node[part]
    return None


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _compose(name: str, overrides: list[str], hydra: bool = False) -> DictConfig:
    from hydra import compose, initialize_config_dir

    from ecgrisk.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=hydra)


def config_groups(name: str) -> dict[str, list[str]]:
    """The config groups of ``conf/<name>.yaml`` (its defaults list), each with its options."""
    every = _all_groups()
    return {g: every[g] for g in sorted(_compose(name, [], hydra=True).hydra.runtime.choices)
            if g in every}


def help_text(name: str, overrides: list[str]) -> str:
    """``--help`` as Hydra writes it (the config's header, its groups, the config as these
    overrides compose it), less the groups the command cannot take."""
    cfg = _compose(name, list(overrides), hydra=True)
    header = str(cfg.hydra.help.header).rstrip("\n")
    groups = "\n".join(f"{g}: {', '.join(options)}" for g, options in config_groups(name).items())
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra")
    return (f"{header}\n\n== Configuration groups ==\nCompose your configuration from those groups "
            f"(group=option)\n\n{groups}\n\n== Config ==\nOverride anything in the config "
            f"(foo.bar=value)\n\n{OmegaConf.to_yaml(cfg)}")


def _all_groups() -> dict[str, list[str]]:
    """Every config group of the shipped config folder, with its options."""
    from ecgrisk.paths import config_dir

    root = config_dir()
    return {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in sorted(root.iterdir())
            if d.is_dir() and any(d.glob("*.yaml"))}
