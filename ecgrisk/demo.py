"""``make demo``: the whole pipeline end to end on a small budget, on whatever data is at hand.

Data, in order of preference: ``data/ptb-xl`` (or ``$ECGRISK_DATA/ptb-xl``); else a small PTB-XL
subset downloaded from PhysioNet; else, offline, the built-in synthetic generator, whose results
are NOT clinical and never reported as numbers.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from rich.console import Console

from ecgrisk.config import compose
from ecgrisk.paths import data_root

console = Console()
DEMO_RECORDS = 1000  # PTB-XL records fetched when no local copy exists
# A narrow xresnet1d50 and a few epochs per stage: minutes on 2 CPU cores, not the benchmark recipe.
MODEL = ["model=xresnet1d50", "model.kwargs.base_channels=16", "data.batch_size=64",
         "trainer.log_every_n_steps=5"]
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
    synth = data_root() / "synthetic-ptbxl"
    console.print("[bold yellow]Using SYNTHETIC ECGs generated on this machine: the pipeline runs, "
                  "but no result below is clinical.[/bold yellow]")
    return synth, ["data=synthetic", f"data.root={synth}"], f"synthetic PTB-XL-layout data at {synth} (NOT clinical)"


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().handlers[0].setLevel(logging.WARNING)  # Lightning logs INFO on its own handler
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    t0 = time.perf_counter()
    root, data_overrides, what = find_data()
    out = Path("runs") / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")

    from ecgrisk.finetune.app import train as finetune
    from ecgrisk.pretrain.app import train as pretrain
    from ecgrisk.refine.app import refine

    console.rule("1/4 self-supervised pretraining (labels ignored, test fold excluded)")
    pre = pretrain(compose("pretrain", data_overrides + PRETRAIN + [f"output_dir={out / 'pretrain'}"]))
    console.print(f"masked-reconstruction loss {pre['train/loss_start']:.3f} -> {pre['train/loss_end']:.3f}")

    console.rule("2/4 fine-tuning from the pretrained encoder")
    encoder = out / "pretrain" / "encoder.pt"
    ft = finetune(compose("finetune", data_overrides + FINETUNE + [
        f"model.pretrained={encoder}", f"output_dir={out / 'finetune'}"]))

    console.rule("3/4 refinement from (simulated) cardiologist feedback")
    ref = refine(compose("refine", data_overrides + REFINE + [
        f"base={out / 'finetune' / 'model.pt'}", f"output_dir={out / 'refine'}"]))

    console.rule("4/4 batch risk scoring of the ECG files with the refined bundle")
    from ecgrisk.cli import main as cli

    # the dataset's record folder stands in for the folder of files a clinical team would score
    cli(["score", str(root / "records100"), "--model", str(out / "refine" / "model.pt"),
         "--out", str(out / "scores.csv"), "--report", str(out / "report"), "--quiet"])

    console.rule("done")
    console.print(f"data: {what}")
    if ft["test/records"]:
        console.print(f"fine-tuned: test macro AUROC {ft['test/macro_auroc']:.3f} "
                      f"[{ft['test/macro_auroc/lower']:.3f}, {ft['test/macro_auroc/upper']:.3f}] on "
                      f"{ft['test/records']} records (fold 10)")
        console.print(f"refined:    test macro AUROC {ref['test/macro_auroc']:.3f} after "
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
                "scores.csv", "report/"):
        console.print(f"  {out / rel}")


if __name__ == "__main__":
    main()
