"""What fitting the review band within groups buys on fine-tuning runs' validation folds.

    python scripts/review_band_groups.py RUN [RUN ...] --root data/ptb-xl-full --out results/NAME

For each run (its ``predictions/val.csv``: labels and calibrated probabilities), the band fitted
over every validation record against the band fitted within each ``--by`` group too (what
fine-tuning's ``review_by`` does): the share flagged and the share left unflagged with a
misread statement on halves the band was not fitted on (``conformal.split_review``), and the
highest in-sample share unflagged and misread in any group of at least ``conformal.MIN_GROUP``
records, the share the groups are there to bound. Writes ``--out``.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecgrisk import conformal  # noqa: E402
from ecgrisk.data.ptbxl import DATABASE_CSV, attributes  # noqa: E402
from ecgrisk.files import atomic_write_text  # noqa: E402
from ecgrisk.groups import group_names, parse_group  # noqa: E402
from ecgrisk.provenance import command_line  # noqa: E402

BY = ["age:40,60,80", "sex", "device"]


def compare(run: Path, root: Path, by: list[str], alpha: float = 0.1, seed: int = 0) -> list[dict]:
    """One row per band (over all, by groups) of one run."""
    preds = pd.read_csv(run / "predictions" / "val.csv")
    y = preds.filter(like="true/").to_numpy()
    p = preds.filter(like="prob/").to_numpy()
    db = pd.read_csv(root / DATABASE_CSV, index_col="ecg_id").loc[preds["record"].astype(int)]
    attrs = attributes(db)
    groups = {spec: np.array(group_names(attrs[parse_group(spec)[0]], spec)) for spec in by}
    rows = []
    for fit, g in (("over all", None), ("by groups", groups)):
        held_out = conformal.split_review(y, p, alpha, seed, groups=g)
        band = conformal.fit_review(y, p, alpha, g)
        left = ~band.flags(p).any(axis=1) & conformal.misread(y, p)
        per_group = {f"{parse_group(spec)[0]}={' '.join(v.split())}": float(left[names == v].mean())
                     for spec, names in groups.items() for v in sorted(set(names))
                     if (names == v).sum() >= conformal.MIN_GROUP}
        worst = max(per_group.items(), key=lambda kv: kv[1])
        rows.append({"run": str(run), "fit": fit, "records": len(y), "low": band.low,
                     "flagged": held_out["review_rate"],
                     "unflagged_misread": held_out["unreviewed_misread"],
                     "worst_group": worst[0], "worst_group_in_sample": worst[1]})
    return rows


def to_markdown(rows: list[dict], alpha: float, command: str) -> str:
    lines = [f"Review band at alpha {alpha:g}, over all validation records or within each group "
             "too; flagged and unflagged & misread on held-out halves (10 halvings, both ways), "
             "the worst group in-sample.", "",
             "| run | band fitted | records | band | flagged | unflagged & misread | worst group (in-sample) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['fit']} | {r['records']} | {r['low']:.3f}-{1 - r['low']:.3f} "
                     f"| {r['flagged']:.1%} | {r['unflagged_misread']:.1%} "
                     f"| {r['worst_group']}: {r['worst_group_in_sample']:.1%} |")
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="fine-tuning run directories")
    ap.add_argument("--root", type=Path, required=True, help="the PTB-XL root the runs read")
    ap.add_argument("--by", nargs="+", default=BY, help=f"group specs (default {' '.join(BY)})")
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix")
    args = ap.parse_args(argv)
    rows = [r for run in args.runs for r in compare(run, args.root, args.by, args.alpha)]
    command = command_line(__file__, argv)
    markdown = to_markdown(rows, args.alpha, command)
    atomic_write_text(args.out.with_suffix(".json"),
                      json.dumps({"command": command, "alpha": args.alpha, "rows": rows}, indent=1))
    atomic_write_text(args.out.with_suffix(".md"), markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
