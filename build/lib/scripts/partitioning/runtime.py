"""The glue between ``configs/inference_partitioned.json`` and the partition runners.

Without ``torchrun`` (one process) the network is a :class:`ChainedPartitions` over the visible devices. Under
``torchrun --nproc_per_node N`` rank ``k`` runs sub-model ``k`` of ``N``: rank 0 is the :class:`PipelineDriver`
that the unchanged evaluator calls, ranks ``1..N-1`` are :class:`StageServer` s and read or write no files (their
TorchScript arrives from rank 0 over the process group). In both cases rank 0 first exports the sub-models to
``<partitions_dir>/<model_name>_part<k>of<N>.ts`` (skipped when files with the same weights and settings exist) and
every stage runs from those files.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..common.errors import InputError
from ..data.inputs import list_inference_inputs
from .p2p import PipelineDriver, StageServer
from .placement import ChainedPartitions, place_submodels, resolve_devices
from .torchscript_io import (export_partitions, load_partition, partition_path, partitions_up_to_date,
                             weights_fingerprint)

__all__ = ["pipeline_rank", "pipeline_world_size", "rank_zero_inputs", "default_num_partitions", "stage_device", "comm_backend",
           "init_pipeline_group", "check_torch_backend", "destroy_pipeline_group", "ensure_partitions", "partitioned_network",
           "run_pipeline_role"]

logger = logging.getLogger(__name__)


def pipeline_rank() -> int:
    """This process's rank (``RANK`` from torchrun; 0 in a single process)."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def rank_zero_inputs(input_path: str | os.PathLike) -> list[dict[str, str]]:
    """The inference inputs on rank 0, which reads and writes every case; none on the ranks serving a stage."""
    return list_inference_inputs(input_path) if pipeline_rank() == 0 else []


def pipeline_world_size() -> int:
    """Number of pipeline processes (``WORLD_SIZE`` from torchrun; 1 in a single process)."""
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def default_num_partitions(single_process: int = 2) -> int:
    """One partition per process under torchrun; ``single_process`` partitions without it."""
    world = pipeline_world_size()
    return world if world > 1 else single_process


def comm_backend() -> str:
    """NCCL when every local process can have its own GPU, else gloo (CPU, or more processes than GPUs)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", pipeline_world_size()))
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_world:
        return "nccl"
    return "gloo"


def stage_device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK % #GPUs`` when CUDA is present (made current), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    index = int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device(f"cuda:{index}")


def init_pipeline_group(timeout_s: float = 900) -> bool:
    """Join the process group torchrun set up (no-op in a single process). ``timeout_s`` bounds every wait for a
    peer (a serving rank waits that long for the next slice batch). Returns True for config lists."""
    if pipeline_world_size() > 1 and not dist.is_initialized():
        backend = comm_backend()
        kwargs = {"device_id": stage_device()} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=float(timeout_s)), **kwargs)
    if pipeline_rank() > 0:  # rank 0 speaks for the workflow
        logging.getLogger("ignite").setLevel(logging.WARNING)
    return True


def check_torch_backend(backend: str) -> bool:
    """Partitioned inference splits the torch network: ``--backend onnxruntime`` stops with one line."""
    if backend != "torch":
        raise InputError(f"--backend {backend!r}: configs/inference_partitioned.json runs the torch network's "
                         "TorchScript partitions; use --backend torch")
    return True


def destroy_pipeline_group() -> bool:
    if dist.is_initialized():
        dist.destroy_process_group()
    return True


def ensure_partitions(network_def: nn.Module, model_path: str | os.PathLike, num_partitions: int, measure: str,
                      example_shape: Sequence[int], partitions_dir: str | os.PathLike,
                      model_name: str) -> list[Path]:
    """Export ``network_def`` with the weights of ``model_path``, split into ``num_partitions`` sub-models by
    ``measure``, to one TorchScript file each, unless files made from the same weights and settings exist."""
    from ..common.weights import check_weights_file
    from . import split_network

    check_weights_file(model_path)
    settings = {"num_partitions": num_partitions, "measure": measure, "example_shape": list(example_shape),
                "network": repr(network_def)}
    fingerprint = weights_fingerprint(model_path, settings)
    paths = [partition_path(partitions_dir, model_name, k, num_partitions) for k in range(num_partitions)]
    if partitions_up_to_date(partitions_dir, model_name, num_partitions, fingerprint):
        logger.info("using the TorchScript partitions in %s (same weights and settings)", partitions_dir)
        return paths
    checkpoint = torch.load(model_path, map_location="cpu", weights_only=True)
    network = network_def.cpu().eval()
    try:
        network.load_state_dict(checkpoint.get("model", checkpoint))
    except RuntimeError as exc:
        raise InputError(f"{model_path}: weights do not fit the configured network "
                         f"({str(exc).splitlines()[0]})") from None
    try:
        submodels = split_network(network, num_partitions, measure=measure, example_shape=tuple(example_shape))
    except ValueError as exc:
        raise InputError(f"--num_partitions {num_partitions} / --partition_measure {measure!r}: {exc}") from None
    if len(submodels) != num_partitions:
        raise InputError(f"--num_partitions {num_partitions}: Algorithm I made only {len(submodels)} sub-models of "
                         f"this network by {measure}; use fewer partitions (or processes)")
    paths = export_partitions(submodels, partitions_dir, model_name, example_shape, fingerprint)
    logger.info("exported %d TorchScript partitions to %s", num_partitions, partitions_dir)
    return paths


def partitioned_network(network_def: nn.Module, model_path: str | os.PathLike, num_partitions: int,
                        partitions_dir: str | os.PathLike, model_name: str, slice_size: Sequence[int],
                        in_channels: int = 1, measure: str = "macs", micro_batch_size: int = 2,
                        devices: Sequence[str] | str | None = None) -> nn.Module:
    """The ``network`` of ``configs/inference_partitioned.json`` for this process (see the module docstring).

    Single process: a :class:`ChainedPartitions` with sub-model ``k`` on ``devices[k % len(devices)]``
    (``devices`` None: every visible GPU, else the CPU). Under torchrun: rank 0 a :class:`PipelineDriver`, the
    others a :class:`StageServer`, each on :func:`stage_device`; ``num_partitions`` must equal the world size.
    """
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, int) or num_partitions < 1:
        raise InputError(f"--num_partitions {num_partitions!r}: give a positive integer")
    spatial_dims = getattr(network_def, "spatial_dims", None) or getattr(
        getattr(network_def, "encoder", None), "spatial_dims", 2)
    if spatial_dims != 2 or len(slice_size) != 2:
        raise InputError(f"partitioned inference runs 2D networks over axial slices; {type(network_def).__name__} "
                         f"is {spatial_dims}D (slice_size {list(slice_size)}): run it with configs/inference.json alone")
    example_shape = (1, in_channels, *slice_size)
    world, rank = pipeline_world_size(), pipeline_rank()
    if world == 1:
        paths = ensure_partitions(network_def, model_path, num_partitions, measure, example_shape, partitions_dir,
                                  model_name)
        stages = [load_partition(path)[0] for path in paths]
        return ChainedPartitions(place_submodels(stages, resolve_devices(devices))).eval()
    if not dist.is_initialized():
        raise InputError("torchrun started this process but the process group is not initialised; keep "
                         "scripts.partitioning.init_pipeline_group in the config's initialize list")
    if num_partitions != world:
        raise InputError(f"--num_partitions {num_partitions}: under torchrun there is one partition per process; "
                         f"start {num_partitions} processes (--nproc_per_node) or drop --num_partitions "
                         f"(this run has {world})")
    payloads = None
    if rank == 0:
        paths = ensure_partitions(network_def, model_path, num_partitions, measure, example_shape, partitions_dir,
                                  model_name)
        payloads = [path.read_bytes() for path in paths]
    received: list = [None]
    dist.scatter_object_list(received, payloads, src=0)
    device = stage_device()
    stage, meta = load_partition(received[0], map_location=device)
    if meta["index"] != rank or meta["count"] != world:
        raise RuntimeError(f"rank {rank} received partition {meta['index']} of {meta['count']}")
    comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    if rank == 0:
        return PipelineDriver(stage, meta, device, comm_device, micro_batch_size=micro_batch_size).eval()
    return StageServer(stage, meta, device, comm_device).eval()


def run_pipeline_role(network: nn.Module, evaluator) -> bool:
    """Rank 0 (or a single process) runs ``evaluator``, then stops the pipeline, also when the run fails; a serving
    rank serves until rank 0 stops it. Returns True for config lists."""
    if isinstance(network, StageServer):
        network.serve()
        return True
    try:
        evaluator.run()
    except BaseException:
        if isinstance(network, PipelineDriver):
            try:  # let the serving ranks exit cleanly; the run's own error is the one to report
                network.stop()
            except Exception as exc:
                logger.warning("could not stop the pipeline cleanly: %s", exc)
        raise
    if isinstance(network, PipelineDriver):
        network.stop()
    return True
