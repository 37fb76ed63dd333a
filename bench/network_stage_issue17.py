"""Issue 17: why the channel-pruned WP-UNet's network stage inside the streaming run is slower than in the per-slice
table of ``bench/run.py`` (``network_table``).

Everything runs in one process, on the same preprocessed slices of one SYNTHETIC CT (``bench/run.py``'s ``build_ct``),
interleaved round by round so that the load of a shared machine hits every variant alike:

- ``table``: the network exactly as ``network_table`` times it (``prune_channels`` result, ``prepare_network``,
  ``predict_labels`` one slice at a time);
- ``config network``: the network the ``inferring`` workflow builds from ``configs/inference.json`` +
  ``configs/structured.json`` with those weights saved (``load_structured`` + ``load_weights`` + ``prepare_network``),
  called the same way: isolates weights/shapes/layout;
- ``segment() network stage``: :meth:`StreamingSegmenter.segment` on the whole CT, its ``network`` timing per slice
  that went through the network: adds the streaming path's calling pattern (index batches, warm-up inside the stage);
- with and without ``torch.set_flush_denormal(True)``.

    nice python bench/network_stage_issue17.py [--slices 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import json
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

from bench.run import build_ct, bundle_network, save_weights  # noqa: E402
from scripts.inference.fast_path import choose_fast_path, predict_labels, prepare_network  # noqa: E402


def per_slice(module, slices: torch.Tensor, path) -> float:
    start = time.perf_counter()
    for i in range(len(slices)):
        predict_labels(module, slices[i:i + 1], path)
    return (time.perf_counter() - start) / len(slices)


def layout(module: torch.nn.Module) -> dict:
    """What could differ between two copies of one network: shapes, strides, dtypes, module types."""
    return {name: (tuple(p.shape), p.stride(), str(p.dtype)) for name, p in module.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=40, help="slices of the SYNTHETIC 512x512 CT")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from monai.bundle import ConfigParser

    from scripts.data.ct_reader import read_ct
    from scripts.pruning.structured import prune_channels

    torch.manual_seed(0)
    channel = prune_channels(copy.deepcopy(bundle_network().eval()), torch.rand(1, 1, 256, 256), ratio=0.5,
                             round_to=8).eval()
    auto = choose_fast_path(channel, "cpu")
    table_module = prepare_network(channel, "cpu", auto)
    out = {"threads": torch.get_num_threads(), "fast_path": auto.describe()}
    with tempfile.TemporaryDirectory(prefix="issue17_stage_") as tmp:
        weights = save_weights(channel, Path(tmp) / "channel.pt")
        ct_path = build_ct(Path(tmp), args.slices, "kits")
        parser_ = ConfigParser()
        parser_.read_config([str(REPO / "configs" / c) for c in ("inference.json", "structured.json")])
        parser_.update({"model_path": str(weights), "bundle_root": str(REPO)})
        segmenter = parser_.get_parsed_content("segmenter")
        same = layout(segmenter.network) == layout(table_module)
        out["same_shapes_strides_dtypes"] = same
        out["config_fast_path"] = segmenter.fast_path.describe()
        out["same_weights"] = all(torch.equal(a, b) for a, b in zip(segmenter.network.state_dict().values(),
                                                                    table_module.state_dict().values()))
        ct = read_ct(ct_path, stream=False)
        import nibabel as nib

        from scripts.inference.streaming import ras_orientation

        ras = nib.orientations.apply_orientation(ct.voxels, ras_orientation(ct.affine))
        slices = torch.from_numpy(segmenter._preprocess(ct, ras))
        print(json.dumps(out), flush=True)
        rows: dict[str, list[float]] = {}
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            tag = " (flush denormals)" if flush else ""
            for _ in range(args.rounds):
                for name, fn in (("table", lambda: per_slice(table_module, slices, auto)),
                                 ("config network", lambda: per_slice(segmenter.network, slices, auto)),
                                 ("segment() network stage", lambda: _stage(segmenter, ct_path))):
                    rows.setdefault(name + tag, []).append(fn())
        torch.set_flush_denormal(False)
    out["ms_per_slice_median"] = {k: round(statistics.median(v) * 1000, 1) for k, v in rows.items()}
    out["ms_per_slice_all"] = {k: [round(x * 1000, 1) for x in v] for k, v in rows.items()}
    print("STAGE_RESULT " + json.dumps(out), flush=True)


def _stage(segmenter, ct_path) -> float:
    from scripts.data.ct_reader import read_ct

    segmenter.segment(read_ct(ct_path))
    t = segmenter.timings
    return t["network"] / max(1, t["slices"] - t["skipped_slices"])


if __name__ == "__main__":
    main()
