"""Where the bundle's configs and default weights are, from a checkout, an editable install or ``pip install .``.

A checkout (or ``pip install -e .``) uses ``<repo>/configs`` and ``<repo>/models``; a regular install ships the
configs as the package data ``scripts/bundle_configs`` (``pyproject.toml`` maps ``configs/`` there) and looks for
default weights under ``./models`` of the working directory. ``KIDNEY_SEG_BUNDLE_ROOT`` points both at a bundle
folder of your choice.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["bundle_root", "config_dir", "network_overlays"]

_PACKAGE = Path(__file__).resolve().parents[1]  # .../scripts


def _checkout() -> Path | None:
    root = _PACKAGE.parent
    return root if (root / "configs" / "inference.json").is_file() else None


def bundle_root() -> Path:
    """The folder whose ``models/`` holds the default weights (``bundle_root`` of the configs)."""
    if os.environ.get("KIDNEY_SEG_BUNDLE_ROOT"):
        return Path(os.environ["KIDNEY_SEG_BUNDLE_ROOT"]).resolve()
    return _checkout() or Path.cwd()


def config_dir() -> Path:
    """The folder holding ``inference.json`` and ``networks/``."""
    if os.environ.get("KIDNEY_SEG_BUNDLE_ROOT"):
        return Path(os.environ["KIDNEY_SEG_BUNDLE_ROOT"]).resolve() / "configs"
    checkout = _checkout()
    return checkout / "configs" if checkout else _PACKAGE / "bundle_configs"


def network_overlays() -> list[str]:
    """Names of the network overlays in ``configs/networks`` (``pocket_unet_2d``, ...)."""
    return sorted(p.stem for p in (config_dir() / "networks").glob("*.json"))
