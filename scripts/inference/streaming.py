"""Streaming slice-by-slice inference for the 2D networks: a whole CT in bounded memory.

Same result as the MONAI pipeline of ``configs/inference.json`` (``Orientationd`` RAS -> ``ScaleIntensityRanged``
-> ``Resized`` area -> ``SliceInferer`` -> argmax -> ``KeepLargestConnectedComponentd`` -> ``Invertd`` nearest),
computed in a different order so that nothing of full resolution is ever held in float:

1. the CT is read as stored (:func:`scripts.data.ct_reader.read_ct`: ``int16``, no float copy);
2. the RAS orientation is a *view* of that array (flips and a transpose, :func:`nibabel.orientations.apply_orientation`),
   the same axis mapping ``Orientationd`` computes;
3. slice batches are windowed, area-resized to the network size, run through the network
   (:mod:`scripts.inference.fast_path`) and reduced to uint8 labels at model resolution straight away;
4. the largest connected components are kept on that small uint8 volume (MONAI's transform's steps, as in the
   config, with a 32-bit component map: :func:`keep_largest_components`);
5. labels go back batch by batch (nearest, uint8) into a uint8 volume in the input's own axes, through the same
   orientation view, and the writer the config passes in (``write_segmentation``) saves it in the input's geometry.

Peak memory is the larger of the stored CT (2 bytes a voxel for ``int16``) and the uint8 output (1 byte a voxel; the
CT is released before the output is made), plus two uint8 volumes at model resolution (labels, and the network input
for the preview) and one slice batch; see ``docs/performance.md``.
Slices without a voxel above the HU window's lower bound (air only) are labelled background without running the
network (``skip_empty_slices``). The next case is read in a thread while the current one is post-processed and
written.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np

from ..common.atomic import atomic_write_text
from ..common.errors import InputError, find_input_error
from ..data.ct_reader import LoadedCT, read_ct
from ..data.preprocessing import area_resize, aspect_padding, nearest_index, pad_to_aspect, window_and_resize

__all__ = ["CasesFailed", "StreamingSegmenter", "build_segmenter", "is_3d_network", "keep_largest_components",
           "network_with_weights", "ras_orientation",
           "model_grid_affine"]

logger = logging.getLogger(__name__)

#: HU of the padding added to non-square slices (air), in the model-resolution HU kept for cohort statistics.
AIR_HU = -1024.0
STAGES = ("read", "preprocess", "network", "lcc", "resample", "write")
_first_batch_logged = False  # the process's first network batch is logged once (issue 17: bench/startup.py)


def ras_orientation(affine: np.ndarray) -> np.ndarray:
    """The nibabel orientation transform from the array's axes to RAS (what MONAI's ``Orientation`` applies)."""
    return nib.orientations.ornt_transform(nib.io_orientation(affine), nib.orientations.axcodes2ornt("RAS"))


def model_grid_affine(affine: np.ndarray, shape: Sequence[int], ornt: np.ndarray,
                      slice_size: Sequence[int]) -> np.ndarray:
    """Voxel-to-world affine of the model-resolution RAS grid: the first two RAS axes padded to ``slice_size``'s
    aspect ratio (``aspect_padding``), then area resized."""
    ras_affine = affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    ras_shape = nib.orientations.apply_orientation(np.empty(shape, dtype=bool), ornt).shape
    padding = aspect_padding(ras_shape[:2], slice_size)
    scale = np.eye(4)
    for axis in range(2):
        step = (ras_shape[axis] + sum(padding[axis])) / slice_size[axis]
        scale[axis, axis] = step
        scale[axis, 3] = (step - 1.0) / 2.0 - padding[axis][0]  # resized voxel centres (align_corners=False)
    return ras_affine @ scale


def is_3d_network(network) -> bool:
    """True for a network with 3D convolutions (Pocket U-Net 3D): those run through MONAI's sliding window."""
    import torch

    return any(isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)) for m in network.modules())


def network_with_weights(network, model_path: str | Path, device, backend: str = "torch"):
    """``network`` (a torch module) with the trained weights of ``model_path`` loaded (torch backend; ONNX Runtime
    has its own)."""
    from ..common.weights import check_weights_file, load_weights

    if backend != "torch":
        return network
    check_weights_file(model_path)
    return load_weights(network, model_path, device)


def build_segmenter(network, model_path: str | Path, device, *,
                    streaming: bool = True, backend: str = "torch", **options) -> StreamingSegmenter | None:
    """The config's ``segmenter``: a :class:`StreamingSegmenter` of ``network`` with the weights of ``model_path``
    (:func:`network_with_weights`) and the keyword ``options`` of :class:`StreamingSegmenter`; ``None`` when not
    ``streaming`` (3D networks, ``--streaming False``: the MONAI evaluator runs instead)."""
    if not streaming:
        return None
    if backend == "auto":
        network, backend, options = _auto_backend(network, model_path, device, options)
    return StreamingSegmenter(network_with_weights(network, model_path, device, backend), device, **options)


def _auto_backend(network, model_path, device, options: dict):
    """``backend auto`` (issue 17): the measured rule of this CPU class (``fast_path.choose_backend``); when it is
    ONNX Runtime, the torch network with its weights is exported once (``onnx_backend.cached_export``)."""
    from ..common.weights import check_weights_file
    from .fast_path import FastPath, choose_backend

    backend, batch = choose_backend(network, device)
    if backend == "torch":
        return network, backend, options
    from .onnx_backend import OnnxRuntimeNetwork, cached_export

    slice_size = options.get("slice_size", (256, 256))
    check_weights_file(model_path)  # the weights are loaded (and checked) only when the export is not cached
    onnx_path = cached_export(partial(network_with_weights, network, model_path, "cpu"), model_path, slice_size)
    path = options.get("fast_path")
    if path is not None and path.sw_batch_size > 1:  # an explicit --slice_batch_size (auto is 1 on a CPU) is kept
        batch = path.sw_batch_size
    logger.info("backend auto: ONNX Runtime (%s), batch %d", onnx_path, batch)
    return OnnxRuntimeNetwork(onnx_path), "onnxruntime", {**options, "fast_path": FastPath(sw_batch_size=batch)}


def _predict_fp32(network: Callable, batch):
    import torch

    with torch.inference_mode():
        return network(batch).float().max(dim=1).indices.to(torch.uint8).cpu()


def keep_largest_components(labels: np.ndarray, applied_labels: Sequence[int], num_components: int) -> np.ndarray:
    """MONAI's ``KeepLargestConnectedComponent(applied_labels, independent=False, num_components)`` on a uint8 label
    volume (spatial axes only), in bounded memory; ``labels`` is changed in place and returned.

    MONAI's ``get_largest_connected_component_mask`` labels components with ``skimage.measure.label`` (a 64-bit map,
    8 bytes a voxel) and makes several boolean volumes: at 256x256x1000 model voxels that adds about 0.8 GB to the
    peak RSS (issue 17). Here the same steps run on the foreground's bounding box only, with
    ``scipy.ndimage.label`` writing a 32-bit map (full connectivity, as MONAI's ``connectivity=None``; components are
    numbered in the same raster order, so ties in size are broken the same way); ``tests/test_streaming.py`` checks
    the result against MONAI's transform.
    """
    from scipy import ndimage

    foreground = np.isin(labels, np.asarray(list(applied_labels), dtype=labels.dtype))
    nonzero = [np.flatnonzero(foreground.any(axis=tuple(a for a in range(labels.ndim) if a != axis)))
               for axis in range(labels.ndim)]
    if any(index.size == 0 for index in nonzero):
        return labels
    box = tuple(slice(int(index[0]), int(index[-1]) + 1) for index in nonzero)
    foreground = np.ascontiguousarray(foreground[box])
    features, count = ndimage.label(foreground, structure=np.ones((3,) * labels.ndim, dtype=bool), output=np.int32)
    if count <= num_components:
        return labels
    sizes = np.bincount(features.reshape(-1))
    sizes[0] = 0
    keep = np.zeros(sizes.shape[0], dtype=bool)
    keep[np.argsort(sizes)[::-1][:num_components]] = True
    crop = labels[box]
    for z0 in range(0, crop.shape[-1], 16):  # slab by slab: no full-size boolean temporaries
        part = crop[..., z0:z0 + 16]
        part[foreground[..., z0:z0 + 16] & ~keep[features[..., z0:z0 + 16]]] = 0
    return labels


class StreamingSegmenter:
    """Segment CT files slice batch by slice batch (2D networks); see the module docstring for the steps.

    The data path is numpy (issue 17: ``kidney-seg --lean`` runs it without importing torch); torch is used only
    to run a torch network.

    Args:
        network: a 2D network taking (B, 1, H, W) and returning (B, num_classes, H, W) logits, weights loaded (a
            torch module), or any object with ``predict_labels(batch)``: (B, 1, H, W) float32 numpy -> (B, H, W)
            uint8 numpy labels (:class:`scripts.inference.ort_session.OnnxSlicePredictor`).
        device: where the network runs.
        hu_window: HU range mapped to [0, 1] and clipped (``hu_window`` of the config).
        slice_size: the network's in-plane input size.
        num_classes: network outputs (3: background, kidney, tumour; 4 with cyst).
        lcc_enabled: keep the ``lcc_num_components`` largest components of all foreground labels together.
        fast_path: a :class:`scripts.inference.fast_path.FastPath` (precision, memory format, folding, batch size); ``None``
            runs the network as given in fp32 with batches of ``chunk_slices``.
        skip_empty_slices: slices with nothing above ``hu_window[0]`` become background without the network.
        chunk_slices: slices read, windowed and resampled together (bounded memory, vectorised work).
        batch_size: slices per network call; ``None``: the fast path's batch, else ``chunk_slices``.
        collect_statistics: keep, per case, what the cohort statistics need in :attr:`case_info`: the model-resolution
            HU (area average, before the window; float16, 2 bytes per model voxel), the labels before and after the
            largest-connected-component step and that grid's affine (``scripts.evaluation.cohort``).
        cascade: a :class:`scripts.inference.cascade.KidneyRangeCascade` (issue 17): the network runs on every
            k-th slice first, then only on the kidneys' axial range plus a margin; ``None`` (default) runs every slice.
    """

    def __init__(self, network, device="cpu",
                 hu_window: Sequence[float] = (-79, 304), slice_size: Sequence[int] = (256, 256),
                 num_classes: int = 3, lcc_enabled: bool = True, lcc_num_components: int = 2,
                 fast_path=None, skip_empty_slices: bool = True, chunk_slices: int = 16,
                 collect_statistics: bool = False, cascade=None, batch_size: int | None = None) -> None:
        self.device = device
        self.collect_statistics = bool(collect_statistics)
        self.case_info: dict = {}
        self.fast_path = fast_path
        if not hasattr(network, "predict_labels"):  # a torch network
            import torch

            self.device = torch.device(device)
            if fast_path is not None:
                from .fast_path import prepare_network

                network = prepare_network(network, self.device, fast_path, example_shape=(1, 1, *slice_size))
            elif isinstance(network, torch.nn.Module):
                network = network.eval()
        self.network = network
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.slice_size = (int(slice_size[0]), int(slice_size[1]))
        self.num_classes = int(num_classes)
        self.lcc = (partial(keep_largest_components, applied_labels=list(range(1, self.num_classes)),
                            num_components=int(lcc_num_components)) if lcc_enabled else None)
        self.skip_empty_slices = bool(skip_empty_slices)
        batch = batch_size or (fast_path.sw_batch_size if fast_path is not None else chunk_slices)
        self.batch_size = max(1, int(batch))
        self.chunk_slices = max(int(chunk_slices), self.batch_size)
        self.cascade = cascade
        self.timings: dict = {}
        self._pool: ThreadPoolExecutor | None = None  # network calls at once, for predictors that allow them

    # -- one case ---------------------------------------------------------------------------------------------
    def segment_file(self, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """Read ``path`` and return (uint8 labels in the input's voxel grid, the input's affine)."""
        start = time.perf_counter()
        ct = read_ct(path)
        read_s = time.perf_counter() - start
        label, _ = self.segment(ct)
        self.timings["read"] = read_s
        self.timings["total"] = time.perf_counter() - start
        return label, ct.affine

    def segment(self, ct: LoadedCT, release_input: bool = False,
                after_network: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Labels (uint8, ``ct.voxels``' shape and axes) and the model-resolution uint8 image used for previews.

        ``release_input`` drops ``ct.voxels`` once the network has seen every slice, before the full-resolution
        output is allocated, so the stored CT and the output are never held together; ``after_network`` is called
        at that point (:meth:`run` starts reading the next case there).
        """
        timings = dict.fromkeys(STAGES, 0.0)
        shape = ct.shape
        ornt = ras_orientation(ct.affine)
        depth = shape[int(np.flatnonzero(ornt[:, 0] == 2)[0])]
        model_labels = np.zeros((*self.slice_size, depth), dtype=np.uint8)
        preview = np.zeros((*self.slice_size, depth), dtype=np.uint8)
        model_hu = np.zeros((*self.slice_size, depth), dtype=np.float16) if self.collect_statistics else None
        skipped = 0
        if self.cascade is not None:
            grid = model_grid_affine(ct.affine, shape, ornt, self.slice_size)
            self.cascade.start(depth, np.linalg.norm(grid[:3, :3], axis=0), self.slice_size)
        blocks = ct.axial_blocks(ornt, self.chunk_slices)  # views of the stored array, or slabs read from the file
        while True:
            t0 = time.perf_counter()
            z0, z1, block = next(blocks, (None, None, None))
            if block is None:
                break
            image = self._preprocess(ct, block, model_hu, z0, z1)  # (k, 1, H, W) float32 in [0, 1]
            block = None  # a view of the reader's window: let the next window replace it, not join it
            preview[:, :, z0:z1] = (image[:, 0] * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)
            has_body = (image.reshape(len(image), -1).max(axis=1) > 0 if self.skip_empty_slices
                        else np.ones(z1 - z0, dtype=bool))
            t1 = time.perf_counter()
            labels = np.zeros((z1 - z0, *self.slice_size), dtype=np.uint8)
            skipped += (z1 - z0) - int(has_body.sum())
            if self.cascade is not None:
                has_body = self.cascade.first_pass(z0, z1, image, has_body)
            self._predict_slices(image, np.flatnonzero(has_body), labels)
            model_labels[:, :, z0:z1] = labels.transpose(1, 2, 0)
            timings["preprocess"] += t1 - t0
            timings["network"] += time.perf_counter() - t1
        del blocks, block
        if self.cascade is not None:
            t1 = time.perf_counter()
            for index, batch in self.cascade.second_pass(model_labels, self.batch_size):
                model_labels[:, :, index] = self._predict(batch).transpose(1, 2, 0)
            timings["network"] += time.perf_counter() - t1
        if release_input:
            ct.release()
        if after_network is not None:
            after_network()
        t0 = time.perf_counter()
        pre_lcc = model_labels.copy() if self.collect_statistics else None
        if self.lcc is not None:
            model_labels = self.lcc(model_labels)
        t1 = time.perf_counter()
        if self.collect_statistics:
            self.case_info = {"model_labels": model_labels, "model_hu": model_hu, "pre_lcc_labels": pre_lcc,
                              "model_affine": model_grid_affine(ct.affine, shape, ornt, self.slice_size)}
        label = self._back_to_input_grid(model_labels, shape, ornt)
        timings["lcc"], timings["resample"] = t1 - t0, time.perf_counter() - t1
        timings.update(slices=depth, skipped_slices=skipped,
                       fast_path=self.fast_path.describe() if self.fast_path is not None else "fp32 (as given)")
        if self.cascade is not None:
            timings["cascade"] = dict(self.cascade.summary)
        self.timings = timings
        return label, preview

    def _predict_slices(self, image: np.ndarray, index: np.ndarray, labels: np.ndarray) -> None:
        """``labels[index]`` = the network's labels of ``image[index]``, batch by batch; a predictor that allows
        ``concurrent_calls`` > 1 (ONNX Runtime) gets that many batches at once from a thread pool."""
        batches = [index[b0:b0 + self.batch_size] for b0 in range(0, len(index), self.batch_size)]
        calls = int(getattr(self.network, "concurrent_calls", 1))
        if calls > 1 and len(batches) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(calls, thread_name_prefix="network")
            results = self._pool.map(lambda batch: self._predict(image[batch]), batches)
        else:
            results = (self._predict(image[batch]) for batch in batches)
        for batch, result in zip(batches, results):
            labels[batch] = result

    def _preprocess(self, ct: LoadedCT, block: np.ndarray, model_hu: np.ndarray | None = None, z0: int = 0,
                    z1: int = 0) -> np.ndarray:
        """HU window to [0, 1] (clipped), then area resize in-plane: ``ScaleIntensityRanged`` + ``Resized``;
        with ``model_hu`` the area-resized HU (no window) of slices ``z0:z1`` are stored there too."""
        hu = ct.hounsfield(np.ascontiguousarray(block.transpose(2, 0, 1)))  # (k, X, Y) float32
        if model_hu is not None:
            padded = pad_to_aspect(hu, self.slice_size, AIR_HU)
            model_hu[:, :, z0:z1] = area_resize(padded, self.slice_size).transpose(1, 2, 0)
        return window_and_resize(hu, self.hu_window, self.slice_size)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        """(B, 1, H, W) float32 -> (B, H, W) uint8 labels."""
        if hasattr(self.network, "predict_labels"):
            labels = self.network.predict_labels(batch)
        else:
            import torch

            # a fresh torch tensor: numpy can hand over odd strides on size-1 axes (a (B, 1, H, W) copy of a
            # [:, None] view has channel stride 1), which oneDNN reads as another memory format and rounds differently
            tensor = torch.empty(batch.shape, dtype=torch.float32)
            tensor.numpy()[...] = batch
            batch = tensor
            if self.fast_path is None:
                labels = _predict_fp32(self.network, batch.to(self.device)).numpy()
            else:
                from .fast_path import predict_labels

                labels = predict_labels(self.network, batch, self.fast_path, self.device).numpy()
        _log_first_batch()
        return labels

    def _back_to_input_grid(self, model_labels: np.ndarray, shape: Sequence[int], ornt: np.ndarray) -> np.ndarray:
        """Nearest-neighbour uint8 upsampling to the padded grid (torch's nearest rule), the padding cropped off,
        batch by batch, written through the orientation view."""
        label = np.zeros(shape, dtype=np.uint8, order="F")  # NIfTI's voxel order: the writer copies nothing
        target = nib.orientations.apply_orientation(label, ornt)  # a view of ``label``
        (r0, r1), (c0, c1) = aspect_padding(target.shape[:2], self.slice_size)
        rows = nearest_index(model_labels.shape[0], target.shape[0] + r0 + r1)[r0:r0 + target.shape[0], None]
        cols = nearest_index(model_labels.shape[1], target.shape[1] + c0 + c1)[None, c0:c0 + target.shape[1]]
        for z0 in range(0, model_labels.shape[2], self.chunk_slices):
            z1 = min(model_labels.shape[2], z0 + self.chunk_slices)
            target[:, :, z0:z1] = model_labels[:, :, z0:z1][rows, cols]
        return label

    # -- many cases --------------------------------------------------------------------------------------------
    def run(self, datalist: Iterable[Mapping[str, str]], writer: Callable | None = None, preview: bool = True,
            prefetch: bool = True, timings_path: str | Path = "", recorder=None, resume: bool = False,
            stop_on_error: bool = True, progress: bool = False, num_parts: int = 1, part_id: int = 0) -> list[dict]:
        """Segment every ``{"image": path}`` of ``datalist`` and hand each case to ``writer``.

        ``writer(label, affine, source, preview=...)`` gets the uint8 label map in the input's voxel grid, the
        input's affine and path, and, with ``preview``, ``(image, image_affine)``: the network's uint8 input at model
        resolution and its affine (else ``None``): the config's ``write_segmentation``, the outputs' writer function
        with its options bound.

        Cohort runs (issue 15):

        - ``num_parts``/``part_id``: this process takes cases ``part_id, part_id + num_parts, ...`` of the sorted
          list (``torchrun`` ranks or a scheduler's array jobs; disjoint shares, no communication);
        - ``recorder`` (``scripts.evaluation.cohort.CohortRecorder``, the config's ``cohort``): with ``resume`` a
          case whose outputs it finds complete is skipped; each finished case gets its statistics row, each failed
          case a failure record, and :meth:`recorder.finish` merges them into ``cohort.csv``/``failures.csv``;
        - ``stop_on_error=False`` keeps going past a case that fails (one ``ERROR`` line naming the file and the
          problem) and raises :class:`CasesFailed` at the end when any did; ``True`` stops at the first one;
        - ``progress``: a tqdm bar over the cases with ETA (on stderr, only when it is a terminal).

        With ``prefetch`` the next case is read in a background thread while the current one is post-processed and
        written: started once the network is done with the current case and its stored voxels are released, so at
        most one stored CT is in memory; on CUDA, where the network takes a fraction of the read time, it starts as
        the current case starts (two stored CTs in memory). Returns the per-case stage timings (also written to
        ``timings_path`` as JSON when given).
        """
        items = [dict(item) for item in datalist]
        num_parts, part_id = int(num_parts), int(part_id)
        if not 0 <= part_id < num_parts:
            raise InputError(f"--part_id {part_id}: must be in 0..{num_parts - 1} for --num_parts {num_parts}")
        items = items[part_id::num_parts]
        total = len(items)
        if resume and recorder is not None:
            items = [item for item in items if not recorder.is_complete(item["image"])]
            if total - len(items):
                logger.info("resume: %d of %d cases already complete, %d to do", total - len(items), total,
                            len(items))
        self.collect_statistics = recorder is not None and getattr(recorder, "statistics", False)
        early = prefetch and str(self.device).startswith("cuda")
        results: list[dict] = []
        failed: list[str] = []
        bar = _progress_bar(len(items), progress, part_id, num_parts)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending: Future | None = pool.submit(_timed_read, items[0]["image"]) if items else None
            for index, item in enumerate(items):
                nxt, current, pending = index + 1, pending, None

                def read_next() -> None:
                    nonlocal pending
                    if prefetch and pending is None and nxt < len(items):
                        pending = pool.submit(_timed_read, items[nxt]["image"])

                try:
                    results.append(self._run_case(current, read_next, early, writer, preview, recorder,
                                                  f"[{index + 1}/{len(items)}]"))
                except Exception as exc:  # noqa: BLE001 - one case's failure must not stop a cohort
                    if stop_on_error:
                        raise
                    message = _one_line(exc)
                    logger.error("[%d/%d] %s: failed: %s", index + 1, len(items), item["image"], message)
                    failed.append(item["image"])
                    if recorder is not None:
                        recorder.fail(item["image"], message)
                if pending is None and nxt < len(items):
                    pending = pool.submit(_timed_read, items[nxt]["image"])
                bar.update(1)
        bar.close()
        if timings_path:
            atomic_write_text(Path(timings_path), json.dumps(results, indent=2))
        if recorder is not None:
            rows, failures = recorder.finish()
            if rows or failures:
                logger.info("cohort: %d cases in %s, %d failures", rows, Path(recorder.output_dir) / "cohort.csv",
                            failures)
        if failed:
            raise CasesFailed(f"{len(failed)} of {len(items)} cases failed (first: {failed[0]}); each is listed with "
                              f"its error in {_failures_csv(recorder)}")
        return results

    def _run_case(self, pending: Future, read_next: Callable[[], None], early: bool,
                  writer: Callable | None, preview: bool, recorder, tag: str) -> dict:
        """One case of :meth:`run`: wait for its read, segment, write, record; returns its timings."""
        wait0 = time.perf_counter()
        ct, read_s = pending.result()
        waited = time.perf_counter() - wait0
        if early:
            read_next()
        start = time.perf_counter()
        label, image = self.segment(ct, release_input=True, after_network=read_next)
        t0 = time.perf_counter()
        if writer is not None:
            writer(label, ct.affine, ct.source, preview=self._preview(ct, label, image) if preview else None)
        timings = self.timings
        timings["write"] = time.perf_counter() - t0
        timings.update(case=ct.source, read=read_s, read_wait=waited, total=time.perf_counter() - start + waited)
        if recorder is not None:
            recorder.record(ct.source, label, ct.affine, self.case_info, seconds=timings["total"] + read_s - waited)
            self.case_info = {}
        logger.info("%s %s: %d slices (%d without body skipped) in %.2f s [%s] - %s%s", tag, ct.source,
                    timings["slices"], timings["skipped_slices"], timings["total"], timings["fast_path"],
                    ", ".join(f"{k} {timings[k]:.2f} s" for k in STAGES), _cascade_note(timings.get("cascade")))
        return timings

    def _preview(self, ct: LoadedCT, label: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(image, image_affine)``: the model-resolution uint8 network input and its voxel-to-world affine."""
        return image, model_grid_affine(ct.affine, label.shape, ras_orientation(ct.affine), self.slice_size)


class CasesFailed(InputError):
    """Some cases of a run that kept going failed; the message names the first and the failures file."""


def _one_line(exc: BaseException) -> str:
    """The one-line reason of a failed case: an :class:`InputError`'s message, else the exception's first line."""
    message = find_input_error(exc)
    if message is not None:
        return message
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _cascade_note(summary: dict | None) -> str:
    """The log line's cascade part: slices the kidney-region cascade skipped, or that it found nothing."""
    if not summary:
        return ""
    if not summary["found"]:
        return "; cascade: no kidney in the first pass, every slice run"
    start, stop = summary["range"]
    return f"; cascade: slices {start}..{stop - 1} run, {summary['skipped_slices']} skipped"


def _failures_csv(recorder) -> str:
    return str(Path(recorder.output_dir) / "failures.csv") if recorder is not None else "the log above"


def _progress_bar(total: int, enabled: bool, part_id: int, num_parts: int):
    """A tqdm bar over cases (ETA from the mean case time) on stderr, or a stand-in doing nothing."""
    import sys

    from tqdm.auto import tqdm

    shown = bool(enabled) and total > 0 and sys.stderr is not None and sys.stderr.isatty()
    desc = f"part {part_id + 1}/{num_parts}" if num_parts > 1 else "cases"
    return tqdm(total=total, disable=not shown, unit="case", desc=desc, dynamic_ncols=True)


def _log_first_batch() -> None:
    """One DEBUG line with the wall-clock time of the process's first network batch: what start-up costs the user
    until the first slice is computed (issue 17; ``bench/startup.py`` reads it)."""
    global _first_batch_logged
    if not _first_batch_logged:
        _first_batch_logged = True
        logger.debug("first network batch done at unix time %.3f", time.time())


def _timed_read(path: str) -> tuple[LoadedCT, float]:
    start = time.perf_counter()
    return read_ct(path), time.perf_counter() - start
