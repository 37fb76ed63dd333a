"""Resume training after a crash or ``kill -9``: atomic "last" checkpoints, loaded on start if present.

MONAI's ``CheckpointSaver`` writes non-atomically (a kill mid-save leaves a truncated file) and
``CheckpointLoader`` needs a fixed path chosen before the run. This handler uses ignite's ``Checkpoint``
with :class:`~scripts.training.saving.SyncedDiskSaver` (temporary file, fsync, rename) to keep the newest
``last_checkpoint_N.pt`` (model, optimizer, scheduler, trainer state, best-model record, ...) and, when the trainer
starts, restores the newest one it finds, keeping the configured ``max_epochs`` so a run can also be extended.

Issue 14: the previous checkpoint is deleted only *after* the new one is complete (ignite's ``n_saved=1`` deletes
it before saving, so a kill or a full disk in between left none); NaN/Inf weights are never saved; a damaged
newest checkpoint falls back to an older complete one if there is one, else stops with one line saying what to do.
List this handler *after* the validation handlers, so that checkpoint N holds the best record of validation N
(and the learning-rate step of epoch N).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from torch import nn

from ..common.errors import InputError
from ..common.weights import torch_load_checked
from .guards import check_finite_weights
from .saving import SyncedDiskSaver, remove_stale_temps


__all__ = ["ResumableCheckpoint", "find_last_checkpoint", "list_last_checkpoints"]

logger = logging.getLogger(__name__)

PREFIX = "last"
_PATTERN = re.compile(rf"^{PREFIX}_checkpoint_(\d+)\.pt$")


def list_last_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Every ``last_checkpoint_N.pt`` in ``ckpt_dir``, newest (highest N) first."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PATTERN.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def checkpoint_epoch(path: str | os.PathLike) -> int:
    """N of ``last_checkpoint_N.pt`` (epochs done when it was saved)."""
    match = _PATTERN.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a last_checkpoint_N.pt file")
    return int(match.group(1))


def find_last_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """Newest ``last_checkpoint_N.pt`` in ``ckpt_dir`` (highest N), or None."""
    found = list_last_checkpoints(ckpt_dir)
    return found[0] if found else None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__


class ResumableCheckpoint:
    """Save the full training state every ``save_interval`` epochs and resume from it on start.

    Args:
        save_dir: folder of the checkpoints (created).
        save_dict: objects with ``state_dict``/``load_state_dict``: network, optimizer, lr scheduler, ...
            The engine this handler is attached to is added as ``engine_key`` (a config cannot name the
            trainer inside the trainer's own handler list without a circular reference).
        save_interval: epochs between saves.
        resume: load the newest checkpoint of ``save_dir`` when the trainer starts.
        map_location: device for loading (CPU-saved checkpoints load on GPU and back).
    """

    def __init__(self, save_dir: str, save_dict: dict, save_interval: int = 1, resume: bool = True,
                 map_location: str | torch.device | None = None, engine_key: str = "trainer") -> None:
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}")
        self.save_dir = str(save_dir)
        self.save_dict = dict(save_dict)
        self.engine_key = engine_key
        self.save_interval = save_interval
        self.resume = resume
        self.map_location = map_location
        self.resumed_from: Path | None = None

    def attach(self, engine: Engine) -> None:
        self.save_dict[self.engine_key] = engine
        saver = Checkpoint(
            to_save=self.save_dict,
            save_handler=SyncedDiskSaver(self.save_dir, require_empty=False, create_dir=True),
            filename_prefix=PREFIX,
            n_saved=None,  # ignite would delete the previous file before writing the new one; _remove_older does it after
            global_step_transform=lambda eng, _: eng.state.epoch,
        )
        every = Events.EPOCH_COMPLETED(every=self.save_interval)
        engine.add_event_handler(every, self._check_finite)
        engine.add_event_handler(every, saver)
        engine.add_event_handler(every, self._remove_older)
        if idist.get_rank() == 0:
            remove_stale_temps(self.save_dir, (f"{PREFIX}_checkpoint_*",))
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)

    def _check_finite(self, engine: Engine) -> None:
        """Never replace a good checkpoint with NaN/Inf weights (e.g. a last optimizer step that overflowed)."""
        for obj in self.save_dict.values():
            if isinstance(obj, nn.Module):
                check_finite_weights(obj, engine.state.epoch, f"to save {PREFIX}_checkpoint_{engine.state.epoch}.pt")

    def _remove_older(self, engine: Engine) -> None:
        """Delete every other ``last_checkpoint_N.pt`` (earlier epochs, an earlier or damaged run) once this epoch's
        is complete on disk.

        Rank 0 alone, as the saver saves on rank 0 only (multi-process training).
        """
        if idist.get_rank() != 0:
            return
        saved = f"{PREFIX}_checkpoint_{engine.state.epoch}.pt"
        for path in list_last_checkpoints(self.save_dir):
            if path.name != saved:
                path.unlink(missing_ok=True)

    def _read_newest(self) -> tuple[Path, dict] | None:
        """The newest checkpoint that loads, with its content; a damaged newer one is skipped with a warning when an
        older one loads, and stops the run with one line when none does."""
        damaged: list[tuple[Path, str]] = []
        for path in list_last_checkpoints(self.save_dir):
            try:
                checkpoint = torch_load_checked(path, self.map_location, what="training checkpoint", name=path.name)
            except InputError as exc:  # truncated (zip), empty (EOF), not a checkpoint (unsafe pickle)
                damaged.append((path, exc.message.split(": ", 1)[-1]))
                continue
            except Exception as exc:  # anything else torch raises on a foreign file
                damaged.append((path, _first_line(exc)))
                continue
            for bad, reason in damaged:
                logger.warning("%s: damaged checkpoint (%s), skipped; resuming from the older %s (it is deleted after "
                               "the next save)", bad, reason, path.name)
            return path, checkpoint
        if damaged:
            bad, reason = damaged[0]
            raise InputError(f"{bad}: cannot resume, the checkpoint is damaged ({reason}); delete it to start "
                             "training afresh, or pass --resume False (models/model.pt is replaced only by a new best)")
        return None

    def load(self, engine: Engine) -> None:
        found = self._read_newest()
        if found is None:
            return
        path, checkpoint = found
        max_epochs = engine.state.max_epochs
        to_load = dict(self.save_dict)
        for key in [k for k, v in to_load.items() if k not in checkpoint and not isinstance(v, (nn.Module, Engine))]:
            logger.warning("%s: holds no %r (written by an older version); it starts afresh", path, key)
            del to_load[key]
        try:
            Checkpoint.load_objects(to_load=to_load, checkpoint=checkpoint)
        except InputError:
            raise
        except (RuntimeError, ValueError, KeyError) as exc:
            raise InputError(f"{path}: does not fit this configuration ({_first_line(exc)}); resume with the network "
                             "overlay and settings that wrote it, or pass --resume False to start afresh") from None
        if max_epochs is not None and engine.state.epoch > max_epochs:
            raise InputError(f"{path}: checkpoint is at epoch {engine.state.epoch} but --epochs is {max_epochs}; "
                             "raise --epochs to continue, or pass --resume False to start afresh")
        engine.state.max_epochs = max_epochs
        self.resumed_from = path
        logger.info("resumed training from %s (epoch %d of %s)", path, engine.state.epoch, max_epochs)
