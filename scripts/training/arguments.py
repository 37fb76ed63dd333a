"""One-line checks of the numeric training options (issue 14): ``--epochs -1`` or ``--batch_size 0`` stop the run
before any work with a line naming the option, instead of a traceback from ignite, torch or a DataLoader.

Listed in train.json's ``argument_checks`` (run by ``initialize`` through ``scripts.common.checks.run_checks``).
"""

from __future__ import annotations

import math
import numbers

from ..common.errors import InputError

__all__ = ["check_training_arguments"]


def _number(name: str, value, integer: bool) -> float:
    kind = "a whole number" if integer else "a number"
    ok = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)):
        raise InputError(f"--{name}: got {value!r}; it must be {kind}")
    return float(value)


def check_training_arguments(epochs=1, val_interval=1, batch_size=1, slices_per_volume=1, learning_rate=1e-3,
                             weight_decay=0.0, num_workers=0, cache_rate=1.0) -> bool:
    """Raise :class:`InputError` naming the first option out of range: ``epochs``, ``val_interval``, ``batch_size``,
    ``slices_per_volume`` are whole numbers >= 1, ``learning_rate`` > 0, ``weight_decay`` >= 0, ``num_workers`` a
    whole number >= 0, ``cache_rate`` in [0, 1]. Returns True for config lists."""
    for name, value in (("epochs", epochs), ("val_interval", val_interval), ("batch_size", batch_size),
                        ("slices_per_volume", slices_per_volume)):
        if _number(name, value, integer=True) < 1:
            raise InputError(f"--{name}: got {value}; it must be 1 or more")
    if _number("num_workers", num_workers, integer=True) < 0:
        raise InputError(f"--num_workers: got {num_workers}; it must be 0 (load in the main process) or more")
    if _number("learning_rate", learning_rate, integer=False) <= 0:
        raise InputError(f"--learning_rate: got {learning_rate}; it must be greater than 0 (e.g. 1e-3)")
    if _number("weight_decay", weight_decay, integer=False) < 0:
        raise InputError(f"--weight_decay: got {weight_decay}; it must be 0 or more")
    if not 0 <= _number("cache_rate", cache_rate, integer=False) <= 1:
        raise InputError(f"--cache_rate: got {cache_rate}; it must be between 0 and 1")
    return True
