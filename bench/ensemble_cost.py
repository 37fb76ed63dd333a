"""What the fold ensemble costs at inference (issue 16): ``run inferring`` with one model vs ``configs/ensemble.json``
over K fold models, on one SYNTHETIC 512x512 phantom, alternated in one process (same machine load for both).

Random-init weights of the network of ``--overlay`` (time does not depend on the weights). Prints the per-stage
seconds of the streaming path (``timings_path``) for each run and the medians.

    python bench/ensemble_cost.py --folds 5 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BUNDLE_ROOT))


def main() -> None:
    from monai.bundle import ConfigParser

    from scripts.reports.workflow import run_workflow_in_process
    from scripts.synthetic.phantoms import generate_dataset

    parser = argparse.ArgumentParser()
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--overlay", default="configs/demo.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ensemble_cost_"))
    generate_dataset(str(work / "data"), num_cases=1, seed=5, in_plane_size=512, slice_thickness_range=(2.5, 2.5))
    case = next((work / "data").glob("case_*"))
    config = ConfigParser()
    config.read_config([str(BUNDLE_ROOT / "configs" / "inference.json"), str(BUNDLE_ROOT / args.overlay)])
    for k in range(args.folds):
        torch.manual_seed(k)
        torch.save({"model": config.get_parsed_content("network_def", lazy=False).state_dict()},
                   work / f"model_fold{k}.pt")
    runs = {"single": [], f"ensemble_{args.folds}": []}
    for repeat in range(args.repeats):
        for name in runs:
            timings = work / f"{name}_{repeat}.json"
            overrides = {"input_path": str(case), "output_dir": str(work / name), "preview": False,
                         "timings_path": str(timings), "model_path": str(work / "model_fold0.pt")}
            files = ["configs/inference.json", args.overlay]
            if name != "single":
                files.append("configs/ensemble.json")
                overrides["ensemble_models"] = str(work / "model_fold*.pt")
                del overrides["model_path"]
            run_workflow_in_process("inferring", files, **overrides)
            runs[name].append(json.loads(timings.read_text())[0])
            print(name, json.dumps(runs[name][-1]), flush=True)
    summary = {}
    for name, results in runs.items():
        keys = [k for k, v in results[0].items() if isinstance(v, (int, float))]
        summary[name] = {k: round(statistics.median(r[k] for r in results), 3) for k in keys}
    print("summary " + json.dumps(summary))


if __name__ == "__main__":
    main()
