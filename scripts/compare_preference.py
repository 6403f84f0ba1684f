"""Side by side: several ``benchmark_preference.py`` runs (a sweep of refine overrides) at one
judgement count, with the guard half's AUROC (what a setting may be chosen on) beside the
report half's gap closed (what it is reported on).

    python scripts/compare_preference.py runs/beta/*/preference_scarce.json --at 200 \\
        --out results/preference_tuning.md

Each row is one arm of one run: the overrides that differ between the runs, the kept model's
guard macro AUROC (mean over seeds), the report half's gap closed with its interval, and the
rounds the guard kept of those run so far (all seeds). Per scenario and arm the run with the
highest guard AUROC is marked.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ecgrisk.files import atomic_write_text


def load(paths: list[Path]) -> list[dict]:
    runs = []
    for p in paths:
        try:
            runs.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"{p}: not a benchmark_preference result ({e})") from e
        if not isinstance(runs[-1], dict) or "rows" not in runs[-1] or "meta" not in runs[-1]:
            raise SystemExit(f"{p}: not a benchmark_preference result (no rows or meta)")
    return runs


def effective(run: dict) -> dict[str, str]:
    """A run's overrides as Hydra applied them (a key given twice keeps its last value), with
    the round size the benchmark chose from its judgement counts."""
    meta = run["meta"]
    return {"queries_per_round": str(meta["queries"]),
            **{k: v for k, _, v in (o.partition("=") for o in meta["overrides"])}}


def shared(runs: list[dict]) -> dict[str, str]:
    """The overrides every run sets to the same value."""
    first, rest = effective(runs[0]), [effective(r) for r in runs[1:]]
    return {k: v for k, v in first.items() if all(e.get(k) == v for e in rest)}


def differing(runs: list[dict]) -> list[list[str]]:
    """Per run, the overrides that not every run shares (``key=default`` where a run leaves a
    key that others set), in the order first given."""
    common, each = shared(runs), [effective(r) for r in runs]
    keys = [k for k in dict.fromkeys(k for e in each for k in e) if k not in common]
    return [[f"{k}={e.get(k, 'default')}" for k in keys] for e in each]


def table(runs: list[dict], at: int) -> list[str]:
    rows = []
    for run, own in zip(runs, differing(runs), strict=True):
        for r in run["rows"]:
            if r["seed"] == "mean" and r["judgements"] == at and r["guard_auroc"] is not None:
                rows.append({"scenario": run["meta"]["scenario"], "arm": r["arm"],
                             "overrides": " ".join(own) or "(shared only)", "row": r,
                             "rounds": at // run["meta"]["queries"] * run["meta"]["seeds"]})
    if not rows:
        raise SystemExit(f"no arm was read at {at} judgements in these runs")
    best = {}
    for x in rows:
        key = (x["scenario"], x["arm"])
        if key not in best or x["row"]["guard_auroc"] > best[key]["row"]["guard_auroc"]:
            best[key] = x
    lines = ["| scenario | arm | overrides | guard AUROC | report gap closed | rounds kept |",
             "|---|---|---|---|---|---|"]
    for x in sorted(rows, key=lambda x: (x["scenario"], x["arm"])):
        r, mark = x["row"], "**" if best[(x["scenario"], x["arm"])] is x else ""
        lines.append(f"| {x['scenario']} | {x['arm']} | `{x['overrides']}` | "
                     f"{mark}{r['guard_auroc']:.4f}{mark} | {r['gap_closed']:.2f} "
                     f"[{r['gap_closed_lower']:.2f}, {r['gap_closed_upper']:.2f}] | "
                     f"{r['kept']} of {x['rounds']} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="preference_<scenario>.json files")
    p.add_argument("--at", type=int, default=200, help="judgement count to compare at")
    p.add_argument("--out", type=Path, default=None, help="markdown file (default: print)")
    args = p.parse_args(argv)
    runs = load(args.results)
    text = "\n".join([
        f"# Refinement settings side by side, at {args.at} judgements", "",
        "Shared overrides: `" + " ".join(f"{k}={v}" for k, v in shared(runs).items())
        + "`. Runs:", "",
        *[f"- `{r['meta']['command']}`" for r in runs], "",
        "Guard AUROC: the kept model's macro AUROC on the guard half of fold 9, mean over seeds; "
        "settings are chosen on it (bold: the highest per scenario and arm). Gap closed is "
        "reported on the other half, with its 90% bootstrap interval.", "",
        *table(runs, args.at), ""])
    if args.out is None:
        print(text)
    else:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
