"""Stop a diverged training run loudly (issue 14): a NaN/Inf loss or NaN/Inf weights end the run with one line.

ignite's ``TerminateOnNan`` ends the run *gracefully*: the trainer's ``COMPLETED`` handlers still run (the final
validation could then save NaN weights as ``models/model.pt``) and the command exits 0. :class:`StopOnNonFiniteLoss`
raises an :class:`InputError` instead, which the bundle's excepthook prints as one line (exit code 2); the last
checkpoint and ``model.pt`` stay as they were before the loss diverged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from ignite.engine import Engine, Events

from ..common.errors import InputError

__all__ = ["non_finite_entries", "check_finite_weights", "StopOnNonFiniteLoss"]

ADVICE = ("the last checkpoint and models/model.pt are kept from before; rerun the same command to retry from the last "
          "checkpoint, or start afresh with a lower --learning_rate and --resume False (a resume keeps the saved rate)")


def non_finite_entries(state: Mapping) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or Inf values."""
    return [name for name, value in state.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]


def check_finite_weights(network: torch.nn.Module, epoch: int, what: str) -> None:
    """Raise :class:`InputError` naming ``epoch`` and the first bad tensors when ``network`` has NaN/Inf weights;
    ``what`` says what was about to happen (e.g. "saving models/model.pt")."""
    module = getattr(network, "module", network)  # DistributedDataParallel / DataParallel
    bad = non_finite_entries(module.state_dict())
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise InputError(f"epoch {epoch}: training diverged, the weights hold NaN/Inf ({shown}); refused {what}; "
                         + ADVICE)


class StopOnNonFiniteLoss:
    """Raise :class:`InputError` naming the epoch and iteration as soon as the training loss is NaN or Inf.

    Args:
        output_key: key of the loss in ``engine.state.output`` (MONAI's ``SupervisedTrainer``: ``"loss"``).
    """

    def __init__(self, output_key: str = "loss") -> None:
        self.output_key = output_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        outputs = engine.state.output
        outputs = outputs if isinstance(outputs, list) else [outputs]  # a list when the trainer decollates
        for output in outputs:
            loss = output.get(self.output_key) if isinstance(output, Mapping) else output
            if loss is None:
                continue
            value = float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
            if not math.isfinite(value):
                per_epoch = engine.state.epoch_length or 0
                iteration = engine.state.iteration - (engine.state.epoch - 1) * per_epoch if per_epoch else \
                    engine.state.iteration
                raise InputError(f"epoch {engine.state.epoch}, iteration {iteration}: the training loss is {value}; "
                                 f"training stopped. " + ADVICE)
