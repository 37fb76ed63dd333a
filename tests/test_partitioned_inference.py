"""Partitioned inference (issue 5 part B): TorchScript partitions, one process across devices, and a pipeline of
2-3 CPU processes on 127.0.0.1 (gloo) that must give the monolithic network's logits and segmentation."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import BUNDLE_ROOT, TINY_OVERRIDES
from scripts.common.errors import InputError
from scripts.networks import WPUNet
from scripts.partitioning import (ChainedPartitions, PipelineDriver, StageServer, boundary_table, export_partitions,
                                  load_partition, partition_path, place_submodels, read_partition_meta,
                                  resolve_devices, split_network)
from scripts.partitioning.p2p import DATA, STOP, decode_header, encode_header
from scripts.partitioning.torchscript_io import partitions_up_to_date

SHAPE = (1, 1, 32, 32)


def _tiny_network(seed: int = 0) -> WPUNet:
    torch.manual_seed(seed)
    return WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)).eval()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_resolve_devices_validates_strings():
    assert resolve_devices(["cpu", "cpu"]) == [torch.device("cpu")] * 2
    if not torch.cuda.is_available():
        assert resolve_devices(None) == [torch.device("cpu")]
    for bad, reason in [("cuda:99", "not available"), ("tpu", "not a device"), ("meta", "only 'cpu'"),
                        ([], "empty")]:
        with pytest.raises(InputError, match=reason):
            resolve_devices(bad)


def test_place_submodels_round_robin():
    subs = [torch.nn.Linear(2, 2) for _ in range(5)]
    placed = place_submodels(subs, [torch.device("cpu"), torch.device("cpu")])
    assert all(next(s.parameters()).device.type == "cpu" for s in placed) and len(placed) == 5


def test_header_roundtrip_and_limits():
    tensors = [torch.zeros(3, 4, 8, 8), torch.zeros(2, dtype=torch.float16), torch.zeros(1, 2, 3, 4, 5)]
    kind, seq, stage, specs = decode_header(encode_header(DATA, 41, 2, tensors))
    assert (kind, seq, stage) == (DATA, 41, 2)
    assert specs == [(t.dtype, tuple(t.shape)) for t in tensors]
    assert decode_header(encode_header(STOP, 0, 0))[3] == []
    with pytest.raises(ValueError, match="at most 16 tensors"):
        encode_header(DATA, 0, 0, [torch.zeros(1)] * 17)


@pytest.mark.parametrize("num_partitions", [1, 2, 3])
def test_torchscript_partitions_equal_monolithic(tmp_path, num_partitions):
    net = _tiny_network()
    subs = split_network(net, num_partitions, example_shape=SHAPE)
    paths = export_partitions(subs, tmp_path, "model", SHAPE, fingerprint="abc")
    assert [p.name for p in paths] == [f"model_part{k + 1}of{num_partitions}.ts" for k in range(num_partitions)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temporary files left
    stages, metas = zip(*(load_partition(p) for p in paths))
    for k, (meta, sub) in enumerate(zip(metas, subs)):
        assert (meta["index"], meta["count"]) == (k, num_partitions)
        assert meta["input_names"] == sub.input_names and meta["output_names"] == sub.output_names
        assert meta["compiled_with"] == "script"
    x = torch.rand(5, 1, 32, 32)  # another batch size than the export example
    with torch.no_grad():
        expected = net(x)
        chained = ChainedPartitions(place_submodels(list(stages), resolve_devices(["cpu", "cpu"])))(x)
    torch.testing.assert_close(chained, expected, rtol=0, atol=1e-5)
    assert partitions_up_to_date(tmp_path, "model", num_partitions, "abc")
    assert not partitions_up_to_date(tmp_path, "model", num_partitions, "other weights")
    assert not partitions_up_to_date(tmp_path, "model", num_partitions + 1, "abc")


def test_unreadable_partition_names_the_file(tmp_path):
    bad = tmp_path / "model_part1of2.ts"
    bad.write_text("not a model")
    with pytest.raises(InputError, match="model_part1of2.ts: not a readable TorchScript partition"):
        read_partition_meta(bad)


def test_3d_network_is_refused_with_a_clear_error(tmp_path):
    from scripts.networks import PocketUNet
    from scripts.partitioning import partitioned_network

    net = PocketUNet(spatial_dims=3, in_channels=1, out_channels=3, features=4, depth=2)
    with pytest.raises(InputError, match="partitioned inference runs 2D networks.*PocketUNet is 3D"):
        partitioned_network(net, tmp_path / "model.pt", 2, tmp_path, "model", [128, 128, 32])


# --- a pipeline of processes (torch.multiprocessing, gloo on 127.0.0.1) -------------------------------------------

class _FailsOnNaN(torch.nn.Module):
    """A stage that raises on a micro-batch containing NaN (the simulated failure) and runs ``stage`` otherwise."""

    def __init__(self, stage):
        super().__init__()
        self.stage = stage

    def forward(self, *tensors):
        if torch.isnan(tensors[0]).any():
            raise RuntimeError("simulated stage failure")
        return self.stage(*tensors)


def _pipeline_worker(rank, world, port, parts_dir, out_file, batches, micro_batch_size, fail_stage, device="cpu"):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=30))
    try:
        stage, meta = load_partition(partition_path(parts_dir, "model", rank, world), map_location=device)
        if rank == fail_stage:
            stage = _FailsOnNaN(stage)
        if rank > 0:
            StageServer(stage, meta, device=device).serve()
            return
        driver = PipelineDriver(stage, meta, device=device, micro_batch_size=micro_batch_size)
        outputs = []
        for x in batches:
            try:
                with torch.no_grad():
                    outputs.append(driver(x).cpu())
            except RuntimeError as exc:
                outputs.append(str(exc))
        stats = driver.stop()
        torch.save({"outputs": outputs, "stats": stats}, out_file)
    finally:
        dist.destroy_process_group()


def test_process_pipeline_equals_monolithic_sends_the_boundary_and_reports_failures(tmp_path):
    """3 processes; batches of 7 (micro-batches 2+2+2+1) and 3 slices give the monolithic logits; a batch on which
    stage 1 fails raises on rank 0 with the stage's message, and the next batch still comes out right."""
    world = 3
    torch.manual_seed(1)
    poisoned = torch.rand(3, 1, 32, 32)
    poisoned[2] = float("nan")  # micro-batch 0 (slices 0-1) passes, micro-batch 1 (slice 2) fails in stage 1
    batches = [torch.rand(7, 1, 32, 32), torch.rand(3, 1, 32, 32), poisoned, torch.rand(2, 1, 32, 32)]
    net = _tiny_network()
    subs = split_network(net, world, example_shape=SHAPE)
    export_partitions(subs, tmp_path / "parts", "model", SHAPE)
    out_file = tmp_path / "result.pt"
    start = time.monotonic()
    mp.spawn(_pipeline_worker, nprocs=world, join=True,
             args=(world, _free_port(), str(tmp_path / "parts"), str(out_file), batches, 2, 1))
    assert time.monotonic() - start < 60
    result = torch.load(out_file, weights_only=False)
    outputs = result["outputs"]
    assert "stage 1 on rank 1: RuntimeError: simulated stage failure" in outputs[2]
    with torch.no_grad():
        for index in (0, 1, 3):
            torch.testing.assert_close(outputs[index], net(batches[index]), rtol=0, atol=1e-5)
    stats = result["stats"]
    assert [s["stage"] for s in stats] == list(range(world)) and [s["rank"] for s in stats] == list(range(world))
    # micro-batches per batch: 2+2+2+1, 2+1, 2+1 (the 1 is poisoned), 2; stage 1 fails on the poisoned one
    assert [s["micro_batches"] for s in stats] == [9, 8, 8]
    # what each stage sent is what boundary_table lists for micro-batches of 2 and of 1 slice
    sent_counts = [{2: 6, 1: 3}, {2: 6, 1: 2}, {2: 6, 1: 2}]  # stage 1 sends an error, not data, for the poison
    for k, (s, counts) in enumerate(zip(stats, sent_counts)):
        expected = {}
        for mb, count in counts.items():
            row = boundary_table(subs, (mb, 1, 32, 32))[k]
            assert row["boundary"] == subs[k].output_names
            expected[repr((tuple(row["boundary"]), row["boundary_shapes"]))] = count
        assert s["sent"] == expected
        per_slice = boundary_table(subs, (1, 1, 32, 32))[k]["boundary_bytes"]
        assert s["bytes_sent"] == per_slice * sum(mb * n for mb, n in counts.items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_chain_and_pipeline_equal_monolithic(tmp_path):
    """Sub-models on the GPU(s): in one process (sub-model k on cuda:k % #GPUs), and as 2 processes whose stages run
    on the GPU while gloo carries the boundary through the CPU."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    net = _tiny_network()
    subs = split_network(net, 3, example_shape=SHAPE)
    paths = export_partitions(subs, tmp_path / "parts3", "model", SHAPE)
    devices = resolve_devices(None)
    assert devices[0].type == "cuda"
    stages = [load_partition(p, map_location=devices[k % len(devices)])[0] for k, p in enumerate(paths)]
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        expected = net(x)
        got = ChainedPartitions(stages)(x.to(devices[0]))
    torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=1e-4)
    export_partitions(split_network(net, 2, example_shape=SHAPE), tmp_path / "parts2", "model", SHAPE)
    mp.spawn(_pipeline_worker, nprocs=2, join=True,
             args=(2, _free_port(), str(tmp_path / "parts2"), str(tmp_path / "out.pt"), [x], 2, -1, "cuda:0"))
    outputs = torch.load(tmp_path / "out.pt", weights_only=False)["outputs"]
    torch.testing.assert_close(outputs[0], expected, rtol=0, atol=1e-4)


def _silent_peer_worker(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=2))
    if rank == 1:
        stage = torch.jit.script(torch.nn.Identity())
        try:
            StageServer(stage, {"index": 1, "output_names": ["logits"]}).serve()
        except RuntimeError:  # rank 0 never sends: the wait ends after the timeout instead of hanging
            sys.exit(3)
    else:
        time.sleep(5)


def test_serving_rank_does_not_wait_forever():
    start = time.monotonic()
    with pytest.raises(mp.ProcessExitedException) as info:
        mp.spawn(_silent_peer_worker, nprocs=2, join=True, args=(2, _free_port()))
    assert info.value.exit_code == 3 and time.monotonic() - start < 60


# --- the whole workflow under torchrun -----------------------------------------------------------------------------

CONFIGS = str([str(BUNDLE_ROOT / "configs" / "inference.json"),
               str(BUNDLE_ROOT / "configs" / "inference_partitioned.json")])


@pytest.fixture(scope="module")
def contrast_weights(tmp_path_factory, phantom_dir):
    """Tiny random WP-UNet whose head bias is shifted so that its argmax is not one class everywhere on the phantom
    slices: an all-background segmentation would make "identical labels" a weak check."""
    import nibabel as nib

    image = nib.load(str(sorted(phantom_dir.glob("case_*/imaging.nii.gz"))[0])).get_fdata()
    slices = torch.as_tensor(image, dtype=torch.float32)
    slices = ((slices.clamp(-79, 304) + 79) / 383).reshape(1, 1, *slices.shape)
    slices = torch.nn.functional.interpolate(slices, size=(64, 64, slices.shape[-1]), mode="trilinear")
    slices = slices[0, 0].permute(2, 0, 1)[:, None]
    net = _tiny_network(seed=2)
    with torch.no_grad():
        logits = net(slices)
        net.decoder.head.bias -= logits.transpose(0, 1).reshape(3, -1).quantile(0.7, dim=1)
    path = tmp_path_factory.mktemp("contrast") / "model.pt"
    torch.save({"model": net.state_dict()}, path)
    return path


def _bundle_args(weights, input_path, output_dir):
    args = ["--bundle_root", str(BUNDLE_ROOT), "--model_path", str(weights), "--input_path", str(input_path),
            "--output_dir", str(output_dir), "--preview", "False"]
    for key, value in TINY_OVERRIDES.items():
        args += [f"--{key}", json.dumps(value)]
    return args


def _torchrun(nproc, extra, timeout=120):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(_free_port()), "-m", "monai.bundle", "run", "inferring", "--config_file", CONFIGS, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_three_processes_and_one_process_write_the_monolithic_segmentation(phantom_dir, contrast_weights, tmp_path):
    import nibabel as nib
    import numpy as np

    case = sorted(phantom_dir.glob("case_*"))[0]
    mono = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file",
         str(BUNDLE_ROOT / "configs" / "inference.json"),
         *_bundle_args(contrast_weights, case, tmp_path / "mono"), "--precision", "fp32",
         "--channels_last", "False"],  # the partitioned pipeline runs plain fp32
        cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert mono.returncode == 0, mono.stderr[-3000:]
    parts = tmp_path / "parts"
    result = _torchrun(3, [*_bundle_args(contrast_weights, case, tmp_path / "dist"),
                           "--partitions_dir", str(parts), "--micro_batch_size", "3"])
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    expected = np.asarray(nib.load(str(tmp_path / "mono" / f"{case.name}.nii.gz")).dataobj)
    written = nib.load(str(tmp_path / "dist" / f"{case.name}.nii.gz"))
    assert len(np.unique(expected)) > 1, "the check needs a segmentation with more than one label"
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected)
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == sorted(p.name for p in (tmp_path / "mono").iterdir())
    assert sorted(p.name for p in parts.iterdir()) == [f"model_part{k}of3.ts" for k in (1, 2, 3)]
    assert log.count("wrote ") == 1  # rank 0 alone writes
    for stage in range(3):
        assert f"pipeline stage {stage} (rank {stage})" in log
    # the same overlay without torchrun: one process, 3 sub-models on the listed devices, from the same files
    single = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", CONFIGS,
         *_bundle_args(contrast_weights, case, tmp_path / "single"), "--partitions_dir", str(parts),
         "--num_partitions", "3", "--partition_devices", "['cpu','cpu']"],
        cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-3000:]
    assert "using the TorchScript partitions" in single.stdout + single.stderr  # same weights: not re-exported
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "single" / f"{case.name}.nii.gz")).dataobj),
                                  expected)


@pytest.mark.slow
def test_torchrun_bad_input_stops_every_rank(tmp_path, tiny_weights):
    start = time.monotonic()
    result = _torchrun(2, _bundle_args(tiny_weights, tmp_path / "missing.nii.gz", tmp_path / "out")
                       + ["--partitions_dir", str(tmp_path / "parts")])
    assert result.returncode != 0
    assert "missing.nii.gz: input path does not exist" in result.stderr
    assert time.monotonic() - start < 90
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_torchrun_bad_case_mid_run_stops_the_pipeline_cleanly(tmp_path, phantom_dir, tiny_weights):
    """Rank 0 meets a NaN volume after a good one: the good output is written, rank 0 stops the pipeline (every
    stage reports back) and exits with the one-line error; no serving rank crashes."""
    import nibabel as nib
    import numpy as np

    source = nib.load(str(sorted(phantom_dir.glob("case_*/imaging.nii.gz"))[0]))
    volume = np.asarray(source.dataobj, dtype=np.float32)
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(volume, source.affine), str(tmp_path / "in" / "a_good.nii.gz"))
    volume[0, 0, :3] = np.nan
    nib.save(nib.Nifti1Image(volume, source.affine), str(tmp_path / "in" / "b_nan.nii.gz"))
    result = _torchrun(3, _bundle_args(tiny_weights, tmp_path / "in", tmp_path / "out")
                       + ["--partitions_dir", str(tmp_path / "parts")])
    assert result.returncode != 0
    assert f"error: {tmp_path / 'in' / 'b_nan.nii.gz'}" in result.stderr and "NaN" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_good.nii.gz", "a_good_volumes.json"]
    log = result.stdout + result.stderr
    # the stop message went round and every stage reported (the serving ranks left their loop, none crashed);
    # torchrun then ends them as it ends every worker of a failed job
    for stage in range(3):
        assert f"pipeline stage {stage} (rank {stage})" in log
    assert "[rank1]" not in log and "[rank2]" not in log


def test_overlay_keeps_every_check_of_inference_json():
    base = json.loads((BUNDLE_ROOT / "configs" / "inference.json").read_text())["initialize"]
    overlay = json.loads((BUNDLE_ROOT / "configs" / "inference_partitioned.json").read_text())["initialize"]
    for expression in base:
        assert any(expression[1:] in item for item in overlay), f"{expression} missing from the overlay"
