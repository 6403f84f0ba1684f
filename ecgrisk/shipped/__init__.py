"""The model bundles and pretrained encoder files ecgrisk ships, each beside its card
(``<name>.pt``, ``<name>.md``).

``Bundle.load("ptbxl-superdiagnostic")`` and ``ecgrisk score DIR --model ptbxl-all`` find bundles
by name, ``ecgrisk-finetune model.pretrained=NAME`` encoder files (both through
`ecgrisk.bundle_files.resolve`); ``scripts/ship_bundle.py RUN --name NAME`` puts a fine-tuning run's
bundle here and writes its card from the run's own files.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent
DEFAULT_BUNDLE = "ptbxl-superdiagnostic"
"""What ``ecgrisk score`` uses when no ``--model`` is given."""


def list_shipped() -> list[str]:
    """Names of the files (bundles and encoders) shipped with this installation, sorted."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.pt"))


def shipped_path(name: str) -> Path | None:
    """The shipped file ``name`` (a bundle or an encoder), or None when none ships by that name."""
    path = SHIPPED_DIR / f"{name}.pt"
    return path if "/" not in name and path.is_file() else None
