"""Small helpers that connect MONAI engines to handlers from JSON configs (training and validation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.handlers import from_engine

__all__ = ["from_engine_channel", "ValidateAtEnd"]


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
