"""Small helpers that connect MONAI engines to handlers from JSON configs (training and validation)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

from monai.handlers import from_engine

from .checkpoint import checkpoint_epoch, list_last_checkpoints

__all__ = ["from_engine_channel", "ValidateAtEnd", "StartFreshAfterFinishedRun"]

logger = logging.getLogger(__name__)


def from_engine_channel(keys: Sequence[str], channel: int) -> Callable:
    """Like ``monai.handlers.from_engine(keys)`` but keeps one channel of each item (e.g. one region's Dice)."""
    select = from_engine(list(keys))

    def transform(output):
        stop = channel + 1 or None  # channel -1 selects the last one
        return tuple([item[channel:stop] for item in values] for values in select(output))

    return transform


class ValidateAtEnd:
    """Run the validator once more when training ends on an epoch that ``ValidationHandler`` skipped.

    Without it, a run whose ``epochs`` is not a multiple of ``val_interval`` (or smaller than it) never selects
    a best model, and an older ``models/model.pt`` would silently remain in place for evaluation and inference.
    """

    def __init__(self, validator, interval: int) -> None:
        self.validator = validator
        self.interval = interval

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        if engine.state.epoch % self.interval != 0:
            self.validator.run(engine.state.epoch)


class StartFreshAfterFinishedRun:
    """A finished run is not resumed: a new training request starts a new run (issue 19, "Train" in 3D Slicer).

    ``ResumableCheckpoint`` resumes from the newest ``last_checkpoint_N.pt`` of ``save_dir`` (N = epochs done).
    When the trainer starts and N is at least the epochs now requested, that run finished (its result is
    ``model.pt``): its checkpoints are deleted before ``ResumableCheckpoint`` looks, so the run starts at epoch 0
    with a fresh optimizer (MONAI Label's "pretrained" option still starts it from ``model.pt``). A checkpoint with
    fewer epochs (a crash, or more epochs requested to extend a run) is resumed as before. Attach it before
    ``ResumableCheckpoint``; rank 0 deletes and every rank waits for it, so all ranks decide alike.
    """

    def __init__(self, save_dir: str | os.PathLike) -> None:
        self.save_dir = save_dir

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine) -> None:
        import ignite.distributed as idist

        checkpoints = list_last_checkpoints(self.save_dir)  # newest first
        max_epochs = engine.state.max_epochs
        if not checkpoints or max_epochs is None or checkpoint_epoch(checkpoints[0]) < max_epochs:
            return
        newest = checkpoints[0]
        if idist.get_rank() == 0:
            for path in checkpoints:
                path.unlink(missing_ok=True)
        idist.barrier()
        logger.info("%s is a finished run (%d epochs requested): starting a new run", newest, max_epochs)
