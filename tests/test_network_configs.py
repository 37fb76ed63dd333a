"""Network overlays (``configs/networks/*.json``): every one instantiates through train, evaluate and inference,
passes the zoo's ``verify_net_in_out``, and names its own weights file; non-default networks run end to end."""

from __future__ import annotations


import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, verify_net_in_out

from conftest import BUNDLE_ROOT, run_bundle

CONFIGS = BUNDLE_ROOT / "configs"
TRAIN, EVALUATE, INFERENCE = (str(CONFIGS / f) for f in ("train.json", "evaluate.json", "inference.json"))
META = str(CONFIGS / "metadata.json")
OVERLAYS = sorted(p.stem for p in (CONFIGS / "networks").glob("*.json"))

# per network: the paper/bundle class, and overrides that make it tiny enough for CPU tests
NETWORKS = {
    "wp_unet": ("WPUNet", {"network_def#channels": [4, 8, 16], "network_def#strides": [2, 2]}),
    "sd_unet": ("SDUNet", {"network_def#channels": [4, 8, 16], "network_def#strides": [2, 2],
                           "network_def#norm": ["group", {"num_groups": 4}], "network_def#head_channels": 4}),
    "classic_unet": ("PlainUNet", {"network_def#channels": [4, 8, 16]}),
    "full_unet_2d": ("PocketUNet", {"network_def#features": 4, "network_def#depth": 2}),
    "pocket_unet_2d": ("PocketUNet", {"network_def#features": 4, "network_def#depth": 2}),
    "pocket_unet_3d": ("PocketUNet", {"network_def#features": 4, "network_def#depth": 2, "patch_size": [32, 32, 8]}),
}


def _overlay(name: str) -> str:
    return str(CONFIGS / "networks" / f"{name}.json")


def _parser(files: list[str], **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(files)
    parser["bundle_root"] = str(BUNDLE_ROOT)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def test_every_overlay_is_covered():
    assert OVERLAYS == sorted(NETWORKS), "add the new overlay to NETWORKS with tiny overrides"


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("workflow", ["train", "evaluate", "inference"])
def test_overlay_instantiates_network_and_names_weights(name, workflow):
    files = {"train": [TRAIN], "evaluate": [TRAIN, EVALUATE], "inference": [INFERENCE]}[workflow]
    parser = _parser([*files, _overlay(name)])
    net = parser.get_parsed_content("network_def")
    assert type(net).__name__ == NETWORKS[name][0]
    expected = "model.pt" if name == "wp_unet" else f"model_{name}.pt"
    if workflow == "train":  # the best model is saved by the validation's BestModelCheckpoint
        assert "@validate#best_model" in [str(h).replace("::", "#") for h in parser.get("validate#handlers")]
        assert parser.get_parsed_content("validate#best_model").path.name == expected
    else:
        assert parser.get_parsed_content("model_path").endswith("/" + expected)
    spatial_dims = 3 if name.endswith("_3d") else 2
    if workflow != "inference":
        assert parser.get("validate#inferer") == "@inferer"
    inferer = parser.get_parsed_content("inferer")
    # 2D: training validates with MONAI's SliceInferer; inference (MONAI Label's path) runs FastSliceInferer
    expected_2d = "FastSliceInferer" if workflow == "inference" else "SliceInferer"
    assert type(inferer).__name__ == ("SlidingWindowInferer" if spatial_dims == 3 else expected_2d)


def test_default_overlay_equals_bundle_default():
    """wp_unet.json restates the default network: loading it must not change anything."""
    for files in ([TRAIN], [INFERENCE]):
        assert _parser(files).get("network_def") == _parser([*files, _overlay("wp_unet")]).get("network_def")


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_verify_net_in_out(name):
    tiny = NETWORKS[name][1]
    overrides = {k: v for k, v in tiny.items() if k.startswith("network_def")}
    if name.endswith("_3d"):  # the metadata describes the 2D default; give the 3D patch shape
        overrides["_meta_#network_data_format#inputs#image#spatial_shape"] = [32, 32, 8]
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=[INFERENCE, _overlay(name)], device="cpu",
                      n=1, any=1, **overrides)




@pytest.mark.slow
@pytest.mark.parametrize("name", ["pocket_unet_3d", "sd_unet"])
def test_train_and_infer_through_the_same_workflows(name, phantom_dir, tmp_path):
    """One short training run and whole-volume inference with a non-default network, selected by one overlay."""
    tiny = {**NETWORKS[name][1], "slice_size": [64, 64]}
    ckpt = tmp_path / "models"
    result = run_bundle("training", [TRAIN, _overlay(name)], tiny=False, dataset_dir=str(phantom_dir), num_folds=2, epochs=1,
                  ckpt_dir=str(ckpt), output_dir=str(tmp_path / "train"), num_workers=0, progress_bar=False,
                  batch_size=1, **tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    weights = ckpt / f"model_{name}.pt"
    assert weights.is_file() and not (ckpt / "model.pt").exists()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    expected_dims = 5 if name.endswith("_3d") else 4
    assert state["head.weight" if "head.weight" in state else "decoder.head.2.weight"].dim() == expected_dims

    out = tmp_path / "inference"
    result = run_bundle("inferring", [INFERENCE, _overlay(name)], tiny=False, input_path=str(phantom_dir), output_dir=str(out),
                  ckpt_dir=str(ckpt), model_path=str(weights), **tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    for case in sorted(phantom_dir.glob("case_*")):
        image, seg = nib.load(case / "imaging.nii.gz"), nib.load(out / f"{case.name}.nii.gz")
        assert seg.shape == image.shape and np.allclose(seg.affine, image.affine, atol=1e-5)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
