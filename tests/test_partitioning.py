"""UNet-P partitioning (paper 002): layer lists with explicit skips, Algorithm I, sub-models that chain to the
monolithic output, boundary tensors, TorchScript, UNet-PWP pruning per sub-model, the report workflow, and the exact
reproduction of Table 2 as a prefix table.

Tiny networks (channels (4, 8, 16), 32x32 inputs, a small 3D volume) keep every case well under a second; the
classic full-size U-Net is built once for the Table 2 check.
"""

from __future__ import annotations

import copy
import csv
import io
import pickle
import random

import pytest
import torch
import torch.nn as nn
from monai.bundle import ConfigParser
from monai.networks.nets import BasicUNet

from conftest import BUNDLE_ROOT
from scripts.networks import PlainUNet, PocketUNet, SDUNet, SeparableUNet, WPUNet, count_macs, count_parameters
from scripts.partitioning import (
    Layer,
    SubModel,
    boundary_table,
    layer_complexities,
    layer_list,
    live_activations,
    partition_points,
    prune_submodels,
    run_chain,
    run_layers,
    split_layers,
    split_network,
)
from scripts.reports.partitions import BEGIN, END, PARTITION_COLUMNS, TABLE2_COLUMNS, write_report
from scripts.partitioning.prefix_table import TABLE2_PREFIX_ENDS, prefix_table
from scripts.pruning import apply_pruning, make_permanent

GN4 = ("group", {"num_groups": 4})

# name -> (builder, input shape): every member of the family, tiny
FAMILY = {
    "wp_unet": (lambda: WPUNet(channels=(4, 8, 16), strides=(2, 2)), (2, 1, 32, 32)),
    "sd_unet": (lambda: SDUNet(channels=(4, 8, 16), strides=(2, 2), norm=GN4, head_channels=5), (2, 1, 32, 32)),
    "separable_unet_no_up_norm_no_dropout": (
        lambda: SeparableUNet(2, 1, 2, (4, 8, 8, 16), (2, 2, 2), 3, "relu", "instance", 0.0, True, False, None, None),
        (1, 1, 32, 32),
    ),
    "wp_unet_3d": (lambda: WPUNet(spatial_dims=3, channels=(4, 8), strides=(2,)), (1, 1, 8, 8, 4)),
    "classic_unet": (lambda: PlainUNet(channels=(4, 8, 16)), (2, 1, 32, 32)),
    "full_unet_2d": (lambda: PocketUNet(2, features=4, depth=2, pocket=False), (1, 1, 32, 32)),
    "pocket_unet_2d": (lambda: PocketUNet(2, features=4), (1, 1, 32, 32)),
    "pocket_unet_3d": (lambda: PocketUNet(3, features=4, depth=2), (1, 1, 16, 16, 4)),
}

# paper 002 Table 2 as printed: (Total Parameters, FLOPs)
PAPER_TABLE2 = [
    ("4.68422e+06", 2961178624), ("9.40384e+06", 3229614080), ("2.56588e+07", 5108662272),
    ("2.80186e+07", 5645533184), ("2.85432e+07", 5913968640), ("2.85432e+07", 5913968640),
    ("2.97231e+07", 6987710464), ("3.03132e+07", 7524581376), ("3.04444e+07", 7793016832),
    ("3.04444e+07", 7793016832), ("3.07394e+07", 8866758656), ("3.0887e+07", 9403629568),
    ("3.09198e+07", 9672065024), ("3.09198e+07", 9672065024), ("3.09936e+07", 10745806848),
    ("3.10305e+07", 11282677760), ("3.10307e+07", 11307843584),
]


def _built(name):
    torch.manual_seed(0)
    build, shape = FAMILY[name]
    net = build().eval()
    for module in net.modules():  # non-trivial norm statistics, so a wrong order or a skipped norm shows
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.running_mean is not None:
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return net, torch.randn(shape)


def _even_ranges(n, parts):
    cuts = [round(i * n / parts) for i in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


@pytest.mark.parametrize("name", list(FAMILY))
def test_layer_list_reuses_every_parameter_once_and_computes_the_forward(name):
    net, x = _built(name)
    layers = layer_list(net)
    assert len({layer.name for layer in layers}) == len(layers)
    assert layers[-1].output == "logits"
    layer_params = [id(p) for layer in layers for p in layer.module.parameters()]
    assert len(layer_params) == len(set(layer_params))
    assert set(layer_params) == {id(p) for p in net.parameters()}  # the network's own tensors, none missed
    with torch.no_grad():
        torch.testing.assert_close(run_layers(layers, x)["logits"], net(x), rtol=0, atol=1e-6)


def test_classic_unet_layers_are_in_keras_order():
    names = [layer.name for layer in layer_list(PlainUNet())]
    assert len(names) == 31  # Keras model.layers of the classic U-Net minus the input layer
    assert names[:13] == ["enc0_conv1", "enc0_conv2", "pool0", "enc1_conv1", "enc1_conv2", "pool1", "enc2_conv1",
                          "enc2_conv2", "pool2", "enc3_conv1", "enc3_conv2", "pool3", "bottleneck_conv1"]
    assert names[13:18] == ["bottleneck_conv2", "up3", "concat3", "dec3_conv1", "dec3_conv2"]
    assert names[-1] == "head"
    concat = layer_list(PlainUNet())[15]
    assert concat.inputs == ("up3", "enc3_conv2")  # PlainUNet.forward: cat([up(x), skip])


def test_unsupported_networks_raise_type_error():
    class Reordered(WPUNet):
        def forward(self, x):
            return super().forward(x).flip(1)

    for network in (nn.Conv2d(1, 1, 3), BasicUNet(2, 1, 3, features=(4, 4, 8, 16, 32, 4)), Reordered()):
        with pytest.raises(TypeError, match=type(network).__name__):
            layer_list(network)


@pytest.mark.parametrize("name", list(FAMILY))
def test_every_partition_count_chains_to_the_monolithic_output(name):
    net, x = _built(name)
    n = len(layer_list(net))
    with torch.no_grad():
        expected = net(x)
        for parts in range(1, n + 1):  # exactly `parts` sub-models, cuts spread over the list
            submodels = split_layers(layer_list(net), _even_ranges(n, parts))
            assert len(submodels) == parts
            torch.testing.assert_close(run_chain(submodels, x), expected, rtol=0, atol=1e-6)
        for measure in ("macs", "params"):  # Algorithm I at every max_partitions (split_network's own steps)
            layers = layer_list(net)
            complexities = layer_complexities(layers, measure, tuple(x.shape))
            for k in range(1, n + 1):
                submodels = split_layers(layers, partition_points(complexities, k))
                assert 1 <= len(submodels) <= k
                torch.testing.assert_close(run_chain(submodels, x), expected, rtol=0, atol=1e-6)
            for k in (1, n):
                submodels = split_network(net, k, measure, tuple(x.shape))
                torch.testing.assert_close(run_chain(submodels, x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["wp_unet", "sd_unet", "classic_unet", "pocket_unet_3d"])
def test_boundary_tensors_are_exactly_what_is_sent_and_needed(name):
    net, x = _built(name)
    layers = layer_list(net)
    with torch.no_grad():
        reference = run_layers(layers, x)
        submodels = split_layers(layers, _even_ranges(len(layers), 5))
        table = boundary_table(submodels, tuple(x.shape))
        tensors, position = (x,), 0
        for sub, row in zip(submodels, table):
            assert sub.input_names == (["input"] if position == 0 else submodels[row["index"] - 1].output_names)
            tensors = sub(*tensors)
            position += len(sub.layer_names)
            assert isinstance(tensors, tuple) and len(tensors) == len(sub.output_names)
            for tensor, tensor_name in zip(tensors, sub.output_names):
                assert torch.equal(tensor, reference[tensor_name])  # each name labels the tensor sent
            # needed: every name is read after the boundary (or is the final output) ...
            later_reads = {n for layer in layers[position:] for n in layer.inputs} | {"logits"}
            assert set(sub.output_names) <= later_reads
            # ... and sufficient: everything read later that exists already is sent
            produced = {"input"} | {layer.output for layer in layers[:position]}
            assert later_reads & produced <= set(sub.output_names) | ({"logits"} - produced)
            assert sub.output_names[0] == (layers[position - 1].output)  # the current tensor first
            assert row["boundary"] == sub.output_names
            assert row["boundary_shapes"] == [list(t.shape) for t in tensors]
            assert row["boundary_bytes"] == sum(4 * t.numel() for t in tensors)
        assert table[-1]["boundary"] == ["logits"]
        assert table[-1]["cumulative_params_share"] == pytest.approx(1.0)
        assert sum(row["params"] for row in table) == count_parameters(net)["trainable"]


def test_boundary_after_the_bottleneck_carries_every_skip():
    layers = layer_list(PlainUNet(channels=(4, 8, 16, 32, 64)))
    cut = [layer.name for layer in layers].index("bottleneck_conv1") + 1
    assert live_activations(layers, cut) == ["bottleneck_conv1", "enc0_conv2", "enc1_conv2", "enc2_conv2",
                                             "enc3_conv2"]
    assert live_activations(layers, 0) == ["input"]
    assert live_activations(layers, len(layers)) == ["logits"]


def _check_partition(complexities, k, ranges):
    target = sum(complexities) / k
    assert ranges[0][0] == 0 and ranges[-1][1] == len(complexities)
    assert all(a < b for a, b in ranges) and all(ranges[i][1] == ranges[i + 1][0] for i in range(len(ranges) - 1))
    assert 1 <= len(ranges) <= k
    for start, end in ranges[:-1]:  # the budget: <= target, unless a single layer alone exceeds it
        part = complexities[start:end]
        assert sum(part) <= target * (1 + 1e-12) or sum(c > 0 for c in part) == 1
        assert part[0] > 0 or start == 0  # no sub-model starts with a zero-complexity layer (cut only before work)


def test_algorithm_one_respects_budget_and_order():
    assert partition_points([1, 1, 1, 1], 2) == [(0, 2), (2, 4)]
    assert partition_points([1, 1, 1, 1], 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert partition_points([5, 1, 1, 1], 2) == [(0, 1), (1, 4)]  # the oversized layer stands alone
    assert partition_points([1, 9, 0, 9, 0, 1], 3) == [(0, 1), (1, 3), (3, 6)]  # zero-cost layers stay attached
    assert partition_points([3, 3, 4], 2) == [(0, 1), (1, 3)]  # at most 2: the last takes the rest
    assert partition_points([0, 0, 0], 3) == [(0, 3)]
    assert partition_points([7], 1) == [(0, 1)]
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 40)
        complexities = [rng.choice([0, 0, rng.random(), rng.random() * 100]) for _ in range(n)]
        k = rng.randint(1, n)
        _check_partition(complexities, k, partition_points(complexities, k))


@pytest.mark.parametrize("measure", ["macs", "params"])
def test_split_network_balances_the_chosen_measure(measure):
    net, x = _built("wp_unet")
    complexities = layer_complexities(layer_list(net), measure, tuple(x.shape))
    whole = count_parameters(net)["trainable"] if measure == "params" else count_macs(net, tuple(x.shape))
    assert sum(complexities) == whole
    for k in (2, 3, 4):
        submodels = split_network(net, k, measure, tuple(x.shape))
        table = boundary_table(submodels, tuple(x.shape))
        sizes = [row[measure] for row in table]
        ranges, start = [], 0
        for sub in submodels:
            ranges.append((start, start + len(sub.layer_names)))
            start += len(sub.layer_names)
        assert ranges == partition_points(complexities, k)
        _check_partition(complexities, k, ranges)
        assert sum(sizes) == sum(complexities)


def test_bad_partition_counts_and_measures_fail_clearly():
    net, x = _built("wp_unet")
    n = len(layer_list(net))
    for bad in (0, -1, n + 1, 2.5, True):
        with pytest.raises(ValueError, match=f"num_partitions={bad!r}"):
            split_network(net, bad, example_shape=tuple(x.shape))
        with pytest.raises(ValueError, match=f"max_partitions={bad!r}"):
            partition_points([1.0] * n, bad)
    with pytest.raises(ValueError, match=f"number of layers of WPUNet \\({n}\\)"):
        split_network(net, n + 1, example_shape=tuple(x.shape))
    with pytest.raises(ValueError, match="measure"):
        split_network(net, 2, measure="flops", example_shape=tuple(x.shape))
    with pytest.raises(ValueError, match="example_shape"):
        split_network(net, 2, example_shape=(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match=">= 0"):
        partition_points([1.0, -2.0], 1)
    with pytest.raises(ValueError, match="empty"):
        partition_points([], 1)
    with pytest.raises(ValueError, match="consecutive"):
        split_layers(layer_list(net), [(0, 3), (4, n)])


def test_split_keeps_the_network_mode_and_shares_its_parameters():
    net, x = _built("wp_unet")
    net.train()
    submodels = split_network(net, 3, example_shape=tuple(x.shape))
    assert net.training and all(m.training for m in net.modules())  # counting MACs did not leave it in eval
    assert all(sub.training for sub in submodels)
    net.eval()  # the network alone, not the sub-models' own wrappers: tables must not flip any flag either
    boundary_table(submodels, tuple(x.shape))
    layer_complexities(layer_list(net), "macs", tuple(x.shape))
    assert not any(m.training for m in net.modules())
    for sub in submodels:
        sub.eval()
    with torch.no_grad():
        net.decoder.head.bias.add_(1.0)  # a change to the network (e.g. loading a checkpoint) reaches the parts
        torch.testing.assert_close(run_chain(submodels, x), net(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", list(FAMILY))
def test_submodels_trace_script_and_save_as_torchscript(name):
    net, x = _built(name)
    submodels = split_network(net, 3, example_shape=tuple(x.shape))
    scripted, traced, tensors = [], [], (x,)
    with torch.no_grad():
        for sub in submodels:
            module = torch.jit.script(sub)
            buffer = io.BytesIO()
            torch.jit.save(module, buffer)
            buffer.seek(0)
            scripted.append(torch.jit.load(buffer))
            traced.append(torch.jit.trace(sub, tensors))
            tensors = sub(*tensors)
        expected = net(x)
        torch.testing.assert_close(run_chain(scripted, x), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(run_chain(traced, x), expected, rtol=0, atol=1e-6)


def test_parameter_free_submodel_runs_where_its_input_is():
    net, x = _built("classic_unet")
    layers = layer_list(net)
    pool = [layer.name for layer in layers].index("pool0")
    submodels = split_layers(layers, [(0, pool), (pool, pool + 1), (pool + 1, len(layers))])
    assert list(submodels[1].parameters()) == [] and submodels[1].layer_names == ["pool0"]
    with torch.no_grad():
        torch.testing.assert_close(run_chain(submodels, x), net(x), rtol=0, atol=1e-6)


def test_copy_and_pickle_keep_a_working_submodel():
    net, x = _built("sd_unet")
    submodels = split_network(net, 2, example_shape=tuple(x.shape))
    with torch.no_grad():
        expected = submodels[0](x)
        for clone in (copy.deepcopy(submodels[0]), pickle.loads(pickle.dumps(submodels[0]))):
            assert isinstance(clone, SubModel)
            assert (clone.input_names, clone.output_names) == (submodels[0].input_names, submodels[0].output_names)
            assert not clone.training
            for a, b in zip(clone(x), expected):
                assert torch.equal(a, b)
    layer = layer_list(net)[0]
    with pytest.raises(ValueError, match="reads"):
        SubModel([layer], ["something_else"], [layer.output])
    assert isinstance(layer, Layer)


def test_table2_is_reproduced_exactly_as_a_prefix_table():
    network = PlainUNet(out_channels=3)  # the classic U-Net, 31,030,723 parameters (paper 002 Table 1)
    assert count_parameters(network)["trainable"] == 31_030_723
    rows = prefix_table(network, TABLE2_PREFIX_ENDS, (1, 1, 256, 256))
    assert len(rows) == 17
    assert [(f"{row['params']:g}", row["paper_flops"]) for row in rows] == PAPER_TABLE2
    assert rows[-1]["params"] == 31_030_723 and rows[-1]["macs"] == 48_100_278_272  # 2 x MACs = Table 1's FLOPs
    # nested prefixes: non-decreasing, each containing the previous one
    assert all(a["params"] <= b["params"] and a["keras_index"] < b["keras_index"] for a, b in zip(rows, rows[1:]))


@pytest.mark.parametrize("name", ["wp_unet", "sd_unet", "classic_unet", "pocket_unet_3d"])
def test_unet_pwp_prunes_each_submodel_by_its_own_tensors_std(name):
    net, x = _built(name)
    dense = {n: p.detach().clone() for n, p in net.named_parameters()}
    reference = copy.deepcopy(net)  # the monolithic network std-pruned the usual way
    apply_pruning(reference, method="std", std_ratio=0.67)
    make_permanent(reference)
    submodels = split_network(net, 3, example_shape=tuple(x.shape))
    reports = prune_submodels(submodels, std_ratio=0.67)
    assert len(reports) == len(submodels) and all(0.3 < r["sparsity"] < 0.7 for r in reports if r["total_params"])
    checked = 0
    for sub in submodels:
        for module in sub.modules():
            if isinstance(module, nn.modules.conv._ConvNd):
                name_of = next(n for n, p in net.named_parameters() if p is module.weight)
                before = dense[name_of]
                keep = before.abs() >= 0.67 * before.std(unbiased=False)
                assert torch.equal(module.weight[keep], before[keep])  # kept: unchanged
                assert not module.weight[~keep].any()  # below the threshold: zero
                assert module.bias is None or torch.equal(module.bias, dense[name_of[:-len("weight")] + "bias"])
                checked += 1
    assert checked == sum(isinstance(m, nn.modules.conv._ConvNd) for m in net.modules())
    with torch.no_grad():
        torch.testing.assert_close(run_chain(submodels, x), reference(x), rtol=0, atol=1e-6)
        scripted = [torch.jit.script(sub) for sub in submodels]
        torch.testing.assert_close(run_chain(scripted, x), reference(x), rtol=0, atol=1e-6)


def _partition_config():
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "partition.json"))
    return parser


def test_partition_config_quotes_the_paper_and_builds_its_networks():
    parser = _partition_config()
    assert [tuple(row) for row in parser.get_parsed_content("table2_paper#rows")] == PAPER_TABLE2
    networks = parser.get_parsed_content("networks")
    assert [type(e["network_def"]) for e in networks] == [WPUNet, PlainUNet]
    assert networks[1]["network_def"] is parser.get_parsed_content("classic_unet")
    assert parser.get_parsed_content("partition_counts") == [2, 3, 4]


def test_report_writes_tables_and_keeps_the_prose(tmp_path):
    (tmp_path / "partitioning.md").write_text(f"# prose kept\n\n{BEGIN}\nold table\n{END}\n\ntrailing prose\n")
    tiny_classic = PlainUNet(channels=(2, 4, 8, 16, 32))  # same layer names as the paper's, other numbers
    networks = [{"network": "tiny WP", "network_def": WPUNet(channels=(4, 8, 16), strides=(2, 2))}]
    result = write_report(networks, tiny_classic, PAPER_TABLE2, str(tmp_path), (2, 3), ("macs",), (1, 1, 32, 32))
    text = (tmp_path / "partitioning.md").read_text()
    assert text.startswith("# prose kept") and "trailing prose" in text and "old table" not in text
    assert text.count(BEGIN) == 1 and "tiny WP, by MACs, max_partitions = 3" in text
    with open(tmp_path / "partitioning.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == PARTITION_COLUMNS and len(rows) == len(result["partitions"])
    for k in (2, 3):
        group = [r for r in rows if r["max_partitions"] == str(k)]
        assert sum(int(r["params"]) for r in group) == count_parameters(networks[0]["network_def"])["trainable"]
        assert group[-1]["boundary"] == "logits" and group[-1]["boundary_bytes"] == str(4 * 3 * 32 * 32)
    with open(tmp_path / "unet_p_table2.csv") as f:
        table2 = list(csv.DictReader(f))
    assert list(table2[0]) == TABLE2_COLUMNS and len(table2) == 17
    assert all(r["match"] == "False" for r in table2)  # a different network does not "match" the paper


def test_committed_table2_csv_holds_the_papers_numbers():
    with open(BUNDLE_ROOT / "docs" / "unet_p_table2.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(f"{int(r['params']):g}", int(r["paper_flops"])) for r in rows] == PAPER_TABLE2
    assert [r["end_layer"] for r in rows] == list(TABLE2_PREFIX_ENDS) and all(r["match"] == "True" for r in rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here); the CPU tests cover the rest")
def test_run_chain_moves_activations_between_cuda_and_cpu():
    net, x = _built("wp_unet")
    with torch.no_grad():
        expected = net(x)
        submodels = split_network(net, 3, example_shape=tuple(x.shape))
        submodels[0].cuda()  # first part on the GPU, the others on the CPU: run_chain moves the boundary tensors
        tf32, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False
        try:
            torch.testing.assert_close(run_chain(submodels, x), expected, rtol=1e-4, atol=1e-4)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        table = boundary_table(submodels, tuple(x.shape))
        assert sum(row["params"] for row in table) == count_parameters(net)["trainable"]
