"""Benchmark ``ecgrisk score`` against a naive per-file loop and the model alone: ECGs/s and memory.

    python scripts/bench_scoring.py --root data/ptb-xl-full --sizes 2000 19634   # the full setting
    python scripts/bench_scoring.py --sizes 200 400 --quick --repeats 1        # smoke run

Each folder of N files holds real PTB-XL 100 Hz records from ``--root/records100`` (``.dat``
symlinked, headers rewritten under new names, 1,000 per sub-folder; distinct records while N is
at most the number at hand) and, with ``--mixed`` (default 0.2), that share of other formats:
half ``.npz`` (PTB-XL records converted by ``ecgrisk.io.write``), a quarter DICOM (pydicom's
12-lead example, 1000 Hz) and a quarter GE MUSE XML (the real 8-lead export in
``tests/data/formats``). Each measurement runs in its own subprocess pinned to the same cores and
reports its own peak RSS and that of its reader processes. On a shared host one run's rate
differs from the next by up to 20%, so every measurement runs ``--repeats`` times, the modes
interleaved round by round, and the report gives the median rate with its range.

- ``pipeline``: :func:`ecgrisk.scoring.job.score_files` (``--workers`` reader processes,
  batched inference, streamed CSV).
- ``naive``: for each file ``read_ecg`` + the bundle's preprocessing, scaler, windows, one model
  call per file, max aggregation and calibration; rows collected and written at the end with
  pandas (what a first script does; ``read_ecg`` because ``wfdb`` reads none of the clinical
  formats). It calls the model in fp32, as such a script would; the pipeline and ``model`` run
  under the bundle's own autocast (bf16 for the shipped bundles, the numerics it was calibrated
  with), which is part of their lead.
- ``model``: the same :class:`Predictor` on records already read and prepared in memory (the
  model's own forward pass, windows, aggregation and calibration), in the groups the pipeline
  scores together: the ceiling the pipeline can reach on these cores.
- ``read``: the readers' own work (``read_chunk``: read, quality flags, preprocessing) on every
  file in one process, no model. With ``model`` it bounds the pipeline: the model-only rate has
  every core, the pipeline shares them with the readers, so at most
  ``cores / (cores / model + 1 / read)`` ECGs/s (each record costs the model ``cores / model``
  core-seconds and the readers ``1 / read``).

Every run also reports its CPU seconds, of the main process and of the reader processes, over
the span its rate is timed on: a pipeline whose CPU seconds fill the cores it was given can only
go faster with less work, not with better overlap.

The model is ``--model`` (default the shipped ``ptbxl-superdiagnostic``, an xresnet1d101: the
size users score with). Writes ``results/bench_scoring.json`` and ``results/bench_scoring.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The pipeline's spawned reader processes import this script again as their main module, so
# it imports nothing heavy at the top: ecgrisk.hardware (torch) is imported in main().
from ecgrisk.files import atomic_write_text  # noqa: E402
from ecgrisk.io import read_ecg  # noqa: E402
from ecgrisk.io.write import write_ecg  # noqa: E402
from ecgrisk.provenance import command_line  # noqa: E402

FORMAT_OF_SUFFIX = {".npz": "npz", ".dcm": "dicom", ".xml": "muse"}  # the rest: WFDB records


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) so far of this process, and of its children that have ended
    and been waited for (the pipeline's readers, once its pool has shut down)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def work_bound(run: dict, cores: int) -> float:
    """ECGs/s a run's own CPU work allows on ``cores`` cores that are never idle: its records
    over (its CPU seconds, main process and readers, spread over the cores)."""
    return run["scored"] * cores / (run["cpu_main_s"] + run["cpu_readers_s"])


def build_folder(src: Path, dst: Path, n: int, mixed: float) -> dict:
    """``n`` files under ``dst``: PTB-XL WFDB records (symlinked data) and a ``mixed`` share of
    npz, DICOM and MUSE XML files. Returns the count per format."""
    heads = sorted(src.rglob("*_lr.hea"))
    if not heads:
        raise SystemExit(f"no *_lr.hea records under {src}")
    others = _other_formats() if mixed > 0 else []
    n_other = round(n * mixed) if others else 0
    kinds = (["npz"] * (n_other // 2) + ["dicom", "muse"] * n)[:n_other]
    counts = {"wfdb": n - len(kinds)} | {k: kinds.count(k) for k in ("npz", "dicom", "muse")}
    # spread the other formats through the folders, as in a real export
    slots = dict(zip(np.linspace(0, n - 1, len(kinds)).round().astype(int), kinds, strict=True))
    for i in range(n):
        h = heads[i % len(heads)]
        name = f"r{i:06d}"
        sub = dst / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        kind = slots.get(i, "wfdb")
        if kind == "wfdb":
            text = h.read_text().replace(h.stem, name)  # record line and every signal file name
            (sub / f"{name}.hea").write_text(text)
            os.symlink(h.with_suffix(".dat").resolve(), sub / f"{name}.dat")  # absolute: --root may be relative
        elif kind == "npz":
            write_ecg(read_ecg(h.with_suffix("")), sub / name, "npz")
        else:
            shutil.copy(others[0] if kind == "dicom" else others[1], sub / f"{name}"
                        f"{'.dcm' if kind == 'dicom' else '.xml'}")
    return counts


def _other_formats() -> list[Path]:
    """The DICOM and MUSE files the mixed folders copy, or [] without the formats extra."""
    try:
        import ecgdatakit  # noqa: F401
        from pydicom.data import get_testdata_file
    except ImportError:
        print("formats extra not installed: folders hold WFDB records only")
        return []
    return [Path(get_testdata_file("waveform_ecg.dcm")),
            ROOT / "tests" / "data" / "formats" / "muse_sinus_rhythm.xml"]


# ----------------------------------------------------------------------------- child runs
def run_pipeline(folder: str, bundle: str, out: str, workers: int, batch_size: int) -> dict:
    from ecgrisk.scoring.job import score_files

    s = score_files([folder], bundle, out, workers=workers, batch_size=batch_size,
                    progress=False)
    return {"scored": s.scored, "failed": s.failed}


def run_naive(folder: str, bundle_path: str, out: str) -> dict:
    import pandas as pd
    import torch

    from ecgrisk.bundle import Bundle
    from ecgrisk.io.inputs import collect_records

    bundle = Bundle.load(bundle_path)
    fs = bundle.preprocessing.fs
    w, s = round(bundle.window_s * fs), round(bundle.stride_s * fs)
    rows = []
    for rec, path in collect_records([folder]):
        ecg = read_ecg(path)
        x = bundle.scaler(bundle.preprocessing.apply(ecg.signal, ecg.fs))
        starts = range(0, x.shape[1] - w + 1, s)
        windows = torch.from_numpy(np.stack([x[:, a:a + w] for a in starts]).astype(np.float32))
        with torch.no_grad():
            z = bundle.model(windows).max(dim=0).values.numpy().astype(np.float64)
        p = 1 / (1 + np.exp(-z / bundle.temperature))
        rows.append({"record": rec, **{f"prob/{c}": v for c, v in zip(bundle.classes, p, strict=True)}})
    pd.DataFrame(rows).to_csv(out, index=False)
    return {"scored": len(rows), "failed": 0}


def run_read(folder: str, bundle_path: str) -> dict:
    """What the reader processes do for every file, in this one process; seconds per format."""
    from ecgrisk.bundle import Bundle
    from ecgrisk.io.inputs import collect_records
    from ecgrisk.scoring.predict import Predictor
    from ecgrisk.scoring.reading import read_chunk

    spec = Predictor(Bundle.load(bundle_path)).spec
    records = collect_records([folder])
    secs, counts, first, failed = {}, {}, {}, 0
    t0, (c0, _) = time.perf_counter(), cpu_seconds()
    for job in records:
        t = time.perf_counter()
        failed += read_chunk([job], spec)[0].error != ""
        kind = FORMAT_OF_SUFFIX.get(Path(job[1]).suffix.lower(), "wfdb")
        secs[kind] = secs.get(kind, 0.0) + time.perf_counter() - t
        first.setdefault(kind, 1e3 * secs[kind])  # with the format's one-time imports
        counts[kind] = counts.get(kind, 0) + 1
    return {"scored": len(records) - failed, "failed": failed, "timed_s": time.perf_counter() - t0,
            "timed_cpu_s": cpu_seconds()[0] - c0,
            "read_ms_per_file": {k: 1e3 * secs[k] / counts[k] for k in secs},
            "first_file_ms": first,
            "read_share": {k: secs[k] / sum(secs.values()) for k in secs}}


def run_model(folder: str, bundle_path: str, batch_size: int) -> dict:
    """The pipeline's own Predictor on records read and prepared beforehand (not timed)."""
    from ecgrisk.bundle import Bundle
    from ecgrisk.io.inputs import collect_records
    from ecgrisk.scoring.job import record_groups
    from ecgrisk.scoring.predict import Predictor

    predictor = Predictor(Bundle.load(bundle_path))
    prepared = []
    for _, path in collect_records([folder]):
        ecg = read_ecg(path)
        prepared.append(predictor.spec.prepare(ecg.signal, ecg.fs))
    # the records in the groups the pipeline scores together; one call over all 19,634
    # records peaked at 4.4 GB
    groups = list(record_groups(prepared, lambda x: x.shape[1] // predictor.spec.stride, batch_size))
    predictor.predict_prepared(groups[0], batch_size)  # warm-up: first calls allocate
    t0, (c0, _) = time.perf_counter(), cpu_seconds()
    for group in groups:
        predictor.predict_prepared(group, batch_size)
    return {"scored": len(prepared), "failed": 0, "timed_s": time.perf_counter() - t0,
            "timed_cpu_s": cpu_seconds()[0] - c0}


def _descendants_peak_mb(stop, peak: dict) -> None:
    """Poll /proc: the largest VmHWM (peak RSS) among this process's descendants.

    The reader processes are found through the parent links while they run. RUSAGE_CHILDREN
    would misreport them: its ru_maxrss keeps, across exec, the resident size a spawned reader
    had as a fork of this process before exec, i.e. this process's own size at that moment: it
    said 252-276 MB for readers whose own peak was about 125 MB when they started after torch
    was loaded.
    """
    me = os.getpid()
    while not stop.is_set():
        parents = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
        for pid in parents:
            q, hops = pid, 0
            while q in parents and q != me and hops < 8:
                q, hops = parents[q], hops + 1
            if q == me and pid != me:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    hwm = next(int(ln.split()[1]) for ln in status.splitlines()
                               if ln.startswith("VmHWM"))
                    peak["mb"] = max(peak.get("mb", 0.0), hwm / 1024)
                except (OSError, StopIteration, ValueError):
                    continue
        stop.wait(0.5)


def child(args) -> None:
    import threading

    stop, peak = threading.Event(), {}
    poller = threading.Thread(target=_descendants_peak_mb, args=(stop, peak), daemon=True)
    poller.start()
    t0, (c0, k0) = time.perf_counter(), cpu_seconds()
    if args.mode == "pipeline":
        res = run_pipeline(args.folder, args.bundle, args.out, args.workers, args.batch_size)
    elif args.mode == "naive":
        res = run_naive(args.folder, args.bundle, args.out)
    elif args.mode == "read":
        res = run_read(args.folder, args.bundle)
    else:
        if args.mode == "model-default-malloc":  # what ecgrisk.hardware.keep_freed_memory gains
            import ecgrisk.scoring.predict

            ecgrisk.scoring.predict.keep_freed_memory = lambda: False
        res = run_model(args.folder, args.bundle, args.batch_size)
    wall = res.pop("timed_s", time.perf_counter() - t0)
    c1, k1 = cpu_seconds()
    res.update(cpu_main_s=res.pop("timed_cpu_s", c1 - c0), cpu_readers_s=k1 - k0)
    stop.set()
    poller.join()
    kib = 1024 if sys.platform != "darwin" else 1 / 1024  # ru_maxrss: KiB on Linux
    res.update(wall_s=wall, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 2**20,
               peak_rss_children_mb=peak.get("mb", 0.0))
    print("RESULT " + json.dumps(res))


def measure(mode: str, folder: Path, bundle: Path, n: int, args, tmp: Path) -> dict:
    out = tmp / f"{mode}-{n}.csv"
    cmd = [sys.executable, __file__, "--child", mode, "--folder", str(folder), "--bundle",
           str(bundle), "--out", str(out), "--workers", str(args.workers), "--batch-size",
           str(args.batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    res = json.loads(line[-1][7:])
    if res["failed"]:
        raise SystemExit(f"{mode} run: {res['failed']} of {n} files failed to score; a throughput "
                         f"over failures measures nothing (see {out})")
    res.update(mode=mode, n=n, ecg_per_s=res["scored"] / res["wall_s"])
    print(f"{mode:9s} N={n:6d}: {res['ecg_per_s']:8.1f} ECG/s, peak RSS {res['peak_rss_mb']:.0f} MB "
          f"(readers {res['peak_rss_children_mb']:.0f} MB)", flush=True)
    return res


def summarise(runs: list[dict]) -> dict[tuple[str, int], dict]:
    """Per ``(mode, n)``: the run with the median rate (the lower middle one of an even count),
    with ``range`` (the slowest and fastest rates), ``repeats`` and the largest peak RSS of its
    runs."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["mode"], r["n"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["ecg_per_s"])
        mid = rs[(len(rs) - 1) // 2]
        out[key] = {k: v for k, v in mid.items() if k != "repeat"} | {
            "repeats": len(rs), "range": [rs[0]["ecg_per_s"], rs[-1]["ecg_per_s"]],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "peak_rss_children_mb": max(r["peak_rss_children_mb"] for r in rs)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=None,
                   help="a PTB-XL copy with records100/ (default: the shared 500-record subset)")
    p.add_argument("--sizes", type=int, nargs=2, default=[2000, 19634], metavar=("N1", "N2"))
    p.add_argument("--mixed", type=float, default=0.2, help="share of npz/DICOM/MUSE files")
    p.add_argument("--model", default="ptbxl-superdiagnostic", help="a shipped name or model.pt")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--cores", type=int, default=2, help="pin every run to this many cores")
    p.add_argument("--repeats", type=int, default=3, help="runs of each measurement (medians)")
    p.add_argument("--results", default=str(ROOT / "results"))
    p.add_argument("--quick", action="store_true", help="smoke run: do not write results/")
    p.add_argument("--child", choices=["pipeline", "naive", "model", "model-default-malloc", "read"],
                   help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--bundle", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.mode = args.child
        child(args)
        return

    from ecgrisk.bundle import Bundle
    from ecgrisk.bundle_files import resolve
    from ecgrisk.hardware import describe

    started = time.strftime("%Y-%m-%d %H:%M")
    cores = sorted(os.sched_getaffinity(0))[: args.cores]
    os.sched_setaffinity(0, cores)  # children inherit the pinning
    if args.root:
        src = Path(args.root) / "records100"
    else:
        from ecgrisk.paths import shared_data

        shared = shared_data()
        if shared is None:
            raise SystemExit("no shared data folder; pass --root")
        src = shared / "ptb-xl" / "records100"
    bundle = resolve(args.model)
    loaded = Bundle.load(bundle)
    model_desc = (f"`{args.model}` ({type(loaded.model.encoder).__name__}, "
                  f"{sum(p.numel() for p in loaded.model.parameters()) / 1e6:.1f} M parameters)")
    runs, formats = [], {}
    with tempfile.TemporaryDirectory(prefix="ecgrisk-bench-") as tmp:
        tmp = Path(tmp)
        for n in args.sizes:
            folder = tmp / f"n{n}"
            formats[n] = build_folder(src, folder, n, args.mixed)
            print(f"N={n}: {formats[n]}", flush=True)
            modes = ["pipeline", "naive", "model"] + (["read", "model-default-malloc"]
                                                      if n == args.sizes[0] else [])
            for rep in range(args.repeats):
                runs += [measure(mode, folder, bundle, n, args, tmp) | {"repeat": rep}
                         for mode in modes]
    n1, n2 = args.sizes
    by = summarise(runs)
    bound = len(cores) / (len(cores) / by[("model", n1)]["ecg_per_s"]
                          + 1 / by[("read", n1)]["ecg_per_s"])
    report = {
        "config": {"model": args.model, "workers": args.workers, "batch_size": args.batch_size,
                   "cores": len(cores), "sizes": args.sizes, "mixed": args.mixed,
                   "formats": {str(k): v for k, v in formats.items()}, "source": str(src),
                   "python": platform.python_version(),
                   "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                   "repeats": args.repeats},
        "runs": runs,
        "medians": [by[k] for k in sorted(by, key=lambda k: (k[1], k[0]))],
        "speedup_vs_naive": {str(n): by[("pipeline", n)]["ecg_per_s"] / by[("naive", n)]["ecg_per_s"]
                             for n in args.sizes},
        "speedup_target": 5.0,
        "share_of_model_only": {str(n): by[("pipeline", n)]["ecg_per_s"]
                                / by[("model", n)]["ecg_per_s"] for n in args.sizes},
        "share_target": 0.7,
        "kept_memory_speedup": (by[("model", n1)]["ecg_per_s"]
                                / by[("model-default-malloc", n1)]["ecg_per_s"]),
        "shared_cores_bound": bound,
        "share_of_bound": {str(n): by[("pipeline", n)]["ecg_per_s"] / bound for n in args.sizes},
        "work_bound": {str(n): work_bound(by[("pipeline", n)], len(cores)) for n in args.sizes},
        "peak_rss_growth_mb": by[("pipeline", n2)]["peak_rss_mb"] - by[("pipeline", n1)]["peak_rss_mb"],
        "reader_peak_rss_growth_mb": (by[("pipeline", n2)]["peak_rss_children_mb"]
                                      - by[("pipeline", n1)]["peak_rss_children_mb"]),
    }
    print(json.dumps({k: v for k, v in report.items() if k not in ("runs", "medians")}, indent=1))
    if args.quick:
        return
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    atomic_write_text(res / "bench_scoring.json", json.dumps(report, indent=1) + "\n")
    mix = ", ".join(f"N={n}: " + " ".join(f"{v} {k}" for k, v in formats[n].items() if v)
                    for n in args.sizes)
    lines = [
        "# Batch scoring benchmark", "",
        f"`{command_line(__file__)}` on {describe()}; "
        f"{len(cores)} CPU cores pinned, started {started}: model "
        f"{model_desc}, {args.workers} reader processes, batches of {args.batch_size} windows. "
        f"Files ({mix}): PTB-XL 100 Hz records from `{src}`, DICOM 1000 Hz, MUSE 500 Hz "
        "(8 leads), all 10 s.", "",
        f"Each row: the median of {args.repeats} runs, the modes interleaved round by round "
        "(range in brackets); peak RSS: the largest of the runs.", "",
        "| run | N | ECGs/s | wall s | CPU s main | CPU s readers | cores busy | peak RSS main MB "
        "| peak RSS readers MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["medians"]:
        busy = (r["cpu_main_s"] + r["cpu_readers_s"]) / (r["wall_s"] * len(cores))
        lines.append(f"| {r['mode']} | {r['n']} | {r['ecg_per_s']:.1f} [{r['range'][0]:.1f}-"
                     f"{r['range'][1]:.1f}] | {r['wall_s']:.1f} | {r['cpu_main_s']:.1f} | "
                     f"{r['cpu_readers_s']:.1f} | {busy:.0%} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_rss_children_mb']:.0f} |")
    lines += ["", "`model` times only the prediction on records read and prepared beforehand; "
              "its RSS includes those records in memory. `read` times only the readers' work "
              "(read, quality flags, preprocessing) on every file in one process. `naive` calls "
              "the model in fp32, as a first script would; `pipeline` and `model` use the "
              "bundle's own autocast (its `precision`, bf16 for the shipped bundles), part of "
              "their lead. `model-default-malloc` is `model` with glibc's malloc as it comes: "
              f"ecgrisk.hardware.keep_freed_memory makes the model-only rate "
              f"{report['kept_memory_speedup']:.2f}x as fast.", "",
              f"The model-only rate has all {len(cores)} cores to itself; the pipeline shares them "
              f"with its readers. At N={n1} a record costs the model {len(cores)}/"
              f"{by[('model', n1)]['ecg_per_s']:.1f} core-s and the readers 1/"
              f"{by[('read', n1)]['ecg_per_s']:.1f}, so {len(cores)} cores that both read and "
              f"score reach at most **{bound:.1f} ECGs/s, "
              f"{bound / by[('model', n1)]['ecg_per_s']:.0%} of the model-only rate** (the "
              "pipeline reaches "
              + ", ".join(f"{x:.0%} of it at N={n}" for n, x in report["share_of_bound"].items())
              + ").", "",
              "The pipeline's own CPU seconds give a second bound, which counts all it did "
              "(start-up, moving records between processes, writing rows; `cores busy` is the "
              "CPU seconds' share of the wall time the cores had): spread over cores that are "
              "never idle, they allow at most "
              + ", ".join(f"**{w:.1f} ECGs/s at N={n}, {w / by[('model', int(n))]['ecg_per_s']:.0%} "
                          f"of the model-only rate**" for n, w in report["work_bound"].items())
              + ".", "",
              f"The readers' time per file by format (N={n1}, one process): "
              + ", ".join(f"{k} {ms:.2f} ms ({by[('read', n1)]['read_share'][k]:.0%} of their time)"
                          for k, ms in by[("read", n1)]["read_ms_per_file"].items())
              + "; the first file of each, with its one-time imports: "
              + ", ".join(f"{k} {ms:.1f} ms" for k, ms in
                          by[("read", n1)].get("first_file_ms", {}).items()) + ".", ""]
    lines += [f"- **pipeline vs the naive loop at N={n}: {x:.1f}x** (target >= 5x)"
              for n, x in report["speedup_vs_naive"].items()]
    lines += [f"- **pipeline as a share of the model-only rate at N={n}: {x:.1%}** (target >= 70%)"
              for n, x in report["share_of_model_only"].items()]
    lines += [f"- main-process peak RSS change from N={n1} to N={n2}: "
              f"{report['peak_rss_growth_mb']:+.1f} MB; readers: "
              f"{report['reader_peak_rss_growth_mb']:+.1f} MB"]
    atomic_write_text(res / "bench_scoring.md", "\n".join(lines) + "\n")
    print(f"written {res / 'bench_scoring.json'} and {res / 'bench_scoring.md'}")


if __name__ == "__main__":
    main()
