"""Logistic-regression probes on a frozen xresnet1d encoder: its last stage, or every stage.

    python scripts/probe_stages.py --root data/ptb-xl-full --val-fold 8   # choose C and stages
    python scripts/probe_stages.py --root data/ptb-xl-full --val-fold 9 --C 0.001 --stages all

The benchmark's linear probe trains a head on the last stage's pooled features. This script asks
whether the encoder holds more than that: each record's features are the max and mean over time
of every stage's output (``--stages all``: the encoder's ``pooling="stages"`` embedding) or of
the last one (``last``), averaged over the record's evaluation windows; one L2 logistic
regression per class (scikit-learn) trains on the ``--fraction`` of the training folds' patients
that ``data.train_fraction`` draws for each seed, and the validation fold scores it (macro
AUROC, 90% bootstrap interval over records). Features are standardised with the mean and spread
of every training- and validation-fold record, labels unread. ``--val-fold 8`` trains on folds
1-7, for choosing C and the stages without fold 9; ``--val-fold 9`` trains on folds 1-8, as the
label-efficiency benchmark does. Writes ``--out``.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecgrisk.files import atomic_write_text  # noqa: E402
from ecgrisk.provenance import command_line  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="a PTB-XL copy with records100/")
    p.add_argument("--task", default="superdiagnostic")
    p.add_argument("--fraction", type=float, default=0.01, help="data.train_fraction")
    p.add_argument("--encoder", default="contrastive-xresnet1d101", help="a shipped name or encoder.pt")
    p.add_argument("--val-fold", type=int, choices=(8, 9), default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--C", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03])
    p.add_argument("--stages", nargs="+", choices=("last", "all"), default=["last", "all"])
    p.add_argument("--out", default=None, help="results path without suffix "
                   "(default results/probe_stages_<task>_<fraction>_fold<val>)")
    args = p.parse_args(argv)

    import torch

    from ecgrisk.bundle import encoder_meta, load_encoder_weights
    from ecgrisk.bundle_files import resolve
    from ecgrisk.config import compose
    from ecgrisk.data.datamodule import build_datamodule
    from ecgrisk.data.splits import fold_indices, record_folds
    from ecgrisk.data.windows import WindowDataset
    from ecgrisk.metrics import bootstrap_ci, macro_auroc
    from ecgrisk.models.registry import create_encoder
    from ecgrisk.preprocess import Scaler
    from ecgrisk.pretrain.probe import embed_records, probe_scores

    path = resolve(args.encoder, "encoder")
    meta = encoder_meta(path)
    spec = {**meta["spec"], "pooling": "stages"}
    try:
        encoder = create_encoder(spec.pop("name"), **spec)
    except ValueError as e:
        raise SystemExit(f"{args.encoder}: this probe reads xresnet1d encoders ({e})") from e
    load_encoder_weights(encoder, path)
    encoder.eval()
    saved = meta.get("scaler")  # the pretraining scaler, as fine-tuning uses; else fitted on training
    scaler = Scaler(**saved) if saved else None
    train_folds = list(range(1, args.val_fold))
    cfg = compose("finetune", [f"data.root={args.root}", f"data.task={args.task}",
                               f"data.train_folds=[{','.join(map(str, train_folds))}]",
                               f"data.val_folds=[{args.val_fold}]", f"data.test_folds=[{args.val_fold + 1}]",
                               f"data.train_fraction={args.fraction}"])

    t0 = time.perf_counter()
    dm = build_datamodule(cfg.data, args.seeds[0], scaler=scaler, progress=False)
    dm.setup()
    cache = dm.caches[0]
    folds = record_folds(cache.folds, cache.record_ids)
    val = fold_indices(folds, [args.val_fold])
    every = np.concatenate([fold_indices(folds, train_folds), val])
    scaler = dm.scaler
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = embed_records(encoder, WindowDataset(cache, every, dm.window, dm.stride, scaler), 512)
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    last = 2 * encoder.feature_dim  # the last stage's max and mean come last
    columns = {"last": slice(features.shape[1] - last, None), "all": slice(None)}
    row_of = {int(i): r for r, i in enumerate(every)}
    val_rows, y_val = [row_of[int(i)] for i in val], cache.labels[val]
    embed_s = time.perf_counter() - t0

    runs = []
    for seed in args.seeds:
        drawn = build_datamodule(cfg.data, seed, scaler=scaler, progress=False)
        drawn.setup()
        train = drawn.split["train"][0]
        train_rows = [row_of[int(i)] for i in train]
        for stages in args.stages:
            x = features[:, columns[stages]]
            for c in args.C:
                scores = probe_scores(x[train_rows], cache.labels[train], x[val_rows], c, max_iter=3000)
                ci = bootstrap_ci(lambda y, s: macro_auroc(y, s, skip_degenerate=True), y_val,
                                  scores, n=200)
                runs.append({"seed": seed, "stages": stages, "C": c, "train_records": len(train),
                             "features": x.shape[1], **ci})
                print(f"seed {seed} {stages} C={c}: {ci['point']:.4f} "
                      f"({ci['lower']:.4f}-{ci['upper']:.4f})", flush=True)

    out = Path(args.out) if args.out else ROOT / "results" / (
        f"probe_stages_{args.task}_{args.fraction:g}_fold{args.val_fold}")
    result = {"command": command_line("scripts/probe_stages.py", argv), "encoder": str(path),
              "task": args.task, "fraction": args.fraction, "train_folds": train_folds,
              "val_fold": args.val_fold, "val_records": len(val), "embed_s": round(embed_s, 1),
              "runs": runs}
    lines = [f"# Logistic-regression probes on `{args.encoder}`'s stages",
             "", f"`{result['command']}`; {args.task}, {args.fraction:g} of folds "
             f"{train_folds[0]}-{train_folds[-1]} by patient, fold {args.val_fold} "
             f"({len(val)} records) scores; macro AUROC, mean over seeds of the point and of the "
             "90% bootstrap bounds.", "", "| stages | C | mean | seeds | bounds (mean) |", "|---|---|---|---|---|"]
    for stages in args.stages:
        for c in args.C:
            rs = [r for r in runs if r["stages"] == stages and r["C"] == c]
            lines.append(f"| {stages} | {c:g} | {np.mean([r['point'] for r in rs]):.3f} | "
                         + " / ".join(f"{r['point']:.3f}" for r in rs)
                         + f" | {np.mean([r['lower'] for r in rs]):.3f}-"
                           f"{np.mean([r['upper'] for r in rs]):.3f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    # not with_suffix: the fraction's dot would be taken for one
    atomic_write_text(f"{out}.json", json.dumps(result, indent=1))
    atomic_write_text(f"{out}.md", "\n".join(lines) + "\n")
    print(f"written {out}.json and {out}.md")


if __name__ == "__main__":
    main()
