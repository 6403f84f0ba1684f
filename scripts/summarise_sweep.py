"""Summarise a Hydra sweep of ecgrisk runs: one metric's mean and spread over seeds, per setting.

    ecgrisk-finetune -m data.task=all data.train_fraction=0.01 \\
        'data.train_folds=[1,2,3,4,5,6,7]' 'data.val_folds=[8]' \\
        finetune.encoder_lr_mult=0.03,0.1,0.3,1 seed=0,1 hydra.sweep.dir=runs/sweep
    python scripts/summarise_sweep.py runs/sweep --metric val/macro_auroc

A run is a directory holding ``.hydra/overrides.yaml`` (every stage writes it); runs whose
overrides differ only in ``seed`` are one setting, and a row is named by the overrides that
differ between settings ("-" where a run does not set it). A run without ``metrics.json`` (still
running, or killed) is counted as unfinished, never averaged. Writes ``<out>.md`` and
``<out>.json`` (default ``<sweep>/summary``) and prints the table, best setting first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecgrisk.files import atomic_write_text  # noqa: E402
from ecgrisk.provenance import command_line  # noqa: E402


def read_runs(sweeps: list[Path]) -> list[dict]:
    """``{dir, overrides: {key: value}, metrics | None}`` of every run under ``sweeps``."""
    runs = []
    for sweep in sweeps:
        for f in sorted(sweep.rglob(".hydra/overrides.yaml")):
            run = f.parent.parent
            done = run / "metrics.json"
            pairs = (o.split("=", 1) for o in OmegaConf.to_container(OmegaConf.load(f)) or [])
            runs.append({"dir": str(run), "overrides": {k.lstrip("+~"): v for k, v in pairs},
                         "metrics": json.loads(done.read_text()) if done.is_file() else None})
    return runs


def summarise(runs: list[dict], metric: str, ignore: tuple[str, ...] = ("seed",)) -> dict:
    """Rows of ``{setting, seeds, mean, std, min, max, lower, upper, runs}``, best mean first;
    ``setting`` holds the overrides that tell settings apart. ``lower``/``upper``: the mean of
    the runs' ``<metric>/lower|upper`` (their bootstrap bounds) where they have them."""
    keys = sorted({k for r in runs for k in r["overrides"]} - set(ignore))
    varying = [k for k in keys if len({r["overrides"].get(k) for r in runs}) > 1]
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(r["overrides"].get(k) for k in varying), []).append(r)
    rows = []
    for values, rs in groups.items():
        done = [r["metrics"] for r in rs if r["metrics"] is not None and r["metrics"].get(metric) is not None]
        row = {"setting": dict(zip(varying, values, strict=True)), "seeds": len(done),
               "unfinished": len(rs) - len(done), "runs": [r["dir"] for r in rs]}
        if done:
            v = np.array([m[metric] for m in done], dtype=float)
            row |= {"mean": v.mean(), "std": v.std(ddof=1) if len(v) > 1 else None,
                    "min": v.min(), "max": v.max()}
            for side in ("lower", "upper"):
                b = [m.get(f"{metric}/{side}") for m in done]
                row[side] = float(np.mean(b)) if all(x is not None for x in b) else None
        rows.append(row)
    rows.sort(key=lambda r: -r.get("mean", -np.inf))
    shared = {k: runs[0]["overrides"].get(k) for k in keys if k not in varying}
    return {"metric": metric, "shared": shared, "varying": varying, "rows": rows}


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def markdown(s: dict, command: str) -> str:
    cols = s["varying"] or ["setting"]
    lines = [f"`{s['metric']}` per setting, mean over seeds (best first); every run shares "
             + (", ".join(f"`{k}={v}`" for k, v in s["shared"].items()) or "no override") + ".", "",
             "| " + " | ".join([*cols, "mean", "seed std", "min-max", "bootstrap bounds (mean)",
                                "seeds", "unfinished"]) + " |",
             "|" + "---|" * (len(cols) + 6)]
    for r in s["rows"]:
        names = ["-" if r["setting"].get(k) is None else str(r["setting"][k])
                 for k in s["varying"]] or ["all runs"]
        lines.append("| " + " | ".join([*names, _f(r.get("mean")), _f(r.get("std")),
                                        f"{_f(r.get('min'))}-{_f(r.get('max'))}",
                                        f"{_f(r.get('lower'))}-{_f(r.get('upper'))}",
                                        str(r["seeds"]), str(r["unfinished"])]) + " |")
    lines += ["", f"Command: `{command}`; each run's resolved config is in its `.hydra/`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweeps", nargs="+", type=Path, help="sweep directories (hydra.sweep.dir)")
    p.add_argument("--metric", default="val/macro_auroc", help="a metrics.json key")
    p.add_argument("--ignore", nargs="*", default=["seed"],
                   help="overrides that do not make another setting (default: seed)")
    p.add_argument("--out", type=Path, default=None, help="<out>.md/.json (default <first sweep>/summary)")
    args = p.parse_args(argv)
    runs = read_runs(args.sweeps)
    if not runs:
        raise SystemExit(f"no runs (.hydra/overrides.yaml) under {', '.join(map(str, args.sweeps))}")
    s = summarise(runs, args.metric, tuple(args.ignore))
    out = args.out or args.sweeps[0] / "summary"
    atomic_write_text(out.with_suffix(".json"), json.dumps(s, indent=1))
    md = markdown(s, command_line(__file__, argv))
    atomic_write_text(out.with_suffix(".md"), md)
    print(md, end="")


if __name__ == "__main__":
    main()
