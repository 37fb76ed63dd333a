#!/usr/bin/env python
"""Inference latency and peak-memory benchmark of the bundle on ONE SYNTHETIC CT volume (CPU).

What it does, in one process and one run (see ``bench/README.md``):

1. builds a SYNTHETIC 512x512x200 int16 CT with :func:`scripts.synthetic.phantoms.generate_phantom` (slice thickness
   chosen so the phantom's z extent gives ~200 slices, then cropped/padded at the top to exactly 200), written
   like KiTS (``case_00000/imaging.nii.gz``, axes I/P/L) in a temporary folder, and RANDOM-INIT weights of the
   network (``{"model": state_dict}``). Latency does not depend on the weights' values (same operations, same
   shapes); only the content of the predicted label map (and so LCC and gzip time a little) does;
2. times the I/O floor (nibabel read of the input alone, MONAI ``LoadImage`` alone, nibabel write of a uint8
   label volume of the same shape with the gzip level nibabel - and so the writer - uses);
3. times every stage by running the components instantiated from ``configs/inference.json`` by
   ``monai.bundle.ConfigParser`` on the loaded data, the way ``SupervisedEvaluator`` chains them:
   read (LoadImaged), preprocess (ValidateCTd .. EnsureTyped), network (SliceInferer), argmax + LCC,
   resample back (Invertd), write (SaveSegmentationd);
4. runs the real workflow end to end, ``ConfigWorkflow(...).run()`` as ``python -m monai.bundle run inferring``
   does, in a child process whose peak RSS is measured (the child's own ``VmHWM``, its DataLoader worker's,
   and the polled RSS/PSS sums of the process tree; not ``ru_maxrss``, which a subprocess inherits from the
   process that launched it);
5. for the default network and for the narrow demo network (``configs/demo.json``), then writes
   ``bench/results/inference_<date>.json`` (raw numbers) and ``docs/benchmark.md`` (tables).

Run from the bundle root::

    .venv/bin/python bench/bench_inference.py                 # full size (512x512x200), both networks
    .venv/bin/python bench/bench_inference.py --slices 40 --skip-default-net --no-docs   # smoke check
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.common.atomic import replace_marked_block  # noqa: E402

CONFIG = REPO / "configs" / "inference.json"
DEMO_CONFIG = REPO / "configs" / "demo.json"
META = REPO / "configs" / "metadata.json"
LOGGING = REPO / "configs" / "logging.conf"
NETWORKS = {"default": [CONFIG], "demo": [CONFIG, DEMO_CONFIG]}
RSS_AIM_MB = 1536.0  # aim: peak RSS <= 1.5 GB for a 512x512x200 volume
REFERENCE_IO_S = {"read": 0.8, "write": 0.4}  # reference I/O on this CPU quoted in the issue
BEGIN, END = "<!-- bench_inference:begin -->", "<!-- bench_inference:end -->"


# ----------------------------------------------------------------------------------------------- helpers
def _now() -> float:
    return time.perf_counter()


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _mb(nbytes: float) -> float:
    return round(nbytes / 2**20, 1)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def _machine() -> dict:
    info = {"cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "python": platform.python_version()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = {}
        for line in out.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        for key in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Hypervisor vendor",
                    "L2 cache", "L3 cache"):
            if key in fields:
                info[key] = fields[key]
        flags = fields.get("Flags", "").split()
        info["simd"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import psutil

        info["memory_total_mb"] = _mb(psutil.virtual_memory().total)
    except ImportError:
        pass
    return info


def _git() -> dict:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "uncommitted_changes_in_configs_or_scripts":
            [line.strip() for line in git("status", "--porcelain", "--", "configs", "scripts").splitlines()]}


ENV_VARS = ("THP_MEM_ALLOC_ENABLE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_")


def _versions() -> dict:
    import monai
    import nibabel
    import numpy
    import torch

    return {"torch": torch.__version__, "monai": monai.__version__, "nibabel": nibabel.__version__,
            "numpy": numpy.__version__, "torch_threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------ synthetic data
def build_inputs(workdir: Path, size: int, slices: int, seed: int, storage: str) -> dict:
    """Write a SYNTHETIC phantom CT (exactly size x size x slices) and return its paths and geometry."""
    import numpy as np

    from scripts.synthetic.phantoms import generate_phantom, write_kits_case

    t0 = _now()
    # The z extent (mm) of a case does not depend on in_plane_size or slice thickness: measure it cheaply
    # at 16x16 pixels and 1 mm slices, then pick the thickness that gives ~`slices` slices at full size.
    extent_mm = generate_phantom(seed, in_plane_size=16, slice_thickness=1.0)[0].shape[2]
    thickness = float(extent_mm) / slices
    image, label, affine = generate_phantom(seed, in_plane_size=size, slice_thickness=thickness)
    nz = image.shape[2]
    if nz > slices:  # crop at the head end: the affine's origin (first slice) is unchanged
        image, label = image[:, :, :slices], label[:, :, :slices]
    elif nz < slices:  # pad at the head end by repeating the last slice
        pad = ((0, 0), (0, 0), (0, slices - nz))
        image, label = np.pad(image, pad, mode="edge"), np.pad(label, pad, mode="edge")
    case_dir = Path(write_kits_case(workdir / "data", 0, image, label, affine, storage=storage))
    info = {
        "synthetic": True,
        "generator": "scripts.synthetic.phantoms.generate_phantom",
        "seed": seed,
        "shape_ras": list(image.shape),
        "spacing_mm": [round(float(affine[0, 0]), 4), round(float(affine[1, 1]), 4), round(thickness, 4)],
        "slices_generated": int(nz),
        "storage": storage,
        "image_path": str(case_dir / "imaging.nii.gz"),
        "label_path": str(case_dir / "segmentation.nii.gz"),
        "case_dir": str(case_dir),
        "image_file_mb": _mb((case_dir / "imaging.nii.gz").stat().st_size),
        "label_foreground_fraction": round(float((label > 0).mean()), 5),
        "build_s": round(_now() - t0, 2),
    }
    return info


def save_random_weights(config_files: list[Path], path: Path, seed: int = 0) -> dict:
    """Random-init weights of the network a config defines, saved as ``{"model": state_dict}``."""
    import torch
    from monai.bundle import ConfigParser

    torch.manual_seed(seed)
    parser = ConfigParser()
    parser.read_config(f=[str(p) for p in config_files])
    parser.update({"device": "$torch.device('cpu')"})
    net = parser.get_parsed_content("network_def")
    torch.save({"model": net.state_dict()}, str(path))
    n_params = sum(p.numel() for p in net.parameters())
    return {"path": str(path), "parameters": n_params, "channels": list(parser["network_def"]["channels"]),
            "slice_size": list(parser["slice_size"])}


# ----------------------------------------------------------------------------------------------- I/O floor
def io_floor(data: dict, workdir: Path, repeats: int) -> dict:
    """Read of the input alone (nibabel, MONAI LoadImage) and write of a uint8 volume of the same shape alone."""
    import nibabel as nib
    import numpy as np
    from monai.transforms import LoadImage
    from nibabel.openers import Opener

    path = data["image_path"]
    label = np.asanyarray(nib.load(data["label_path"]).dataobj)  # the phantom's own label map: realistic content
    affine = nib.load(data["label_path"]).affine
    loader = LoadImage(image_only=True)
    out: dict[str, list[float]] = {"read_nibabel_int16_s": [], "read_monai_loadimage_s": [], "write_uint8_s": []}
    for r in range(repeats):
        t0 = _now()
        arr = np.asanyarray(nib.load(path).dataobj)
        out["read_nibabel_int16_s"].append(_now() - t0)
        del arr
        t0 = _now()
        img = loader(path)
        out["read_monai_loadimage_s"].append(_now() - t0)
        dtype = str(img.dtype)
        del img
        target = workdir / f"floor_write_{r}.nii.gz"
        t0 = _now()
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(target))
        out["write_uint8_s"].append(_now() - t0)
        size = target.stat().st_size
        target.unlink()
    result = {k: _median(v) for k, v in out.items()}
    result.update({"runs": {k: [round(x, 4) for x in v] for k, v in out.items()},
                   "monai_loadimage_dtype": dtype, "gzip_compresslevel": Opener.default_compresslevel,
                   "written_file_mb": _mb(size), "label_shape": list(label.shape)})
    return result


# ------------------------------------------------------------------------------------------- stage timing
def _parser(config_files: list[Path], overrides: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(f=[str(p) for p in config_files])
    parser.read_meta(f=str(META))
    parser.update(overrides)
    return parser


def _gt_prediction(label_path: str, pred, slice_size: list[int]):
    """A 'trained-network-like' prediction: the phantom's ground truth, one-hot, on the network's output grid."""
    import torch
    from monai.transforms import EnsureChannelFirst, LoadImage, Orientation, Resize
    from monai.utils import convert_to_dst_type

    lab = LoadImage(image_only=True)(label_path)
    lab = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(EnsureChannelFirst()(lab))
    lab = Resize(spatial_size=list(slice_size) + [-1], mode="nearest")(lab)
    lab = torch.as_tensor(lab).long().clamp_(0, pred.shape[0] - 1)[0]
    onehot = torch.nn.functional.one_hot(lab, pred.shape[0]).permute(3, 0, 1, 2).float()
    if tuple(onehot.shape) != tuple(pred.shape):
        raise RuntimeError(f"ground-truth prediction shape {tuple(onehot.shape)} != network output {tuple(pred.shape)}")
    return convert_to_dst_type(onehot, dst=pred)[0]


def time_stages(config_files: list[Path], overrides: dict, weights: str, label_path: str, repeats: int,
                gt_post: bool) -> dict:
    """Per-stage times from the parsed config components, chained like ``SupervisedEvaluator`` does."""
    import numpy as np
    import torch
    from monai.data import list_data_collate
    from monai.transforms import Decollated
    from monai.utils import set_determinism
    from scipy import ndimage

    parser = _parser(config_files, overrides)
    set_determinism(seed=0)
    device = parser.get_parsed_content("device")
    pre = parser.get_parsed_content("preprocessing")
    post = parser.get_parsed_content("postprocessing")
    writer = parser.get_parsed_content("writer")
    inferer = parser.get_parsed_content("inferer")
    net = parser.get_parsed_content("network")
    net.load_state_dict(torch.load(weights, map_location=device, weights_only=True)["model"])
    net.eval()
    datalist = parser.get_parsed_content("datalist")
    slice_size = list(parser.get_parsed_content("slice_size"))
    pre_t = list(pre.transforms)
    info_reader = type(pre_t[0]).__name__
    post_list = list(post.transforms)
    decollate = Decollated(keys=None, detach=True)

    runs: list[dict] = []
    mem_runs: list[dict] = []
    info: dict = {}
    for _ in range(repeats):
        gc.collect()
        row: dict[str, float] = {}
        mem: dict[str, float] = {}  # peak RSS (MB) of this process while the stage ran (VmHWM reset before it)

        def timed(name: str, fn, *a):
            _reset_peak_rss()
            t0 = _now()
            out = fn(*a)
            row[name] = _now() - t0
            mem[name] = round(_proc_status_kb("self", "VmHWM") / 1024, 1)
            return out

        mem["before"] = round(_proc_status_kb("self", "VmRSS") / 1024, 1)
        d = timed("read", pre_t[0], dict(datalist[0]))
        for t in pre_t[1:]:
            d = timed(f"pre.{type(t).__name__}", t, d)
        row["preprocess"] = sum(v for k, v in row.items() if k.startswith("pre."))
        mem["preprocess"] = max(v for k, v in mem.items() if k.startswith("pre."))
        batch = timed("collate", list_data_collate, [d])

        def infer(batch):
            with torch.no_grad():
                inputs = batch["image"].to(device)
                return inputs, inferer(inputs, net)

        inputs, pred = timed("network", infer, batch)
        items = timed("decollate", lambda b, i, o: [dict(x, **y) for x, y in zip(
            decollate(b), decollate({"image": i, "label": None, "pred": o}))], batch, inputs, pred)
        row["collate+decollate"] = row.pop("collate") + row.pop("decollate")
        mem["collate+decollate"] = max(mem.pop("collate"), mem.pop("decollate"))
        data = items[0]
        batch = inputs = pred = items = d = None  # free the volumes before the post-processing
        info["network_input_shape"] = list(data["image"].shape)
        info["network_output_shape"] = list(data["pred"].shape)
        info["network_output_dtype"] = str(data["pred"].dtype)
        gt_data = dict(data, pred=_gt_prediction(label_path, data["pred"], slice_size)) if gt_post else None

        def post_chain(dd: dict, prefix: str) -> dict:
            # Stages by role, so an override that swaps a transform still runs: the first transform (the argmax),
            # KeepLargestConnectedComponentd (lcc), Invertd; any other transform is timed under its own name and
            # counted in the stage it sits in (before Invertd: argmax+lcc; after it: invertd).
            stats: dict = {}
            row[f"{prefix}lcc"], mem[f"{prefix}lcc"] = 0.0, 0.0
            done_invert = False
            extra_before, extra_after = [], []
            for i, t in enumerate(post_list):
                cname = type(t).__name__
                if i == 0:
                    key = f"{prefix}argmax"
                elif cname.startswith("KeepLargestConnectedComponent"):
                    key = f"{prefix}lcc"
                elif cname == "Invertd":
                    key = f"{prefix}invertd"
                else:
                    key = f"{prefix}post.{i}.{cname}"
                    (extra_after if done_invert else extra_before).append(key)
                if cname == "Invertd":
                    stats["foreground_fraction_after_lcc"] = round(float((np.asarray(dd["pred"]) > 0).mean()), 5)
                    stats["label_dtype_before_invertd"] = str(dd["pred"].dtype)
                dd = timed(key, t, dd)
                if i == 0:
                    fg = (np.asarray(dd["pred"]) > 0)[0]
                    stats.update({"foreground_fraction_model_grid": round(float(fg.mean()), 5),
                                  "components_before_lcc": int(ndimage.label(fg)[1])})
                if cname == "Invertd":
                    done_invert = True
                    stats["label_dtype_after_invertd"] = str(dd["pred"].dtype)
                    stats["label_shape_after_invertd"] = list(dd["pred"].shape)
            keys = [f"{prefix}argmax", f"{prefix}lcc", *extra_before]
            row[f"{prefix}argmax+lcc"] = sum(row[k] for k in keys)
            mem[f"{prefix}argmax+lcc"] = max(mem[k] for k in keys)
            keys = [f"{prefix}invertd", *extra_after]
            row[f"{prefix}invertd"] = sum(row.get(k, 0.0) for k in keys)
            mem[f"{prefix}invertd"] = max(mem.get(k, 0.0) for k in keys)
            timed(f"{prefix}write", writer, dd)
            stats["label_dtype_written"] = str(dd["pred"].dtype)
            return stats

        info["prediction_random_weights"] = post_chain(data, "")
        del data
        if gt_data is not None:
            final_dir = writer.output_dir
            writer.output_dir = final_dir / "ground_truth_like"  # keep the random-weights output for the e2e check
            info["prediction_ground_truth"] = post_chain(gt_data, "gt.")
            writer.output_dir = final_dir
            del gt_data
        row["sum_of_stages"] = sum(row[k] for k in ("read", "preprocess", "network", "collate+decollate",
                                                    "argmax+lcc", "invertd", "write"))
        runs.append(row)
        mem_runs.append(mem)
        gc.collect()
    result = {k: _median([r[k] for r in runs]) for k in runs[0]}
    result["runs"] = [{k: round(v, 4) for k, v in r.items()} for r in runs]
    result["peak_rss_mb"] = {k: max(m[k] for m in mem_runs) for k in mem_runs[0]}
    result["peak_rss_note"] = ("in-process per-stage run: VmHWM reset (/proc/self/clear_refs) before each stage; "
                               "'before' is the RSS when the stages start (Python, torch, MONAI, the network)")
    result.update(info)
    n_slices = info["network_input_shape"][-1]
    result["network_slices"] = n_slices
    result["network_slices_per_s"] = round(n_slices / result["network"], 3)
    result["sw_batch_size"] = int(parser.get_parsed_content("sw_batch_size"))
    result["read_transform"] = info_reader
    result["transforms"] = {"preprocessing": [type(t).__name__ for t in pre_t], "postprocessing": [type(t).__name__ for t in post_list]}
    result["slice_size"] = slice_size
    gc.collect()
    return result


# ------------------------------------------------------------------------------ end to end, in a child process
def _proc_status_kb(pid: int | str, field: str) -> int:
    """``VmHWM`` / ``VmRSS`` (kB) from ``/proc/<pid>/status``; 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _reset_peak_rss() -> None:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); silently does nothing elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _pss_kb(pid: int) -> int:
    """Proportional set size (kB): shared pages split between the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _child_main(spec_path: str) -> None:
    """Child process: ``ConfigWorkflow(...)`` initialize/run/finalize, as ``python -m monai.bundle run`` does."""
    spec = json.loads(Path(spec_path).read_text())
    t_start = _now()
    import torch

    torch.set_num_threads(spec["threads"])
    from monai.bundle import ConfigWorkflow

    t_import = _now() - t_start
    hwm_import = _proc_status_kb("self", "VmHWM")
    t0 = _now()
    workflow = ConfigWorkflow(config_file=spec["config_files"], meta_file=str(META), logging_file=str(LOGGING),
                              run_id="inferring", workflow_type="infer", **spec["overrides"])
    workflow.initialize()
    t_init = _now() - t0
    hwm_init = _proc_status_kb("self", "VmHWM")
    t0 = _now()
    workflow.run()
    t_run = _now() - t0
    t0 = _now()
    workflow.finalize()
    t_final = _now() - t0
    result = {
        "import_s": round(t_import, 3),
        "initialize_s": round(t_init, 3),
        "run_s": round(t_run, 3),
        "finalize_s": round(t_final, 3),
        "torch_threads": torch.get_num_threads(),
        # VmHWM: peak RSS of this process's own address space (exact, kernel-maintained)
        "peak_rss_main_mb": round(_proc_status_kb("self", "VmHWM") / 1024, 1),
        "peak_rss_main_after_import_mb": round(hwm_import / 1024, 1),
        "peak_rss_main_after_initialize_mb": round(hwm_init / 1024, 1),
        # NOT the peak of this process: on Linux ru_maxrss survives exec, so a child started by subprocess
        # reports max(its own peak, the launching process's RSS at fork/vfork time). Kept for reference only.
        "ru_maxrss_self_mb_inherits_parent": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        # DataLoader workers (num_workers >= 1) are forked children of this process
        "ru_maxrss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    Path(spec["result_path"]).write_text(json.dumps(result))


def run_end_to_end(config_files: list[Path], overrides: dict, threads: int, workdir: Path, tag: str) -> dict:
    """Run the workflow in a child process; return its timings and peak memory.

    Peak of the inference process: its own ``VmHWM`` read at the end (``ru_maxrss`` of a subprocess is polluted by
    the launching process, see ``_child_main``). DataLoader workers: their ``VmHWM`` polled every 20 ms. Whole
    tree: the polled sum of RSS (every 20 ms; shared pages counted in every process) and of PSS (every 1 s;
    shared pages split).
    """
    import psutil

    spec_path = workdir / f"e2e_{tag}_spec.json"
    result_path = workdir / f"e2e_{tag}_result.json"
    spec = {"config_files": [str(p) for p in config_files], "overrides": overrides, "threads": threads,
            "result_path": str(result_path)}
    spec_path.write_text(json.dumps(spec))
    log_path = workdir / f"e2e_{tag}.log"
    with open(log_path, "w") as log:
        cpu0 = os.times()
        t0 = _now()
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child-e2e", str(spec_path)],
                                cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT)
        ps = psutil.Process(proc.pid)
        peak_main_rss = peak_tree_rss = peak_tree_pss = 0
        worker_hwm: dict[int, int] = {}
        kids: list[int] = []
        tick = 0
        # Cheap polling so the poller does not compete with the run: /proc/<pid>/status every 20 ms, the list
        # of children every 0.2 s, PSS (smaps_rollup walks the page tables) every 1 s.
        while proc.poll() is None:
            try:
                if tick % 10 == 0:
                    kids = [c.pid for c in ps.children(recursive=True)]
                main_rss = _proc_status_kb(proc.pid, "VmRSS")
                tree_rss = main_rss
                for pid in kids:
                    worker_hwm[pid] = max(worker_hwm.get(pid, 0), _proc_status_kb(pid, "VmHWM"))
                    tree_rss += _proc_status_kb(pid, "VmRSS")
                peak_main_rss, peak_tree_rss = max(peak_main_rss, main_rss), max(peak_tree_rss, tree_rss)
                if tick % 50 == 0:
                    peak_tree_pss = max(peak_tree_pss, _pss_kb(proc.pid) + sum(_pss_kb(pid) for pid in kids))
            except psutil.Error:
                pass
            tick += 1
            time.sleep(0.02)
        wall = _now() - t0
        cpu1 = os.times()
    if proc.returncode != 0 or not result_path.is_file():
        tail = log_path.read_text()[-4000:]
        raise RuntimeError(f"end-to-end run ({tag}) failed with exit code {proc.returncode}:\n{tail}")
    result = json.loads(result_path.read_text())
    result.update({"process_wall_s": round(wall, 3),
                   "polled_peak_rss_main_mb": round(peak_main_rss / 1024, 1),
                   "peak_rss_workers_mb": round(max(worker_hwm.values(), default=0) / 1024, 1),
                   "workers_seen": len(worker_hwm),
                   "polled_peak_rss_tree_mb": round(peak_tree_rss / 1024, 1),
                   "polled_peak_pss_tree_mb": round(peak_tree_pss / 1024, 1),
                   "poller_cpu_s": round(cpu1.user - cpu0.user + cpu1.system - cpu0.system, 2),
                   "log": str(log_path)})
    return result


def check_output(path: Path, data: dict, reference: Path | None) -> dict:
    """Output exists, is uint8, has the input's shape and affine; equals the per-stage run's output."""
    import nibabel as nib
    import numpy as np

    src = nib.load(data["image_path"])
    out = nib.load(str(path))
    arr = np.asanyarray(out.dataobj)
    res = {"exists": True, "dtype": str(out.get_data_dtype()), "shape_matches_input": out.shape == src.shape,
           "affine_matches_input": bool(np.allclose(out.affine, src.affine, atol=1e-4)),
           "labels": sorted(int(v) for v in np.unique(arr))}
    if reference is not None and reference.is_file():
        res["equals_per_stage_output"] = bool(np.array_equal(arr, np.asanyarray(nib.load(str(reference)).dataobj)))
    return res


# ----------------------------------------------------------------------------------------------- reporting
STAGES = [
    ("read", "first preprocessing transform: {read} (nibabel, int16 -> float32 MetaTensor)"),
    ("preprocess", "ValidateCTd, EnsureChannelFirstd, Orientationd(RAS), ScaleIntensityRanged, Resized(area), EnsureTyped"),
    ("network", "SliceInferer over the axial slices (sw_batch_size from the config)"),
    ("argmax+lcc", "AsDiscreted(argmax, uint8) + KeepLargestConnectedComponentd (model grid)"),
    ("invertd", "Invertd: undo Resized + Orientationd, nearest (back to the input grid)"),
    ("write", "SaveSegmentationd (uint8 NIfTI .nii.gz + volumes JSON, atomic)"),
    ("collate+decollate", "batch collate / decollate between the stages"),
]


def _fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def render_markdown(res: dict) -> str:
    a = res["args"]
    nets = [n for n in ("default", "demo") if n in res["networks"]]
    fl = res["io_floor"]
    lines = ["", "# Inference benchmark (CPU)", "",
             f"Generated by `bench/bench_inference.py` on {res['date']}. Raw numbers: `{res['results_json']}`.", "",
             "**The input is a SYNTHETIC phantom** (`scripts/synthetic/phantoms.py`, seed "
             f"{res['data']['seed']}, {res['data']['storage']} storage) and **the weights are random-init**: latency "
             "does not depend on the weights' values (same operations on tensors of the same shapes); only the "
             "content of the predicted label map does, which changes LCC and gzip time a little (the "
             "*ground-truth-like prediction* rows below time the post-processing on a realistic label map). "
             "Nothing here says anything about segmentation accuracy.", ""]
    m = res["machine"]
    lines += ["## Machine", "",
              f"- CPU: {m.get('Model name', '?')} ({m.get('Hypervisor vendor', 'bare metal')} guest), "
              f"`os.cpu_count()` = {m['cpu_count']}, SIMD: {', '.join(m.get('simd', []))}; "
              f"RAM {m.get('memory_total_mb', '?')} MB; {m['platform']}",
              f"- torch {res['versions']['torch']} ({res['threads']} threads, `torch.set_num_threads(os.cpu_count())`), "
              f"MONAI {res['versions']['monai']}, nibabel {res['versions']['nibabel']}, numpy {res['versions']['numpy']}, "
              f"Python {m['python']}",
              f"- bundle commit `{res['git']['commit'][:12]}`"
              + (f" with uncommitted changes {res['git']['uncommitted_changes_in_configs_or_scripts']}"
                 if res['git']['uncommitted_changes_in_configs_or_scripts'] else " (configs and scripts as committed)")
              + (f"; config overrides {res['config_overrides']}" if res['config_overrides'] else "")
              + (f"; environment {res['env']}" if res['env'] else ""),
              f"- load average (1/5/15 min) at start {res['loadavg']['start']}, at end {res['loadavg']['end']}: "
              "other processes shared the CPU when this is above ~0.5; compare ratios within one run, not "
              "absolute seconds across runs.", ""]
    d = res["data"]
    lines += ["## Input", "",
              f"- {d['shape_ras'][0]}x{d['shape_ras'][1]}x{d['shape_ras'][2]} voxels (RAS), int16 HU, spacing "
              f"{d['spacing_mm']} mm, stored {d['storage']} (`case_00000/imaging.nii.gz`, {d['image_file_mb']} MB)",
              f"- repeats per measurement: {a['repeats']} (median reported)", ""]
    # ---- stage table
    head = "| Stage | What |"
    sep = "|---|---|"
    for n in nets:
        head += f" {n} net (s) | share |"
        sep += "---:|---:|"
    head += " I/O floor (s) | issue reference (s) |"
    sep += "---:|---:|"
    lines += ["## Per-stage times", "",
              "Components instantiated from `configs/inference.json` by `monai.bundle.ConfigParser` and run on the "
              "loaded data in the order `SupervisedEvaluator` runs them; share = share of the sum of stages.", "",
              head, sep]
    floor = {"read": f"{_fmt(fl['read_nibabel_int16_s'])} (nibabel int16) / {_fmt(fl['read_monai_loadimage_s'])} (MONAI LoadImage)",
             "write": f"{_fmt(fl['write_uint8_s'])} (nibabel uint8, gzip level {fl['gzip_compresslevel']})"}
    read_name = res["networks"][nets[0]]["stages"].get("read_transform", "LoadImaged")
    for key, what in STAGES:
        row = f"| {key} | {what.format(read=read_name)} |"
        for n in nets:
            st = res["networks"][n]["stages"]
            row += f" {_fmt(st[key])} | {100 * st[key] / st['sum_of_stages']:.1f}% |"
        row += f" {floor.get(key, '')} | {REFERENCE_IO_S.get(key, '')} |"
        lines.append(row)
    row = "| **sum of stages** | |"
    for n in nets:
        row += f" **{_fmt(res['networks'][n]['stages']['sum_of_stages'])}** | 100% |"
    lines.append(row + f" {_fmt(fl['read_nibabel_int16_s'] + fl['write_uint8_s'])} (read + write) | 1.2 |")
    for label, key in (("end to end: `ConfigWorkflow.run()` (child process)", "run_s"),
                       ("end to end: process wall incl. Python/torch/MONAI import + initialize", "process_wall_s")):
        row = f"| **{label}** | |"
        for n in nets:
            e = res["networks"][n].get("end_to_end")
            row += f" **{_fmt(e[key] if e else None)}** | |"
        lines.append(row + " | |")
    lines.append("")
    # ---- sub-stage detail
    lines += ["### Detail", "", "| Sub-stage |" + "".join(f" {n} net (s) |" for n in nets), "|---|" + "---:|" * len(nets)]
    sub_keys = [k for k in res["networks"][nets[0]]["stages"] if k.startswith("pre.")] + ["argmax", "lcc"]
    for k in sub_keys:
        lines.append(f"| {k} |" + "".join(f" {_fmt(res['networks'][n]['stages'].get(k), 3)} |" for n in nets))
    if any("gt.write" in res["networks"][n]["stages"] for n in nets):
        for k in ("gt.argmax", "gt.lcc", "gt.invertd", "gt.write"):
            lines.append(f"| {k} (ground-truth-like prediction) |"
                         + "".join(f" {_fmt(res['networks'][n]['stages'].get(k), 3)} |" for n in nets))
    lines.append("")
    if all("peak_rss_mb" in res["networks"][n]["stages"] for n in nets):
        lines += ["### Peak RSS per stage (in-process per-stage run)", "",
                  "`VmHWM` reset through `/proc/self/clear_refs` before each stage; the process holds Python, torch, "
                  "MONAI, the network and the data of earlier stages (row 'before' = RSS when the stages start).", "",
                  "| Stage |" + "".join(f" {n} net peak RSS (MB) |" for n in nets), "|---|" + "---:|" * len(nets)]
        for k in ["before", "read", "preprocess", "network", "argmax+lcc", "invertd", "write",
                  "gt.argmax+lcc", "gt.invertd", "gt.write"]:
            if k in res["networks"][nets[0]]["stages"]["peak_rss_mb"]:
                lines.append(f"| {k} |" + "".join(
                    f" {res['networks'][n]['stages']['peak_rss_mb'].get(k, 0):.0f} |" for n in nets))
        lines.append("")
    # ---- network throughput + memory
    lines += ["## Network throughput and peak memory", "",
              "| | " + " | ".join(f"{n} net" for n in nets) + " |", "|---|" + "---:|" * len(nets)]

    def net_row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(res["networks"][n]) for n in nets) + " |")

    net_row("load average (1 min) before the per-stage run / before the end-to-end run",
            lambda r: f"{(r.get('loadavg_before_stages') or ['-'])[0]} / {(r.get('loadavg_before_e2e') or ['-'])[0]}")
    net_row("channels", lambda r: "-".join(str(c) for c in r["weights"]["channels"]))
    net_row("parameters", lambda r: f"{r['weights']['parameters']:,}")
    net_row("slice size (network input)", lambda r: "x".join(str(s) for s in r["stages"]["slice_size"]))
    net_row("sw_batch_size", lambda r: str(r["stages"]["sw_batch_size"]))
    net_row("slices", lambda r: str(r["stages"]["network_slices"]))
    net_row("**network slices/s**", lambda r: f"**{r['stages']['network_slices_per_s']:.2f}**")
    e2e = lambda r, k, f="{:.0f}": f.format(r["end_to_end"][k]) if r.get("end_to_end") else "-"  # noqa: E731
    net_row("peak RSS, inference process (`VmHWM`, MB)", lambda r: "**" + e2e(r, "peak_rss_main_mb") + "**")
    net_row("... of which after `import torch, monai` (MB)", lambda r: e2e(r, "peak_rss_main_after_import_mb"))
    net_row("peak RSS, DataLoader worker (`VmHWM`, MB; includes pages shared with the parent)",
            lambda r: e2e(r, "peak_rss_workers_mb"))
    net_row("peak PSS sum of the process tree (polled every 1 s, MB)", lambda r: e2e(r, "polled_peak_pss_tree_mb"))
    net_row("peak RSS sum of the process tree (polled, MB; shared pages counted twice)",
            lambda r: e2e(r, "polled_peak_rss_tree_mb"))
    net_row(f"aim: peak RSS <= {RSS_AIM_MB:.0f} MB (inference process)",
            lambda r: ("met" if r["end_to_end"]["peak_rss_main_mb"] <= RSS_AIM_MB else "**NOT met**")
            if r.get("end_to_end") else "-")
    net_row("end-to-end output check",
            lambda r: ("uint8, input shape+affine, identical to the per-stage output"
                       if r.get("output_check", {}).get("equals_per_stage_output") and r["output_check"]["shape_matches_input"]
                       else json.dumps(r.get("output_check"))))
    lines.append("")
    argv = re.sub(r"--workdir(=|\s+)\S+\s*", "", res["argv"]).strip()  # a scratch folder, not a setting
    lines += ["## Reproduce", "", "```bash", f"cd <bundle root> && .venv/bin/python bench/bench_inference.py {argv}".rstrip(),
              "```", "", "Smoke check (under a minute): `.venv/bin/python bench/bench_inference.py --slices 40 "
              "--skip-default-net --no-docs`.", ""]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=200, help="number of axial slices of the synthetic CT (200)")
    ap.add_argument("--size", type=int, default=512, help="in-plane size of the synthetic CT (512)")
    ap.add_argument("--repeats", type=int, default=1, help="repeats of every measurement; medians reported (1)")
    ap.add_argument("--skip-default-net", action="store_true", help="only the narrow demo network (fast)")
    ap.add_argument("--skip-demo-net", action="store_true", help="only the default network")
    ap.add_argument("--skip-e2e", action="store_true", help="no end-to-end child run (no peak RSS)")
    ap.add_argument("--skip-stages", action="store_true", help="no per-stage run (end to end and peak RSS only)")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for both runs, VALUE parsed as JSON when possible, e.g. sw_batch_size=2 "
                         "(repeatable); to evaluate a change without editing the configs")
    ap.add_argument("--tag", default="", help="appended to the results file name, e.g. sw2")
    ap.add_argument("--no-gt-post", action="store_true",
                    help="do not time the post-processing on a ground-truth-like prediction")
    ap.add_argument("--storage", choices=("kits", "ras"), default="kits", help="axis layout of the input file (kits)")
    ap.add_argument("--seed", type=int, default=0, help="phantom seed (0)")
    ap.add_argument("--workdir", default=None, help="keep inputs/outputs here (default: a temporary folder, removed)")
    ap.add_argument("--results-dir", default=str(REPO / "bench" / "results"), help="where the JSON goes")
    ap.add_argument("--docs", default=str(REPO / "docs" / "benchmark.md"), help="markdown report to (re)write")
    ap.add_argument("--no-docs", action="store_true", help="do not write the markdown report (smoke checks)")
    ap.add_argument("--child-e2e", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_e2e:
        _child_main(args.child_e2e)
        return 0
    if args.skip_default_net and args.skip_demo_net:
        ap.error("nothing to run: --skip-default-net and --skip-demo-net")
    if args.skip_stages and args.skip_e2e:
        ap.error("nothing to run: --skip-stages and --skip-e2e")
    overrides_extra: dict = {}
    for item in args.override:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"--override {item!r}: expected KEY=VALUE")
        try:
            overrides_extra[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides_extra[key] = value

    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    t_total = _now()
    date = _dt.datetime.now().astimezone()
    res: dict = {"date": date.isoformat(timespec="seconds"), "args": vars(args),
                 "argv": " ".join(sys.argv[1:] if argv is None else argv), "threads": threads,
                 "machine": _machine(), "versions": _versions(), "git": _git(), "loadavg": {"start": _loadavg()},
                 "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ}, "config_overrides": overrides_extra,
                 "synthetic_input": True, "random_weights": True, "rss_aim_mb": RSS_AIM_MB,
                 "reference_io_s": REFERENCE_IO_S, "networks": {}}
    tmp = tempfile.TemporaryDirectory(prefix="bench_inference_") if args.workdir is None else None
    workdir = Path(args.workdir or tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        print(f"[bench] building a SYNTHETIC {args.size}x{args.size}x{args.slices} CT in {workdir} ...", flush=True)
        data = build_inputs(workdir, args.size, args.slices, args.seed, args.storage)
        res["data"] = data
        print(f"[bench] phantom {data['shape_ras']} spacing {data['spacing_mm']} built in {data['build_s']} s", flush=True)
        res["loadavg"]["io_floor"] = _loadavg()
        res["io_floor"] = io_floor(data, workdir, args.repeats)
        print(f"[bench] I/O floor: {json.dumps({k: v for k, v in res['io_floor'].items() if k.endswith('_s')})}", flush=True)
        nets = [n for n in ("default", "demo") if not (n == "default" and args.skip_default_net)
                and not (n == "demo" and args.skip_demo_net)]
        for name in nets:
            files = NETWORKS[name]
            weights = workdir / f"model_{name}.pt"
            entry: dict = {"config_files": [str(p.relative_to(REPO)) for p in files],
                           "weights": save_random_weights(files, weights)}
            stage_out = workdir / f"out_stages_{name}"
            overrides = {"input_path": data["case_dir"], "output_dir": str(stage_out), "model_path": str(weights),
                         **overrides_extra}
            if not args.skip_stages:
                entry["loadavg_before_stages"] = _loadavg()
                print(f"[bench] {name} net: per-stage run ...", flush=True)
                entry["stages"] = time_stages(files, overrides, str(weights), data["label_path"], args.repeats,
                                              gt_post=not args.no_gt_post)
                st = entry["stages"]
                print(f"[bench] {name} net stages: " + ", ".join(
                    f"{k} {st[k]:.2f}" for k, _ in STAGES) + f"; {st['network_slices_per_s']:.2f} slices/s", flush=True)
            if not args.skip_e2e:
                e2e_runs = []
                for r in range(args.repeats):
                    e2e_out = workdir / f"out_e2e_{name}_{r}"
                    ov = dict(overrides, output_dir=str(e2e_out))
                    entry["loadavg_before_e2e"] = _loadavg()
                    print(f"[bench] {name} net: end-to-end ConfigWorkflow run {r + 1}/{args.repeats} (child) ...", flush=True)
                    e2e_runs.append(run_end_to_end(files, ov, threads, workdir, f"{name}_{r}"))
                    entry["output_check"] = check_output(e2e_out / "case_00000.nii.gz", data,
                                                         None if args.skip_stages else stage_out / "case_00000.nii.gz")
                e = dict(e2e_runs[0])
                for k in ("run_s", "process_wall_s", "import_s", "initialize_s"):
                    e[k] = _median([x[k] for x in e2e_runs])
                for k in ("peak_rss_main_mb", "peak_rss_workers_mb", "polled_peak_rss_tree_mb", "polled_peak_pss_tree_mb",
                          "polled_peak_rss_main_mb", "ru_maxrss_children_mb", "ru_maxrss_self_mb_inherits_parent"):
                    e[k] = max(x[k] for x in e2e_runs)
                e["runs"] = e2e_runs
                entry["end_to_end"] = e
                print(f"[bench] {name} net end to end: run {e['run_s']:.2f} s, process {e['process_wall_s']:.2f} s, "
                      f"peak RSS main {e['peak_rss_main_mb']:.0f} MB, worker {e['peak_rss_workers_mb']:.0f} MB, "
                      f"tree RSS {e['polled_peak_rss_tree_mb']:.0f} MB / PSS {e['polled_peak_pss_tree_mb']:.0f} MB", flush=True)
            res["networks"][name] = entry
        res["loadavg"]["end"] = _loadavg()
        res["total_benchmark_s"] = round(_now() - t_total, 1)
        results_dir = Path(args.results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        suffix = "" if (args.slices, args.size) == (200, 512) else f"_{args.size}x{args.size}x{args.slices}"
        suffix += f"_{args.tag}" if args.tag else ""
        out_json = results_dir / f"inference_{date.strftime('%Y%m%d')}{suffix}.json"
        try:
            res["results_json"] = str(out_json.relative_to(REPO))
        except ValueError:
            res["results_json"] = str(out_json)
        out_json.write_text(json.dumps(res, indent=2) + "\n")
        print(f"[bench] wrote {out_json}", flush=True)
        if not args.no_docs and args.skip_stages:
            print("[bench] --skip-stages: no markdown report (the tables need the per-stage run)", flush=True)
        elif not args.no_docs:
            replace_marked_block(Path(args.docs), BEGIN, END, render_markdown(res))
            print(f"[bench] wrote {args.docs}", flush=True)
        print(f"[bench] total {res['total_benchmark_s']} s", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
