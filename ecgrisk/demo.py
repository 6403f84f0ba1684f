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
# A narrow xresnet1d50 and a few epochs: minutes on 2 CPU cores, not the benchmark recipe.
FINETUNE = ["model=xresnet1d50", "model.kwargs.base_channels=16", "trainer.max_epochs=8",
            "data.batch_size=64", "early_stopping_patience=null", "trainer.log_every_n_steps=5"]


def find_data() -> tuple[list[str], str]:
    """Config overrides selecting the demo's data, and a sentence saying what it is."""
    root = data_root() / "ptb-xl"
    if (root / "ptbxl_database.csv").is_file():
        return [f"data.root={root}"], f"PTB-XL at {root}"
    from ecgrisk.data.download import DownloadError, download_ptbxl

    console.print(f"No PTB-XL copy at {root}; trying to download {DEMO_RECORDS} records from PhysioNet ...")
    try:
        download_ptbxl(root, records=DEMO_RECORDS, fs=100, timeout=15.0)
        return [f"data.root={root}"], f"PTB-XL subset ({DEMO_RECORDS} records) downloaded to {root}"
    except DownloadError as e:
        console.print(f"[yellow]Download failed ({e}).[/yellow]")
    synth = data_root() / "synthetic-ptbxl"
    console.print("[bold yellow]Using SYNTHETIC ECGs generated on this machine: the pipeline runs, "
                  "but no result below is clinical.[/bold yellow]")
    return ["data=synthetic", f"data.root={synth}"], f"synthetic PTB-XL-layout data at {synth} (NOT clinical)"


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().handlers[0].setLevel(logging.WARNING)  # Lightning logs INFO on its own handler
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    t0 = time.perf_counter()
    data_overrides, what = find_data()
    out = Path("runs") / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")

    from ecgrisk.finetune import train as finetune

    console.rule("fine-tuning")
    cfg = compose("finetune", data_overrides + FINETUNE + [f"output_dir={out / 'finetune'}"])
    metrics = finetune(cfg)

    console.rule("done")
    console.print(f"data: {what}")
    console.print(f"test macro AUROC {metrics['test/macro_auroc']:.3f} on {metrics['test/records']} records "
                  f"(fold 10), {time.perf_counter() - t0:.0f} s in all")
    console.print(f"outputs: {out.resolve()}")
    console.print(f"  model bundle   {out / 'finetune' / 'model.pt'}")
    console.print(f"  metrics        {out / 'finetune' / 'metrics.json'}")
    console.print(f"  curves         {out / 'finetune' / 'curves.png'}")


if __name__ == "__main__":
    main()
