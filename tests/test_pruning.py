"""Post-training pruning: masks and rules (magnitude, std), scopes, permanence, storage, channel pruning, and the
``run pruning`` / ``run pruning_structured`` workflows on tiny synthetic phantoms."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.networks.nets import UNet, BasicUNet

from conftest import BUNDLE_ROOT, TINY_OVERRIDES, run_bundle
from scripts.common.errors import InputError
from scripts.networks import PlainUNet, PocketUNet, SDUNet, WPUNet
from scripts.pruning import (
    apply_pruning,
    check_pruning_flags,
    is_pruned,
    kept_channels,
    load_sparse_state_dict,
    make_permanent,
    prune_channels,
    pruning_roots,
    pruning_targets,
    save_checkpoint,
    save_sparse_state_dict,
    shrink_to_state_dict,
    sparsity_report,
)

TRAIN, PRUNE = str(BUNDLE_ROOT / "configs" / "train.json"), str(BUNDLE_ROOT / "configs" / "prune.json")
INFERENCE, STRUCTURED = str(BUNDLE_ROOT / "configs" / "inference.json"), str(BUNDLE_ROOT / "configs" / "structured.json")
EVALUATE = str(BUNDLE_ROOT / "configs" / "evaluate.json")


def _tiny_wpunet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2))


def _randomise(net: nn.Module) -> nn.Module:
    """Gaussian values in every trainable tensor, as a trained net has (BatchNorm starts at constant 1 / 0)."""
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    return net


def _generic_nets():
    return {
        "wpunet": _tiny_wpunet(),
        "basic_unet": BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(4, 4, 8, 8, 16, 4)),
        "wpunet_3level": WPUNet(channels=(8, 8, 16, 16), strides=(2, 2, 1), dropout=0.0),
        "monai_unet": UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2),
                           num_res_units=1, norm="batch"),
        # the rest of the bundle's family (scripts/networks)
        "sd_unet": SDUNet(channels=(8, 16, 32), strides=(2, 2), norm=("group", {"num_groups": 4}), head_channels=4),
        "plain_unet": PlainUNet(channels=(8, 16, 32)),
        "pocket_unet": PocketUNet(features=8, depth=2),
        "pocket_unet_3d": PocketUNet(3, features=8, depth=2),
    }


def _selected_sparsity(net: nn.Module, scope: str) -> list[float]:
    return [float((getattr(m, n) == 0).float().mean()) for m, n in pruning_targets(net, scope)]


@pytest.mark.parametrize("name", ["wpunet", "basic_unet", "monai_unet", "sd_unet", "plain_unet", "pocket_unet",
                                  "pocket_unet_3d"])
@pytest.mark.parametrize("scope", ["kernels", "all_trainable"])
def test_magnitude_reaches_target_sparsity_on_any_network(name, scope):
    for global_pruning in (True, False):
        net = _randomise(_generic_nets()[name])
        targets = apply_pruning(net, "magnitude", 0.7, scope, global_pruning)
        sizes = [getattr(m, n).numel() for m, n in targets]
        zeros = [int((getattr(m, n) == 0).sum()) for m, n in targets]
        if global_pruning:  # exactly round(0.7 * N) over the whole scope
            assert abs(sum(zeros) - 0.7 * sum(sizes)) <= 0.5
        else:  # round(0.7 * n) in every tensor
            assert all(abs(z - 0.7 * s) <= 0.5 for z, s in zip(zeros, sizes))
        report = sparsity_report(net)
        assert report["total_params"] == sum(p.numel() for p in _generic_nets()[name].parameters())
        if scope == "kernels":  # biases and norm affine stay dense
            kernel_names = {f"{mn}.weight" for mn, m in net.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
            assert all(layer["sparsity"] == 0 for layer in report["layers"] if layer["name"] not in kernel_names)


def test_kernels_scope_is_conv_and_linear_weights_only():
    net = _tiny_wpunet()
    targets = pruning_targets(net, "kernels")
    assert targets and all(isinstance(m, nn.modules.conv._ConvNd) and n == "weight" for m, n in targets)
    assert len(targets) == sum(isinstance(m, nn.Conv2d) for m in net.modules())
    assert len(pruning_targets(net, "all_trainable")) == len(list(net.parameters()))


def test_paper_wp_unet_count_with_all_trainable_scope():
    """50 % of every trainable tensor of the paper's WP-UNet (out_channels=1) leaves 1,297,569 nonzero
    (shared/reference/architectures.md, Target 1; paper: 1,297,441); kernels only leave 1,306,529."""
    for scope, expected in (("all_trainable", 1_297_569), ("kernels", 1_306_529)):
        torch.manual_seed(0)
        net = _randomise(WPUNet(out_channels=1))
        apply_pruning(net, "magnitude", 0.5, scope, global_pruning=False)
        report = sparsity_report(net)
        assert report["total_params"] == 2_595_137
        assert report["nonzero_params"] == expected


def test_std_rule_zeros_exactly_below_ratio_times_std():
    net = _randomise(_tiny_wpunet())
    dense = {n: p.detach().clone() for n, p in net.named_parameters()}
    apply_pruning(net, "std", scope="all_trainable", std_ratio=0.67)
    make_permanent(net)
    for name, param in net.named_parameters():
        original = dense[name]
        expected = original.abs() < 0.67 * original.std(unbiased=False) if original.numel() > 1 else \
            torch.zeros_like(original, dtype=torch.bool)
        assert torch.equal(param == 0, expected), name
    # Gaussian weights: P(|w| < 0.67 sigma) is about 0.50
    assert 0.4 < sparsity_report(net)["sparsity"] < 0.6


def test_bad_arguments_fail_clearly():
    net = _tiny_wpunet()
    with pytest.raises(ValueError, match="sparsity"):
        apply_pruning(net, sparsity=1.0)
    with pytest.raises(ValueError, match="method"):
        apply_pruning(net, method="random")
    with pytest.raises(ValueError, match="scope"):
        apply_pruning(net, scope="biases")


def test_masks_survive_fine_tuning_and_permanent_pruning_keeps_zeros(tmp_path):
    net = _randomise(_tiny_wpunet())
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-3)  # made before pruning, as in a config
    apply_pruning(net, "magnitude", 0.5, "kernels")
    masks = {name: buf.clone() for name, buf in net.named_buffers() if name.endswith("_mask")}
    assert masks and is_pruned(net)
    x, y = torch.rand(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32))
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    for _ in range(5):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    assert any(not torch.equal(before[n], p) for n, p in net.named_parameters())  # it did train
    for name, mask in masks.items():
        module_name, _, tensor = name.rpartition(".")
        weight = getattr(net.get_submodule(module_name), tensor[: -len("_mask")])
        assert torch.equal(weight[mask == 0], torch.zeros_like(weight[mask == 0])), name
    reference = net.eval()(x)
    assert make_permanent(net) == len(masks) and not is_pruned(net)
    state = net.state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    assert abs(sparsity_report(net)["sparsity"] - sparsity_report(_randomise(_tiny_wpunet()))["sparsity"]) > 0.3
    path = tmp_path / "model_pruned.pt"
    save_checkpoint(state, path)
    fresh = _tiny_wpunet(seed=1)
    fresh.load_state_dict(torch.load(path, weights_only=True)["model"])
    torch.testing.assert_close(fresh.eval()(x), reference)
    for name, mask in masks.items():
        assert int((fresh.state_dict()[name.replace("_mask", "")] == 0).sum()) >= int((mask == 0).sum())


def test_sparse_file_round_trips_bit_exactly_and_shrinks_with_sparsity(tmp_path):
    net = _randomise(_tiny_wpunet())
    apply_pruning(net, "magnitude", 0.9, "all_trainable")
    make_permanent(net)
    state = net.state_dict()
    state["extra.negative_zero"] = torch.tensor([-0.0, 0.0, 1.5, float("nan")])
    state["extra.half"] = torch.tensor([0.0, -2.0], dtype=torch.float16)
    save_checkpoint(state, tmp_path / "dense.pt")
    save_sparse_state_dict(state, tmp_path / "sparse.pt")
    loaded = load_sparse_state_dict(tmp_path / "sparse.pt")
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
        if value.is_floating_point():
            assert torch.equal(loaded[key].view(torch.uint8), value.view(torch.uint8)), key
        else:
            assert torch.equal(loaded[key], value), key
    dense_size, sparse_size = (tmp_path / "dense.pt").stat().st_size, (tmp_path / "sparse.pt").stat().st_size
    assert sparse_size < 0.4 * dense_size, (sparse_size, dense_size)
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="bad.pt"):
        load_sparse_state_dict(tmp_path / "bad.pt")


def test_channel_pruning_reports_networks_torch_pruning_cannot_trace():
    """Known limit of torch-pruning 1.6.1: MONAI's BasicUNet concat sizes are not inferred; say so, don't crash."""
    with pytest.raises(ValueError, match="BasicUNet"):
        prune_channels(_generic_nets()["basic_unet"], torch.rand(1, 1, 32, 32), ratio=0.5)


@pytest.mark.parametrize("name", ["wpunet", "wpunet_3level", "sd_unet", "plain_unet", "pocket_unet",
                                  "pocket_unet_3d"])
def test_channel_pruning_gives_a_smaller_net_with_the_same_output_shape(name, tmp_path):
    net = _randomise(_generic_nets()[name]).eval()
    x = torch.rand(2, 1, 16, 16, 4) if name.endswith("_3d") else torch.rand(2, 1, 32, 32)
    before = sum(p.numel() for p in net.parameters())
    prune_channels(net, x[:1], ratio=0.5)
    after = sum(p.numel() for p in net.parameters())
    assert after < 0.45 * before, (after, before)
    assert net(x).shape == (2, 3, *x.shape[2:])
    # saved as a plain state dict; a fresh network from the same constructor is resized to it
    save_checkpoint(net.state_dict(), tmp_path / "structured.pt")
    fresh = shrink_to_state_dict(_generic_nets()[name], torch.load(tmp_path / "structured.pt", weights_only=True)["model"])
    torch.testing.assert_close(fresh.eval()(x), net(x))


@pytest.mark.parametrize("out, ratio, round_to, kept", [
    (16, 0.5, 8, 8), (16, 0.3, 8, 8), (32, 0.3, 8, 24), (64, 0.3, 8, 48), (128, 0.3, 8, 88), (128, 0.3, 1, 90),
    (16, 0.0, 8, 16), (4, 0.5, 8, 4), (12, 0.9, 8, 8), (19, 0.0, 8, 19), (19, 0.1, 8, 16),
])
def test_kept_channels_rounds_to_a_multiple(out, ratio, round_to, kept):
    assert kept_channels(out, ratio, round_to) == kept


def _root_widths(net: nn.Module) -> dict[str, int]:
    return {name: m.out_channels for name, m in pruning_roots(net, []).items()}


def test_channel_rounding_keeps_multiples_of_round_to(tmp_path):
    net = _randomise(WPUNet(channels=(16, 24, 48), strides=(2, 2), dropout=0.0)).eval()
    x = torch.rand(2, 1, 32, 32)
    prune_channels(net, x[:1], ratio=0.3, round_to=8)
    widths = _root_widths(net)
    assert widths.pop("decoder.head") == 3
    assert all(w % 8 == 0 for w in widths.values()), widths
    assert widths["encoder.stages.2.block.conv2.pointwise"] == 32  # 48 * 0.7 = 33.6 -> 32, not the 34 of round_to=1
    assert net(x).shape == (2, 3, 32, 32)
    unrounded = prune_channels(_randomise(WPUNet(channels=(16, 24, 48), strides=(2, 2), dropout=0.0)).eval(),
                               x[:1], ratio=0.3)
    assert _root_widths(unrounded)["encoder.stages.2.block.conv2.pointwise"] == 34


def test_stage_ratios_prune_only_the_named_stages(tmp_path):
    net = _randomise(WPUNet(channels=(8, 16, 32), strides=(2, 2), dropout=0.0)).eval()
    before = _root_widths(net)
    x = torch.rand(2, 1, 32, 32)
    # longest prefix wins: encoder.stages.0 at 0.5, but its first conv at 0.75; decoder.stages.1 at 0.5; rest 0
    prune_channels(net, x[:1], ratio=0.0, stage_ratios={"encoder.stages.0": 0.5, "decoder.stages.1": 0.5,
                                                         "encoder.stages.0.block.conv1": 0.75})
    after = _root_widths(net)
    for name, width in before.items():
        if name == "encoder.stages.0.block.conv1":
            expected = width // 4
        elif name.startswith(("encoder.stages.0.", "decoder.stages.1.")):
            expected = width // 2
        else:
            expected = width
        assert after[name] == expected, (name, after[name], expected)
    assert net(x).shape == (2, 3, 32, 32)
    save_checkpoint(net.state_dict(), tmp_path / "structured.pt")
    fresh = shrink_to_state_dict(WPUNet(channels=(8, 16, 32), strides=(2, 2), dropout=0.0),
                                 torch.load(tmp_path / "structured.pt", weights_only=True)["model"])
    torch.testing.assert_close(fresh.eval()(x), net(x))


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 1.0}, "channel ratio"),
    ({"stage_ratios": {"encoder.stages.0": 1.5}}, "encoder.stages.0"),
    ({"stage_ratios": {"encoder.stage.0": 0.5}}, r"match no prunable convolution.*encoder\.stages\.0"),
    ({"stage_ratios": {"encoder.stages.0": True}}, "encoder.stages.0"),
    ({"round_to": 0}, "round_to"),
    ({"round_to": 2.0}, "round_to"),
])
def test_bad_channel_pruning_arguments_are_clear_value_errors(kwargs, match):
    net = _tiny_wpunet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        prune_channels(net, torch.rand(1, 1, 32, 32), **{"ratio": 0.5, **kwargs})
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing pruned


def _check_segmentations(out, phantom_dir, cases):
    for case in cases:
        image, seg = nib.load(phantom_dir / case / "imaging.nii.gz"), nib.load(out / f"{case}.nii.gz")
        assert seg.shape == image.shape and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}


@pytest.mark.parametrize("flag, value", [("sparsity", 1.5), ("method", "random"), ("scope", "bias"),
                                         ("finetune_epochs", -1), ("channel_ratio", "0.5"), ("std_ratio", -1.0),
                                         ("channel_stage_ratios", ["encoder.stages.0"]),
                                         ("channel_stage_ratios", {"encoder.stages.0": 1.0}),
                                         ("channel_round_to", 0), ("channel_round_to", "8"),
                                         ("channel_prune_steps", 0), ("channel_prune_steps", 2)])
def test_bad_pruning_flags_are_input_errors(flag, value):
    with pytest.raises(InputError, match=f"--(prune_)?{flag}"):
        check_pruning_flags(**{flag: value})


def test_bad_pruning_flag_on_the_command_line_gives_one_line(phantom_dir, tmp_path):
    result = run_bundle("pruning", [TRAIN, PRUNE], dataset_dir=str(phantom_dir), ckpt_dir=str(tmp_path),
                     model_path=str(BUNDLE_ROOT / "configs" / "train.json"), sparsity=1.5)
    assert result.returncode == 2 and "--sparsity" in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.slow
def test_pruning_workflow_end_to_end(phantom_dir, tiny_weights, tmp_path):
    """run pruning (magnitude, 1 fine-tuning epoch) -> inference, evaluation and TorchScript export of the result."""
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    shutil.copy(tiny_weights, ckpt / "model.pt")
    common = {"dataset_dir": str(phantom_dir), "num_folds": 2, "ckpt_dir": str(ckpt), "num_workers": 0}
    result = run_bundle("pruning", [TRAIN, PRUNE], sparsity=0.6, finetune_epochs=1, progress_bar=False,
                     output_dir=str(tmp_path / "prune"), **common)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "prune" / "pruning_report.json").read_text())
    assert set(report["dice"]) == {"before_pruning", "after_pruning", "after_finetuning"}
    assert {"val_kidney_dice", "val_tumour_dice"} <= set(report["dice"]["after_finetuning"])
    kernels = [layer for layer in report["params_after"]["layers"] if len(layer["shape"]) == 4]
    assert abs(sum(k["params"] - k["nonzero"] for k in kernels) / sum(k["params"] for k in kernels) - 0.6) < 0.01
    assert abs(report["scope_sparsity"] - 0.6) < 0.001
    assert report["nonzero_params"] < report["params_before"]["nonzero_params"]
    assert "after_finetuning" in (result.stdout + result.stderr)  # the table in the log
    dense = torch.load(ckpt / "model_pruned.pt", weights_only=True)["model"]
    sparse = load_sparse_state_dict(ckpt / "derived" / "model_pruned.sparse.pt")
    assert all(torch.equal(sparse[k], v) for k, v in dense.items())
    assert report["file_sizes_bytes"]["sparse"] < report["file_sizes_bytes"]["dense"]
    assert torch.equal(torch.load(ckpt / "model.pt", weights_only=True)["model"]["decoder.head.weight"],
                       torch.load(tiny_weights, weights_only=True)["model"]["decoder.head.weight"])  # input untouched

    out = tmp_path / "inference"
    result = run_bundle("inferring", INFERENCE, input_path=str(phantom_dir), output_dir=str(out),
                     model_path=str(ckpt / "model_pruned.pt"))
    assert result.returncode == 0, result.stderr[-3000:]
    _check_segmentations(out, phantom_dir, [c.name for c in sorted(phantom_dir.glob("case_*"))])

    result = run_bundle("evaluating", [TRAIN, EVALUATE], model_name="model_pruned", output_dir=str(tmp_path / "eval"),
                     **common)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "eval" / "metrics_summary.json").is_file()

    ts = tmp_path / "model_pruned.ts"
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file",
         str(ckpt / "model_pruned.pt"), "--meta_file", str(BUNDLE_ROOT / "configs" / "metadata.json"),
         "--config_file", INFERENCE, "--key_in_ckpt", "model", "--use_trace", "True", "--input_shape", "[1,1,64,64]",
         *sum(([f"--{k}", json.dumps(v)] for k, v in TINY_OVERRIDES.items()), [])],
        cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(ts))
    net = _tiny_wpunet().eval()
    net.load_state_dict(dense)
    x = torch.rand(1, 1, 64, 64)
    torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    {"channel_ratio": 0.5, "channel_stage_ratios": {}, "channel_round_to": 1},
    # the per-stage form, passed as on a command line: only encoder stage 0 and decoder stage 1 (full resolution)
    {"channel_ratio": 0.0, "channel_stage_ratios": "{'encoder.stages.0': 0.5, 'decoder.stages.1': 0.5}",
     "channel_round_to": 2},
    # iterative: 2 steps (ratio 0.25, then 0.5 after the first of 2 fine-tuning epochs)
    {"channel_ratio": 0.5, "channel_stage_ratios": {}, "channel_round_to": 1, "channel_prune_steps": 2,
     "finetune_epochs": 2},
])
def test_structured_pruning_workflow_and_inference(phantom_dir, tiny_weights, tmp_path, flags):
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    shutil.copy(tiny_weights, ckpt / "model.pt")
    result = run_bundle("pruning_structured", [TRAIN, PRUNE], progress_bar=False, dataset_dir=str(phantom_dir),
                        num_folds=2, ckpt_dir=str(ckpt), num_workers=0, output_dir=str(tmp_path / "prune"),
                        **{"finetune_epochs": 1, **flags})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "prune" / "structured_pruning_report.json").read_text())
    shapes = report["layer_shapes"]
    if flags.get("channel_prune_steps", 1) > 1:
        assert set(report["dice"]) == {"before_pruning", "after_pruning_step_1", "after_finetuning"}
        assert "channel pruning step 2/2" in result.stderr + result.stdout
        # the same final widths as one step: ratio 0.5 of (4, 8, 16)
        assert shapes["encoder.stages.2.block.conv2.pointwise.weight"][0] == 8
        assert shapes["encoder.stages.0.block.conv2.pointwise.weight"][0] == 2
    else:
        assert set(report["dice"]) == {"before_pruning", "after_pruning", "after_finetuning"}
    if flags["channel_ratio"]:
        assert report["total_params"] < 0.5 * report["params_before"]["total_params"]
    else:  # tiny net (4, 8, 16): the full-resolution stages go from 4 to 2 channels, the rest stay
        assert report["stage_ratios"] == {"encoder.stages.0": 0.5, "decoder.stages.1": 0.5}
        assert shapes["encoder.stages.0.block.conv2.pointwise.weight"][0] == 2
        assert shapes["decoder.stages.1.block.conv2.pointwise.weight"][0] == 2
        assert shapes["encoder.stages.1.block.conv2.pointwise.weight"][0] == 8
        assert shapes["decoder.head.weight"] == [3, 2, 1, 1]
    out = tmp_path / "inference"
    result = run_bundle("inferring", [INFERENCE, STRUCTURED], input_path=str(phantom_dir / "case_00001"),
                     output_dir=str(out), model_path=str(ckpt / "derived" / "model_structured.pt"))
    assert result.returncode == 0, result.stderr[-3000:]
    _check_segmentations(out, phantom_dir, ["case_00001"])


def test_unknown_stage_prefix_on_the_command_line_stops_before_evaluating(phantom_dir, tiny_weights, tmp_path):
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    shutil.copy(tiny_weights, ckpt / "model.pt")
    result = run_bundle("pruning_structured", [TRAIN, PRUNE], channel_stage_ratios="{'encoder.stage.0': 0.5}",
                        dataset_dir=str(phantom_dir), num_folds=2, ckpt_dir=str(ckpt), num_workers=0,
                        output_dir=str(tmp_path / "prune"), progress_bar=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "--channel_stage_ratios" in result.stderr and "encoder.stages.0" in result.stderr
    assert "Traceback" not in result.stderr and "val_" not in result.stderr, result.stderr[-3000:]


def test_channel_pruning_recipe_overlay_only_sets_prune_json_ids():
    """configs/prune_channels.json (the measured >= 2x recipe, docs/pruning.md) overrides ids of prune.json only."""
    from monai.bundle import ConfigParser

    recipe = json.loads((BUNDLE_ROOT / "configs" / "prune_channels.json").read_text())
    prune = json.loads((BUNDLE_ROOT / "configs" / "prune.json").read_text())
    assert set(recipe) <= set(prune), set(recipe) - set(prune)
    parser = ConfigParser()
    parser.read_config([TRAIN, str(BUNDLE_ROOT / "configs" / "demo.json"), PRUNE,
                        str(BUNDLE_ROOT / "configs" / "prune_channels.json")])
    assert parser.get_parsed_content("epochs") == 40 and parser.get_parsed_content("learning_rate") == 0.001
    assert check_pruning_flags(finetune_epochs=parser["finetune_epochs"], channel_ratio=parser["channel_ratio"],
                               channel_stage_ratios=parser["channel_stage_ratios"],
                               channel_round_to=parser["channel_round_to"])
