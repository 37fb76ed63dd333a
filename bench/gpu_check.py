"""CUDA path check on a lent GPU: network throughput, AMP training through the bundle, whole-volume inference.

Run once on a machine with a GPU, from the bundle root, with the bundle's requirements installed:

    python bench/gpu_check.py --out gpu_results

Everything here uses SYNTHETIC phantoms (``scripts/synthetic/phantoms.py``) and a few epochs of training: the Dice values it
prints show the pipeline runs, not accuracy. Steps, each timed:

1. Network throughput (random weights, 256x256 slices, batch ``--batch``): slices/s of the default WP-UNet, SD-UNet,
   the classic U-Net and Pocket U-Net 2D in fp32, fp16 autocast, bf16 autocast and channels_last + fp16, timed with
   CUDA events (median of ``--repeats``), plus the relative difference of each autocast output to fp32.
2. ``python -m monai.bundle run training`` (configs/train.json, default WP-UNet, AMP on CUDA) for ``--epochs`` epochs
   on ``--num-cases`` phantoms, then the same command with one more epoch, which must resume from the checkpoint.
3. ``torchrun --nproc_per_node 1 -m monai.bundle run training`` with configs/multi_gpu_train.json (NCCL), one epoch.
4. ``python -m monai.bundle run inferring`` on a 512x512x``--slices`` phantom CT with the weights from step 2,
   end to end (read, preprocess, network, resample back, LCC, write), and the output checked against the input grid.

Writes ``<out>/gpu_check.json`` and ``<out>/gpu_check.log`` (the bundle runs' logs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, run_workflow  # noqa: E402
from scripts.networks import PlainUNet, PocketUNet, SDUNet, WPUNet  # noqa: E402
from scripts.synthetic.phantoms import generate_dataset  # noqa: E402

LOG: list[str] = []


def say(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    LOG.append(line)


def networks() -> dict[str, torch.nn.Module]:
    """The bundle's default networks at their configured (paper) widths, 3 output classes."""
    return {
        "wp_unet": WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(64, 128, 256, 512, 512),
                          strides=(2, 2, 2, 2), dropout=0.5),
        "sd_unet": SDUNet(in_channels=1, out_channels=3),
        "classic_unet": PlainUNet(in_channels=1, out_channels=3),
        "pocket_unet_2d": PocketUNet(spatial_dims=2, in_channels=1, out_channels=3),
    }


def throughput(batch: int, repeats: int, iters: int) -> dict:
    """slices/s per network and precision mode, CUDA-event timed; relative error of autocast vs fp32."""
    device = torch.device("cuda")
    x = torch.randn(batch, 1, 256, 256, device=device)
    results = {}
    for name, net in networks().items():
        net = net.to(device).eval()
        with torch.inference_mode():
            ref = net(x).float()
        modes = {
            "fp32": (torch.contiguous_format, None),
            "fp16_autocast": (torch.contiguous_format, torch.float16),
            "bf16_autocast": (torch.contiguous_format, torch.bfloat16),
            "channels_last_fp16": (torch.channels_last, torch.float16),
        }
        row = {}
        for mode, (fmt, dtype) in modes.items():
            net_m = net.to(memory_format=fmt)
            xm = x.contiguous(memory_format=fmt)

            def step():
                with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32,
                                                            enabled=dtype is not None):
                    return net_m(xm)

            for _ in range(3):
                out = step()
            torch.cuda.synchronize()
            times = []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(iters):
                    out = step()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000 / iters)
            rel = float((out.float() - ref).norm() / ref.norm())
            agree = float((out.float().argmax(1) == ref.argmax(1)).float().mean())
            row[mode] = {"slices_per_s": batch / statistics.median(times), "rel_diff_vs_fp32": rel,
                         "argmax_agreement_vs_fp32": agree}
            say(f"  {name:15s} {mode:20s} {row[mode]['slices_per_s']:9.0f} slices/s  rel diff {rel:.1e}  "
                f"argmax agreement {agree:.5f}")
        results[name] = row
        net.to("cpu")
        torch.cuda.empty_cache()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_results")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--num-cases", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU check of this script itself: tiny network, no throughput or torchrun step")
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("no CUDA device: this check is for a machine with a GPU (--smoke checks the script on a CPU)")
    tiny = {"network_def#channels": [4, 8, 16], "network_def#strides": [2, 2], "slice_size": [64, 64]} \
        if args.smoke else {}
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (smoke run)",
                 "machine": machine(),
                 "bf16_supported": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
                 "data": "SYNTHETIC phantoms (scripts/synthetic/phantoms.py); random or briefly trained weights"}
    m = res["machine"]
    say(f"GPU {res['gpu']}, torch {m['torch']}, python {m['python']}, {m['cores']} CPUs")
    try:
        if not (args.skip_throughput or args.smoke):
            say(f"1. network throughput, batch {args.batch} x 256x256")
            res["throughput"] = throughput(args.batch, args.repeats, args.iters)

        work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        data = work / "phantoms"
        say(f"2. AMP training on {args.num_cases} SYNTHETIC phantoms (256x256 in-plane), {args.epochs} epochs")
        t0 = time.perf_counter()
        generate_dataset(str(data), num_cases=args.num_cases, seed=11, in_plane_size=96 if args.smoke else 256)
        res["phantom_seconds"] = time.perf_counter() - t0
        common = {"dataset_dir": str(data), "output_dir": str(work / "train_out"), "ckpt_dir": str(work / "models"),
                  **tiny, **({"num_workers": 0} if args.smoke else {})}
        run = run_workflow("training", "configs/train.json", out / "train.log", echo=say, epochs=args.epochs, **common)
        res["train"] = {"seconds": run.seconds, "epochs": args.epochs,
                        "amp_line": [ln for ln in run.output.splitlines() if "amp" in ln.lower()][:3]}
        say(f"  training {args.epochs} epochs: {run.seconds:.1f} s (incl. start-up and validation)")
        run = run_workflow("training", "configs/train.json", out / "train_resume.log", echo=say,
                           epochs=args.epochs + 1, **common)
        resumed = [ln for ln in run.output.splitlines() if "resumed training from" in ln]
        res["train_resume"] = {"seconds": run.seconds, "log_lines": resumed[:3]}
        say(f"  resume to epoch {args.epochs + 1}: {run.seconds:.1f} s; "
            + (resumed[0] if resumed else "NO resume line"))
        metrics = sorted((work / "train_out").rglob("*.json"))
        res["train_files"] = [str(p.relative_to(work)) for p in metrics][:10]

        if not args.smoke:
            say("3. multi-GPU config under torchrun (1 process, NCCL), 1 epoch")
            run = run_workflow("training", ["configs/train.json", "configs/multi_gpu_train.json"],
                               out / "train_ddp.log", torchrun=True, echo=say, epochs=1, dataset_dir=str(data),
                               output_dir=str(work / "ddp_out"), ckpt_dir=str(work / "ddp_models"))
            res["train_ddp_seconds"] = run.seconds
            say(f"  torchrun DDP 1 epoch: {run.seconds:.1f} s")

        say(f"4. whole-volume inference, SYNTHETIC 512x512x{args.slices} CT")
        ct_dir = work / "ct"
        generate_dataset(str(ct_dir), num_cases=1, seed=5, in_plane_size=512,
                         slice_thickness_range=(1.0, 1.0))
        import nibabel as nib

        image = next(ct_dir.rglob("imaging.nii.gz"))
        img = nib.load(image)
        if img.shape[0] > args.slices:  # KiTS layout: slice axis first; keep --slices slices
            img = nib.Nifti1Image(img.dataobj[: args.slices], img.affine, img.header)
            image = work / "ct_cropped.nii.gz"
            nib.save(img, image)
        res["ct_shape"] = list(img.shape)
        model = work / "models" / "model.pt"
        runs = []
        for i in range(2):  # the first run includes CUDA/cuDNN start-up
            run = run_workflow("inferring", "configs/inference.json", out / f"infer_{i}.log", echo=say,
                               input_path=str(image), output_dir=str(work / f"infer_{i}"), model_path=str(model),
                               **tiny)
            runs.append(run.seconds)
            say(f"  inference run {i + 1}: {run.seconds:.1f} s end to end (process start included)")
        seg = next((work / "infer_1").rglob("*.nii.gz"))
        out_img = nib.load(seg)
        res["inference"] = {"seconds": runs, "input_shape": list(img.shape), "output_shape": list(out_img.shape),
                            "same_affine": bool(abs(out_img.affine - img.affine).max() < 1e-4),
                            "output_dtype": str(out_img.get_data_dtype()),
                            "slices_per_s_end_to_end": img.shape[0] / runs[-1]}
        say(f"  output {out_img.shape} {out_img.get_data_dtype()}, same affine: {res['inference']['same_affine']}")
        res["status"] = "ok"
    except Exception as err:  # keep what was measured
        res["status"] = f"failed: {err}"
        say(f"FAILED: {err}")
    finally:
        (out / "gpu_check.json").write_text(json.dumps(res, indent=2))
        (out / "gpu_check.log").write_text("\n".join(LOG) + "\n")
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
