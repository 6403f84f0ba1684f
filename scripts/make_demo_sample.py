"""Build the real PTB-XL sample ``make demo`` uses offline: ``ecgrisk/shipped/ptbxl-demo-sample.tar.xz``.

    python scripts/make_demo_sample.py --root data/ptb-xl-full [--train 320 --val 80 --seed 0]

Draws ``--train`` records from folds 1-8 and ``--val`` from fold 9 (never the test fold),
stratified by superdiagnostic class so rare classes appear, and packs them in PTB-XL's own layout
(``records100/NNNNN/*_lr.{hea,dat}``, the matching ``ptbxl_database.csv`` rows, the full
``scp_statements.csv``) with the CC BY 4.0 license and attribution. The archive is deterministic
for a given input and seed and must stay under 10 MB.
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import sys
import tarfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ecgrisk.files import atomic_path  # noqa: E402

OUT = REPO / "ecgrisk" / "shipped" / "ptbxl-demo-sample.tar.xz"
LIMIT_BYTES = 10 * 1024 * 1024
ATTRIBUTION = """\
# PTB-XL demo sample

{n} ten-second 12-lead ECGs at 100 Hz ({n_train} from strat_fold 1-8, {n_val} from strat_fold 9;
none from the test fold 10) taken unchanged from PTB-XL 1.0.1, with their rows of
`ptbxl_database.csv` and the complete `scp_statements.csv`. Drawn by
`scripts/make_demo_sample.py` (seed {seed}, stratified by superdiagnostic class). The only change
is the selection of records; the 500 Hz files are left out.

PTB-XL is published on PhysioNet under the Creative Commons Attribution 4.0 International
License (LICENSE.txt; https://creativecommons.org/licenses/by/4.0/). Cite:

- Wagner P, Strodthoff N, Bousseljot RD, Kreiseler D, Lunze FI, Samek W, Schaeffter T.
  PTB-XL, a large publicly available electrocardiography dataset. Scientific Data 7, 154 (2020).
  https://doi.org/10.1038/s41597-020-0495-6
- Wagner P, Strodthoff N, Bousseljot RD, Samek W, Schaeffter T. PTB-XL, a large publicly
  available electrocardiography dataset (version 1.0.1). PhysioNet (2020).
  https://doi.org/10.13026/x4td-x982
- Goldberger AL, et al. PhysioBank, PhysioToolkit, and PhysioNet. Circulation 101(23),
  e215-e220 (2000).
"""


def _superclass(codes: str, statements: dict[str, str]) -> str:
    """The record's superdiagnostic class with the highest likelihood ('none' without one)."""
    scores = ast.literal_eval(codes)
    ranked = sorted(((v, statements[c]) for c, v in scores.items() if statements.get(c)),
                    reverse=True)
    return ranked[0][1] if ranked else "none"


def _draw(rows: list[dict], n: int, rng: np.random.Generator, statements) -> list[dict]:
    """``n`` rows, each superclass getting a share proportional to the square root of its size."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_superclass(r["scp_codes"], statements), []).append(r)
    names = sorted(groups)
    weight = np.sqrt([len(groups[g]) for g in names])
    quota = np.floor(weight / weight.sum() * n).astype(int)
    quota[np.argmax(weight)] += n - quota.sum()
    picked = []
    for g, q in zip(names, quota, strict=True):
        idx = rng.choice(len(groups[g]), size=min(q, len(groups[g])), replace=False)
        picked += [groups[g][i] for i in sorted(idx)]
    return sorted(picked, key=lambda r: int(r["ecg_id"]))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: same bytes each build
    tar.addfile(info, io.BytesIO(data))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="an unpacked PTB-XL copy (folds 1-9 suffice)")
    p.add_argument("--train", type=int, default=320)
    p.add_argument("--val", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--license", default=str(REPO.parent / "shared/data/ptb-xl/LICENSE.txt"),
                   help="PTB-XL's LICENSE.txt (CC BY 4.0 legal code)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    root = Path(args.root)
    with open(root / "ptbxl_database.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    with open(root / "scp_statements.csv", newline="") as f:
        sc = list(csv.DictReader(f))
    statements = {r[""]: r["diagnostic_class"] for r in sc if r.get("diagnostic") == "1.0"}
    rng = np.random.default_rng(args.seed)
    train = _draw([r for r in rows if int(r["strat_fold"]) <= 8], args.train, rng, statements)
    val = _draw([r for r in rows if int(r["strat_fold"]) == 9], args.val, rng, statements)
    chosen = sorted(train + val, key=lambda r: int(r["ecg_id"]))
    assert all(int(r["strat_fold"]) <= 9 for r in chosen), "the test fold never ships"

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(chosen)
    top = "ptbxl-demo-sample"
    with atomic_path(args.out) as tmp, tarfile.open(tmp, "w:xz", preset=9) as tar:
        _add(tar, f"{top}/ATTRIBUTION.md", ATTRIBUTION.format(
            n=len(chosen), n_train=len(train), n_val=len(val), seed=args.seed).encode())
        _add(tar, f"{top}/LICENSE.txt", Path(args.license).read_bytes())
        _add(tar, f"{top}/ptbxl_database.csv", buf.getvalue().encode())
        _add(tar, f"{top}/scp_statements.csv", (root / "scp_statements.csv").read_bytes())
        for r in chosen:
            for ext in (".hea", ".dat"):
                rel = r["filename_lr"] + ext
                _add(tar, f"{top}/{rel}", (root / rel).read_bytes())
    size = Path(args.out).stat().st_size
    print(f"{len(chosen)} records ({len(train)} folds 1-8, {len(val)} fold 9) -> {args.out}, "
          f"{size / 1e6:.2f} MB")
    if size > LIMIT_BYTES:
        raise SystemExit(f"{args.out} is {size / 1e6:.1f} MB, over the 10 MB limit; draw fewer")


if __name__ == "__main__":
    main()
