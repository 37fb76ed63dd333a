"""``models/model.pt``: the weights of the best validation so far, replaced only by a complete, better, finite one.

Replaces MONAI's ``CheckpointSaver(save_key_metric=True)`` in train.json (issue 14). That handler writes with
``atomic=False`` and its ignite ``Checkpoint`` deletes the old best *before* saving the new one, so a kill or a
full disk during the save lost both; it also forgot the best metric on resume (the first validation after a resume
always replaced the file) and kept a NaN metric or NaN weights as a "best" on the first validation.

Here the new file is written beside the old one and renamed over it (:func:`~scripts.training.saving.save_synced`),
a NaN/Inf metric never counts as a new best, NaN/Inf weights are refused with one line, and the best metric and its
epoch travel inside ``model.pt`` (``{"model": state_dict, "best_metric": float, "best_epoch": int, "metric": str}``;
``scripts.common.weights.load_weights``, MONAI's ``CheckpointLoader`` and MONAI Label read the ``"model"`` entry).
On resume :class:`~scripts.training.checkpoint.ResumableCheckpoint` restores the record (:meth:`load_state_dict`).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch import nn

from .guards import check_finite_weights
from .saving import remove_stale_temps, save_synced

__all__ = ["BestModelCheckpoint", "read_best_record"]

logger = logging.getLogger(__name__)


def read_best_record(path: str | os.PathLike) -> tuple[float, int] | None:
    """``(best_metric, best_epoch)`` stored in a ``model.pt`` written by :class:`BestModelCheckpoint`; None when the
    file is absent, unreadable or holds no record (a bare state dict, downloaded weights)."""
    record = _read(Path(path))
    return record if isinstance(record, tuple) else None


def _read(path: Path) -> tuple[float, int] | str:
    """The record of ``path``, or why there is none: "absent", "damaged" or "no record"."""
    if not path.is_file():
        return "absent"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged or foreign: the next validation replaces it
        logger.warning("%s: cannot be read (%s); the next validation replaces it", path, str(exc).splitlines()[0])
        return "damaged"
    if isinstance(saved, dict) and isinstance(saved.get("best_metric"), float) and math.isfinite(saved["best_metric"]):
        return saved["best_metric"], int(saved.get("best_epoch", -1))
    return "no record"


class BestModelCheckpoint:
    """Evaluator handler: save ``network`` as ``save_dir/filename`` when the key metric beats the best so far.

    Args:
        save_dir: folder of the best model (created).
        network: the trained network (a ``DistributedDataParallel`` wrapper is unwrapped: no ``module.`` prefix).
        filename: file name of the best model (``models/model.pt`` is what evaluation, inference and MONAI Label load).
        metric_name: metric to compare, higher is better; default the evaluator's key metric.
        save_on_rank: the process that writes the file in multi-process training.
    """

    def __init__(self, save_dir: str, network: nn.Module, filename: str = "model.pt", metric_name: str | None = None,
                 save_on_rank: int = 0) -> None:
        self.path = Path(save_dir) / filename
        self.network = network
        self.metric_name = metric_name
        self.save_on_rank = save_on_rank
        self.best_metric: float | None = None
        self.best_epoch: int = -1
        self.engine: Engine | None = None

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        if idist.get_rank() == self.save_on_rank:
            remove_stale_temps(self.path.parent, (self.path.name,))

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or engine.state.key_metric_name
        value, epoch = float(engine.state.metrics[name]), int(engine.state.epoch)
        if not math.isfinite(value):
            logger.warning("epoch %d: validation %s is %s; not a new best, %s is kept", epoch, name, value, self.path)
        elif self.best_metric is not None and not value > self.best_metric:
            logger.info("epoch %d: %s %.4f is not better than %.4f (epoch %d); %s is kept", epoch, name, value,
                        self.best_metric, self.best_epoch, self.path)
        else:
            check_finite_weights(self.network, epoch, f"to save it as {self.path}")
            if idist.get_rank() == self.save_on_rank:
                module = getattr(self.network, "module", self.network)
                save_synced({"model": module.state_dict(), "best_metric": value, "best_epoch": epoch, "metric": name},
                            self.path, what="best model")
                logger.info("epoch %d: new best %s %.4f, saved %s", epoch, name, value, self.path)
            self.best_metric, self.best_epoch = value, epoch
        self._mirror_to_engine()

    def _mirror_to_engine(self) -> None:
        """Keep MONAI's own record (``state.best_metric``, logged as "Got new best metric") equal to ours: after a
        resume, or after a NaN first validation that MONAI would otherwise keep as its best."""
        if self.engine is not None and self.best_metric is not None:
            self.engine.state.best_metric = self.best_metric
            self.engine.state.best_metric_epoch = self.best_epoch

    def state_dict(self) -> dict:
        """The best record, saved in ``last_checkpoint_N.pt`` by :class:`~scripts.training.checkpoint.ResumableCheckpoint`."""
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Restore the best record on resume. The record inside ``model.pt`` wins: it describes the file that must not
        be replaced by a worse one (it may be newer than the checkpoint if the run was killed in between); the
        checkpoint's record serves when ``model.pt`` has none. Without a ``model.pt`` the next validation writes one."""
        on_disk = _read(self.path)
        if isinstance(on_disk, tuple):
            self.best_metric, self.best_epoch = on_disk
        elif on_disk == "no record" and state.get("best_metric") is not None:
            self.best_metric, self.best_epoch = float(state["best_metric"]), int(state["best_epoch"])
        else:
            self.best_metric, self.best_epoch = None, -1
        if self.best_metric is not None:
            logger.info("best so far: %.4f at epoch %d (%s); only a better validation replaces it",
                        self.best_metric, self.best_epoch, self.path)
        self._mirror_to_engine()
