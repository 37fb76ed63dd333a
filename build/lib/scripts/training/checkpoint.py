"""Resume training after a crash or ``kill -9``: atomic "last" checkpoints, loaded on start if present.

MONAI's ``CheckpointSaver`` writes non-atomically (a kill mid-save leaves a truncated file) and
``CheckpointLoader`` needs a fixed path chosen before the run. This handler uses ignite's ``Checkpoint``
with an atomic ``DiskSaver`` to keep the newest ``last_checkpoint_N.pt`` (model, optimizer,
scheduler, trainer state, ...) and, when the trainer starts, restores the newest one it finds, keeping
the configured ``max_epochs`` so a run can also be extended.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver


__all__ = ["ResumableCheckpoint", "find_last_checkpoint"]

logger = logging.getLogger(__name__)

PREFIX = "last"
_PATTERN = re.compile(rf"^{PREFIX}_checkpoint_(\d+)\.pt$")


def find_last_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """Newest ``last_checkpoint_N.pt`` in ``ckpt_dir`` (highest N), or None."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PATTERN.match(p.name))]
    return max(found)[1] if found else None


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
            save_handler=DiskSaver(self.save_dir, require_empty=False, atomic=True, create_dir=True),
            filename_prefix=PREFIX,
            n_saved=1,
            global_step_transform=lambda eng, _: eng.state.epoch,
        )
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), saver)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self._remove_older)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)

    def _remove_older(self, engine: Engine) -> None:
        """Delete checkpoints left by an earlier (crashed) run once a newer one is safely on disk.

        Rank 0 alone, as ignite's ``DiskSaver`` saves and removes on rank 0 only (multi-process training).
        """
        if idist.get_rank() != 0:
            return
        newest = find_last_checkpoint(self.save_dir)
        for path in Path(self.save_dir).iterdir():
            if path != newest and _PATTERN.match(path.name):
                path.unlink(missing_ok=True)

    def load(self, engine: Engine) -> None:
        path = find_last_checkpoint(self.save_dir)
        if path is None:
            return
        max_epochs = engine.state.max_epochs
        checkpoint = torch.load(path, map_location=self.map_location, weights_only=True)
        Checkpoint.load_objects(to_load=self.save_dict, checkpoint=checkpoint)
        if max_epochs is not None and engine.state.epoch > max_epochs:
            raise ValueError(f"{path}: checkpoint is at epoch {engine.state.epoch} but --epochs is {max_epochs}; "
                             "raise --epochs to continue, or set --resume false to start afresh")
        engine.state.max_epochs = max_epochs
        self.resumed_from = path
        logger.info("resumed training from %s (epoch %d of %s)", path, engine.state.epoch, max_epochs)
