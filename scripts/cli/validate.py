"""Checks of the entry points' arguments that MONAI would otherwise answer with a traceback (issues 14 and 15):
a network overlay that does not exist, a config file that is missing, a run id not in the configs, a weights file
that is not there. Each raises :class:`scripts.common.errors.InputError` with one line saying what to do.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from pathlib import Path

from ..common.errors import InputError
from .paths import bundle_root, config_dir, network_overlays

__all__ = ["check_network", "check_config_files", "check_run_id", "check_weights", "choose_fast_network",
           "FAST_NETWORKS"]

# (overlay files, default weights name, what it is): the fast choices of ``--fast``, the first with weights wins
FAST_NETWORKS = (
    (("networks/pocket_unet_2d.json",), "model_pocket_unet_2d", "Pocket U-Net 2D"),
    (("structured.json",), "derived/model_structured", "channel-pruned WP-UNet"),
)


def check_network(name: str) -> Path:
    """The overlay file of ``--network name`` (``pocket_unet_2d`` or ``pocket_unet_2d.json``)."""
    stem = Path(name).name.removesuffix(".json")
    path = config_dir() / "networks" / f"{stem}.json"
    if not path.is_file():
        available = network_overlays()
        close = difflib.get_close_matches(stem, available, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InputError(f"--network {name!r}: no such network overlay; {hint}available: {', '.join(available)}")
    return path


def check_config_files(files: Sequence[str | Path], base: Path | None = None) -> list[Path]:
    """Every config file exists (relative paths from ``base``, default the working directory) and is JSON/YAML."""
    found = []
    for name in files:
        path = Path(name)
        full = path if path.is_absolute() or base is None else base / path
        if not full.is_file():
            hint = ""
            if path.parent.name == "networks":
                hint = f"; network overlays: {', '.join(network_overlays())}"
            raise InputError(f"--config_file {name}: config file not found{hint}")
        if full.suffix == ".json":
            try:
                json.loads(full.read_text())
            except ValueError as exc:
                raise InputError(f"--config_file {name}: not valid JSON ({exc})") from None
        found.append(full)
    return found


def _is_run_list(key: str, value) -> bool:
    """A run id: a list of ``$``/``@``/``%`` expressions (``initialize``, ``run``) or a reference to ``run``."""
    if key.lstrip("+") == "imports":
        return False
    if isinstance(value, str):
        return value[:1] in "%@" and value[1:] in ("run", "initialize", "finalize")
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v[:1] in "$@%" for v in value)


def check_run_id(run_id: str, files: Sequence[str | Path]) -> str:
    """``run_id`` is a top-level id of the merged configs; otherwise one line with the closest run ids."""
    ids: dict[str, object] = {}
    for path in files:
        path = Path(path)
        if path.suffix == ".json":
            ids.update((key.lstrip("+"), value) for key, value in json.loads(path.read_text()).items())
    if ids and run_id not in ids:
        runs = sorted(key for key, value in ids.items() if _is_run_list(key, value))
        close = difflib.get_close_matches(run_id, runs, n=1) or difflib.get_close_matches(run_id, sorted(ids), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InputError(f"run id {run_id!r} is not defined in {', '.join(Path(f).name for f in files)}; {hint}"
                         f"run ids there: {', '.join(runs)}")
    return run_id


def check_weights(path: str | Path, option: str = "--model") -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{option} {path}: weights file does not exist")
    return path


def choose_fast_network(model: str | None) -> tuple[tuple[Path, ...], Path, str]:
    """``--fast``: (overlays, weights, description) of the first fast network with weights.

    With ``--model`` that file is taken as Pocket U-Net 2D weights; otherwise the default weights under
    ``<bundle_root>/models`` decide; none there is one line naming both files.
    """
    if model:
        overlays, _, what = FAST_NETWORKS[0]
        return tuple(config_dir() / o for o in overlays), check_weights(model), what
    tried = []
    for overlays, name, what in FAST_NETWORKS:
        weights = bundle_root() / "models" / f"{name}.pt"
        if weights.is_file():
            return tuple(config_dir() / o for o in overlays), weights, what
        tried.append(f"{weights} ({what})")
    raise InputError(f"--fast: no weights for a fast network: {' and '.join(tried)} are missing; train one "
                     "(README 'Networks', 'Pruning') or pass its weights with --model")
