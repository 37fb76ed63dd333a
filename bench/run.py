"""CPU fast-path benchmark (issue 7): network time of every network and variant against nnU-Net's 2D network on the
same slices, end-to-end inference of a SYNTHETIC 512x512x200 CT, peak memory up to 1000 slices, Dice beside each
speed-up. Run it through ``bash bench/run.sh`` (builds the separate benchmark environment ``.venv-bench`` with
nnU-Net's ``dynamic_network_architectures``); results go to ``docs/performance.md`` (between markers) and
``bench/results/performance_<date>.json``. The last line printed is the summary::

    best_end_to_end_s=... wpunet_pruned_vs_nnunet2d=...x pocket_vs_nnunet2d=...x peak_rss_gb=...

Weights are random (latency does not depend on weight values, only on shapes); the Dice columns come from the demo
weights on held-out SYNTHETIC phantoms (``bench/dice_variants.py``). Timings are seconds of wall time on a shared
2-core VM: compare ratios within one run. ``--quick`` is a smoke run of about two minutes.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import load_average, machine, run_child  # noqa: E402
from scripts.common.atomic import atomic_write_text, replace_marked_block  # noqa: E402
from scripts.inference.fast_path import FastPath, choose_fast_path, cpu_supports_bf16, predict_labels, prepare_network  # noqa: E402

#: docs/performance.md keeps one generated block per CPU class measured (issue 17)
MARKERS = {c: (f"<!-- bench_run:{c}:begin -->", f"<!-- bench_run:{c}:end -->") for c in ("avx2", "bf16")}
DOC = REPO / "docs" / "performance.md"
# issue 17: process time (what the user waits for, start to exit) on 2 cores without bf16; ratios end to end
TARGETS = {"best_process_s": 5.0, "pruned_process_s": 10.0, "wpunet_pruned_vs_nnunet2d": 5.0,
           "wpunet_pruned_vs_nnunet2d_levers": 3.0, "peak_rss_gb": 1.0, "peak_rss_1000_gb": 1.2}
AT_MOST = ("best_process_s", "pruned_process_s", "peak_rss_gb", "peak_rss_1000_gb")
NNUNET_FP32 = "nnU-Net 2D PlainConvUNet, fp32 (as nnU-Net runs on a CPU)"
NNUNET_LEVERS = "nnU-Net 2D PlainConvUNet, auto (our levers)"
PRUNED, POCKET = "WP-UNet channel-pruned 0.5, auto", "Pocket U-Net 2D, auto"
LEAN = ", lean (kidney-seg --lean: no torch/MONAI, ONNX Runtime)"
PRUNED_LEAN, POCKET_LEAN, NNUNET_LEAN = (f"WP-UNet channel-pruned 0.5{LEAN}", f"Pocket U-Net 2D{LEAN}",
                                         f"nnU-Net 2D PlainConvUNet{LEAN}")
EMULATE_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# nnU-Net's 2D plan for a 512x512 abdominal CT: 7 stages 32 -> 512, two 3x3 convs a stage, instance norm, leaky ReLU
NNUNET_2D = {"input_channels": 1, "n_stages": 7, "features_per_stage": [32, 64, 128, 256, 512, 512, 512],
             "kernel_sizes": 3, "strides": [1, 2, 2, 2, 2, 2, 2], "n_conv_per_stage": 2, "num_classes": 3,
             "n_conv_per_stage_decoder": 2, "conv_bias": True, "norm_op_kwargs": {"eps": 1e-5, "affine": True},
             "nonlin_kwargs": {"inplace": True}, "deep_supervision": False}
MONAI_UNET = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "channels": [16, 32, 64, 128, 256],
              "strides": [2, 2, 2, 2], "num_res_units": 2}


def nnunet_config() -> dict:
    """nnU-Net's PlainConvUNet as a bundle ``network_def`` (used in-process and by the end-to-end child)."""
    return {"_target_": "dynamic_network_architectures.architectures.unet.PlainConvUNet", **NNUNET_2D,
            "conv_op": "$torch.nn.Conv2d", "norm_op": "$torch.nn.InstanceNorm2d", "nonlin": "$torch.nn.LeakyReLU"}


# ------------------------------------------------------------------------------------------------- networks
def bundle_network(*overlays: str) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / "configs" / "inference.json"), *(str(REPO / "configs" / o) for o in overlays)])
    return parser.get_parsed_content("network_def")


def build_networks(quick: bool) -> dict[str, dict]:
    """Every network of the table with its slice size, end-to-end config overlays and notes (random weights)."""
    from monai.bundle import ConfigParser
    from monai.networks.nets import UNet

    from scripts.pruning.structured import prune_channels
    from scripts.pruning.unstructured import apply_pruning, make_permanent

    torch.manual_seed(0)
    wp = bundle_network().eval()
    nets = {"WP-UNet (paper, 64-512)": {"net": wp, "overlays": []}}
    unstructured = copy.deepcopy(wp)
    apply_pruning(unstructured, sparsity=0.5)
    make_permanent(unstructured)
    channel = prune_channels(copy.deepcopy(wp), torch.rand(1, 1, 256, 256), ratio=0.5, round_to=8).eval()
    nets["WP-UNet unstructured 50 %"] = {"net": unstructured.eval(), "overlays": []}
    nets["WP-UNet channel-pruned 0.5"] = {"net": channel, "overlays": ["structured.json"]}
    nets["Pocket U-Net 2D"] = {"net": bundle_network("networks/pocket_unet_2d.json").eval(),
                               "overlays": ["networks/pocket_unet_2d.json"]}
    if not quick:
        nets["WP-UNet demo (16-128, 128x128 slices)"] = {"net": bundle_network("demo.json").eval(),
                                                         "overlays": ["demo.json"], "slice": 128}
        nets["SD-UNet"] = {"net": bundle_network("networks/sd_unet.json").eval(), "overlays": []}
        nets["classic U-Net (UNet-P)"] = {"net": bundle_network("networks/classic_unet.json").eval(), "overlays": []}
        nets["MONAI UNet (16-256, 2 res units)"] = {"net": UNet(**MONAI_UNET).eval(), "overlays": []}
    parser = ConfigParser({"net": nnunet_config()})
    nets["nnU-Net 2D PlainConvUNet"] = {"net": parser.get_parsed_content("net").eval(), "overlays": [],
                                        "reference": True}
    from scripts.networks.complexity import count_macs

    for spec in nets.values():
        spec["params"] = sum(p.numel() for p in spec["net"].parameters())
        size = spec.get("slice", 256)
        spec["macs"] = count_macs(spec["net"], (1, 1, size, size))
    return nets


def variant_paths(net: torch.nn.Module, quick: bool) -> dict[str, FastPath]:
    auto = choose_fast_path(net, "cpu")
    paths = {"fp32": FastPath(), "channels_last": FastPath(channels_last=True)}
    if cpu_supports_bf16():
        paths["bf16"] = FastPath("bf16")
        paths["bf16 + channels_last"] = FastPath("bf16", True)
    paths["auto + TorchScript freeze"] = FastPath(auto.precision, auto.channels_last, auto.fold_batchnorm,
                                                  "torchscript")
    paths["auto"] = auto
    if quick:
        paths = {k: paths[k] for k in ("fp32", "auto")}
    return paths


def time_network(module, slices: torch.Tensor, path: FastPath, repeats: int) -> float:
    """Median over ``repeats`` of the seconds per slice for all ``slices`` at the path's batch size (1 warm-up)."""
    batch = path.sw_batch_size
    predict_labels(module, slices[:batch], path)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(slices), batch):
            predict_labels(module, slices[i:i + batch], path)
        runs.append((time.perf_counter() - start) / len(slices))
    return statistics.median(runs)


def network_table(nets: dict, slices: dict[int, torch.Tensor], repeats: int, quick: bool, workdir: Path) -> dict:
    from scripts.inference.onnx_backend import OnnxRuntimeNetwork, export_onnx

    table = {}
    for name, spec in nets.items():
        size = spec.get("slice", 256)
        x = slices[size]
        row = {}
        for variant, path in variant_paths(spec["net"], quick).items():
            module = prepare_network(spec["net"], "cpu", path, example_shape=(1, 1, size, size))
            row[variant] = time_network(module, x, path, repeats)
            print(f"  {name:40s} {variant:28s} {row[variant] * 1000:9.1f} ms/slice", flush=True)
        if not quick:
            onnx = export_onnx(copy.deepcopy(spec["net"]), workdir / f"{len(table)}.onnx", slice_size=(size, size))
            row["ONNX Runtime (fp32)"] = time_network(OnnxRuntimeNetwork(onnx), x, FastPath(), repeats)
            print(f"  {name:40s} {'ONNX Runtime (fp32)':28s} {row['ONNX Runtime (fp32)'] * 1000:9.1f} ms/slice",
                  flush=True)
        table[name] = {"params": spec["params"], "macs": spec.get("macs"), "slice": size, "seconds_per_slice": row,
                       "auto": choose_fast_path(spec["net"], "cpu").describe()}
    return table


def lever_extras(nets: dict, slices: dict[int, torch.Tensor], repeats: int) -> dict:
    """The auto path at 1 thread vs all cores and at slice batch 1 vs 4, for the two fastest networks."""
    out = {}
    cores = os.cpu_count() or 1
    for name in ("WP-UNet channel-pruned 0.5", "Pocket U-Net 2D"):
        net, x = nets[name]["net"], slices[256]
        auto = choose_fast_path(net, "cpu")
        module = prepare_network(net, "cpu", auto)
        row = {}
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            row[f"{threads} thread(s), batch {auto.sw_batch_size}"] = time_network(module, x, auto, repeats)
        torch.set_num_threads(cores)
        batch4 = FastPath(auto.precision, auto.channels_last, auto.fold_batchnorm, auto.compile, 4)
        x4 = x.repeat(max(1, -(-4 // len(x))), 1, 1, 1)[:max(4, len(x))]
        row[f"{cores} thread(s), batch 4"] = time_network(module, x4, batch4, repeats)
        out[name] = row
        print(f"  {name}: " + ", ".join(f"{k} {v * 1000:.1f} ms/slice" for k, v in row.items()), flush=True)
    return out


def prefetch_runs(nets: dict, ct: Path, workdir: Path, cases: int = 3) -> dict:
    """A folder of ``cases`` copies of the CT, Pocket U-Net auto, with and without reading ahead."""
    import shutil

    folder = workdir / "many"
    for i in range(cases):
        (folder / f"case_{i:05d}").mkdir(parents=True, exist_ok=True)
        shutil.copy(ct, folder / f"case_{i:05d}" / "imaging.nii.gz")
    pocket = workdir / "weights" / "pocket.pt"
    configs = ["configs/inference.json", "configs/networks/pocket_unet_2d.json"]
    return {f"{cases} cases, prefetch {flag}": end_to_end(f"Pocket U-Net 2D, auto, {cases} cases, prefetch {flag}",
                                                          folder, configs, {"model_path": str(pocket),
                                                                            "prefetch": flag}, workdir)
            for flag in (True, False)}


# ------------------------------------------------------------------------------------------------- inputs
def build_ct(workdir: Path, slices: int, storage: str = "kits", size: int = 512, seed: int = 0) -> Path:
    """A SYNTHETIC phantom CT of exactly ``size`` x ``size`` x ``slices`` (the slice thickness that gives about
    ``slices`` slices, then cropped or padded at the head end), written like KiTS or RAS-stored."""
    from scripts.synthetic.phantoms import generate_phantom, write_kits_case

    # the z extent (mm) does not depend on in-plane size or thickness: measure it at 16x16 pixels and 1 mm slices
    extent_mm = generate_phantom(seed, in_plane_size=16, slice_thickness=1.0)[0].shape[2]
    image, label, affine = generate_phantom(seed, in_plane_size=size, slice_thickness=float(extent_mm) / slices)
    if image.shape[2] > slices:  # crop at the head end: the affine's origin (first slice) is unchanged
        image, label = image[:, :, :slices], label[:, :, :slices]
    elif image.shape[2] < slices:  # pad at the head end by repeating the last slice
        pad = ((0, 0), (0, 0), (0, slices - image.shape[2]))
        image, label = np.pad(image, pad, mode="edge"), np.pad(label, pad, mode="edge")
    case = write_kits_case(workdir / f"ct{slices}_{storage}" / "data", 0, image, label, affine, storage=storage)
    return Path(case) / "imaging.nii.gz"


def table_slices(ct: Path, count: int) -> dict[int, torch.Tensor]:
    """``count`` axial slices spread over the CT, preprocessed exactly as inference does, at 256 and 128 pixels."""
    from scripts.data.ct_reader import read_ct
    from scripts.inference.streaming import StreamingSegmenter, ras_orientation
    import nibabel as nib

    loaded = read_ct(ct, stream=False)  # the whole volume: slices are picked across it
    ras = nib.orientations.apply_orientation(loaded.voxels, ras_orientation(loaded.affine))
    index = np.linspace(0, ras.shape[2] - 1, count + 2).round().astype(int)[1:-1]
    block = ras[:, :, index]
    out = {}
    for size in (256, 128):
        segmenter = StreamingSegmenter(torch.nn.Identity(), slice_size=(size, size))
        out[size] = torch.from_numpy(segmenter._preprocess(loaded, block))
    return out


# ------------------------------------------------------------------------------------------------- end to end
def save_weights(net: torch.nn.Module, path: Path) -> Path:
    torch.save({"model": net.state_dict()}, path)
    return path


def end_to_end(name: str, ct: Path, configs: list[str], overrides: dict, workdir: Path, lean: bool = False) -> dict:
    out = workdir / "e2e" / name.replace(" ", "_").replace("/", "_").replace("(", "").replace(")", "")
    timings = out / "timings.json"
    spec = {"config_file": configs, "lean": lean,
            "overrides": {"input_path": str(ct), "output_dir": str(out / "seg"), "timings_path": str(timings),
                          **overrides}}
    child = run_child([sys.executable, str(REPO / "bench" / "e2e_child.py"), json.dumps(spec)],
                      env={**os.environ, "PYTHONPATH": str(REPO)})
    line = [ln for ln in child.output.splitlines() if ln.startswith("E2E_RESULT ")]
    if not line:
        raise RuntimeError(f"end-to-end run {name} printed no result:\n{child.output[-3000:]}")
    result = json.loads(line[-1].split(" ", 1)[1])
    result["stages"] = json.loads(timings.read_text())[0] if timings.is_file() else None
    stage = result["stages"] or {}
    print(f"  {name:55s} run {result['run_s']:6.2f} s (process {result['process_s']:6.2f} s), peak RSS "
          f"{result['peak_rss_mb']:7.1f} MB, network {stage.get('network', float('nan')):6.2f} s", flush=True)
    return result


def e2e_runs(nets: dict, ct: Path, workdir: Path, quick: bool) -> dict:
    weights = workdir / "weights"
    weights.mkdir(exist_ok=True)
    fp32 = {"precision": "fp32", "channels_last": False, "fold_batchnorm": False, "compile": "none",
            "skip_empty_slices": False, "prefetch": False}
    pocket = save_weights(nets["Pocket U-Net 2D"]["net"], weights / "pocket.pt")
    channel = save_weights(nets["WP-UNet channel-pruned 0.5"]["net"], weights / "channel.pt")
    nnunet = save_weights(nets["nnU-Net 2D PlainConvUNet"]["net"], weights / "nnunet.pt")
    runs = {
        "Pocket U-Net 2D, auto": (["configs/inference.json", "configs/networks/pocket_unet_2d.json"],
                                  {"model_path": str(pocket)}),
        "WP-UNet channel-pruned 0.5, auto": (["configs/inference.json", "configs/structured.json"],
                                             {"model_path": str(channel)}),
        NNUNET_FP32: (["configs/inference.json"], {"model_path": str(nnunet), "network_def": nnunet_config(), **fp32}),
        NNUNET_LEVERS: (["configs/inference.json"], {"model_path": str(nnunet), "network_def": nnunet_config()}),
    }
    if not quick:
        wp = save_weights(nets["WP-UNet (paper, 64-512)"]["net"], weights / "wp.pt")
        demo = save_weights(nets["WP-UNet demo (16-128, 128x128 slices)"]["net"], weights / "demo.pt")
        runs.update({
            "Pocket U-Net 2D, fp32 reference path": (runs["Pocket U-Net 2D, auto"][0],
                                                     {"model_path": str(pocket), **fp32}),
            "Pocket U-Net 2D, MONAI pipeline (streaming False)": (
                runs["Pocket U-Net 2D, auto"][0], {"model_path": str(pocket), "streaming": False, "num_workers": 0}),
            "WP-UNet demo (128x128), auto": (["configs/inference.json", "configs/demo.json"],
                                             {"model_path": str(demo)}),
            "WP-UNet paper (dense), auto": (["configs/inference.json"], {"model_path": str(wp)}),
        })
    results = {name: end_to_end(name, ct, configs, overrides, workdir) for name, (configs, overrides) in runs.items()}
    nnunet_overlay = workdir / "nnunet_overlay.json"
    nnunet_overlay.write_text(json.dumps({"network_def": nnunet_config()}))
    lean_runs = {POCKET_LEAN: (runs[POCKET][0], pocket), PRUNED_LEAN: (runs[PRUNED][0], channel),
                 NNUNET_LEAN: (["configs/inference.json", str(nnunet_overlay)], nnunet)}
    for name, (configs, weights_file) in lean_runs.items():
        results[name] = lean_end_to_end(name, ct, configs, weights_file, workdir)
    return results


def lean_end_to_end(name: str, ct: Path, configs: list[str], weights_file: Path, workdir: Path) -> dict:
    """``kidney-seg --lean``'s path end to end (issue 17: no torch or MONAI in the process); its ONNX export is made
    here first, as a user's first ``--lean`` run makes it once, and is not timed."""
    from scripts.cli.lean import lean_predictor

    lean_predictor([REPO / c for c in configs], weights_file)
    return end_to_end(name, ct, configs, {"model_path": str(weights_file)}, workdir, lean=True)


def memory_vs_slices(workdir: Path, sizes: list[int], storages: list[str]) -> dict:
    """Pocket U-Net 2D (auto) end to end at each size, for each storage order of the same SYNTHETIC CT."""
    import shutil

    pocket = workdir / "weights" / "pocket.pt"
    out = {}
    for storage in storages:
        for slices in sizes:
            ct = build_ct(workdir, slices, storage)
            out[f"{storage}/{slices}"] = end_to_end(
                f"Pocket U-Net 2D, auto, {slices} slices, {storage}", ct,
                ["configs/inference.json", "configs/networks/pocket_unet_2d.json"],
                {"model_path": str(pocket), "preview": False}, workdir)
            out[f"{storage}/{slices}"].update(storage=storage, slices=slices)
            shutil.rmtree(ct.parent.parent, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------------------- report
def avx2_emulated() -> bool:
    """Whether this process runs under :data:`EMULATE_AVX2` (then torch itself reports no bf16 support)."""
    return all(os.environ.get(k, "").lower() == v.lower() for k, v in EMULATE_AVX2.items())


def cpu_class(machine_info: dict) -> str:
    """``bf16`` (AVX-512 BF16/AMX used) or ``avx2`` (no bf16; native, or emulated with :data:`EMULATE_AVX2`)."""
    return "avx2" if avx2_emulated() or not machine_info.get("bf16_native") else "bf16"


def cpu_class_label(machine_info: dict) -> str:
    if cpu_class(machine_info) == "bf16":
        return "bf16 class (AVX-512 BF16 / AMX, native)"
    if avx2_emulated():  # checked first: under emulation torch reports no bf16, so machine_info cannot tell
        return ("AVX2 class, EMULATED on a bf16 CPU (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2; torch and "
                "oneDNN only: ONNX Runtime's own kernels, in the `lean` rows and the ONNX Runtime column, still use "
                "AVX-512)")
    return "AVX2 class (no AVX-512, no bf16; native)"


def results_stem(machine_info: dict) -> str:
    """``avx2``, ``avx2_emulated`` or ``bf16``: the raw-numbers file of an emulated run never replaces a native one."""
    return cpu_class(machine_info) + ("_emulated" if avx2_emulated() else "")


def summary(table: dict, e2e: dict, memory: dict) -> dict:
    """The headline: process times (start to exit) and end-to-end ratios against nnU-Net's 2D network, same run."""
    bundle_runs = {k: v for k, v in e2e.items() if "nnU-Net" not in k and "MONAI pipeline" not in k}
    best_name = min(bundle_runs, key=lambda k: bundle_runs[k]["process_s"])
    def fastest(*names: str) -> float:  # the faster of a network's paths measured (auto, and --lean when run)
        return min(e2e[n]["process_s"] for n in names if n in e2e)

    nn_fp32, nn_levers = e2e[NNUNET_FP32]["process_s"], fastest(NNUNET_LEVERS, NNUNET_LEAN)
    pruned, pocket = fastest(PRUNED, PRUNED_LEAN), fastest(POCKET, POCKET_LEAN)
    nn_table = table["nnU-Net 2D PlainConvUNet"]["seconds_per_slice"]["fp32"]
    at_1000 = [r["peak_rss_mb"] for r in memory.values() if r["slices"] >= 1000]
    return {"best_process_s": bundle_runs[best_name]["process_s"], "best_process_run": best_name,
            "pruned_process_s": pruned,
            "wpunet_pruned_vs_nnunet2d": nn_fp32 / pruned, "pocket_vs_nnunet2d": nn_fp32 / pocket,
            "wpunet_pruned_vs_nnunet2d_levers": nn_levers / pruned, "pocket_vs_nnunet2d_levers": nn_levers / pocket,
            "wpunet_pruned_vs_nnunet2d_network": nn_table / table["WP-UNet channel-pruned 0.5"]["seconds_per_slice"]["auto"],
            "peak_rss_gb": max(r["peak_rss_mb"] for r in bundle_runs.values()) / 1024,
            "peak_rss_1000_gb": max(at_1000) / 1024 if at_1000 else None}


def summary_line(s: dict) -> str:
    rss_1000 = "n/a" if s.get("peak_rss_1000_gb") is None else f"{s['peak_rss_1000_gb']:.2f}"
    return (f"best_process_s={s['best_process_s']:.2f} pruned_process_s={s['pruned_process_s']:.2f} "
            f"wpunet_pruned_vs_nnunet2d={s['wpunet_pruned_vs_nnunet2d']:.1f}x "
            f"pocket_vs_nnunet2d={s['pocket_vs_nnunet2d']:.1f}x "
            f"wpunet_pruned_vs_nnunet2d_levers={s['wpunet_pruned_vs_nnunet2d_levers']:.1f}x "
            f"pocket_vs_nnunet2d_levers={s['pocket_vs_nnunet2d_levers']:.1f}x "
            f"peak_rss_gb={s['peak_rss_gb']:.2f} peak_rss_1000_gb={rss_1000}")


def _fmt_ms(v) -> str:
    return "" if v is None else f"{v * 1000:.1f}"


def render(result: dict) -> str:
    m, s, table = result["machine"], result["summary"], result["network_table"]
    nn_fp32 = table["nnU-Net 2D PlainConvUNet"]["seconds_per_slice"]["fp32"]
    nn_best = min(table["nnU-Net 2D PlainConvUNet"]["seconds_per_slice"].values())
    variants = list(dict.fromkeys(v for row in table.values() for v in row["seconds_per_slice"]))
    lines = [f"## Benchmark run: {cpu_class_label(m)}\n\nGenerated by `bash bench/run.sh` (`bench/run.py`) on "
             f"{result['date']}; raw numbers in `{result['json']}`. **SYNTHETIC input** (a `scripts/synthetic/phantoms.py` "
             "phantom, 512x512x200, int16, stored like KiTS), **random weights** for every timing (latency depends on "
             "shapes, not weight values). Machine: " + f"{m['cpu']}, {m['cores']} cores, SIMD {', '.join(m['simd'])}; "
             f"torch {m['torch']} ({m['threads']} threads), MONAI {m['monai']}, commit `{m['commit']}`. Load average "
             f"before/after: {result['load_before']} / {result['load_after']} (the machine is a shared VM: compare "
             "ratios within this run).", "",
             "### Summary", "", "```", summary_line(s), "```", "",
             "| target (issue 17) | measured | aim | met |", "|---|---:|---:|---|"]
    for key, aim in TARGETS.items():
        value = s.get(key)
        if value is None:
            lines.append(f"| `{key}` | not measured | {'<=' if key in AT_MOST else '>='} {aim} | - |")
            continue
        met = value <= aim if key in AT_MOST else value >= aim
        lines.append(f"| `{key}` | {value:.2f} | {'<=' if key in AT_MOST else '>='} {aim} | {'yes' if met else '**no**'} |")
    lines += ["", f"`*_process_s` is what the user waits for: the whole process, start to exit, on the 200-slice CT "
              f"(fastest bundle run: {s['best_process_run']}); `pruned_process_s` and the ratios take the faster of a "
              "network's two paths: `python -m monai.bundle run inferring` (auto) and `kidney-seg --lean` (no torch or "
              "MONAI in the process; ONNX Runtime on its cached export, made once before the timed run). Ratios are end "
              "to end, process time of nnU-Net's 2D network over ours in the same run: `*_vs_nnunet2d` with nnU-Net as "
              "it runs on a CPU (fp32, its predictor uses autocast only on CUDA), `*_levers` with nnU-Net on the faster "
              "of our two paths (same reading, preprocessing, memory format and batch). The network-only ratio of the per-slice "
              f"table (pruned WP-UNet vs nnU-Net fp32) is {s['wpunet_pruned_vs_nnunet2d_network']:.1f}x; against "
              f"nnU-Net's best variant ({nn_best * 1000:.1f} ms/slice) the per-slice ratios are "
              f"{nn_best / table['WP-UNet channel-pruned 0.5']['seconds_per_slice']['auto']:.1f}x (channel-pruned "
              f"WP-UNet) and {nn_best / table['Pocket U-Net 2D']['seconds_per_slice']['auto']:.1f}x (Pocket U-Net).",
              "", "### Network time per slice (ms), same slices for every network",
              "", f"{result['table_slices']} axial slices of the CT, preprocessed as inference does (HU window, area "
              "resize), batch 1, median of "
              f"{result['repeats']} passes; `auto` = what `configs/inference.json` picks here. Ratio = nnU-Net fp32 / "
              "this network's auto.", "",
              "| network | parameters | GMACs/slice | slice | " + " | ".join(variants) + " | auto path | vs nnU-Net fp32 |",
              "|---|---:|---:|---:|" + "---:|" * len(variants) + "---|---:|"]
    for name, row in table.items():
        t = row["seconds_per_slice"]
        macs = f"{row['macs'] / 1e9:.2f}" if row.get("macs") else "-"
        lines.append(f"| {name} | {row['params']:,} | {macs} | {row['slice']} | "
                     + " | ".join(_fmt_ms(t.get(v)) for v in variants)
                     + f" | {row['auto']} | {nn_fp32 / t['auto']:.1f}x |")
    if result.get("lever_extras"):
        lines += ["", "### Threads and slice batch (auto path, ms per slice)", ""]
        keys = list(dict.fromkeys(k for row in result["lever_extras"].values() for k in row))
        lines += ["| network | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        for name, row in result["lever_extras"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt_ms(row.get(k)) for k in keys) + " |")
    lines += ["", "### End to end (read -> preprocess -> network -> LCC -> back to the input grid -> write)", "",
              "Each run is `python -m monai.bundle`'s `ConfigWorkflow` (\"inferring\") in its own process; `run` = "
              "`workflow.run()` (network set-up, read, inference, write of NIfTI + volumes JSON + preview PNG), "
              "`process` adds Python/torch/MONAI imports and config parsing. The `lean` rows run `kidney-seg --lean`'s "
              "path instead (`scripts.cli.lean.run_lean`: no torch or MONAI import, ONNX Runtime on the cached export; "
              "its `run` includes reading the configs and loading the session). Stages from `--timings_path`. Peak RSS "
              "= the process's own `VmHWM`.", "",
              "| run | run (s) | process (s) | read | preprocess | network | LCC | resample | write | peak RSS (MB) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["end_to_end"].items():
        st = r.get("stages") or {}
        cells = " | ".join(f"{st[k]:.2f}" if k in st else "-" for k in
                           ("read", "preprocess", "network", "lcc", "resample", "write"))
        lines.append(f"| {name} | {r['run_s']:.2f} | {r['process_s']:.2f} | {cells} | {r['peak_rss_mb']:.0f} |")
    if result.get("prefetch"):
        lines += ["", "### Reading the next case ahead (one folder of copies of the CT, Pocket U-Net 2D, auto)", "",
                  "| run | run (s) | peak RSS (MB) |", "|---|---:|---:|"]
        for name, r in result["prefetch"].items():
            lines.append(f"| {name} | {r['run_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    if result["memory"]:
        lines += ["", "### Peak RSS vs slices (Pocket U-Net 2D, auto, 512x512, no preview)", "",
                  "`kits`: stored like KiTS (slice axis first, the fastest on disk: read in windows of axial slices of at most 256 MB, one pass over the file each; int16); "
                  "`ras`: axial axis last on disk (most DICOM conversions): read slab by slab.", "",
                  "| storage | slices | peak RSS (MB) | run (s) |", "|---|---:|---:|---:|"]
        for r in result["memory"].values():
            lines.append(f"| {r['storage']} | {r['slices']} | {r['peak_rss_mb']:.0f} | {r['run_s']:.2f} |")
        for storage in dict.fromkeys(r["storage"] for r in result["memory"].values()):
            rows = sorted((r for r in result["memory"].values() if r["storage"] == storage), key=lambda r: r["slices"])
            if len(rows) > 1:
                slope = (rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]) / (rows[-1]["slices"] - rows[0]["slices"])
                lines.append(f"\nGrowth ({storage}): {slope:.2f} MB per slice between {rows[0]['slices']} and "
                             f"{rows[-1]['slices']} slices ({slope / 0.25:.1f}x the uint8 output's 0.25 MB per slice).")
    dice = result.get("dice")
    lines += ["", "### Dice beside each speed-up (demo weights, held-out SYNTHETIC phantoms)", ""]
    if dice:
        from bench.dice_variants import markdown

        test_dir = Path(dice["test_dir"])
        test_dir = test_dir.relative_to(REPO) if test_dir.is_relative_to(REPO) else test_dir
        lines += [f"{dice['cases']} held-out phantoms of the demo (`{test_dir}`), DEMO weights (WP-UNet "
                  "16-128 at 128x128, trained briefly by `bash demo.sh`); differences are paired, in Dice points, "
                  "mean ± standard error over cases; tumour over the cases with a tumour.", "", markdown(dice)]
    else:
        lines.append("Not measured in this run (needs `models/model.pt` and `demo_output/data/test` from `bash demo.sh`).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 40-slice CT, few networks and variants")
    parser.add_argument("--table-slices", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--slices", type=int, default=200, help="slices of the end-to-end CT (512x512)")
    parser.add_argument("--memory-slices", type=int, nargs="*", default=[200, 500, 1000])
    parser.add_argument("--memory-storage", nargs="*", default=["kits", "ras"], choices=["kits", "ras"])
    parser.add_argument("--channel-model", type=Path, default=REPO / "models" / "derived" / "model_structured.pt",
                        help="channel-pruned DEMO model for the Dice table, if present")
    parser.add_argument("--no-dice", action="store_true")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="measure the AVX2 class on a bf16 CPU: rerun with ATEN_CPU_CAPABILITY=avx2 "
                             "ONEDNN_MAX_CPU_ISA=AVX2 (inherited by every child process)")
    args = parser.parse_args()
    if args.emulate_avx2 and any(os.environ.get(k) != v for k, v in EMULATE_AVX2.items()):
        # both are read when torch and oneDNN start: set them, then start this script again
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **EMULATE_AVX2})
    if args.quick:
        args.slices, args.table_slices, args.repeats, args.memory_slices = 40, 2, 1, [40]
    torch.set_num_threads(os.cpu_count() or 1)
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "load_before": load_average(), "quick": args.quick,
              "table_slices": args.table_slices, "repeats": args.repeats}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_run_") as tmp:
        workdir = Path(tmp)
        ct = build_ct(workdir, args.slices)
        print(f"SYNTHETIC CT {ct} ({args.slices} slices) ready after {time.perf_counter() - t0:.0f} s", flush=True)
        nets = build_networks(args.quick)
        print("network time per slice:", flush=True)
        result["network_table"] = network_table(nets, table_slices(ct, args.table_slices), args.repeats,
                                                args.quick, workdir)
        if not args.quick:
            print("threads and batch:", flush=True)
            result["lever_extras"] = lever_extras(nets, table_slices(ct, args.table_slices), args.repeats)
        print("end to end:", flush=True)
        result["end_to_end"] = e2e_runs(nets, ct, workdir, args.quick)
        if not args.quick:
            result["prefetch"] = prefetch_runs(nets, ct, workdir)
        print("peak RSS vs slices:", flush=True)
        result["memory"] = (memory_vs_slices(workdir, args.memory_slices, args.memory_storage)
                            if args.memory_slices else {})
    if not args.no_dice and (REPO / "models" / "model.pt").is_file() and (REPO / "demo_output/data/test").is_dir():
        from bench.dice_variants import measure

        print("Dice per variant (demo weights, held-out synthetic phantoms):", flush=True)
        result["dice"] = measure(REPO / "demo_output" / "data" / "test", REPO / "models" / "model.pt",
                                 REPO / "models" / "model_pruned.pt", args.channel_model,
                                 max_cases=2 if args.quick else None)
    result["load_after"] = load_average()
    result["summary"] = summary(result["network_table"], result["end_to_end"], result["memory"])
    result["wall_s"] = time.perf_counter() - t0
    stamp = dt.date.today().strftime("%Y%m%d") + ("_quick" if args.quick else "")
    result["cpu_class"] = cpu_class(result["machine"])
    result["json"] = f"bench/results/performance_{stamp}_{results_stem(result['machine'])}.json"
    print(render(result))
    if not args.no_docs:
        atomic_write_text(REPO / result["json"], json.dumps(result, indent=2, default=str))
        if not args.quick:
            replace_marked_block(DOC, *MARKERS[cpu_class(result["machine"])], render(result))
    print(f"total {result['wall_s']:.0f} s")
    print(summary_line(result["summary"]))


if __name__ == "__main__":
    main()
