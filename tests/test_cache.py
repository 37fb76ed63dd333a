"""The slice cache, the cached datasets, the fold runner and the fold ensemble (issue 16), on SYNTHETIC phantoms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from conftest import BUNDLE_ROOT, TINY_OVERRIDES, run_bundle, run_inference
from scripts.data.datalist import find_kits_cases
from scripts.data.slice_cache import LEVELS, SliceCache
from scripts.data.slice_dataset import CachedSliceDataset, CachedVolumeDataset, training_dataset

SLICE = [64, 64]


def _config(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "train.json"))
    for key, value in {**TINY_OVERRIDES, "slice_size": SLICE, **overrides}.items():
        parser[key] = value
    return parser


def _items(dataset_dir) -> list[dict]:
    return [{key: os.path.join(dataset_dir, value) for key, value in item.items()} for item in find_kits_cases(dataset_dir)]


def _cache(cache_dir, workers: int = 0, **overrides) -> SliceCache:
    """The SliceCache exactly as train.json builds it (its deterministic_transforms and settings)."""
    parser = _config(cache_dir=str(cache_dir), preprocessing_workers=workers, **overrides)
    return parser.get_parsed_content("slice_cache")


@pytest.fixture(scope="module")
def built(phantom_dir, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache")
    cache = _cache(cache_dir)
    return cache, cache.build(_items(phantom_dir))


def test_round_trip_equals_todays_preprocessing_within_uint8_quantisation(phantom_dir, built):
    cache, index = built
    today = Compose(_config().get_parsed_content("deterministic_transforms"))
    for item in _items(phantom_dir):
        reference = today(dict(item))
        case = os.path.basename(os.path.dirname(item["image"]))
        volume = CachedVolumeDataset([item], cache)[0]
        assert volume["image"].shape == reference["image"].shape
        error = (volume["image"] - reference["image"].as_tensor()).abs().max().item()
        assert error <= 0.5 / LEVELS + 1e-6, f"{case}: {error} above half a uint8 level"
        assert torch.equal(volume["label"], reference["label"].as_tensor().to(torch.uint8))
        entry = index["cases"][case]
        labels = reference["label"][0].numpy()
        for c in (1, 2):
            has = np.nonzero((labels == c).any(axis=(0, 1)))[0].tolist()
            assert entry["class_slices"][str(c)] == has
            assert entry["class_voxels"][str(c)] == [int((labels[..., z] == c).sum()) for z in has]
    assert json.loads((cache.cache_dir / "index.json").read_text())["cases"].keys() == index["cases"].keys()


def test_slices_are_drawn_one_two_two_and_hold_their_class(phantom_dir, built):
    cache, _ = built
    dataset = CachedSliceDataset(_items(phantom_dir)[:1], cache, class_ratios=[1, 2, 2], slices_per_volume=3000)
    dataset.set_random_state(0)
    counts = np.zeros(3)
    for i in range(len(dataset)):
        item = dataset[i]
        counts[dataset.last_class] += 1
        assert item["image"].shape == (1, *SLICE) and item["image"].dtype == torch.float32
        assert (item["label"] == dataset.last_class).any(), "a slice drawn for a class must hold it"
    # 1:2:2 -> 0.2, 0.4, 0.4 (3000 draws: standard error about 0.009)
    np.testing.assert_allclose(counts / counts.sum(), [0.2, 0.4, 0.4], atol=0.04)


def test_without_cache_dir_training_keeps_the_in_ram_cache_dataset(phantom_dir):
    from monai.data import CacheDataset

    dataset = training_dataset(_items(phantom_dir)[:1], transform=None, slice_cache=SliceCache(""), cache_rate=0.0)
    assert isinstance(dataset, CacheDataset)


def test_rerun_skips_fresh_entries_and_rebuilds_stale_ones(phantom_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    items = _items(data)
    cache = _cache(tmp_path / "cache")
    cache.build(items)

    def stamps():
        return {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npy")}

    before = stamps()
    cache.build(items)
    assert stamps() == before, "an up-to-date cache was rewritten"
    os.utime(items[0]["image"])  # touched, same bytes: kept (hash unchanged)
    cache.build(items)
    assert stamps() == before
    image = nib.load(items[1]["image"])  # new content: rebuilt, and only that case
    voxels = np.asarray(image.dataobj) - 50
    nib.save(nib.Nifti1Image(voxels.astype(np.int16), image.affine, image.header), items[1]["image"])
    cache.build(items)
    after = stamps()
    changed = {name for name in after if after[name] != before[name]}
    assert changed == {"case_00001.npy"}
    # other settings (another HU window): every entry is stale
    _cache(tmp_path / "cache", hu_window=[-100, 300]).build(items)
    assert all(stamps()[name] != after[name] for name in after)


KILLING_CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path[:0] = [{root!r}, {root!r} + "/tests"]
    from test_cache import _cache, _items
    import scripts.data.slice_cache as sc
    write_text = sc.atomic_write_text
    def dying_write_text(path, text):
        if str(path).endswith({victim!r}):   # the array is written, the entry not yet: SIGKILL this worker
            os.kill(os.getpid(), signal.SIGKILL)
        write_text(path, text)
    sc.atomic_write_text = dying_write_text
    _cache({cache!r}, workers=1).build(_items({data!r}))
""")


def test_a_killed_preprocessing_run_leaves_no_half_entry_and_resumes(phantom_dir, tmp_path):
    cache_dir = tmp_path / "cache"
    script = KILLING_CHILD.format(root=str(BUNDLE_ROOT), victim="case_00002.json", cache=str(cache_dir),
                                  data=str(phantom_dir))
    result = subprocess.run([sys.executable, "-c", script], cwd=BUNDLE_ROOT, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)})
    assert result.returncode != 0, "the worker was meant to be killed"
    assert "killed" in result.stderr or "signal" in result.stderr.lower(), result.stderr[-2000:]
    assert (cache_dir / "case_00002.npy").is_file() and not (cache_dir / "case_00002.json").exists()
    done = {p.stem for p in cache_dir.glob("case_*.json")}
    assert "case_00003" not in done and done <= {"case_00000", "case_00001"}
    stamps = {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("case_*.npy") if p.stem in done}

    cache = _cache(cache_dir)
    index = cache.build(_items(phantom_dir))
    assert sorted(index["cases"]) == [f"case_{i:05d}" for i in range(4)]
    assert {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("case_*.npy") if p.stem in done} == stamps
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")], "temporary files left behind"
    assert CachedVolumeDataset(_items(phantom_dir)[2:3], cache)[0]["image"].shape[-1] == index["cases"]["case_00002"]["shape"][0]


def test_a_corrupt_case_stops_preprocessing_with_one_line_naming_it(phantom_dir, tmp_path):
    """Damage the header checks cannot see (NaN voxels in a float CT) is found in a preprocessing worker; the run
    still ends with one line naming the file."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    victim = data / "case_00001" / "imaging.nii.gz"
    image = nib.load(victim)
    voxels = np.asarray(image.dataobj, dtype=np.float32)
    voxels[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(voxels, image.affine), victim)
    result = run_bundle("preprocessing", "configs/train.json", dataset_dir=str(data), cache_dir=str(tmp_path / "c"),
                        num_folds=2, preprocessing_workers=1)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(victim) in errors[0] and "NaN" in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_fold_ensemble_is_the_mean_of_the_folds_softmax(tmp_path):
    from scripts.inference.ensemble import FoldEnsemble, fold_ensemble
    from scripts.networks import WPUNet

    files, nets = [], []
    for k in range(3):
        torch.manual_seed(k)
        net = WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)).eval()
        files.append(tmp_path / f"model_fold{k}.pt")
        torch.save({"model": net.state_dict()}, files[-1])
        nets.append(net)
    template = WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2))
    ensemble = fold_ensemble(template, str(tmp_path / "model_fold*.pt"))
    assert isinstance(ensemble, FoldEnsemble) and len(ensemble.members) == 3
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(n(x), dim=1) for n in nets]).mean(0)
        got = torch.softmax(ensemble(x), dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(ensemble(x).argmax(1), expected.argmax(1))


def test_ensemble_overlay_of_identical_folds_segments_like_the_single_model(phantom_dir, tiny_weights, tmp_path):
    import shutil

    for k in range(2):
        shutil.copyfile(tiny_weights, tmp_path / f"model_fold{k}.pt")
    case = phantom_dir / "case_00000"
    run_inference(case, tmp_path / "single", tiny_weights, preview=False)
    from scripts.reports.workflow import run_workflow_in_process

    run_workflow_in_process("inferring", ["configs/inference.json", "configs/ensemble.json"], input_path=str(case),
                            output_dir=str(tmp_path / "ensemble"), num_workers=0, preview=False,
                            ensemble_models=str(tmp_path / "model_fold*.pt"), **TINY_OVERRIDES)
    single = nib.load(tmp_path / "single" / "case_00000.nii.gz").get_fdata()
    ensemble = nib.load(tmp_path / "ensemble" / "case_00000.nii.gz").get_fdata()
    np.testing.assert_array_equal(ensemble, single)


def test_fold_runner_trains_each_fold_in_its_own_folder_and_publishes_model_fold_k(tmp_path):
    from scripts.training.folds import main

    calls = []

    def fake_run(command):
        calls.append(command)
        fold = command[command.index("--fold") + 1]
        ckpt = command[command.index("--ckpt_dir") + 1]
        os.makedirs(ckpt, exist_ok=True)
        torch.save({"model": {"fold": torch.tensor(int(fold))}}, os.path.join(ckpt, "model.pt"))
        return subprocess.CompletedProcess(command, 0)

    import scripts.training.folds as folds

    original = folds.subprocess.run
    folds.subprocess.run = fake_run
    try:
        published = main(["--dataset_dir", "D", "--num_folds", "3", "--ckpt_dir", str(tmp_path), "--epochs", "2"])
        assert [p.name for p in published] == ["model_fold0.pt", "model_fold1.pt", "model_fold2.pt"]
        for k, command in enumerate(calls):
            assert command[command.index("--ckpt_dir") + 1] == str(tmp_path / f"fold_{k}")
            assert command[-4:-2] == ["--epochs", "2"]
            assert torch.load(published[k], weights_only=True)["model"]["fold"].item() == k
        main(["--dataset_dir", "D", "--num_folds", "3", "--ckpt_dir", str(tmp_path)])
        assert len(calls) == 3, "finished folds are not retrained"
    finally:
        folds.subprocess.run = original


@pytest.mark.slow
def test_two_process_gloo_training_from_the_cache(phantom_dir, tmp_path):
    """configs/multi_gpu_train.json with --cache_dir: rank 0 builds the cache, the DistributedSampler splits the
    slices, one epoch trains and validates on the cached volumes (CPU, gloo)."""
    configs = str([str(BUNDLE_ROOT / "configs" / "train.json"), str(BUNDLE_ROOT / "configs" / "multi_gpu_train.json")])
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29651",
            "-m", "monai.bundle", "run", "training", "--config_file", configs, "--bundle_root", str(BUNDLE_ROOT),
            "--dataset_dir", str(phantom_dir), "--num_folds", "2", "--cache_dir", str(tmp_path / "cache"),
            "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "train"), "--epochs", "1",
            "--num_workers", "0", "--preprocessing_workers", "0", "--progress_bar", "False",
            *sum(([f"--{k}", json.dumps(v)] for k, v in {**TINY_OVERRIDES, "slice_size": SLICE}.items()), [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(args, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=900, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["last_checkpoint_1.pt", "model.pt"]
    assert log.count("Epoch[1] Metrics") == 1
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.npy")) == [f"case_{i:05d}.npy" for i in range(4)]
