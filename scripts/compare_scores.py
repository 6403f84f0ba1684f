"""Compare score tables of the same ECGs, paired: macro AUROC each and its difference from the first.

    python scripts/compare_scores.py shipped.csv ensemble.csv --labels data/ptb-xl-full \\
        --task all --only fold=9 --out results/ensemble_all

The comparison is :func:`ecgrisk.scoring.compare.compare` (only ECGs every table scored; the
difference's interval paired); writes ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecgrisk.files import atomic_write_text  # noqa: E402
from ecgrisk.scoring.compare import compare, to_markdown  # noqa: E402
from ecgrisk.scoring.evaluate import EvaluationError  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tables", nargs="+", type=Path, help="scores tables; the first is the reference")
    p.add_argument("--labels", required=True, help="a labels CSV or a PTB-XL root")
    p.add_argument("--task", default=None, help="with a PTB-XL root: the task")
    p.add_argument("--only", action="append", default=[], metavar="COLUMN=VALUES")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.md")
    args = p.parse_args(argv)
    if len(args.tables) < 2:
        p.error("compare at least two tables")
    try:
        r = compare(args.tables, args.labels, args.task, args.only, args.bootstrap)
    except EvaluationError as e:
        raise SystemExit(f"error: {e}") from e
    r["command"] = "python scripts/compare_scores.py " + " ".join(sys.argv[1:] if argv is None else argv)
    md = to_markdown(r)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(r, indent=1) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), f"`{r['command']}`\n\n" + md)
    print(md, end="")
    return r


if __name__ == "__main__":
    main()
