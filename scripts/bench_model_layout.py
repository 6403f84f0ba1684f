"""The xresnet1d before and after its CPU speed-ups, side by side: speed, and what the shipped
bundles score.

    python scripts/bench_model_layout.py --root data/ptb-xl-full

Four variants of the same modules and weights, interleaved in one process:

- **before**: the blocks on ``[B, C, T]`` through torch's ``Conv1d`` (oneDNN reorders that layout
  around every call) and the identity path pooled by ``AvgPool1d(2, ceil_mode=True)``, as the
  model ran until the two changes (:func:`one_d_forward` with ``torch_pool=True``);
- **pairwise pool**: the same, pooled by :class:`~ecgrisk.models.xresnet1d.HalvingAvgPool1d`;
- **now**: ``XResNet1d`` as it is, a row image ``[B, C, 1, T]`` in channels-last memory
  (:class:`~ecgrisk.models.layers.RowConv1d`) with the pairwise pool;
- **folded** (inference only): now, each BatchNorm folded into the convolution before it
  (:func:`~ecgrisk.models.layers.fold_batchnorm`), as :class:`~ecgrisk.scoring.predict.Predictor`
  runs it.

Speed: **inference** windows/s of the shipped ``ptbxl-superdiagnostic`` model (xresnet1d101) on
batches of ``--batch`` windows [12 x 250], eval mode; **training** samples/s of one step (forward,
BCE, backward, AdamW) on batches of ``--train-batch``; each in bf16 autocast and fp32, on 1 and 2
torch threads, the median of ``--reps`` timings after one warm-up. With ``--root``,
**fidelity**: each shipped xresnet bundle on every fold-9 record, its calibrated probabilities
before, now and folded (the bundle's own autocast; the pairwise pool is bit-identical, so it
scores as before): macro AUROC, Brier, ECE and the probability differences against now. Writes
``results/bench_model_layout.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ecgrisk.bundle import Bundle
from ecgrisk.bundle_files import resolve
from ecgrisk.data.ptbxl import PTBXL
from ecgrisk.files import atomic_write_text
from ecgrisk.hardware import describe
from ecgrisk.io import read_ecg
from ecgrisk.metrics import brier, ece, macro_auroc
from ecgrisk.models.layers import fold_batchnorm
from ecgrisk.models.xresnet1d import HalvingAvgPool1d
from ecgrisk.provenance import command_line
from ecgrisk.scoring.predict import Predictor

VARIANTS = ("before", "pairwise pool", "now", "folded")
TRAINING_VARIANTS = VARIANTS[:3]  # a folded BatchNorm no longer trains


def one_d_forward(model: nn.Module, x: torch.Tensor, torch_pool: bool = False) -> torch.Tensor:
    """Logits of an xresnet classifier with its blocks on ``[B, C, T]``, as before the row image;
    ``torch_pool``: the identity path pooled by ``AvgPool1d(2, ceil_mode=True)`` as before too."""
    enc = model.encoder
    h = x
    for layer in enc.stem:
        if isinstance(layer, nn.MaxPool2d):
            h = F.max_pool1d(h, layer.kernel_size[1], layer.stride[1], layer.padding[1])
        else:
            h = layer(h)
    for stage in enc.stages:
        for block in stage:
            identity = h
            for layer in block.idpath:
                if torch_pool and isinstance(layer, HalvingAvgPool1d):
                    identity = F.avg_pool1d(identity, 2, ceil_mode=True)
                else:
                    identity = layer(identity)
            h = block.act(block.convs(h) + identity)
    return model.head(enc.pool(h))


FORWARD = {"before": lambda model, x: one_d_forward(model, x, torch_pool=True),
           "pairwise pool": one_d_forward, "now": lambda model, x: model(x),
           "folded": lambda model, x: model(x)}


def _median_rates(make_step, variants, n_items: int, reps: int) -> dict[str, float]:
    """Per variant, ``n_items`` / the median seconds of one step; variants interleaved."""
    steps = {v: make_step(v) for v in variants}
    for step in steps.values():
        step()  # warm-up: oneDNN primitives, allocator
    secs: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(reps):
        for variant, step in steps.items():
            t0 = time.perf_counter()
            step()
            secs[variant].append(time.perf_counter() - t0)
    return {variant: n_items / statistics.median(s) for variant, s in secs.items()}


def speed(model: nn.Module, batch: int, train_batch: int, reps: int) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 12, 250, generator=gen)
    xt = torch.randn(train_batch, 12, 250, generator=gen)
    yt = (torch.rand(train_batch, len(model.head[-1].bias), generator=gen) < 0.2).float()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for precision in ("bf16", "fp32"):
            bf16 = precision == "bf16"

            def infer(variant, bf16=bf16):
                net = fold_batchnorm(model) if variant == "folded" else copy.deepcopy(model).eval()
                fwd = FORWARD[variant]

                def step():
                    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                        fwd(net, x)
                return step

            def train(variant, bf16=bf16):
                net, fwd = copy.deepcopy(model).train(), FORWARD[variant]
                opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

                def step():
                    opt.zero_grad(set_to_none=True)
                    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                        loss = F.binary_cross_entropy_with_logits(fwd(net, xt).float(), yt)
                    loss.backward()
                    opt.step()
                return step

            for mode, make, variants, n in (("inference", infer, VARIANTS, batch),
                                            ("training", train, TRAINING_VARIANTS, train_batch)):
                rates = _median_rates(make, variants, n, reps)
                rows.append({"mode": mode, "precision": precision, "threads": threads,
                             "per_s": rates, "ratio": rates["now"] / rates["before"]})
                print(rows[-1], flush=True)
    return rows


class _Before(nn.Module):
    """The model as :class:`~ecgrisk.scoring.predict.Predictor` calls it, run the old way."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FORWARD["before"](self.inner, x)


def fidelity(name: str, root: Path) -> dict:
    bundle = Bundle.load(resolve(name, "bundle"))
    task = yaml.safe_load(bundle.config)["data"]["task"]
    data = PTBXL(root, task=task)
    if list(data.classes) != list(bundle.classes):
        raise SystemExit(f"{name}'s classes are not those of {root}'s task {task!r}")
    idx = np.flatnonzero(data.folds == 9)
    predictor = Predictor(bundle)
    prepared = [predictor.spec.prepare(e.signal, e.fs) for e in (read_ecg(data.paths[i]) for i in idx)]
    y = data.labels[idx]
    folded = predictor.model
    probs = {}
    for variant, net in (("before", _Before(bundle.model)), ("now", bundle.model),
                         ("folded", folded)):
        predictor.model = net
        probs[variant] = predictor.predict_prepared(prepared)
    predictor.model = folded
    return {"model": name, "task": task, "records": len(idx), "precision": bundle.precision,
            "bf16": predictor.bf16,
            "macro_auroc": {k: macro_auroc(y, p) for k, p in probs.items()},
            "brier": {k: brier(y, p) for k, p in probs.items()},
            "ece": {k: ece(y, p) for k, p in probs.items()},
            "abs_diff": {v: _abs_diff(probs[v], probs["now"]) for v in ("before", "folded")}}


def _abs_diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = np.abs(a - b)
    return {"median": float(np.median(d)), "p99": float(np.quantile(d, 0.99)), "max": float(d.max())}


def markdown(r: dict, root) -> str:
    md = ["# The xresnet1d before and after its CPU speed-ups", "",
          f"`{r['command']}` on {r['machine']}: the shipped `ptbxl-superdiagnostic` model "
          f"(xresnet1d101, 1.9 M parameters), inference on batches of {r['batch']} windows "
          f"[12 x 250], training steps (forward, BCE, backward, AdamW) on batches of "
          f"{r['train_batch']}; median of {r['reps']} timings after a warm-up, the variants "
          "interleaved in one process. **before**: blocks on [B, C, T], identity path pooled by "
          "`AvgPool1d(2, ceil_mode=True)`; **pairwise pool**: the same with `HalvingAvgPool1d`; "
          "**now**: a row image [B, C, 1, T] in channels-last memory with the pairwise pool; "
          "**folded** (inference only, as `Predictor` runs it): now with each BatchNorm folded "
          "into the convolution before it.", "",
          "| mode | precision | threads | before /s | pairwise pool /s | now /s | now x before "
          "| folded /s | folded x now |", "|---|---|---|---|---|---|---|---|---|"]
    for s in r["speed"]:
        folded = s["per_s"].get("folded")
        md.append(f"| {s['mode']} | {s['precision']} | {s['threads']} | "
                  + " | ".join(f"{s['per_s'][v]:.0f}" for v in TRAINING_VARIANTS)
                  + f" | {s['ratio']:.2f} | "
                  + ("- | - |" if folded is None else f"{folded:.0f} | {folded / s['per_s']['now']:.2f} |"))
    md.append("")
    if r["fidelity"]:
        md += [f"## What the shipped bundles score on fold 9 of `{root}`", "",
               "Calibrated probabilities under each bundle's own autocast, every fold-9 record "
               "(the pairwise pool is bit-identical, so it scores as before).", "",
               "| bundle | records | autocast | variant | macro AUROC | Brier | ECE |", "|---|---|---|---|---|---|---|"]
        for f in r["fidelity"]:
            for v in ("before", "now", "folded"):
                md.append(f"| {f['model']} | {f['records']} | {'bf16' if f['bf16'] else 'fp32'} | {v} | "
                          f"{f['macro_auroc'][v]:.4f} | {f['brier'][v]:.4f} | {f['ece'][v]:.4f} |")
        md.append("")
        md += [f"- {f['model']}: probabilities, {v} vs now, absolute difference over records x "
               f"statements: median {d['median']:.5f}, 99th percentile {d['p99']:.4f}, max "
               f"{d['max']:.4f}." for f in r["fidelity"] for v, d in f["abs_diff"].items()]
        md.append("")
    return "\n".join(md)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=None, help="PTB-XL folder (fidelity on fold 9)")
    p.add_argument("--bundles", nargs="+", default=["ptbxl-superdiagnostic", "ptbxl-all"])
    p.add_argument("--batch", type=int, default=256, help="windows per inference call")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--name", default="bench_model_layout")
    args = p.parse_args(argv)
    model = Bundle.load(resolve("ptbxl-superdiagnostic", "bundle")).model
    result = {"command": command_line(__file__, argv), "machine": describe(),
              "torch": torch.__version__, "batch": args.batch, "train_batch": args.train_batch,
              "reps": args.reps, "variants": list(VARIANTS),
              "speed": speed(model, args.batch, args.train_batch, args.reps)}
    torch.set_num_threads(2)
    result["fidelity"] = [fidelity(name, args.root) for name in args.bundles] if args.root else []
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{args.name}.json", json.dumps(result, indent=1) + "\n")
    md = markdown(result, args.root)
    atomic_write_text(args.out / f"{args.name}.md", md)
    print(md)
    return result


if __name__ == "__main__":
    main()
