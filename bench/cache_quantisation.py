"""Does storing the windowed image as uint8 (the slice cache, issue 16) change what the network sees? Measured.

For each case of ``--data`` (default: the demo's held-out SYNTHETIC phantoms): the image through today's float32
chain (train.json's ``deterministic_transforms`` with ``--overlay``), and the same image quantised to uint8 and back
(:func:`scripts.data.slice_cache.quantise` / ``dequantise``). Both go through the trained network (``--model``,
default the demo's ``models/model.pt``) with the config's ``SliceInferer``; printed per case and as means: the
DiceCE loss of train.json for both, the kidney and tumour Dice of both against the label, and the fraction of voxels
whose predicted label differs.

    python bench/cache_quantisation.py --model models/model.pt --data demo_output/data/test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BUNDLE_ROOT))


def dice(pred: torch.Tensor, label: torch.Tensor, values) -> float:
    p, g = torch.isin(pred, torch.tensor(values)), torch.isin(label, torch.tensor(values))
    total = int(p.sum() + g.sum())
    return 1.0 if total == 0 else 2.0 * int((p & g).sum()) / total


def main() -> None:
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from scripts.common.weights import load_weights
    from scripts.data.datalist import find_kits_cases
    from scripts.data.slice_cache import dequantise, quantise

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--data", default="demo_output/data/test")
    parser.add_argument("--overlay", default="configs/demo.json")
    parser.add_argument("--output", default="")
    args = parser.parse_args()
    config = ConfigParser()
    config.read_config([str(BUNDLE_ROOT / "configs" / "train.json"), str(BUNDLE_ROOT / args.overlay)])
    config["device"] = "$torch.device('cpu')"
    chain = Compose(config.get_parsed_content("deterministic_transforms"))
    network = load_weights(config.get_parsed_content("network_def"), args.model).eval()
    inferer = config.get_parsed_content("inferer")
    loss = config.get_parsed_content("loss")
    rows = []
    for item in find_kits_cases(args.data):
        data = chain({key: os.path.join(args.data, value) for key, value in item.items()})
        fp32 = data["image"].as_tensor()[None]
        uint8 = dequantise(quantise(fp32))
        label = data["label"].as_tensor()[None].long()
        row = {"case": item["image"].split("/")[0], "max_abs_input_diff": float((fp32 - uint8).abs().max())}
        preds = {}
        with torch.no_grad():
            for name, image in (("fp32", fp32), ("uint8", uint8)):
                logits = inferer(image, network)
                preds[name] = logits.argmax(1)
                row[f"loss_{name}"] = float(loss(logits, label))
                row[f"kidney_dice_{name}"] = dice(preds[name], label[:, 0], (1, 2))
                row[f"tumour_dice_{name}"] = dice(preds[name], label[:, 0], (2,))
        row["voxels_changed"] = float((preds["fp32"] != preds["uint8"]).float().mean())
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k != "case"]
    summary = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    summary["max_abs_loss_diff"] = float(max(abs(r["loss_fp32"] - r["loss_uint8"]) for r in rows))
    summary["max_abs_kidney_dice_diff"] = float(max(abs(r["kidney_dice_fp32"] - r["kidney_dice_uint8"]) for r in rows))
    summary["max_abs_tumour_dice_diff"] = float(max(abs(r["tumour_dice_fp32"] - r["tumour_dice_uint8"]) for r in rows))
    summary["cases"] = len(rows)
    print("summary " + json.dumps(summary))
    if args.output:
        Path(args.output).write_text(json.dumps({"cases": rows, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
