"""The review queue: a folder's ECGs scored once with the bundle, ordered by an acquisition rule.

Which ECGs an annotator still has to judge is never kept in memory or in the browser: it is
derived from the feedback store on every request (records by that annotator for this model
version), so closing the browser mid-queue loses nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from ecgrisk.feedback.acquisition import RULES, select
from ecgrisk.files import atomic_path
from ecgrisk.review.demographics import ptbxl_demographics

if TYPE_CHECKING:  # pragma: no cover
    from ecgrisk.bundle import Bundle

log = logging.getLogger(__name__)


@dataclass
class ReviewItem:
    """One ECG in the queue.

    Attributes
    ----------
    ecg_id : the record's id in the folder (``records100/00000/00001_lr``).
    path : what :func:`~ecgrisk.io.read_ecg` reads.
    probs : ``[C]`` calibrated probabilities of the (primary) model.
    probs_b : ``[C]`` of the comparison model, or ``None``.
    age, sex : from the file when it has them, else from PTB-XL's database CSV (see
        :mod:`~ecgrisk.review.demographics`); None when unknown.
    fs, duration_s : of the recording as read.
    """

    ecg_id: str
    path: str
    probs: np.ndarray
    probs_b: np.ndarray | None
    age: float | None
    sex: str | None
    fs: float
    duration_s: float


def score_folder(bundles: list[Bundle], paths: list[str], batch: int = 32
                 ) -> tuple[list[int], list[np.ndarray], list[dict]]:
    """Calibrated probabilities of every readable record under each bundle.

    Parameters
    ----------
    bundles : one or two loaded bundles with the same label list.
    paths : record paths as :class:`~ecgrisk.data.folder.ECGFolder` lists them.
    batch : records per model call.

    Returns
    -------
    (kept, probs, info)
        ``kept`` the indices into ``paths`` that could be read; ``probs`` one ``[len(kept), C]``
        array per bundle; ``info`` a dict (age, sex, fs, duration_s) per kept record.
        Unreadable files are logged and left out.
    """
    from ecgrisk.io import ECGReadError, read_ecg
    from ecgrisk.scoring.predict import Predictor

    predictors = [Predictor(b) for b in bundles]
    kept: list[int] = []
    info: list[dict] = []
    out: list[list[np.ndarray]] = [[] for _ in bundles]
    pending: list[list[np.ndarray]] = [[] for _ in bundles]

    def flush() -> None:
        for j, pred in enumerate(predictors):
            if pending[j]:
                out[j].append(pred.predict_prepared(pending[j]))
                pending[j] = []

    for i, path in enumerate(paths):
        try:
            ecg = read_ecg(path)
        except ECGReadError as err:
            log.warning("skipping %s", err)
            continue
        kept.append(i)
        info.append({"age": ecg.meta.get("age"), "sex": ecg.meta.get("sex"), "fs": ecg.fs,
                     "duration_s": ecg.duration_s})
        for j, pred in enumerate(predictors):
            pending[j].append(pred.spec.prepare(ecg.signal, ecg.fs))
        if len(pending[0]) >= batch:
            flush()
    flush()
    n_classes = len(bundles[0].classes)
    probs = [np.concatenate(o) if o else np.zeros((0, n_classes)) for o in out]
    return kept, probs, info


def _fill_demographics(info: list[dict], paths: list[str], data_dir: str | os.PathLike) -> None:
    """Age and sex the files lack, from PTB-XL's database CSV when one is near ``data_dir``."""
    if all(d["age"] is not None and d["sex"] is not None for d in info):
        return
    table = ptbxl_demographics(data_dir)
    for d, path in zip(info, paths, strict=True):
        age, sex = table.get(os.path.normpath(path), (None, None))
        d["age"] = d["age"] if d["age"] is not None else age
        d["sex"] = d["sex"] or sex


def _swap(ecg_id: str) -> bool:
    # Which model is shown as "A" is fixed per ECG (same for every annotator) but balanced
    # over ECGs, so that a preference for the left-hand reading cannot favour one model.
    return hashlib.sha256(ecg_id.encode()).digest()[0] % 2 == 1


class ReviewQueue:
    """The ECGs to review, in asking order, with each model's reading.

    Parameters
    ----------
    items : in asking order.
    classes : the label list, ``[C]``.
    model_name, model_version : the primary bundle's.
    threshold : probability at which a statement enters a reading.
    compare : ``(name, version)`` of the comparison bundle, or ``None`` (verdict mode).
    plot_dir : where rendered PNGs are cached (a temporary folder by default).
    plot_dpi : resolution of the PNGs (200 stays sharp on high-density screens).
    explainer : a :class:`~ecgrisk.scoring.predict.Predictor` of the judged bundle: the page can
        then overlay where the evidence for the reading's top statement lies (needs captum).
    """

    def __init__(self, items: list[ReviewItem], classes: list[str], model_name: str,
                 model_version: str, *, threshold: float = 0.5,
                 compare: tuple[str, str] | None = None, plot_dir: str | os.PathLike | None = None,
                 plot_dpi: int = 200, explainer=None):
        self.items = list(items)
        self.by_id = {it.ecg_id: it for it in self.items}
        self._position = {it.ecg_id: i + 1 for i, it in enumerate(self.items)}
        self.classes = list(classes)
        self.model_name, self.model_version = model_name, str(model_version)
        self.threshold = float(threshold)
        self.compare = compare
        if plot_dir is None:
            plot_dir = tempfile.mkdtemp(prefix="ecgrisk-review-plots-")
            weakref.finalize(self, shutil.rmtree, plot_dir, True)  # a private cache: tidy up
        self.plot_dir = Path(plot_dir)
        self.plot_dir.mkdir(parents=True, exist_ok=True)
        self.plot_dpi = int(plot_dpi)
        self._plot_lock = threading.Lock()  # pyplot is not thread-safe
        self.explainer = explainer  # a scoring Predictor for the evidence overlay, or None

    @property
    def mode(self) -> str:
        """``"verdict"`` or ``"compare"``."""
        return "verdict" if self.compare is None else "compare"

    @property
    def kind(self) -> str:
        """The feedback kind this queue produces (``"verdict"`` or ``"preference"``)."""
        return "verdict" if self.compare is None else "preference"

    @classmethod
    def build(cls, bundle: Bundle, data_dir: str | os.PathLike, *, compare: Bundle | None = None,
              rule: str | None = None, size: int | None = None, seed: int = 0,
              threshold: float = 0.5, pattern: str | None = None,
              plot_dir: str | os.PathLike | None = None) -> ReviewQueue:
        """Score every record under ``data_dir`` and order them by ``rule``.

        Parameters
        ----------
        bundle : the model whose readings are judged.
        data_dir : folder of ECG records (see :class:`~ecgrisk.data.folder.ECGFolder`).
        compare : a second bundle for comparison mode (same label list).
        rule : acquisition rule (:data:`~ecgrisk.feedback.acquisition.RULES`); default
            ``uncertainty``, or ``disagreement`` in comparison mode.
        size : at most this many ECGs (default: all readable records).
        seed : for the ``random`` rule.
        threshold : probability at which a statement enters a reading.
        pattern : optional glob of records to use (``"*_lr.hea"``).
        plot_dir : PNG cache folder.

        Raises
        ------
        ValueError
            Unknown rule, mismatched label lists, or no readable record in ``data_dir``.
        """
        from ecgrisk.data.folder import ECGFolder

        rule = rule or ("uncertainty" if compare is None else "disagreement")
        if rule not in RULES:
            raise ValueError(f"--rule must be one of {RULES}, got {rule!r}")
        if rule == "disagreement" and compare is None:
            raise ValueError("--rule disagreement needs --compare (a second model)")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if compare is not None and list(compare.classes) != list(bundle.classes):
            raise ValueError(f"--compare model {compare.name}@{compare.version} has labels "
                             f"{compare.classes[:5]}..., not the same list as "
                             f"{bundle.name}@{bundle.version} ({bundle.classes[:5]}...)")
        folder = ECGFolder(data_dir, pattern=pattern)
        from ecgrisk.scoring.attribution import explainer

        bundles = [bundle] if compare is None else [bundle, compare]
        kept, probs, info = score_folder(bundles, [str(p) for p in folder.paths])
        if not kept:
            raise ValueError(f"--data {data_dir}: none of the {len(folder.paths)} records could "
                             "be read (see the warnings above)")
        probs_b = probs[1] if compare is not None else None
        ids = [folder.record_ids[i] for i in kept]
        paths = [str(folder.paths[i]) for i in kept]
        _fill_demographics(info, paths, data_dir)
        candidates = np.arange(len(kept))
        if compare is not None:
            # identical readings admit only a tie: nothing to ask
            same = np.all((probs[0] >= threshold) == (probs_b >= threshold), axis=1)
            if same.all():
                raise ValueError(f"--compare: both models give the same reading for every "
                                 f"record under {data_dir}; nothing to compare")
            log.info("%d of %d ECGs get the same reading from both models; not asked",
                     int(same.sum()), len(same))
            candidates = np.flatnonzero(~same)
        k = len(candidates) if size is None else min(int(size), len(candidates))
        exclude = np.setdiff1d(np.arange(len(kept)), candidates)
        order = select(probs[0], k, rule=rule, seed=seed, probs_b=probs_b, exclude=exclude)
        items = [ReviewItem(ecg_id=ids[i], path=paths[i], probs=probs[0][i],
                            probs_b=None if probs_b is None else probs_b[i], **info[i])
                 for i in order]
        log.info("review queue: %d ECGs by %s from %s", len(items), rule, data_dir)
        return cls(items, list(bundle.classes), bundle.name, bundle.version, threshold=threshold,
                   compare=None if compare is None else (compare.name, compare.version),
                   plot_dir=plot_dir, explainer=explainer(bundle))

    # ------------------------------------------------------------------ readings

    def reading(self, probs: np.ndarray) -> dict[str, int]:
        """``statement -> 0/1`` over every class: the statements at or above the threshold."""
        return {c: int(p >= self.threshold) for c, p in zip(self.classes, probs, strict=True)}

    def shown_readings(self, item: ReviewItem) -> tuple[np.ndarray, np.ndarray, bool]:
        """``(probs_a, probs_b, swapped)`` as shown in comparison mode."""
        if item.probs_b is None:
            raise ValueError("this queue is not in comparison mode")
        if _swap(item.ecg_id):
            return item.probs_b, item.probs, True
        return item.probs, item.probs_b, False

    def _statements(self, probs: np.ndarray) -> list[dict[str, Any]]:
        order = np.argsort(-np.asarray(probs), kind="stable")
        return [{"name": self.classes[i], "p": round(float(probs[i]), 4),
                 "positive": bool(probs[i] >= self.threshold)} for i in order]

    def to_json(self, item: ReviewItem) -> dict[str, Any]:
        """What the page (and the API) shows for one ECG."""
        out: dict[str, Any] = {
            "ecg_id": item.ecg_id, "position": self._position[item.ecg_id],
            "age": item.age, "sex": item.sex, "fs": item.fs,
            "duration_s": round(item.duration_s, 2),
            # ids are file paths: '#', '?' or '%' in a name would cut the URL short
            "plot_url": f"/plot/{quote(item.ecg_id)}.png",
            "evidence_url": f"/evidence/{quote(item.ecg_id)}.png" if self.explainer else None,
        }
        if self.compare is None:
            out["statements"] = self._statements(item.probs)
        else:
            a, b, _ = self.shown_readings(item)
            out["readings"] = {"a": [s for s in self._statements(a) if s["positive"]],
                               "b": [s for s in self._statements(b) if s["positive"]]}
        return out

    # ------------------------------------------------------------------ progress

    def pending(self, judged: Iterable[str], skip: Iterable[str] = ()) -> list[ReviewItem]:
        """Items not in ``judged`` nor ``skip``, in asking order."""
        done = set(judged) | set(skip)
        return [it for it in self.items if it.ecg_id not in done]

    def progress(self, judged: Iterable[str]) -> dict[str, int]:
        """``{"judged": n, "total": N}`` over this queue's ECGs."""
        return {"judged": len(set(judged) & set(self.by_id)), "total": len(self.items)}

    # ------------------------------------------------------------------ plots

    def evidence_png(self, item: ReviewItem) -> tuple[Path, str]:
        """The 12-lead PNG with the evidence for the model's top statement drawn on it (same
        size as :meth:`plot_png`, so the page lays it over the plain one); and that statement."""
        from ecgrisk.io import read_ecg
        from ecgrisk.plotting import plot_12lead
        from ecgrisk.scoring.attribution import evidence_on_record, explain

        top = self.classes[int(np.argmax(item.probs))]
        name = f"{hashlib.sha256(item.ecg_id.encode()).hexdigest()[:32]}-{self.plot_dpi}-why.png"
        path = self.plot_dir / name
        if path.is_file():
            return path, top
        with self._plot_lock:
            if not path.is_file():
                ecg = read_ecg(item.path)
                (e,) = explain(self.explainer, ecg.signal, ecg.fs, top=1)
                fig = plot_12lead(ecg.signal, ecg.fs, lead_mask=ecg.lead_mask, dpi=self.plot_dpi,
                                  evidence=evidence_on_record(e, ecg.signal.shape[1], ecg.fs))
                with atomic_path(path) as tmp:
                    fig.savefig(tmp, format="png", dpi=self.plot_dpi, bbox_inches="tight",
                                pad_inches=0.04)
        return path, top

    def plot_png(self, item: ReviewItem) -> Path:
        """The cached 12-lead PNG of ``item`` (rendered on first request)."""
        name = f"{hashlib.sha256(item.ecg_id.encode()).hexdigest()[:32]}-{self.plot_dpi}.png"
        path = self.plot_dir / name
        if path.is_file():
            return path
        with self._plot_lock:
            if path.is_file():
                return path
            from ecgrisk.io import read_ecg
            from ecgrisk.plotting import plot_12lead

            ecg = read_ecg(item.path)
            # no title: the page names the ECG and the paper speed next to the image
            fig = plot_12lead(ecg.signal, ecg.fs, lead_mask=ecg.lead_mask, dpi=self.plot_dpi)
            with atomic_path(path) as tmp:
                # trimmed to the drawn sheet so that it fills the page's width
                fig.savefig(tmp, format="png", dpi=self.plot_dpi, bbox_inches="tight", pad_inches=0.04)
        return path
