"""Multi-process (DistributedDataParallel) training helpers for ``configs/multi_gpu_train.json``.

``torchrun`` starts one process per GPU and sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``. Each process
trains on its own shard of the data (``DistributedSampler``); DDP averages the gradients. Only rank 0 writes
checkpoints (ignite's ``DiskSaver`` saves on rank 0, see :mod:`scripts.training.checkpoint`) and logs; every rank
resumes from the same ``last_checkpoint_N.pt``. The process group uses NCCL on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

from ..common.errors import InputError

__all__ = ["local_device", "init_process_group", "destroy_process_group", "rank_zero_handlers", "RANK_ZERO_ONLY"]

# Handlers that write files or logs: kept on rank 0 only.
RANK_ZERO_ONLY = ("StatsHandler", "TensorBoardStatsHandler", "ProgressBar", "CheckpointSaver", "MetricsSaver",
                  "BestModelCheckpoint")


def _local_rank() -> int:
    if "LOCAL_RANK" not in os.environ:
        raise InputError("configs/multi_gpu_train.json: LOCAL_RANK is not set; start it with torchrun "
                         "--nproc_per_node N -m monai.bundle run training --config_file \"['configs/train.json',"
                         "'configs/multi_gpu_train.json']\"")
    return int(os.environ["LOCAL_RANK"])


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` (made the current CUDA device) when CUDA is present, else the CPU."""
    rank = _local_rank()
    if torch.cuda.is_available():
        if rank >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {rank}: only {torch.cuda.device_count()} GPU(s) visible; lower "
                             "--nproc_per_node")
        torch.cuda.set_device(rank)
        return torch.device(f"cuda:{rank}")
    return torch.device("cpu")


def init_process_group() -> bool:
    """Join the process group torchrun set up: NCCL on CUDA, gloo on the CPU. Returns True for config lists."""
    _local_rank()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.get_rank() > 0:  # ignite's engines log each epoch on every rank; rank 0 speaks for all
        logging.getLogger("ignite").setLevel(logging.WARNING)
    return True


def destroy_process_group() -> bool:
    """Leave the process group once every rank has finished (a barrier first, so that no rank tears down its
    connections while another still uses them). Returns True for config lists."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return True


def rank_zero_handlers(handlers: Iterable | None, drop: Sequence[str] = RANK_ZERO_ONLY) -> list:
    """All ``handlers`` on rank 0; on other ranks, those that write or log removed and LR printing turned off.

    Handlers every rank needs stay: metrics (gathered across ranks), validation, LR schedule, resume.
    """
    handlers = list(handlers or [])
    if not dist.is_initialized() or dist.get_rank() == 0:
        return handlers
    kept = [h for h in handlers if type(h).__name__ not in drop]
    for handler in kept:
        if hasattr(handler, "print_lr"):
            handler.print_lr = False
    return kept
