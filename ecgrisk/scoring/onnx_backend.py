"""ONNX export of a bundle's network and an ONNX Runtime backend for scoring (extra ``onnx``).

The ONNX file holds only the network ``windows [B, 12, window] -> logits [B, C]``; windows,
aggregation and calibration still come from the bundle, so scoring with ``--backend onnx``
needs both. The export records the SHA-256 of the bundle file in the ONNX metadata, and loading
refuses an ONNX file exported from another bundle.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ecgrisk.files import atomic_path, file_sha256
from ecgrisk.input_spec import InputSpec

if TYPE_CHECKING:  # pragma: no cover
    from ecgrisk.bundle import Bundle

__all__ = ["OnnxBackendError", "OnnxLogits", "export_onnx"]

_META_KEY = "ecgrisk_bundle_sha256"


class OnnxBackendError(RuntimeError):
    """ONNX export or ONNX Runtime is unavailable, or the ONNX file does not fit the bundle."""


def export_onnx(bundle: Bundle, path: str | os.PathLike, bundle_path=None,
                opset: int = 17) -> Path:
    """Write the bundle's network as ONNX with a dynamic batch axis.

    Parameters
    ----------
    bundle : loaded bundle (its model is put in eval mode).
    path : destination ``.onnx`` (written atomically).
    bundle_path : the ``model.pt`` it was loaded from; its SHA-256 goes into the metadata.
    opset : ONNX opset.

    Returns
    -------
    Path of the written file.
    """
    import torch

    try:
        import onnx
    except ImportError as e:
        raise OnnxBackendError("ONNX export needs the onnx package "
                               "(pip install 'ecgrisk[onnx]')") from e
    spec = InputSpec.from_bundle(bundle)
    model = bundle.model.cpu().eval()
    path = Path(path)
    x = torch.zeros(2, 12, spec.window)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # the encoder's input-shape check is a Python branch: the tracer warns it is constant
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp), input_names=["windows"], output_names=["logits"],
                          dynamic_axes={"windows": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=opset, dynamo=False)
        proto = onnx.load(str(tmp))
        meta = {"ecgrisk_window": str(spec.window), "ecgrisk_classes": ",".join(bundle.classes),
                "ecgrisk_model": f"{bundle.name} {bundle.version}"}
        if bundle_path is not None:
            meta[_META_KEY] = file_sha256(bundle_path)
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(proto, str(tmp))
    return path


class OnnxLogits:
    """Callable ``windows [B, 12, window] float32 -> logits [B, C] float32`` on ONNX Runtime.

    With ``onnx_path=None`` the bundle is exported to a temporary file first.
    """

    def __init__(self, bundle: Bundle, onnx_path=None, bundle_path=None, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise OnnxBackendError("--backend onnx needs onnxruntime "
                                   "(pip install 'ecgrisk[onnx]')") from e
        self._tmpdir = None
        if onnx_path is None:
            import tempfile

            self._tmpdir = tempfile.TemporaryDirectory(prefix="ecgrisk-onnx-")
            onnx_path = export_onnx(bundle, Path(self._tmpdir.name) / "model.onnx", bundle_path)
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise OnnxBackendError(f"{onnx_path}: no such ONNX file "
                                   f"(write one with: ecgrisk export MODEL --onnx {onnx_path})")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:
            raise OnnxBackendError(f"{onnx_path}: not a loadable ONNX model ({e})") from e
        props = self.session.get_modelmeta().custom_metadata_map
        want = file_sha256(bundle_path) if bundle_path is not None else None
        if want is not None and props.get(_META_KEY) not in (None, want):
            raise OnnxBackendError(f"{onnx_path}: was exported from another bundle than "
                                   f"{bundle_path}; export it again")
        if props.get("ecgrisk_classes") not in (None, ",".join(bundle.classes)):
            raise OnnxBackendError(f"{onnx_path}: its classes differ from the bundle's")
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(windows, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0].astype(np.float32, copy=False)
