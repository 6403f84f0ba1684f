"""``make demo``: the whole pipeline end to end on a small budget, on whatever data is at hand.

Data, in order of preference: ``data/ptb-xl`` (or ``$ECGRISK_DATA/ptb-xl``); else a small PTB-XL
subset downloaded from PhysioNet; else, offline, the 400 real PTB-XL records the package ships
(``ecgrisk/shipped/ptbxl-demo-sample.tar.xz``, CC BY 4.0), unpacked beside the data. Its figures
are real but small-sample: read their intervals. Last, the shipped ``ptbxl-superdiagnostic``
bundle scores the same files and the highest-risk ECGs are listed with their cardiologists'
reports.
"""

from __future__ import annotations

import argparse
import logging
import os
import tarfile
import time
import warnings
from pathlib import Path

from rich.console import Console

from ecgrisk.config import compose
from ecgrisk.paths import data_root
from ecgrisk.shipped import DEFAULT_BUNDLE, SHIPPED_DIR

console = Console()
DEMO_RECORDS = 1000  # PTB-XL records fetched when no local copy exists
SAMPLE = SHIPPED_DIR / "ptbxl-demo-sample.tar.xz"
TOP = 5  # highest-risk ECGs listed at the end
# A narrow xresnet1d50 and a few epochs per stage: minutes on 2 CPU cores, not the benchmark recipe.
MODEL = ["model=xresnet1d50", "model.kwargs.base_channels=16", "data.batch_size=64",
         "trainer.log_every_n_steps=1", "+trainer.enable_model_summary=false"]
PRETRAIN = MODEL + ["ssl=masked", "trainer.max_epochs=6"]
FINETUNE = MODEL + ["trainer.max_epochs=8", "early_stopping_patience=null"]
REFINE = ["feedback=simulated", "refine=dpo", "rounds=2", "queries_per_round=16", "progress=false"]


def find_data() -> tuple[Path, list[str], str]:
    """The demo data's root, config overrides selecting it, and a sentence saying what it is."""
    root = data_root() / "ptb-xl"
    if (root / "ptbxl_database.csv").is_file():
        return root, [f"data.root={root}"], f"PTB-XL at {root}"
    from ecgrisk.data.download import DownloadError, download_ptbxl

    console.print(f"No PTB-XL copy at {root}; trying to download {DEMO_RECORDS} records from PhysioNet ...")
    try:
        download_ptbxl(root, records=DEMO_RECORDS, fs=100, timeout=15.0)
        return root, [f"data.root={root}"], f"PTB-XL subset ({DEMO_RECORDS} records) downloaded to {root}"
    except DownloadError as e:
        console.print(f"[yellow]Download failed ({e}).[/yellow]")
    sample = unpack_sample(data_root())
    return sample, [f"data.root={sample}"], (
        f"the real PTB-XL sample shipped with ecgrisk (400 records, CC BY 4.0) at {sample}")


def unpack_sample(dest: Path) -> Path:
    """Unpack the shipped PTB-XL sample under ``dest`` once; return its root."""
    root = dest / "ptbxl-demo-sample"
    if (root / "ptbxl_database.csv").is_file():
        return root
    if not SAMPLE.is_file():
        raise SystemExit(f"the demo sample {SAMPLE} is missing from this installation")
    console.print(f"Using the real PTB-XL sample shipped with ecgrisk, unpacked to {root}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(SAMPLE) as tar:
        # the CSV last: a folder with it is complete, so an interrupted unpack is redone
        members = sorted(tar.getmembers(), key=lambda m: m.name.endswith("ptbxl_database.csv"))
        tar.extractall(dest, members=members, filter="data")
    return root


def shipped_on_sample(root: Path, scores: Path, n: int = TOP) -> tuple[list[dict], dict]:
    """The ``n`` highest-risk rows of ``scores`` with each record's PTB-XL report and statements,
    and the shipped bundle's fold-9 macro AUROC on the sample (fold 9 never trained it)."""
    import csv

    from ecgrisk.scoring.evaluate import evaluate_scores

    with open(root / "ptbxl_database.csv", newline="") as f:
        db = {r["ecg_id"]: r for r in csv.DictReader(f)}
    with open(scores, newline="") as f:
        rows = {str(int(Path(r["record"]).name.split("_")[0])): r for r in csv.DictReader(f)}
    ranked = sorted((k for k, r in rows.items() if r["risk"]), key=lambda k: -float(rows[k]["risk"]))
    top = []
    for ecg_id in ranked[:n]:
        r, entry = rows[ecg_id], db[ecg_id]
        codes = entry["scp_codes"].strip("{}").replace("'", "").split(", ")
        top.append({"record": Path(r["record"]).name, "risk": float(r["risk"]),
                    "band": r["risk_band"], "reading": r["reading"] or "-",
                    "review": r["needs_review"] == "True",
                    "report": " ".join(entry["report"].split()),
                    "statements": " ".join(c.split(":")[0] for c in codes)})
    every = evaluate_scores(scores, root, task="superdiagnostic", only=["fold=9"],
                            bootstrap=200)["groups"][0]
    return top, {"records": every["n"], "point": every["macro_auroc"],
                 "lower": every["macro_auroc/lower"], "upper": every["macro_auroc/upper"]}


def main(argv: list[str] | None = None) -> None:
    # no options: the parser answers --help and refuses anything else rather than starting a run
    argparse.ArgumentParser(prog="python -m ecgrisk.demo", description=__doc__.split("\n\n")[0],
                            epilog=__doc__.split("\n\n", 1)[1]).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().handlers[0].setLevel(logging.WARNING)
    # Lightning's warnings concern its own internals; a newcomer's first look shows ecgrisk's own
    warnings.filterwarnings("ignore", module="lightning")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    t0 = time.perf_counter()
    root, data_overrides, what = find_data()
    out = Path("runs") / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")

    from ecgrisk.finetune.app import train as finetune
    from ecgrisk.pretrain.app import train as pretrain
    from ecgrisk.refine.app import refine

    # after the import, which sets Lightning's logger to INFO (seed, precision, "GPU available",
    # tips, checkpoint paths) on a handler of its own
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)

    console.rule("1/5 self-supervised pretraining (labels ignored, test fold excluded)")
    pre = pretrain(compose("pretrain", data_overrides + PRETRAIN + [f"output_dir={out / 'pretrain'}"]))
    console.print(f"masked-reconstruction loss {pre['train/loss_start']:.3f} -> {pre['train/loss_end']:.3f}")

    console.rule("2/5 fine-tuning from the pretrained encoder")
    encoder = out / "pretrain" / "encoder.pt"
    ft = finetune(compose("finetune", data_overrides + FINETUNE + [
        f"model.pretrained={encoder}", f"output_dir={out / 'finetune'}"]))

    console.rule("3/5 refinement from (simulated) cardiologist feedback")
    ref = refine(compose("refine", data_overrides + REFINE + [
        f"base={out / 'finetune' / 'model.pt'}", f"output_dir={out / 'refine'}"]))

    console.rule("4/5 batch risk scoring of the ECG files with the refined bundle")
    from ecgrisk.cli import main as cli

    # the dataset's record folder stands in for the folder of files a clinical team would score
    cli(["score", str(root / "records100"), "--model", str(out / "refine" / "model.pt"),
         "--out", str(out / "scores.csv"), "--report", str(out / "report"), "--quiet"])

    console.rule(f"5/5 the shipped {DEFAULT_BUNDLE} bundle (full PTB-XL folds 1-8) on the same files")
    cli(["score", str(root / "records100"), "--model", DEFAULT_BUNDLE,
         "--out", str(out / "scores_shipped.csv"), "--quiet"])
    top, auroc = shipped_on_sample(root, out / "scores_shipped.csv")
    console.print(f"{DEFAULT_BUNDLE} on the sample's {auroc['records']} fold-9 records (never "
                  f"trained on): macro AUROC {auroc['point']:.3f} [{auroc['lower']:.3f}, "
                  f"{auroc['upper']:.3f}]")
    console.print("highest-risk ECGs (risk = 1 - P(NORM)): the model's reading (p >= 0.5; "
                  "'review' where needs_review is set), then PTB-XL's cardiologists' statements "
                  "and report:")
    for t in top:
        console.print(f"  {t['record']}  risk {t['risk']:.3f} ({t['band']})  model: "
                      f"{t['reading']}{' (review)' if t['review'] else ''}  PTB-XL: {t['statements']}",
                      highlight=False)
        console.print(f"      {t['report'][:72]}", highlight=False, soft_wrap=True)

    console.rule("done")
    console.print(f"data: {what}")
    if ft["test/records"]:
        console.print(f"fine-tuned: test macro AUROC {ft['test/macro_auroc']:.3f} "
                      f"[{ft['test/macro_auroc/lower']:.3f}, {ft['test/macro_auroc/upper']:.3f}] on "
                      f"{ft['test/records']} records (fold 10)")
        console.print(f"refined:    test macro AUROC {ref['report/macro_auroc']:.3f} after "
                      f"{ref['feedback/count']} judgements")
    else:
        console.print("[yellow]the test fold (10) is absent from this copy: validation figures "
                      "only[/yellow]")
        console.print(f"fine-tuned: validation macro AUROC {ft['val/macro_auroc']:.3f} "
                      f"[{ft['val/macro_auroc/lower']:.3f}, {ft['val/macro_auroc/upper']:.3f}] on "
                      f"{ft['val/records']} records (fold 9, where the epoch and calibration were chosen)")
        console.print(f"refined:    guard-half macro AUROC {ref['base/val/macro_auroc']:.3f} -> "
                      f"{ref['val/macro_auroc']:.3f} after {ref['feedback/count']} judgements")
    console.print(f"{time.perf_counter() - t0:.0f} s in all; outputs in {out.resolve()}:")
    for rel in ("pretrain/encoder.pt", "finetune/model.pt", "finetune/metrics.json",
                "finetune/curves.png", "refine/model.pt", "refine/feedback.db", "refine/metrics.json",
                "scores.csv", "report/index.md", "scores_shipped.csv"):
        console.print(f"  {out / rel}")


if __name__ == "__main__":
    main()
