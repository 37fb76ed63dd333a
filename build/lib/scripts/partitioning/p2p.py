"""A partitioned network run as a pipeline of processes with ``torch.distributed`` point-to-point messages.

Rank ``k`` runs sub-model ``k`` of ``n == world_size``. Rank 0 is the driver: the inference workflow calls it like
the monolithic network with a batch of slices; it cuts the batch into micro-batches, runs stage 0 on each and sends
the boundary tensors to rank 1 without waiting (``isend``), then receives the logits of every micro-batch from rank
``n - 1``. Ranks ``1..n-1`` serve: receive, run their stage, send on (the last one back to rank 0), until a stop
message. While rank ``k`` computes micro-batch ``i``, rank ``k - 1`` already computes ``i + 1``: the stages overlap.

Every message is a fixed-size int64 header (kind, sequence number, sender stage, number of tensors, each tensor's
dtype and shape), then the tensors. The header makes micro-batches of any size possible (the last slice batch of a
volume is smaller, and so is the last micro-batch when the batch does not divide). A stage that fails sends an
error message instead of its output; rank 0 raises it after collecting the batch, so the message stream stays in
step. Rank 0's :meth:`PipelineDriver.stop` sends the stop message along the ring and waits for it to come back, then
gathers every stage's statistics (micro-batches, compute seconds, what was sent). A lost peer or a silent one
(longer than the process group's timeout) raises on the waiting rank instead of hanging.

Why not ``torch.distributed.pipelining``: its schedules fix the number of micro-batches and infer the boundary
shapes once (recv buffers are pre-allocated), while the slice inferer's batches vary in size; every rank must call
``step()`` with a batch, so the serving ranks would need this header protocol anyway; and the result stays on the
last rank. Plain ``isend``/``recv`` works identically on gloo (CPU) and NCCL (GPU).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DATA", "STOP", "ERROR", "PipelineDriver", "StageServer", "encode_header", "decode_header"]

logger = logging.getLogger(__name__)

DATA, STOP, ERROR = 1, 2, 3
MAX_TENSORS, MAX_DIMS = 16, 6
_FIXED = 4  # kind, sequence number, sender stage, number of tensors
HEADER_LEN = _FIXED + MAX_TENSORS * (2 + MAX_DIMS)
_RECENT = 1000  # per-micro-batch compute times kept for medians
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.int64)


def encode_header(kind: int, seq: int, stage: int, tensors: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """The int64 header describing a message of ``tensors``."""
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f"a boundary carries at most {MAX_TENSORS} tensors, got {len(tensors)}")
    header = torch.zeros(HEADER_LEN, dtype=torch.int64)
    header[:_FIXED] = torch.tensor([kind, seq, stage, len(tensors)])
    for i, t in enumerate(tensors):
        if t.dim() > MAX_DIMS or t.dtype not in DTYPES:
            raise ValueError(f"cannot send a {t.dtype} tensor of shape {list(t.shape)} (at most {MAX_DIMS} dims, "
                             f"dtypes {DTYPES})")
        base = _FIXED + i * (2 + MAX_DIMS)
        header[base] = DTYPES.index(t.dtype)
        header[base + 1] = t.dim()
        header[base + 2 : base + 2 + t.dim()] = torch.tensor(t.shape, dtype=torch.int64)
    return header


def decode_header(header: torch.Tensor) -> tuple[int, int, int, list[tuple[torch.dtype, tuple[int, ...]]]]:
    """``(kind, seq, stage, [(dtype, shape), ...])`` of a header made by :func:`encode_header`."""
    values = header.tolist()
    kind, seq, stage, count = values[:_FIXED]
    specs = []
    for i in range(count):
        base = _FIXED + i * (2 + MAX_DIMS)
        dtype, ndim = DTYPES[values[base]], values[base + 1]
        specs.append((dtype, tuple(values[base + 2 : base + 2 + ndim])))
    return kind, seq, stage, specs


class _Endpoint(nn.Module):
    """Shared by driver and servers: one stage module, its device, the wire and the statistics."""

    def __init__(self, stage: nn.Module, meta: dict, device: torch.device | str, comm_device: torch.device | str,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.stage = stage
        self.meta = dict(meta)
        self.device = torch.device(device)
        self.comm_device = torch.device(comm_device)
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.next_rank = (self.rank + 1) % self.world_size
        self.prev_rank = (self.rank - 1) % self.world_size
        self._pending: list[tuple[dist.Work, list[torch.Tensor]]] = []
        self.stats = {"rank": self.rank, "stage": int(meta.get("index", self.rank)), "micro_batches": 0,
                      "compute_s": 0.0, "recent_compute_s": [], "bytes_sent": 0, "sent": {}}

    def _run_stage(self, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        dtype = next((p.dtype for p in self.stage.parameters()), torch.float32)
        inputs = [t.to(self.device, dtype) for t in tensors]  # an AMP stage 0 may send float16
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        with torch.no_grad():
            outputs = self.stage(*inputs)
        outputs = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        self.stats["compute_s"] += elapsed
        self.stats["micro_batches"] += 1
        self.stats["recent_compute_s"] = (self.stats["recent_compute_s"] + [elapsed])[-_RECENT:]
        return outputs

    def _send(self, kind: int, seq: int, tensors: Sequence[torch.Tensor], dst: int) -> None:
        """Send header + tensors to ``dst`` without waiting; the buffers stay referenced until :meth:`_flush`."""
        tensors = [t.detach().to(self.comm_device).contiguous() for t in tensors]
        header = encode_header(kind, seq, self.stats["stage"], tensors).to(self.comm_device)
        buffers = [header, *tensors]
        works = [dist.isend(b, dst, group=self.group) for b in buffers]
        self._pending.extend((w, buffers) for w in works)
        if kind == DATA:
            names = tuple(self.meta.get("output_names", ()))
            key = repr((names, [list(t.shape) for t in tensors]))
            self.stats["sent"][key] = self.stats["sent"].get(key, 0) + 1
            self.stats["bytes_sent"] += sum(t.numel() * t.element_size() for t in tensors)
        self._pending = [(w, b) for w, b in self._pending if not w.is_completed()]

    def _flush(self) -> None:
        for work, _ in self._pending:
            work.wait()
        self._pending = []

    def _recv(self, src: int) -> tuple[int, int, int, list[torch.Tensor]]:
        header = torch.empty(HEADER_LEN, dtype=torch.int64, device=self.comm_device)
        dist.recv(header, src, group=self.group)
        kind, seq, stage, specs = decode_header(header.cpu())
        tensors = []
        for dtype, shape in specs:
            t = torch.empty(shape, dtype=dtype, device=self.comm_device)
            dist.recv(t, src, group=self.group)
            tensors.append(t)
        return kind, seq, stage, tensors

    def _error_message(self, exc: BaseException) -> torch.Tensor:
        text = f"stage {self.stats['stage']} on rank {self.rank}: {type(exc).__name__}: {exc}"
        return torch.tensor(list(text.encode()[:4000]), dtype=torch.uint8)


class PipelineDriver(_Endpoint):
    """Rank 0: called like the network (``(B, C, H, W)`` slices -> ``(B, classes, H, W)`` logits on the input's
    device); runs stage 0 itself and the other stages through the ranks that serve them.

    Args:
        stage: sub-model 0 (``forward(x) -> tuple``), on ``device``.
        meta: its partition metadata (``output_names``, ``count``; see ``torchscript_io``).
        device: where stage 0 runs.
        comm_device: where tensors travel (``cpu`` for gloo, the local GPU for NCCL).
        micro_batch_size: slices per micro-batch; the batch need not be a multiple of it.
    """

    def __init__(self, stage: nn.Module, meta: dict, device: torch.device | str = "cpu",
                 comm_device: torch.device | str = "cpu", micro_batch_size: int = 1,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__(stage, meta, device, comm_device, group)
        if isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int) or micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be a positive integer, got {micro_batch_size!r}")
        if self.rank != 0:
            raise ValueError(f"PipelineDriver runs on rank 0, this is rank {self.rank}")
        self.micro_batch_size = micro_batch_size
        self.stage_stats: list[dict] = []
        self._seq = 0
        self._stopped = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._stopped:
            raise RuntimeError("the pipeline was stopped")
        if hasattr(x, "as_tensor"):  # MetaTensor from the inferer
            x = x.as_tensor()
        chunks = torch.split(x, self.micro_batch_size)
        first_seq = self._seq
        for chunk in chunks:
            self._send(DATA, self._seq, self._run_stage([chunk]), dst=self.next_rank)
            self._seq += 1
        results: list[torch.Tensor] = []
        errors: list[str] = []
        for i in range(len(chunks)):
            kind, seq, _, tensors = self._recv(src=self.prev_rank)
            if kind == ERROR:
                errors.append(bytes(tensors[0].cpu().tolist()).decode(errors="replace"))
            elif kind != DATA or seq != first_seq + i:
                raise RuntimeError(f"pipeline out of step: expected logits of micro-batch {first_seq + i}, got "
                                   f"message kind {kind} for micro-batch {seq}")
            else:
                results.append(tensors[0])
        self._flush()
        if errors:
            raise RuntimeError("partitioned pipeline failed: " + "; ".join(dict.fromkeys(errors)))
        return torch.cat(results).to(x.device)

    def stop(self) -> list[dict]:
        """Send the stop message around the ring, wait for it to return, gather and return every stage's stats."""
        if self._stopped:
            return self.stage_stats
        self._stopped = True
        self._send(STOP, self._seq, [], dst=self.next_rank)
        while True:  # results of an interrupted batch may still arrive before the stop message
            kind, *_ = self._recv(src=self.prev_rank)
            if kind == STOP:
                break
        self._flush()
        gathered: list = [None] * self.world_size
        dist.gather_object(self.stats, gathered, dst=0, group=self.group)
        self.stage_stats = sorted(gathered, key=lambda s: s["stage"])
        for s in self.stage_stats:
            if s["micro_batches"]:
                logger.info("pipeline stage %d (rank %d): %d micro-batches, %.1f ms compute each, %.1f MB sent",
                            s["stage"], s["rank"], s["micro_batches"], 1e3 * s["compute_s"] / s["micro_batches"],
                            s["bytes_sent"] / 1e6)
        return self.stage_stats


class StageServer(_Endpoint):
    """Ranks ``1..n-1``: :meth:`serve` runs this rank's stage on every micro-batch until the stop message.

    It is an ``nn.Module`` only so that the inference config can hand it to the (idle) evaluator of a serving rank.
    """

    def __init__(self, stage: nn.Module, meta: dict, device: torch.device | str = "cpu",
                 comm_device: torch.device | str = "cpu", group: dist.ProcessGroup | None = None) -> None:
        super().__init__(stage, meta, device, comm_device, group)
        if self.rank == 0:
            raise ValueError("StageServer runs on ranks 1..n-1; rank 0 drives the pipeline")

    def forward(self, *args):
        raise RuntimeError(f"rank {self.rank} serves pipeline stage {self.stats['stage']}; only rank 0 runs the "
                           "network on data")

    def serve(self) -> dict:
        """Receive -> run -> send until the stop message (forwarded along the ring); returns this stage's stats."""
        while True:
            kind, seq, _, tensors = self._recv(src=self.prev_rank)
            if kind == STOP:
                self._send(STOP, seq, [], dst=self.next_rank)
                break
            if kind == ERROR:  # an earlier stage failed on this micro-batch: pass its message on
                self._send(ERROR, seq, tensors, dst=self.next_rank)
                continue
            try:
                outputs = self._run_stage(tensors)
            except Exception as exc:  # report it to rank 0 and keep serving: the stream stays in step
                logger.error("pipeline stage %d failed on micro-batch %d: %s", self.stats["stage"], seq, exc)
                self._send(ERROR, seq, [self._error_message(exc)], dst=self.next_rank)
                continue
            self._send(DATA, seq, outputs, dst=self.next_rank)
        self._flush()
        dist.gather_object(self.stats, None, dst=0, group=self.group)
        return self.stats
