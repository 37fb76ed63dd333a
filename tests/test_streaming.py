"""The streaming segmenter (scripts/inference/streaming.py) gives the MONAI pipeline's answer in bounded memory.

The reference is the config's own MONAI path (``--streaming False``: ``Orientationd`` -> ``ScaleIntensityRanged`` ->
``Resized`` -> ``SliceInferer`` -> ``KeepLargestConnectedComponentd`` -> ``Invertd``), run on the same files with the
same weights; the streamed labels must match it voxel for voxel in fp32.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts.data.ct_reader import LoadedCT, read_ct
from scripts.common.errors import InputError
from scripts.networks import PocketUNet, WPUNet
from scripts.synthetic.phantoms import generate_phantom, write_kits_case
from scripts.inference.streaming import (StreamingSegmenter, build_segmenter, is_3d_network,
                                        keep_largest_components, model_grid_affine, ras_orientation)
from test_inference_geometry import CountingNet, ThresholdNet, run_inference, save_nifti, synthetic_case

FP32 = {"precision": "fp32", "channels_last": False, "fold_batchnorm": False, "compile": "none"}


def _read_label(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


class PerturbedThresholdNet(torch.nn.Module):
    """ThresholdNet's one-hot answer plus the logits of a random tiny WP-UNet (content-dependent, with BatchNorm
    and depthwise convolutions): labels follow the anatomy, with ragged edges and small components for LCC."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.unet = WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2))
        self.threshold = ThresholdNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.threshold(x) + 0.3 * self.unet(x)


@pytest.fixture(scope="module")
def perturbed_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("perturbed") / "model.pt"
    torch.save({"model": PerturbedThresholdNet().state_dict()}, path)
    return path


@pytest.mark.parametrize("case", ["case_00000", "case_00001"])  # one stored like KiTS (IPL), one RAS
def test_streaming_equals_monai_pipeline(tmp_path, phantom_dir, perturbed_weights, case):
    image = phantom_dir / case / "imaging.nii.gz"
    run_inference(image, tmp_path / "monai", perturbed_weights, PerturbedThresholdNet(), streaming=False, preview=False)
    run_inference(image, tmp_path / "stream", perturbed_weights, PerturbedThresholdNet(), preview=False,
                  skip_empty_slices=False, **FP32)
    reference, streamed = _read_label(tmp_path / "monai" / f"{case}.nii.gz"), _read_label(tmp_path / "stream" / f"{case}.nii.gz")
    assert reference.shape == streamed.shape == nib.load(str(image)).shape
    assert set(np.unique(reference)) == {0, 1, 2}
    np.testing.assert_array_equal(streamed, reference)
    volumes = [json.loads((tmp_path / d / f"{case}_volumes.json").read_text()) for d in ("monai", "stream")]
    assert volumes[0]["kidney_ml"] == volumes[1]["kidney_ml"] and volumes[0]["tumor_ml"] == volumes[1]["tumor_ml"]


def test_auto_fast_path_agrees_with_fp32(tmp_path, phantom_dir, perturbed_weights):
    """Whatever the automatic path picks on this machine (bf16, channels_last, folding), labels stay put."""
    image = phantom_dir / "case_00002" / "imaging.nii.gz"
    run_inference(image, tmp_path / "fp32", perturbed_weights, PerturbedThresholdNet(), preview=False, **FP32)
    run_inference(image, tmp_path / "auto", perturbed_weights, PerturbedThresholdNet(), preview=False,
                  timings_path=str(tmp_path / "t.json"))
    fp32, auto = (_read_label(tmp_path / d / "case_00002.nii.gz") for d in ("fp32", "auto"))
    assert (fp32 == auto).mean() >= 0.99
    timings = json.loads((tmp_path / "t.json").read_text())
    axial_axis = [code in "SI" for code in nib.aff2axcodes(nib.load(str(image)).affine)].index(True)
    assert len(timings) == 1 and timings[0]["slices"] == fp32.shape[axial_axis]
    assert {"read", "preprocess", "network", "lcc", "resample", "write", "total", "fast_path"} <= set(timings[0])


@pytest.mark.parametrize("axcodes", ["RAS", "IPL", "LPS"])
def test_orientation_and_resize_exact(tmp_path, axcodes):
    """ThresholdNet through the segmenter equals the MONAI path on inputs that need flips, a transpose and a
    non-integer area resize (71 x 90 in-plane -> 64 x 64)."""
    stored, affine = synthetic_case(axcodes)
    scan = save_nifti(tmp_path / "scan.nii.gz", stored, affine)
    weights = tmp_path / "model.pt"
    torch.save({"model": ThresholdNet().state_dict()}, weights)
    run_inference(scan, tmp_path / "monai", weights, ThresholdNet(), streaming=False, preview=False)
    segmenter = StreamingSegmenter(ThresholdNet(), hu_window=(-79, 304), slice_size=(64, 64), skip_empty_slices=False)
    label, out_affine = segmenter.segment_file(scan)
    reference = _read_label(tmp_path / "monai" / "scan.nii.gz")
    assert label.dtype == np.uint8 and label.shape == stored.shape
    assert set(np.unique(reference)) == {0, 1, 2}
    np.testing.assert_array_equal(label, reference)
    np.testing.assert_allclose(out_affine, nib.load(str(scan)).affine)


def test_skip_empty_slices():
    ras = np.full((40, 40, 12), -1000, np.int16)  # air everywhere...
    ras[10:30, 10:30, 4:9] = 200  # ...a body only on slices 4..8
    ct = LoadedCT("air.nii.gz", ras, np.diag([1.0, 1.0, 2.0, 1.0]))
    net = CountingNet()
    segmenter = StreamingSegmenter(net, slice_size=(32, 32), lcc_enabled=False, skip_empty_slices=True)
    label, _ = segmenter.segment(ct)
    assert net.slices == 5 and segmenter.timings["skipped_slices"] == 7
    assert label[:, :, :4].max() == 0 and label[:, :, 9:].max() == 0 and label[:, :, 4:9].max() > 0
    net.slices = 0
    full, _ = StreamingSegmenter(net, slice_size=(32, 32), lcc_enabled=False, skip_empty_slices=False).segment(ct)
    assert net.slices == 12
    np.testing.assert_array_equal(full, label)  # ThresholdNet labels air slices background anyway


class _SlowThresholdPredictor:
    """A numpy predictor (``predict_labels``) that labels voxels above mid-window 1, else 0, after a short sleep,
    and records how many of its calls ran at once."""

    def __init__(self, concurrent_calls: int) -> None:
        import threading

        self.concurrent_calls = concurrent_calls
        self.running = self.most_at_once = 0
        self.lock = threading.Lock()

    def predict_labels(self, batch: np.ndarray) -> np.ndarray:
        import time

        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
        return (batch[:, 0] > 0.5).astype(np.uint8)


def test_concurrent_network_calls_give_the_same_labels():
    rng = np.random.default_rng(0)
    ras = rng.integers(-200, 400, size=(48, 40, 23)).astype(np.int16)
    ras[:, :, 7] = -1000  # one air slice: skipped, labelled background
    ct = LoadedCT("noise.nii.gz", ras, np.diag([1.0, 1.0, 2.0, 1.0]))
    labels = {}
    for calls in (1, 2):
        predictor = _SlowThresholdPredictor(calls)
        segmenter = StreamingSegmenter(predictor, slice_size=(32, 32), lcc_enabled=False, batch_size=2,
                                       chunk_slices=8)
        labels[calls], _ = segmenter.segment(ct)
        assert predictor.most_at_once == calls  # two batches really ran at once (and never more than allowed)
    assert labels[1][:, :, 7].max() == 0 and labels[1].max() == 1
    np.testing.assert_array_equal(labels[2], labels[1])


@pytest.mark.parametrize("cores, plan", [(1, (1, 1)), (2, (2, 1)), (3, (3, 1)), (8, (4, 2)), (16, (4, 4))])
def test_onnx_runtime_concurrency_plan(cores, plan):
    from scripts.inference.ort_session import concurrency_plan

    assert concurrency_plan(cores) == plan


def _numpy_peak(function, *args):
    """``function(*args)`` and the peak of the memory numpy (and Python) allocated meanwhile (tracemalloc)."""
    tracemalloc.start()
    try:
        result = function(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_no_full_resolution_float_copy():
    """numpy allocations while segmenting stay near the uint8 output: no float32 (4 B/voxel) volume is made."""
    shape = (256, 256, 64)
    ct = LoadedCT("big.nii.gz", np.full(shape, -1000, np.int16), np.eye(4))
    ct.voxels[60:200, 60:200, :] = 100
    segmenter = StreamingSegmenter(ThresholdNet(), slice_size=(64, 64), chunk_slices=8)
    (label, _), peak = _numpy_peak(segmenter.segment, ct)
    output_bytes = label.nbytes
    slab_bytes = 256 * 256 * 8 * 4  # one float32 chunk of 8 slices
    assert peak < output_bytes + 4 * slab_bytes, (peak, output_bytes)
    assert peak < 4 * int(np.prod(shape)) / 2  # far below a float32 copy of the volume


def test_model_grid_affine_maps_centres():
    affine = np.array([[0.8, 0, 0, -100.0], [0, 0.8, 0, -80.0], [0, 0, 3.0, 10.0], [0, 0, 0, 1]])
    grid = model_grid_affine(affine, (512, 512, 10), ras_orientation(affine), (256, 256))
    # resized voxel 0 covers input voxels 0 and 1: its centre is input voxel 0.5
    np.testing.assert_allclose(grid @ [0, 0, 0, 1], affine @ [0.5, 0.5, 0, 1])
    np.testing.assert_allclose(grid[:3, :3], np.diag([1.6, 1.6, 3.0]))


def test_scaled_float_and_nan_inputs(tmp_path):
    data = np.full((30, 30, 6), -1000.0, np.float32)
    data[5:25, 5:25] = 150.0
    image = nib.Nifti1Image((data + 1024.0) / 2.0, np.eye(4))  # stored scaled: HU = 2 * v - 1024
    image.header.set_slope_inter(2.0, -1024.0)
    nib.save(image, str(tmp_path / "scaled.nii.gz"))
    ct = read_ct(tmp_path / "scaled.nii.gz", stream=False)
    np.testing.assert_allclose(ct.hounsfield(ct.voxels), data, atol=1e-3)
    streamed = read_ct(tmp_path / "scaled.nii.gz")  # axial axis last on disk: read slab by slab
    assert streamed.voxels is None
    blocks = list(streamed.axial_blocks(ras_orientation(streamed.affine), 4))
    assert [(z0, z1) for z0, z1, _ in blocks] == [(0, 4), (4, 6)]
    np.testing.assert_allclose(np.concatenate([streamed.hounsfield(b) for _, _, b in blocks], axis=2), data,
                               atol=1e-3)
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(InputError, match=r"nan\.nii\.gz: contains 1 NaN voxels"):
        read_ct(tmp_path / "nan.nii.gz", stream=False)
    with pytest.raises(InputError, match=r"nan\.nii\.gz: contains 1 NaN voxels in slices being read"):
        StreamingSegmenter(ThresholdNet(), slice_size=(16, 16)).segment_file(tmp_path / "nan.nii.gz")


@pytest.mark.parametrize("axcodes", ["RAS", "LPI", "PLS"])  # axial axis last on disk, ascending or descending
def test_streamed_read_equals_whole_read(tmp_path, axcodes):
    stored, affine = synthetic_case(axcodes)
    scan = save_nifti(tmp_path / "scan.nii.gz", stored, affine)
    segmenter = StreamingSegmenter(PerturbedThresholdNet(), slice_size=(64, 64), chunk_slices=4)
    whole = read_ct(scan, stream=False)
    lazy = read_ct(scan)
    assert whole.voxels is not None and lazy.voxels is None
    np.testing.assert_array_equal(segmenter.segment(lazy)[0], segmenter.segment(whole)[0])


def test_streamed_read_holds_one_slab(tmp_path):
    """A RAS-stored CT is never held whole: numpy allocations stay far below the stored volume."""
    volume = np.full((256, 256, 64), -1000, np.int16)
    volume[60:200, 60:200] = 200
    scan = tmp_path / "ras.nii"  # uncompressed: nibabel maps it; slabs are read on demand
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(scan))
    segmenter = StreamingSegmenter(ThresholdNet(), slice_size=(64, 64), chunk_slices=8)
    (label, _), peak = _numpy_peak(segmenter.segment_file, scan)
    assert label.shape == volume.shape and label[100, 100, 30] > 0
    assert peak < label.nbytes + 4 * 256 * 256 * 8 * 4 and peak < volume.nbytes, peak


@pytest.mark.parametrize("storage", ["kits", "ras"])
def test_chunked_read_equals_whole_read_both_storage_orders(tmp_path, storage):
    """Issue 17: a SYNTHETIC phantom stored like KiTS (slice axis first) or RAS gives the same segmentation read in
    axial windows (several passes over the file for KiTS order) as read whole."""
    image, label, affine = generate_phantom(seed=3, in_plane_size=48, slice_thickness=4.0)
    scan = Path(write_kits_case(tmp_path, 0, image, label, affine, storage=storage)) / "imaging.nii.gz"
    segmenter = StreamingSegmenter(PerturbedThresholdNet(), slice_size=(32, 32), chunk_slices=4)
    whole = read_ct(scan, stream=False)
    chunked = read_ct(scan, window_bytes=48 * 48 * 2 * 8)  # 8 slices a window: at least 3 windows
    assert whole.voxels is not None and chunked.voxels is None
    windows = -(-image.shape[2] // 8)
    assert windows >= 3
    reference, chunked_labels = segmenter.segment(whole)[0], segmenter.segment(chunked)[0]
    assert reference.shape == nib.load(str(scan)).shape and (reference > 0).any()
    np.testing.assert_array_equal(chunked_labels, reference)


@pytest.mark.parametrize("axcodes", ["IPL", "SPL", "LIP"])  # axial axis first or second on disk, either direction
def test_kits_order_chunked_read_equals_whole_read(tmp_path, axcodes):
    stored, affine = synthetic_case(axcodes)
    scan = save_nifti(tmp_path / "scan.nii.gz", stored, affine)
    segmenter = StreamingSegmenter(PerturbedThresholdNet(), slice_size=(64, 64), chunk_slices=2)
    whole, chunked = read_ct(scan, stream=False), read_ct(scan, window_bytes=1)  # one chunk (2 slices) a window
    np.testing.assert_array_equal(segmenter.segment(chunked)[0], segmenter.segment(whole)[0])


def test_kits_order_read_holds_one_window(tmp_path):
    """A CT stored like KiTS (slice axis first: every axial slab spans the whole file) is read in axial windows:
    numpy allocations stay well below the stored volume, which the whole read holds."""
    volume = np.full((128, 256, 256), -1000, np.int16)  # (slices, rows, cols) as KiTS stores it
    volume[:, 60:200, 60:200] = 200
    affine = np.array([[0, 0, -0.8, 0], [0, -0.8, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1]])
    scan = save_nifti(tmp_path / "kits.nii.gz", volume, affine)
    segmenter = StreamingSegmenter(ThresholdNet(), slice_size=(64, 64), chunk_slices=8)
    window = 256 * 256 * 2 * 16  # 16 of the 128 slices
    (label, _), peak = _numpy_peak(lambda: segmenter.segment(read_ct(scan, window_bytes=window)))
    assert label.shape == volume.shape and label[30, 100, 100] > 0
    (_, _), whole_peak = _numpy_peak(lambda: segmenter.segment(read_ct(scan, stream=False)))
    assert whole_peak > volume.nbytes  # the whole read does hold the volume: the measure can see it
    assert peak < label.nbytes + 2 * window + 4 * 256 * 256 * 8 * 4 and peak < volume.nbytes, (peak, volume.nbytes)


def test_isal_gzip_read_equals_nibabel(tmp_path):
    """Issue 17: ``.nii.gz`` inputs are decompressed by ISA-L; the voxels (stored axes, dtype, scaling) and the
    affine are nibabel's own, read whole or in KiTS-order windows (several passes over the stream, so backward
    seeks restart it)."""
    pytest.importorskip("isal")
    stored, affine = synthetic_case("IPL")
    scan = save_nifti(tmp_path / "scan.nii.gz", stored, affine)
    reference = nib.load(str(scan))
    whole = read_ct(scan, stream=False)
    assert type(whole.voxels) is np.ndarray and whole.voxels.dtype == reference.get_data_dtype()
    np.testing.assert_array_equal(whole.voxels, np.asarray(reference.dataobj.get_unscaled()))
    np.testing.assert_array_equal(whole.affine, reference.affine)
    windowed = read_ct(scan, window_bytes=1)
    assert type(windowed.proxy.file_like).__module__.startswith("isal")  # the fast reader is the one in use
    assert stored.shape[0] >= 9  # IPL: the axial axis is the first stored axis
    starts = (6, 0, 3)  # backwards, then forwards
    stacked = np.concatenate([windowed._read_axial_range(0, z, z + 3) for z in starts], axis=0)
    np.testing.assert_array_equal(stacked, np.concatenate([stored[z:z + 3] for z in starts]))
    stream = windowed.proxy.file_like
    windowed.release()
    assert stream.closed  # released with the voxels, not left to the garbage collector


def test_corrupt_compressed_data_is_named(tmp_path):
    """Bit errors inside the deflate stream (size trailer intact, so the header check passes) stop the read
    with one line naming the file, whichever gzip library decodes it."""
    volume = np.random.default_rng(0).integers(-1000, 500, (64, 64, 40), dtype=np.int16)
    scan = save_nifti(tmp_path / "scan.nii.gz", volume, np.eye(4))
    data = bytearray(scan.read_bytes())
    for at in range(len(data) // 3, len(data) // 3 + 64):
        data[at] ^= 0xA5
    scan.write_bytes(bytes(data))
    for stream in (True, False):
        with pytest.raises(InputError, match="truncated or damaged") as info:
            ct = read_ct(scan, stream=stream)
            if ct.voxels is None:
                list(ct.axial_blocks(np.array([[0, 1], [1, 1], [2, 1]]), chunk=8))
        assert info.value.message.startswith(str(scan))


@pytest.mark.parametrize("num_components", [1, 2])
def test_keep_largest_components_equals_monai(num_components):
    """keep_largest_components (32-bit map, foreground box) = MONAI's KeepLargestConnectedComponent on the whole
    volume, ties in component size included; SYNTHETIC random labels."""
    from monai.transforms import KeepLargestConnectedComponent

    rng = np.random.default_rng(num_components)
    labels = np.zeros((40, 50, 30), np.uint8)
    labels[10:30, 12:40, 5:25] = (rng.random((20, 28, 20)) < 0.3) * rng.integers(1, 4, (20, 28, 20))
    for corner in ((2, 45, 1), (36, 2, 27), (3, 3, 26)):  # equal cubes: ties for the last kept component
        labels[tuple(slice(c, c + 2) for c in corner)] = 2
    lcc = KeepLargestConnectedComponent(applied_labels=[1, 2], independent=False, num_components=num_components)
    expected = np.asarray(lcc(torch.from_numpy(labels.copy())[None])[0])
    result = keep_largest_components(labels.copy(), [1, 2], num_components)
    np.testing.assert_array_equal(result, expected)
    assert (expected != labels).any() and (expected == 3).any()  # something removed; label 3 left alone


def test_keep_largest_components_on_nothing():
    empty = np.zeros((5, 5, 5), np.uint8)
    assert keep_largest_components(empty, [1, 2], 2) is empty and not empty.any()


def test_run_writes_every_case_with_prefetch(tmp_path):
    for index in range(3):
        image, label, affine = generate_phantom(seed=index, in_plane_size=64, slice_thickness=5.0)
        write_kits_case(tmp_path / "data", index, image, label, affine, storage="kits" if index % 2 else "ras")
    items = [{"image": str(tmp_path / "data" / f"case_{i:05d}" / "imaging.nii.gz")} for i in range(3)]
    written = []
    torch.manual_seed(0)
    net = WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,))
    results = StreamingSegmenter(net, slice_size=(32, 32)).run(
        items, lambda *args, preview: written.append((*args, preview)), timings_path=tmp_path / "timings.json")
    assert [r["case"] for r in results] == [i["image"] for i in items]
    assert len(written) == 3
    for item, (label, affine, source, (image, image_affine)) in zip(items, written):
        scan = nib.load(item["image"])
        assert label.shape == scan.shape and label.dtype == np.uint8
        assert source == item["image"] and np.allclose(affine, scan.affine)
        assert image.shape[:2] == (32, 32) and image.shape[2] in scan.shape and image.dtype == np.uint8
        assert image_affine.shape == (4, 4)
    assert json.loads((tmp_path / "timings.json").read_text())[2]["case"] == items[2]["image"]


def test_run_without_preview_hands_none(tmp_path):
    image, label, affine = generate_phantom(seed=0, in_plane_size=32, slice_thickness=5.0)
    write_kits_case(tmp_path / "data", 0, image, label, affine)
    written = []
    StreamingSegmenter(ThresholdNet(), slice_size=(16, 16)).run(
        [{"image": str(tmp_path / "data" / "case_00000" / "imaging.nii.gz")}],
        lambda label, affine, source, preview: written.append(preview), preview=False)
    assert written == [None]


def test_build_segmenter_only_when_streaming():
    net = WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,))
    assert build_segmenter(net, "missing.pt", "cpu", streaming=False) is None
    segmenter = build_segmenter(net, "missing.pt", "cpu", backend="onnx", slice_size=(32, 32), lcc_enabled=False)
    assert segmenter.slice_size == (32, 32) and segmenter.lcc is None and segmenter.network is net


def test_3d_networks_are_not_streamed():
    assert is_3d_network(PocketUNet(spatial_dims=3, in_channels=1, out_channels=3, features=4, depth=2))
    assert not is_3d_network(WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,)))


def test_release_input_before_output():
    ras = np.full((40, 40, 6), -1000, np.int16)
    ras[10:30, 10:30] = 200
    ct = LoadedCT("ct.nii.gz", ras, np.eye(4))
    seen = []
    segmenter = StreamingSegmenter(ThresholdNet(), slice_size=(32, 32), lcc_enabled=False)
    label, _ = segmenter.segment(ct, release_input=True, after_network=lambda: seen.append(ct.voxels))
    assert seen == [None] and ct.voxels is None  # released before the callback (the next read) runs
    assert label.shape == (40, 40, 6) and label[20, 20, 3] > 0


def test_onnx_runtime_labels_do_not_depend_on_threads_or_batch(tmp_path):
    """The lean path's concurrency plan changes threads per call and slices per call; the labels must not change."""
    from scripts.inference.onnx_backend import export_onnx
    from scripts.inference.ort_session import OnnxSlicePredictor

    torch.manual_seed(0)
    onnx_path = export_onnx(PocketUNet(features=8, depth=3), tmp_path / "pocket.onnx", slice_size=(64, 64))
    batch = np.random.default_rng(0).random((8, 1, 64, 64), dtype=np.float32)
    logits = {}
    for threads, size in ((1, 2), (2, 4), (2, 8), (1, 8)):
        predictor = OnnxSlicePredictor(onnx_path, num_threads=threads)
        logits[threads, size] = np.concatenate([predictor.logits(batch[i:i + size]) for i in range(0, 8, size)])
    reference = logits[2, 8]
    assert reference.std() > 0  # logits that vary: compared bit for bit, so labels on any threshold agree too
    for key, value in logits.items():
        np.testing.assert_array_equal(value, reference, err_msg=f"threads, batch = {key}")


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_first_max_labels_equal_argmax_with_ties(classes):
    from scripts.inference.ort_session import first_max_labels

    rng = np.random.default_rng(classes)
    logits = rng.integers(-3, 4, size=(3, classes, 17, 19)).astype(np.float32)  # small integers: many ties
    assert (logits[:, 0] == logits[:, 1]).any()
    np.testing.assert_array_equal(first_max_labels(logits), logits.argmax(axis=1).astype(np.uint8))
