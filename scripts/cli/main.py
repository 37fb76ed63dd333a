"""``kidney-seg``: segment kidneys and kidney tumours in one CT or a folder of 500 (issue 15).

    kidney-seg -i INPUT -o OUTPUT_DIR [--model PATH] [--network NAME | --fast] [--device cuda] ...

Runs the bundle's ``inferring`` workflow (:mod:`scripts.cli.runner`: the ``ConfigWorkflow`` of
``python -m monai.bundle run inferring --config_file configs/inference.json``) with cohort defaults: resume on,
keep going past bad cases (``failures.csv``, exit code 1), a progress bar, ``cohort.csv`` with QC flags and
``cohort_summary.png``. Under ``torchrun`` each rank takes a disjoint share; ``--num-parts N --part-id K`` does the
same for scheduler arrays. Exit codes: 0 all cases done, 1 some cases failed, 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial

__all__ = ["build_parser", "main"]

EPILOG = """\
examples:
  kidney-seg -i scan.nii.gz -o out/
  kidney-seg -i /data/cts/ -o out/ --fast --pattern '*_venous.nii.gz'
  kidney-seg -i /data/dicom_export/ -o out/ --output-format dicom_seg
  torchrun --nproc_per_node 2 $(which kidney-seg) -i /data/cts/ -o out/
  kidney-seg -i /data/cts/ -o out/ --num-parts 8 --part-id $SLURM_ARRAY_TASK_ID ; kidney-seg --merge -o out/

outputs in OUTPUT_DIR: <case>.nii.gz (or .seg.nrrd / .seg.dcm), <case>_volumes.json, <case>_preview.png,
cohort.csv (volumes, tumours, mean HU, QC flags), cohort_summary.png, failures.csv (only if a case failed).
exit codes: 0 done, 1 some cases failed (see failures.csv), 2 bad arguments or input. BUNDLE_DEBUG=1: tracebacks.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kidney-seg", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Kidney and kidney-tumour segmentation of abdominal CT (MONAI bundle; research use only, "
                    "not a medical device).")
    io = parser.add_argument_group("input and output")
    io.add_argument("-i", "--input", metavar="INPUT",
                    help="a NIfTI/NRRD/MHA file, a folder of them, a KiTS folder (case_XXXXX/imaging.nii.gz), a DICOM "
                         "series folder, or a folder of DICOM series (one case per SeriesInstanceUID)")
    io.add_argument("-o", "--output", metavar="OUTPUT_DIR", required=True, help="folder for all outputs")
    io.add_argument("-p", "--pattern", metavar="GLOB",
                    help="only cases whose file/folder name or relative path matches, e.g. '*_venous.nii.gz'")
    io.add_argument("-f", "--output-format", choices=("nifti", "seg_nrrd", "dicom_seg"), default="nifti",
                    help="segmentation file format (default nifti; seg_nrrd for 3D Slicer; dicom_seg for DICOM input)")
    io.add_argument("--no-preview", dest="preview", action="store_false", help="skip <case>_preview.png (faster)")
    model = parser.add_argument_group("model")
    model.add_argument("-m", "--model", metavar="PATH", help="weights file of the chosen network "
                       "(default: models/<model_name>.pt of the bundle)")
    choice = model.add_mutually_exclusive_group()
    choice.add_argument("-n", "--network", metavar="NAME",
                        help="network overlay from configs/networks (wp_unet, sd_unet, pocket_unet_2d, ...)")
    choice.add_argument("--fast", action="store_true",
                        help="the fast network: Pocket U-Net 2D, else the channel-pruned WP-UNet, whichever has weights")
    model.add_argument("-d", "--device", metavar="DEVICE", help="cpu, cuda or cuda:N (default: cuda if available; "
                       "under torchrun cuda:LOCAL_RANK)")
    model.add_argument("--lean", action="store_true",
                       help="start in under a second: no torch or MONAI in the process (ONNX Runtime on the CPU, 2D "
                            "networks; the first run exports <weights>.lean.onnx, a few seconds, once)")
    model.add_argument("--config", metavar="FILE", action="append", default=[],
                       help="an extra config overlay merged last, e.g. configs/demo.json for the demo weights")
    cohort = parser.add_argument_group("cohort runs")
    cohort.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="skip cases whose outputs are complete (checked) (default: on)")
    cohort.add_argument("--stop-on-error", action="store_true",
                        help="stop at the first bad case (default: report it, list it in failures.csv, go on)")
    cohort.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no per-case log lines")
    cohort.add_argument("--num-parts", type=int, metavar="N", help="split the cases into N disjoint parts "
                        "(default: torchrun's WORLD_SIZE, else 1)")
    cohort.add_argument("--part-id", type=int, metavar="K", help="run part K (0..N-1) (default: torchrun's RANK)")
    cohort.add_argument("--merge", action="store_true",
                        help="only merge the parts' records in OUTPUT_DIR into cohort.csv/failures.csv and exit")
    return parser


def _configure_logging(quiet: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    logging.getLogger("ignite").setLevel(logging.WARNING)
    # ConfigWorkflow warns on every run that logging_file is False and that an extra overlay lies elsewhere
    logging.getLogger("monai.bundle").setLevel(logging.ERROR)


def _parts(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[int, int]:
    from .runner import torchrun_part

    if args.num_parts is None and args.part_id is None:
        return torchrun_part() or (1, 0)
    if args.num_parts is None or args.part_id is None:
        parser.error("--num-parts and --part-id go together")
    if args.num_parts < 1 or not 0 <= args.part_id < args.num_parts:
        parser.error(f"--part-id {args.part_id}: must be in 0..{args.num_parts - 1} for --num-parts {args.num_parts}")
    return args.num_parts, args.part_id


def _default_device() -> str | None:
    """Under torchrun with GPUs, rank k of a node uses cuda:LOCAL_RANK; otherwise the config's default."""
    if "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return None


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the parsed command; returns the exit code (raises InputError for bad input)."""
    from .runner import inference_configs, inference_overrides

    if args.merge:
        from ..evaluation.cohort import merge_cohort

        rows, failures = merge_cohort(args.output)
        print(f"{args.output}: cohort.csv with {rows} cases, {failures} failures")
        return 1 if failures else 0
    if not args.input:
        parser.error("the following arguments are required: -i/--input")
    num_parts, part_id = _parts(args, parser)
    configs, model_path = inference_configs(args.network, args.fast, args.model, args.config)
    if args.lean:
        return _run_lean(args, parser, configs, model_path, num_parts, part_id)
    options = dict(input=args.input, output=args.output, output_format=args.output_format, preview=args.preview,
                   resume=args.resume, stop_on_error=args.stop_on_error, statistics=True,
                   progress=not args.quiet, pattern=args.pattern, num_parts=num_parts, part_id=part_id,
                   model_path=model_path, device=args.device or _default_device())
    overrides = inference_overrides(options)
    group = _torchrun_group() if num_parts > 1 and args.num_parts is None else None
    from .runner import run_inferring

    try:
        code = _run_cases(partial(run_inferring, configs, overrides), args.quiet, parser.prog)
    finally:
        if group is not None:
            _merge_after_all_ranks(group, args.output)
    return code


def _run_lean(args: argparse.Namespace, parser: argparse.ArgumentParser, configs, model_path, num_parts: int,
              part_id: int) -> int:
    """``--lean``: :func:`scripts.cli.lean.run_lean` (no torch, no MONAI) with the same options and exit codes."""
    from .lean import run_lean

    if args.device and args.device != "cpu":
        parser.error(f"--lean runs on the CPU (ONNX Runtime): drop --device {args.device}")
    if num_parts > 1 and args.num_parts is None:
        parser.error("--lean under torchrun: give --num-parts and --part-id (each process is independent)")
    run = partial(run_lean, args.input, args.output, configs, model_path, output_format=args.output_format,
                  preview=args.preview, resume=args.resume, stop_on_error=args.stop_on_error,
                  progress=not args.quiet, pattern=args.pattern, num_parts=num_parts, part_id=part_id)
    return _run_cases(run, args.quiet, parser.prog)


def _run_cases(run: Callable[[], object], quiet: bool, prog: str) -> int:
    """Run the cases; 1 when some cases failed (listed in failures.csv), 0 when all are done."""
    from ..common.errors import find_in_chain
    from ..inference.streaming import CasesFailed

    try:
        if quiet:
            run()
        else:
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm():
                run()
    except Exception as exc:
        failed = find_in_chain(exc, CasesFailed)  # MONAI wraps what a config expression raises
        if failed is None:
            raise
        print(f"{prog}: {failed.message}", file=sys.stderr)
        return 1
    return 0


def _torchrun_group():
    """Under torchrun, a gloo group whose barriers let rank 0 merge after every rank is done (long timeout: the
    ranks' shares finish hours apart), and keep each rank alive until then: torchrun stops all ranks as soon as
    one exits non-zero, which a rank with a failed case does."""
    import datetime

    import torch.distributed as dist

    if not dist.is_available() or "MASTER_ADDR" not in os.environ:
        return None
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    return dist


def _merge_after_all_ranks(dist, output: str) -> None:
    from ..evaluation.cohort import merge_cohort

    dist.barrier()
    if dist.get_rank() == 0:
        rows, failures = merge_cohort(output)
        logging.getLogger(__name__).info("all %d ranks done: cohort.csv with %d cases, %d failures",
                                         dist.get_world_size(), rows, failures)
    dist.barrier()
    dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kidney-seg`` (``[project.scripts]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.quiet)
    from ..common.errors import report_input_error

    try:
        return run(args, parser)
    except Exception as exc:
        code = report_input_error(exc, prefix=f"{parser.prog}: ")
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
