#!/usr/bin/env python
"""Throughput and per-stage latency of partitioned inference (UNet-P, paper 002) versus the monolithic network.

In ONE run, on RANDOM slices with RANDOM-INIT weights (speed does not depend on the weights' values), interleaved
over ``--repeats`` rounds so that load from other jobs hits every variant alike:

1. ``monolithic``: the eager network over all slices in batches of ``--batch`` (as the slice inferer calls it);
2. ``chain n``: the TorchScript partitions (``scripts.partitioning``) run one after the other in this process,
   ``n`` = each of ``--partitions`` (sub-model ``k`` on device ``k % #devices``: every visible GPU, else the CPU);
3. ``pipeline n`` (``n >= 2``): ``n`` processes on 127.0.0.1 (``torch.multiprocessing``, gloo), rank ``k`` runs
   sub-model ``k``, micro-batches of ``--micro-batch`` slices, as ``configs/inference_partitioned.json`` runs
   under ``torchrun``. Its time starts after one warm-up batch and excludes process start-up.

Per-stage latency is the median compute time of one micro-batch in that stage. Also recorded: the boundary
(activation names, shapes, bytes per slice) from ``boundary_table``. Writes ``bench/results/partition_<date>.json``
and, with ``--docs``, the measured tables of ``docs/partitioning_benchmark.md`` (between its markers).

Run from the bundle root::

    OMP_NUM_THREADS=1 .venv/bin/python bench/partition_bench.py                   # default WP-UNet, 256x256
    OMP_NUM_THREADS=1 .venv/bin/python bench/partition_bench.py --channels 16 32 64 128 128 --size 128 --slices 64
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from bench.common import load_average, machine  # noqa: E402

BEGIN, END = "<!-- partition_bench:begin -->", "<!-- partition_bench:end -->"


def _network(channels, seed=0):
    from scripts.networks import WPUNet

    torch.manual_seed(seed)
    return WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=tuple(channels),
                  strides=(2,) * (len(channels) - 1)).eval()


def _sync(devices):
    for d in devices:
        if d.type == "cuda":
            torch.cuda.synchronize(d)


def _time_monolithic(net, slices, batch, device):
    net = net.to(device)
    start = time.perf_counter()
    with torch.no_grad():
        for x in torch.split(slices, batch):
            net(x.to(device)).cpu()
    _sync([device])
    return time.perf_counter() - start


def _time_chain(stages, devices, slices, batch, micro_batch):
    """Whole-batch chain time, and per-stage median time for one micro-batch."""
    from scripts.partitioning import run_chain

    start = time.perf_counter()
    with torch.no_grad():
        for x in torch.split(slices, batch):
            run_chain(stages, x.to(devices[0])).cpu()
    _sync(devices)
    total = time.perf_counter() - start
    per_stage = [[] for _ in stages]
    with torch.no_grad():
        for x in torch.split(slices, micro_batch)[:6]:
            tensors = (x.to(devices[0]),)
            for k, stage in enumerate(stages):
                tensors = tuple(t.to(devices[k % len(devices)]) for t in tensors)
                _sync(devices)
                t0 = time.perf_counter()
                out = stage(*tensors)
                _sync(devices)
                per_stage[k].append(time.perf_counter() - t0)
                tensors = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    return total, [statistics.median(t) for t in per_stage]


def _pipeline_worker(rank, world, port, parts_dir, slices, batch, micro_batch, threads, out_file):
    from scripts.partitioning import PipelineDriver, StageServer, load_partition, partition_path

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=_dt.timedelta(seconds=600))
    try:
        device = torch.device(f"cuda:{rank % torch.cuda.device_count()}") if torch.cuda.is_available() else \
            torch.device("cpu")
        stage, meta = load_partition(partition_path(parts_dir, "model", rank, world), map_location=device)
        if rank > 0:
            StageServer(stage, meta, device=device).serve()
            return
        driver = PipelineDriver(stage, meta, device=device, micro_batch_size=micro_batch)
        batches = torch.split(slices, batch)
        with torch.no_grad():
            driver(batches[0])  # warm-up
            start = time.perf_counter()
            for x in batches:
                driver(x)
            elapsed = time.perf_counter() - start
        stats = driver.stop()
        torch.save({"elapsed": elapsed, "slices": len(slices), "stats": stats}, out_file)
    finally:
        dist.destroy_process_group()


def _time_pipeline(parts_dir, world, slices, batch, micro_batch, threads):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "pipeline.pt"
        mp.spawn(_pipeline_worker, nprocs=world, join=True,
                 args=(world, port, str(parts_dir), slices, batch, micro_batch, threads, str(out_file)))
        result = torch.load(out_file, weights_only=False)
    per_stage = [statistics.median(s["recent_compute_s"]) for s in result["stats"]]
    return result["elapsed"], per_stage


def main(argv=None):
    from scripts.partitioning import boundary_table, export_partitions, load_partition, resolve_devices, split_network

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 128, 256, 512, 512])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8, help="slices per network call (the inferer's sw_batch_size)")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--partitions", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--measure", default="macs")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--results-dir", default=str(REPO / "bench" / "results"))
    parser.add_argument("--tag", default="")
    parser.add_argument("--docs", default="", help="markdown file whose marked section receives the tables")
    parser.add_argument("--model-from", default="", help="print the edge + server paper model of a results JSON")
    args = parser.parse_args(argv)
    if args.model_from:
        print(edge_server_model(json.loads(Path(args.model_from).read_text())))
        return None
    torch.set_num_threads(args.threads)

    devices = resolve_devices(None)
    shape = (1, 1, args.size, args.size)
    slices = torch.rand(args.slices, 1, args.size, args.size, generator=torch.Generator().manual_seed(0))
    net = _network(args.channels)
    workdir = Path(tempfile.mkdtemp(prefix="partition_bench_"))
    parts, boundaries = {}, {}
    for n in args.partitions:
        subs = split_network(_network(args.channels), n, measure=args.measure, example_shape=shape)
        export_partitions(subs, workdir / f"n{n}", "model", shape)
        parts[n] = [load_partition(workdir / f"n{n}" / f"model_part{k + 1}of{n}.ts", devices[k % len(devices)])[0]
                    for k in range(n)]
        boundaries[n] = [{k: row[k] for k in ("index", "first_layer", "last_layer", "params", "macs", "boundary",
                                               "boundary_shapes", "boundary_bytes")}
                         for row in boundary_table(subs, shape)]
    # warm-up (TorchScript's profiling executor optimises on the first calls)
    _time_monolithic(net, slices[: args.batch], args.batch, devices[0])
    for n in args.partitions:
        _time_chain(parts[n], devices, slices[: args.batch], args.batch, args.micro_batch)

    runs: dict[str, list] = {}
    for r in range(args.repeats):
        runs.setdefault("monolithic", []).append(
            {"seconds": _time_monolithic(net, slices, args.batch, devices[0]), "stage_s": []})
        for n in args.partitions:
            total, stages = _time_chain(parts[n], devices, slices, args.batch, args.micro_batch)
            runs.setdefault(f"chain {n}", []).append({"seconds": total, "stage_s": stages})
        if not args.skip_pipeline:
            for n in args.partitions:
                if n >= 2:
                    total, stages = _time_pipeline(workdir / f"n{n}", n, slices, args.batch, args.micro_batch,
                                                   args.threads)
                    runs.setdefault(f"pipeline {n}", []).append({"seconds": total, "stage_s": stages})
        print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]['seconds']:.2f} s" for k, v in runs.items()),
              flush=True)

    base = statistics.median(x["seconds"] for x in runs["monolithic"])
    summary = {}
    for name, values in runs.items():
        seconds = statistics.median(x["seconds"] for x in values)
        stage_s = [statistics.median(x["stage_s"][k] for x in values) for k in range(len(values[0]["stage_s"]))]
        summary[name] = {"slices_per_s": args.slices / seconds, "speed_vs_monolithic": base / seconds,
                         "stage_ms_per_micro_batch": [1e3 * s for s in stage_s], "seconds": seconds}
    record = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "note": "random slices, random-init weights; timings of a shared machine unless stated otherwise",
        "args": vars(args), "devices": [str(d) for d in devices], "machine": machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "loadavg_start_end": load_average(),
        "boundaries": boundaries, "runs": runs, "summary": summary,
    }
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d_%H%M")
    out = results_dir / f"partition_{stamp}{('_' + args.tag) if args.tag else ''}.json"
    from scripts.common.atomic import atomic_write_text, replace_marked_block

    atomic_write_text(out, json.dumps(record, indent=1))
    print(markdown(record))
    print(f"wrote {out}")
    if args.docs:
        replace_marked_block(Path(args.docs), BEGIN, END, markdown(record), append_if_missing=False)
    return record


def markdown(record) -> str:
    a, m = record["args"], record["machine"]
    lines = [f"Measured {record['date']}: WP-UNet channels {a['channels']}, {a['size']}x{a['size']} slices, "
             f"{a['slices']} slices in calls of {a['batch']}, micro-batches of {a['micro_batch']}, "
             f"{a['threads']} torch thread(s) per process, devices {record['devices']}, {m['cores']} CPU "
             f"cores, torch {m['torch']}; medians of {a['repeats']} interleaved rounds "
             f"(load average {record['loadavg_start_end'][0]:.1f}).", "",
             "| run | slices/s | vs monolithic | per-stage latency, ms per micro-batch |", "|---|---|---|---|"]
    for name, s in record["summary"].items():
        stages = " / ".join(f"{t:.0f}" for t in s["stage_ms_per_micro_batch"]) or "-"
        lines.append(f"| {name} | {s['slices_per_s']:.2f} | {s['speed_vs_monolithic']:.2f}x | {stages} |")
    lines += ["", "| partitions | sub-model | layers | MACs per slice | boundary sent | shapes (1 slice) | bytes per slice |",
              "|---|---|---|---|---|---|---|"]
    for n, rows in record["boundaries"].items():
        for row in rows:
            lines.append(f"| {n} | {row['index']} | {row['first_layer']} .. {row['last_layer']} | "
                         f"{row['macs'] / 1e9:.2f} G | {', '.join(row['boundary'])} | "
                         f"{'; '.join('x'.join(map(str, s)) for s in row['boundary_shapes'])} | "
                         f"{row['boundary_bytes'] / 1e6:.2f} MB |")
    return "\n".join(lines)


INPUT_BYTES_PER_SLICE = 256 * 256 * 2  # an int16 CT slice at the network's size (what an edge would upload)
LABEL_BYTES_PER_SLICE = 256 * 256  # the uint8 label slice the server returns


def edge_server_model(record, bandwidths_mbit=(100, 1000, 10000), server_speedups=(1, 100)) -> str:
    """A PAPER MODEL, not a measurement: edge + server split of the ``chain n`` runs of ``record``.

    The edge runs sub-models ``0..j`` at the per-stage times measured here (one micro-batch / its size), sends the
    boundary of sub-model ``j`` (``boundary_bytes`` per slice, fp32) over a link of the given bandwidth, and the
    server runs the rest ``server_speedup`` times faster and returns uint8 labels. Pipelined throughput is limited
    by the slowest of edge, uplink, server + downlink; latency per slice is their sum. Compared with all on the edge
    and with uploading the int16 slice to run everything on the server. Ignores protocol overhead and latency.
    """
    mb = record["args"]["micro_batch"]
    lines = ["| split | link | server speed | edge ms | uplink ms | server ms | slices/s | latency ms/slice |",
             "|---|---|---|---|---|---|---|---|"]
    whole = {}
    for n, rows in record["boundaries"].items():
        chain = record["summary"].get(f"chain {n}")
        if chain is None:
            continue
        stage_ms = [t / mb for t in chain["stage_ms_per_micro_batch"]]
        whole[n] = sum(stage_ms)
    if not whole:
        return ""
    total = whole[min(whole)]
    lines.append(f"| all on the edge | - | - | {total:.0f} | 0 | 0 | {1e3 / total:.2f} | {total:.0f} |")
    for bw in bandwidths_mbit:
        bytes_per_ms = bw * 1e6 / 8 / 1e3
        for speed in server_speedups:
            up, down = INPUT_BYTES_PER_SLICE / bytes_per_ms, LABEL_BYTES_PER_SLICE / bytes_per_ms
            server = total / speed + down
            lines.append(f"| all on the server (upload slice) | {bw} Mbit/s | {speed}x | 0 | {up:.1f} | {server:.1f} | "
                         f"{1e3 / max(up, server):.2f} | {up + server:.0f} |")
            for n, rows in record["boundaries"].items():
                chain = record["summary"].get(f"chain {n}")
                if chain is None or int(n) < 2:
                    continue
                stage_ms = [t / mb for t in chain["stage_ms_per_micro_batch"]]
                for j in range(int(n) - 1):
                    edge = sum(stage_ms[: j + 1])
                    link = rows[j]["boundary_bytes"] / bytes_per_ms
                    srv = sum(stage_ms[j + 1 :]) / speed + down
                    lines.append(f"| edge: sub-models 0..{j} of {n} | {bw} Mbit/s | {speed}x | {edge:.0f} | "
                                 f"{link:.1f} | {srv:.1f} | {1e3 / max(edge, link, srv):.2f} | "
                                 f"{edge + link + srv:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
