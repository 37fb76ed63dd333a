"""MONAI Label 0.8.5 serves this bundle, unmodified, as a model of its ``monaibundle`` sample app.

The server runs for real, in its own environment (``tools/monailabel_env.py``, cached outside the repository),
on 127.0.0.1, and is called the way 3D Slicer's MONAI Label plugin calls it (``plugins/slicer/MONAILabel``:
``/info``; ``PUT /session/`` for a locally loaded volume; ``POST /infer/<model>`` with the model's first config
values plus ``result_extension`` ``.nrrd`` and ``result_dtype`` ``uint8``; ``POST /train/<model>``). The contract
it checks is ``../shared/reference/monai_label.md``.

Inputs: ten axial slices (5..14, both kidneys) of the real CT ``../shared/data/totalseg_example/example_ct_sm.nii.gz``
(Apache-2.0; the crop is written to the temporary studies folder only) and SYNTHETIC phantoms from
``scripts/synthetic/phantoms.py``. The bundle's default (full-size) network is served, about 7 GMAC per slice, so the volumes
are kept to a few slices and the server runs with ``THP_MEM_ALLOC_ENABLE=1`` (docs/performance.md) to keep
the run short on a CPU.

"Trained weights, not random ones": the weights served are a seeded network whose output-layer bias is set so
that the label map depends on the image (a random initialisation gives a constant map here), and the server's
answer must equal the bundle's own ``run inferring`` with the same file. MONAI Label loads ``models/model.pt``
with ``strict=False``, so a key mismatch would silently serve random weights: the keys are compared too.
"""

from __future__ import annotations

import email
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import LoadImaged

from conftest import BUNDLE_ROOT, SHARED_DATA

sys.path.insert(0, str(BUNDLE_ROOT / "tools"))
import monailabel_env  # noqa: E402

MODEL = "kidney_ct_wpunet"  # no deepedit/deepgrow/detection/classification: those switch MONAI Label's behaviour
REAL_CT = SHARED_DATA / "totalseg_example" / "example_ct_sm.nii.gz"
REAL_CT_CROP = "example_ct_kidneys.nii.gz"  # slices 5..14 of REAL_CT, in the studies folder
BURST_CT = "example_ct_burst.nii.gz"  # slices 9..10 of REAL_CT
CONCURRENT_REQUESTS = 20
RSS_GROWTH_LIMIT_MB = 600  # above the idle server after one request; one request on the burst CT needs far less
META = json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text())
CHANNEL_DEF = META["network_data_format"]["outputs"]["pred"]["channel_def"]
EXPECTED_LABELS = {name.lower(): int(value) for value, name in CHANNEL_DEF.items() if name.lower() != "background"}
# What the Slicer plugin adds to every infer request (MONAILabel.py, MONAILabelLogic.infer).
SLICER_RESULT_PARAMS = {"result_extension": ".nrrd", "result_dtype": "uint8", "client_id": "kidney-bundle-test"}
# Bundle files a user would copy into <app>/model/<name>/ (weights are added by the test).
BUNDLE_CONTENT = ("configs", "scripts", "docs", "LICENSE", "large_files.yml")
SERVER_START_S = 180
INFER_TIMEOUT_S = 600
TRAIN_TIMEOUT_S = 600


# ---------------------------------------------------------------- the contract, in-process (fast, no server)

def _inference_parser(bundle_root: Path = BUNDLE_ROOT) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_root)
    return parser


def test_metadata_keys_and_labels_meet_the_monai_label_contract():
    """First input key ``image``, first output key ``pred``; channel_def 0 background then contiguous 1..N."""
    fmt = META["network_data_format"]
    assert next(iter(fmt["inputs"])) == "image"
    assert next(iter(fmt["outputs"])) == "pred"
    assert CHANNEL_DEF["0"].lower() == "background"
    assert sorted(EXPECTED_LABELS.values()) == list(range(1, len(CHANNEL_DEF)))
    assert max(EXPECTED_LABELS.values()) <= 255  # Slicer asks for uint8


def test_preprocessing_loads_the_path_monai_label_passes_with_image_only_false():
    """MONAI Label sets ``_loader.image_only = False`` on every LoadImaged and adds ``image_path``."""
    pre = list(_inference_parser().get_parsed_content("preprocessing").transforms)
    loaders = [t for t in pre if isinstance(t, LoadImaged)]
    assert loaders, "MONAI Label only wraps LoadImaged subclasses; the loader must be one"
    for t in loaders:
        t._loader.image_only = False
    data = {"image": str(REAL_CT) if REAL_CT.exists() else _write_small_ct(), "image_path": "x.nii.gz"}
    for t in pre:
        data = t(data)
    assert data["image"].shape[1:3] == tuple(_inference_parser().get_parsed_content("slice_size"))
    assert isinstance(data["image_path"], str)


def test_train_config_runs_once_with_the_run_id_slicer_sends(phantom_dir, tmp_path, monkeypatch):
    """MONAI Label's trainer calls ``monai.bundle.run(run_id="")`` (Slicer's default) with its own data lists:
    MONAI then resolves every id of train.json. Training must run exactly once and the unused default
    ``dataset_dir`` must not be read."""
    import monai.bundle
    from monai.engines import SupervisedTrainer

    from conftest import TINY_OVERRIDES

    runs = []
    original_run = SupervisedTrainer.run
    monkeypatch.setattr(SupervisedTrainer, "run", lambda self, *a, **k: (runs.append(1), original_run(self, *a, **k)))
    case = lambda i: {"image": str(phantom_dir / f"case_0000{i}" / "imaging.nii.gz"),  # noqa: E731
                      "label": str(phantom_dir / f"case_0000{i}" / "segmentation.nii.gz")}
    monai.bundle.run(run_id="", init_id=None, final_id=None, meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"),
                     config_file=str(BUNDLE_ROOT / "configs" / "train.json"), bundle_root=str(BUNDLE_ROOT),
                     **{"train#trainer#max_epochs": 1, "train#dataset#data": [case(0)], "device": "cpu",
                        "validate#dataset#data": [case(1)], "dataset_dir": str(tmp_path / "absent"),
                        "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval"),
                        "num_workers": 0, "progress_bar": False, "slices_per_volume": 2, **TINY_OVERRIDES})
    assert len(runs) == 1, f"the trainer ran {len(runs)} times"
    assert (tmp_path / "models" / "model.pt").exists()


def test_lazy_datalist_reads_the_dataset_only_when_used(tmp_path, phantom_dir):
    from scripts.common.errors import InputError
    from scripts.data.datalist import LazyDatalist, load_datalist

    unused = LazyDatalist(str(tmp_path / "absent"))  # constructing it reads nothing
    with pytest.raises(InputError, match="absent"):
        unused["training"]  # the same one-line error as before, once the split is needed
    lazy = LazyDatalist(str(phantom_dir), "", 0, 2, 0)
    assert dict(lazy) == load_datalist(str(phantom_dir), "", 0, 2, 0)


def _monai_label_model_list(bundle: Path) -> list[str]:
    """The ``model_filename`` options MONAI Label 0.8.5 offers (``BundleInferTask.__init__`` and
    ``BundleTrainTask.config``: ``glob(<bundle>/models/*.pt)``, base names, sorted by length)."""
    return sorted((p.name for p in (bundle / "models").glob("*.pt")), key=len)


def _derived_output_paths(bundle_root: Path) -> dict[str, Path]:
    """Where the bundle's workflows write weights MONAI Label must not offer (resolved from the configs)."""
    def resolve(files, key, **overrides):
        parser = ConfigParser()
        parser.read_config([str(BUNDLE_ROOT / "configs" / f) for f in files])
        parser["bundle_root"] = str(bundle_root)
        for k, v in overrides.items():
            parser[k] = v
        return Path(parser.get_parsed_content(key))

    prune = ["train.json", "prune.json"]
    return {"sparse": resolve(prune, "sparse_model_path"), "structured": resolve(prune, "structured_model_path"),
            "structured_overlay": resolve(["inference.json", "structured.json"], "model_path"),
            "onnx": resolve(["inference.json"], "onnx_path"),
            "partitions": resolve(["inference.json", "inference_partitioned.json"], "partitions_dir")}


def test_derived_weights_are_not_in_monai_label_model_list(tmp_path):
    """Sparse, channel-pruned, ONNX and partition files land where ``models/*.pt`` does not reach; the
    channel-pruned model the structured overlay reads is the one ``run pruning_structured`` writes."""
    paths = _derived_output_paths(tmp_path)
    models = tmp_path / "models"
    for name, path in paths.items():
        assert not (path.parent == models and path.suffix == ".pt"), f"{name}: {path} would be offered by MONAI Label"
        if name != "partitions":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    assert paths["structured"] == paths["structured_overlay"]
    assert _monai_label_model_list(tmp_path) == []


def test_finished_training_run_is_not_resumed(tmp_path):
    """A request for N epochs after a run that reached N starts afresh; a crashed (shorter) run is resumed."""
    from ignite.engine import Engine, Events

    from scripts.training.checkpoint import find_last_checkpoint
    from scripts.training.handlers import StartFreshAfterFinishedRun

    def start(max_epochs: int) -> None:
        engine = Engine(lambda e, b: None)
        StartFreshAfterFinishedRun(tmp_path).attach(engine)
        engine.add_event_handler(Events.STARTED, lambda e: e.terminate())
        engine.run([0], max_epochs=max_epochs)

    torch.save({"model": {}}, tmp_path / "last_checkpoint_2.pt")
    (tmp_path / "model.pt").write_bytes(b"best")
    start(max_epochs=5)  # 2 of 5 epochs: an interrupted run, kept for ResumableCheckpoint
    assert find_last_checkpoint(tmp_path) == tmp_path / "last_checkpoint_2.pt"
    start(max_epochs=2)  # finished: the next request is a new run
    assert find_last_checkpoint(tmp_path) is None
    assert (tmp_path / "model.pt").read_bytes() == b"best"


def test_slicer_option_switches_the_largest_component_filter():
    """``displayable_configs`` is what MONAI Label shows in Slicer; it writes the request's values back into the
    config and re-parses (``BundleInferTask.pre_transforms``), so the option must reach ``postprocessing``."""
    parser = _inference_parser()
    options = parser.get_parsed_content("displayable_configs")
    assert options == {"keep_largest_components": True}
    names = lambda: [type(t).__name__ for t in parser.get_parsed_content("postprocessing").transforms]  # noqa: E731
    assert "KeepLargestConnectedComponentd" in names()
    parser["displayable_configs"].update({"keep_largest_components": False})
    parser.parse()
    assert "KeepLargestConnectedComponentd" not in names()


def _write_small_ct() -> str:
    from scripts.synthetic.phantoms import generate_phantom

    image, _, affine = generate_phantom(1, in_plane_size=32, slice_thickness_range=(10.0, 10.0))
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"kidney_ml_{uuid.uuid4().hex[:8]}.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.int16), affine), path)
    return str(path)


# ---------------------------------------------------------------- HTTP as the Slicer plugin does it

def _multipart(fields: dict[str, str], files: dict[str, Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks = []
    for name, value in fields.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, path in files.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
                      "Content-Type: application/octet-stream\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


class Server:
    """A running ``monailabel.main start_server`` and the requests the Slicer plugin sends to it."""

    def __init__(self, url: str, proc: subprocess.Popen, log: Path, root: Path, local_image: Path) -> None:
        self.url, self.proc, self.log, self.root = url, proc, log, root
        self.app = root / "app"
        self.bundle = self.app / "model" / MODEL
        self.local_image = local_image  # a volume "loaded in Slicer": not in the studies folder

    def log_tail(self, lines: int = 40) -> str:
        return "".join(self.log.read_text(errors="replace").splitlines(True)[-lines:]) if self.log.exists() else ""

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                timeout: float = 60) -> tuple[int, dict, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def json(self, method: str, path: str, payload: dict | None = None, timeout: float = 60):
        body = json.dumps(payload).encode() if payload is not None else None
        status, _, content = self.request(method, path, body, "application/json" if body else None, timeout)
        assert status == 200, f"{method} {path}: HTTP {status} {content[:500]!r}\n{self.log_tail()}"
        return json.loads(content)

    def create_session(self, volume: Path) -> str:
        body, ctype = _multipart({"params": "{}"}, {"files": volume})
        status, _, content = self.request("PUT", "/session/", body, ctype)
        assert status == 200, f"PUT /session/: HTTP {status} {content[:500]!r}\n{self.log_tail()}"
        return json.loads(content)["session_id"]

    def slicer_params(self) -> dict:
        """The params the plugin builds from /info (first value of every option) plus the result format."""
        info = self.json("GET", "/info/")
        params = {k: v[0] if isinstance(v, list) else v for k, v in info["models"][MODEL]["config"].items()}
        return {**params, **SLICER_RESULT_PARAMS}

    def infer(self, image_id: str, session_id: str | None = None, params: dict | None = None,
              timeout: float = INFER_TIMEOUT_S) -> tuple[dict, Path]:
        """POST /infer/<model> with the params the plugin builds from /info; returns (params, label file)."""
        params = dict(params) if params is not None else self.slicer_params()
        query = f"/infer/{MODEL}?image={urllib.parse.quote_plus(image_id)}"
        if session_id:
            query += f"&session_id={urllib.parse.quote_plus(session_id)}"
        body, ctype = _multipart({"params": json.dumps(params)}, {})
        status, headers, content = self.request("POST", query, body, ctype, timeout=timeout)
        assert status == 200, f"POST {query}: HTTP {status} {content[:500]!r}\n{self.log_tail()}"
        reply_type = next(v for k, v in headers.items() if k.lower() == "content-type")
        message = email.message_from_bytes(f"Content-Type: {reply_type}\r\n\r\n".encode() + content)
        parts = {p.get_param("name", header="content-disposition"): p for p in message.get_payload()}
        result_params = json.loads(parts["params"].get_payload(decode=True))
        label_file = self.app.parent / f"result_{uuid.uuid4().hex[:8]}_{parts['image'].get_filename()}"
        label_file.write_bytes(parts["image"].get_payload(decode=True))
        return result_params, label_file

    def train(self, overrides: dict, timeout: float = TRAIN_TIMEOUT_S) -> dict:
        """POST /train/<model> with the trainer's first config values (as the plugin) updated by ``overrides``."""
        info = self.json("GET", "/info/")
        params = {k: v[0] if isinstance(v, list) else v for k, v in info["trainers"][MODEL]["config"].items()}
        params.update(overrides)
        task_id = self.json("POST", f"/train/{MODEL}", params)["id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.json("GET", "/train/")  # the latest task: SUBMITTED -> RUNNING -> DONE | ERROR | STOPPED
            if task["id"] == task_id and task["status"] not in ("SUBMITTED", "RUNNING"):
                return task
            time.sleep(2)
        self.request("DELETE", "/train/")
        pytest.fail(f"training did not finish within {timeout} s\n{self.log_tail()}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and everything it started (training runs as a child process): its process group."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- test data

def _phantom(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small SYNTHETIC phantom (64x64 in-plane, 10 mm slices) cut to the slices holding a kidney."""
    from scripts.synthetic.phantoms import generate_phantom

    image, label, affine = generate_phantom(seed, in_plane_size=64, slice_thickness_range=(10.0, 10.0))
    z = np.nonzero((label > 0).any(axis=(0, 1)))[0]
    lo, hi = int(z.min()), int(z.max()) + 1
    shift = np.eye(4)
    shift[2, 3] = lo
    return image[..., lo:hi], label[..., lo:hi], affine @ shift


def _write_phantom(folder: Path, name: str, seed: int, kits_storage: bool) -> tuple[Path, Path]:
    """Write image and label NIfTIs; ``kits_storage`` stores them like KiTS (slice axis first, I-P-L)."""
    from scripts.synthetic.phantoms import ras_to_kits

    image, label, affine = _phantom(seed)
    if kits_storage:
        (image, aff), (label, _) = ras_to_kits(image, affine), ras_to_kits(label, affine)
    else:
        aff = affine
    folder.mkdir(parents=True, exist_ok=True)
    image_path, label_path = folder / f"{name}.nii.gz", folder / f"{name}_label.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.int16), aff), image_path)
    nib.save(nib.Nifti1Image(label.astype(np.uint8), aff), label_path)
    return image_path, label_path


def _planted_weights(bundle: Path, calibration_image: Path, seed: int = 0) -> dict:
    """Seeded network weights whose label map varies with the image (see the module docstring).

    The output bias is shifted so that, on a few slices of ``calibration_image``, about 40 % of the pixels
    are kidney and 20 % tumour; without it, random weights give a constant map and prove nothing.
    """
    parser = _inference_parser(bundle)
    parser["device"] = "cpu"
    torch.manual_seed(seed)
    net = parser.get_parsed_content("network_def").eval()
    image = parser.get_parsed_content("preprocessing")({"image": str(calibration_image)})["image"]
    middle = image.shape[-1] // 2
    slices = image[..., middle - 1:middle + 2].permute(3, 0, 1, 2).float()  # (3 slices, 1, H, W)
    # calibrated in the precision the default fast path (``auto``) resolves to here (bf16 on a CPU with native
    # bf16), whose rounding would otherwise move these centred random logits to a near-constant map
    from scripts.inference.fast_path import _autocast, choose_fast_path

    with torch.no_grad(), _autocast(torch.device("cpu"), choose_fast_path(net, "cpu")):
        logits = net(slices).float()
    diff_kidney = (logits[:, 1] - logits[:, 0]).flatten()
    diff_tumour = (logits[:, 2] - logits[:, 0]).flatten()
    with torch.no_grad():
        net.decoder.head.bias[1] -= torch.quantile(diff_kidney, 0.6)
        net.decoder.head.bias[2] -= torch.quantile(diff_tumour, 0.8)
    return net.state_dict()


def _write_derived_weights(bundle: Path, planted: dict) -> None:
    """Everything the bundle's workflows put next to ``models/model.pt``, at the paths the configs give: the
    magnitude-pruned dense model (loadable), its sparse file, a channel-pruned model (other shapes), an ONNX file
    and a partition (what ``run pruning``, ``run pruning_structured``, the ONNX export and UNet-P write)."""
    from scripts.pruning.storage import save_checkpoint, save_sparse_state_dict

    pruned = {k: torch.where(v.abs() < v.abs().flatten().median(), 0, v) if v.is_floating_point() and v.ndim > 1
              else v for k, v in planted.items()}
    torch.save({"model": pruned}, bundle / "models" / "model_pruned.pt")
    paths = _derived_output_paths(bundle)
    save_sparse_state_dict(pruned, paths["sparse"])
    parser = _inference_parser(bundle)
    parser["device"] = "cpu"
    parser["network_def#channels"] = [c // 2 for c in parser["network_def"]["channels"]]
    save_checkpoint(parser.get_parsed_content("network_def").state_dict(), paths["structured"])
    paths["onnx"].write_bytes(b"not a torch file")
    paths["partitions"].mkdir(parents=True)
    (paths["partitions"] / "model_part1of2.ts").write_bytes(b"not a torch file")


def _server_rss_mb(pid: int) -> float:
    """Resident memory of the server process (``VmRSS``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _read(path: Path) -> tuple[np.ndarray, tuple]:
    """Voxels (ITK index order) and geometry (size, spacing, origin, direction) as ITK (3D Slicer) sees them."""
    img = itk.imread(str(path))
    geometry = (tuple(int(s) for s in itk.size(img)), np.array(itk.spacing(img)), np.array(itk.origin(img)),
                np.array(img.GetDirection()))
    return np.asarray(itk.array_from_image(img)), geometry


def _assert_same_geometry(result: Path, study: Path) -> None:
    (_, got), (_, want) = _read(result), _read(study)
    assert got[0] == want[0], f"size {got[0]} != study {want[0]}"
    for name, a, b in zip(("spacing", "origin", "direction"), got[1:], want[1:]):
        # NRRD stores geometry as decimal text: equal to the study to 1e-5 mm (or 1e-5 in the direction cosines)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=f"{name} differs from the study's")


def _bundle_own_inference(bundle: Path, image: Path, weights: Path, out: Path) -> np.ndarray:
    """The bundle's own ``run inferring`` (this repository's environment) on ``image`` with ``weights``, with the
    same settings as the server: the default fast path (``auto``), which MONAI Label's ``inferer`` now uses too."""
    args = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file",
            str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle), "--input_path", str(image),
            "--output_dir", str(out), "--model_path", str(weights)]
    env = {**os.environ, "PYTHONPATH": str(bundle), "THP_MEM_ALLOC_ENABLE": "1"}
    done = subprocess.run(args, cwd=bundle, env=env, capture_output=True, text=True, timeout=INFER_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    written = sorted(out.glob("*.nii.gz"))
    assert len(written) == 1, written
    return _read(written[0])[0]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the server

@pytest.fixture(scope="module")
def server_python() -> Path:
    try:
        return monailabel_env.ensure_env(log=lambda msg: print(msg, file=sys.stderr))
    except monailabel_env.EnvBuildError as err:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the MONAI Label test, but its server environment could not be built: {err}")
        pytest.skip(f"MONAI Label server environment cannot be built here (no network?): {err}")


@pytest.fixture(scope="module")
def server(server_python, tmp_path_factory) -> Server:
    """The monaibundle sample app with a copy of this bundle as ``model/<MODEL>``, served on a free port."""
    if not REAL_CT.exists():
        pytest.skip(f"real data not available: {REAL_CT} is absent")
    root = tmp_path_factory.mktemp("monailabel")
    prefix = subprocess.run([str(server_python), "-c", "import sys; print(sys.prefix)"], capture_output=True,
                            text=True, check=True).stdout.strip()
    app = root / "app"
    shutil.copytree(Path(prefix) / "monailabel" / "sample-apps" / "monaibundle", app,
                    ignore=shutil.ignore_patterns("__pycache__"))
    bundle = app / "model" / MODEL
    for item in BUNDLE_CONTENT:
        src = BUNDLE_ROOT / item
        (shutil.copytree(src, bundle / item, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy2(src, bundle / item))

    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    nib.save(nib.load(REAL_CT).slicer[:, :, 5:15], studies / REAL_CT_CROP)
    nib.save(nib.load(REAL_CT).slicer[:, :, 9:11], studies / BURST_CT)  # 2 slices: the concurrency test's study
    # two labelled SYNTHETIC phantoms in the datastore: what /train learns from (one train, one validation)
    for name, seed, kits in (("phantom_train_a", 11, True), ("phantom_train_b", 12, False)):
        image, label = _write_phantom(root / "datastore_src", name, seed, kits)
        shutil.copy2(image, studies / image.name)
        shutil.copy2(label, studies / "labels" / "final" / image.name)
    # the phantom a user loads locally in Slicer (KiTS storage: the result must be inverted back to it)
    local_image, _ = _write_phantom(root / "local", "local_phantom", 21, kits_storage=True)

    (bundle / "models").mkdir()
    planted = _planted_weights(bundle, local_image)
    torch.save({"model": planted}, bundle / "models" / "model.pt")
    _write_derived_weights(bundle, planted)

    log = root / "server.log"
    port = _free_port()
    env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(root / "sessions"), "PYTHONPATH": "", "THP_MEM_ALLOC_ENABLE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    cmd = [str(server_python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
           "--conf", "models", MODEL, "--conf", "zoo_source", "github", "--conf", "sam2", "false",
           "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    srv = Server(f"http://127.0.0.1:{port}", proc, log, root, local_image)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode} before answering\n{srv.log_tail(60)}")
            try:
                if srv.request("GET", "/info/", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"server did not answer /info/ within {SERVER_START_S} s\n{srv.log_tail(60)}")
        yield srv
    finally:
        _stop(proc)
    assert proc.poll() is not None, "server still running after the finalizer"


@pytest.fixture(scope="module")
def reference(server) -> dict:
    """Results shared by the tests below (weights before training, the bundle's own output with them)."""
    return {}


# slow, and the first test also builds the server environment when it is not cached (minutes)
def pytestmark_server(fn):
    return pytest.mark.slow(pytest.mark.timeout(1800)(fn))


@pytestmark_server
def test_info_lists_the_bundle_with_its_channel_def_labels(server):
    info = server.json("GET", "/info/")
    model = info["models"][MODEL]
    assert model["type"] == "segmentation"
    assert model["labels"] == EXPECTED_LABELS
    assert model["version"] == META["version"]
    assert model["description"] == META["description"]
    assert MODEL in info["trainers"], "train.json is there, so a trainer must be listed"
    assert set(info["labels"]) == set(EXPECTED_LABELS)


@pytestmark_server
def test_weights_file_keys_equal_the_network_keys(server):
    """MONAI Label loads with strict=False: any key mismatch would silently leave random weights."""
    parser = _inference_parser(server.bundle)
    parser["device"] = "cpu"
    net_keys = set(parser.get_parsed_content("network_def").state_dict())
    checkpoint = torch.load(server.bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert set(checkpoint.get("model", checkpoint)) == net_keys


@pytestmark_server
def test_model_list_offers_only_loadable_weights(server):
    """Every ``model_filename`` offered (infer and train) loads into the served ``network_def`` with equal keys
    and shapes; the sparse and channel-pruned files, the ONNX file and the partitions are not offered."""
    info = server.json("GET", "/info/")
    offered = info["models"][MODEL]["config"]["model_filename"]
    assert offered == ["model.pt", "model_pruned.pt"], offered
    assert info["trainers"][MODEL]["config"]["model_filename"] == offered
    parser = _inference_parser(server.bundle)
    parser["device"] = "cpu"
    network = parser.get_parsed_content("network_def")
    for name in offered:
        checkpoint = torch.load(server.bundle / "models" / name, map_location="cpu", weights_only=True)
        network.load_state_dict(checkpoint.get("model", checkpoint), strict=True)
    for name, path in _derived_output_paths(server.bundle).items():
        assert path.exists(), f"{name}: the fixture did not write {path}"


@pytestmark_server
def test_infer_on_real_ct_returns_labels_in_the_study_geometry(server):
    params, label_file = server.infer(REAL_CT_CROP.split(".")[0])
    assert params["label_names"] == EXPECTED_LABELS
    voxels, _ = _read(label_file)
    assert voxels.dtype == np.uint8
    assert set(np.unique(voxels)) <= {0, *EXPECTED_LABELS.values()}
    _assert_same_geometry(label_file, server.root / "studies" / REAL_CT_CROP)
    assert "Checkpoint keys don't match" not in server.log.read_text(errors="replace")


@pytestmark_server
def test_infer_on_uploaded_volume_uses_the_bundle_weights(server, reference, tmp_path):
    """A locally loaded (KiTS-stored) phantom, sent with PUT /session/ as Slicer does: geometry, and the
    same label map as the bundle's own inference with the same weights."""
    session_id = server.create_session(server.local_image)
    params, label_file = server.infer("local_phantom", session_id=session_id)
    assert params["label_names"] == EXPECTED_LABELS
    _assert_same_geometry(label_file, server.local_image)
    served, _ = _read(label_file)

    weights = tmp_path / "planted.pt"
    shutil.copy2(server.bundle / "models" / "model.pt", weights)
    own = _bundle_own_inference(server.bundle, server.local_image, weights, tmp_path / "own")
    # the check can only tell weights apart if the map depends on them: it has background and foreground
    assert 0.05 < (own > 0).mean() < 0.95, f"planted weights give a near-constant map: {np.unique(own)}"
    agreement = (served == own).mean()
    assert agreement >= 0.999, f"server and bundle disagree on {1 - agreement:.2%} of voxels: other weights?"
    reference.update(planted_map=own, planted_sha=_sha256(weights), session_id=session_id)


@pytestmark_server
def test_train_rewrites_the_weights_and_the_next_infer_uses_them(server, reference, tmp_path):
    if "planted_map" not in reference:
        pytest.skip("needs test_infer_on_uploaded_volume_uses_the_bundle_weights (the map before training)")
    model_file = server.bundle / "models" / "model.pt"
    before = model_file.stat().st_mtime_ns
    result = server.train({"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False})
    assert result["status"] == "DONE", f"{result}\n{server.log_tail()}"
    assert model_file.stat().st_mtime_ns != before, f"/train did not rewrite model.pt: {result}\n{server.log_tail()}"
    new_weights = tmp_path / "trained.pt"
    shutil.copy2(model_file, new_weights)
    assert _sha256(new_weights) != reference["planted_sha"]
    parser = _inference_parser(server.bundle)
    parser["device"] = "cpu"
    checkpoint = torch.load(new_weights, map_location="cpu", weights_only=True)
    assert set(checkpoint.get("model", checkpoint)) == set(parser.get_parsed_content("network_def").state_dict())

    own_after = _bundle_own_inference(server.bundle, server.local_image, new_weights, tmp_path / "own_after")
    assert (own_after != reference["planted_map"]).mean() > 0.001, "training left the label map unchanged"
    _, label_file = server.infer("local_phantom", session_id=reference["session_id"])
    served_after, _ = _read(label_file)
    agreement = (served_after == own_after).mean()
    assert agreement >= 0.999, f"after /train the server disagrees with the new weights on {1 - agreement:.2%}"


@pytestmark_server
def test_concurrent_infer_requests_all_answer_correctly_in_bounded_memory(server):
    """20 requests at once from 127.0.0.1, as 20 Slicer users pressing "Auto segment": every answer is HTTP 200
    with the same label map as a request alone, the server survives, and its memory does not grow with the queue.

    MONAI Label 0.8.5's ``/infer`` endpoint is ``async`` and runs the task synchronously (with the default
    ``MONAI_LABEL_INFER_CONCURRENCY=-1`` in the event loop itself; a thread pool set by that variable is awaited
    synchronously too), so one server process runs one inference at a time and queues the rest: memory stays at one
    request's, latency grows with the queue (docs/README.md, "Use it from 3D Slicer").
    """
    from concurrent.futures import ThreadPoolExecutor

    params = server.slicer_params()
    study = BURST_CT.split(".")[0]
    _, alone_file = server.infer(study, params=params)
    alone, _ = _read(alone_file)
    baseline = _server_rss_mb(server.proc.pid)
    samples, done = [baseline], []

    def sample() -> None:
        while not done:
            samples.append(_server_rss_mb(server.proc.pid))
            time.sleep(0.1)

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=CONCURRENT_REQUESTS + 1) as pool:
        sampler = pool.submit(sample)
        # queued one after the other: the last answer waits for all the others (hence the long client timeout)
        results = list(pool.map(lambda _: server.infer(study, params=params, timeout=TRAIN_TIMEOUT_S * 3),
                                range(CONCURRENT_REQUESTS)))
        done.append(True)
        sampler.result()
    wall = time.monotonic() - start
    assert server.proc.poll() is None, f"server died\n{server.log_tail()}"
    for result_params, label_file in results:
        voxels, _ = _read(label_file)
        assert np.array_equal(voxels, alone), "a concurrent answer differs from the answer alone"
        assert result_params["label_names"] == EXPECTED_LABELS
    server_total = sum(r[0]["latencies"]["total"] for r in results)
    peak = max(samples)
    print(f"[concurrency] {CONCURRENT_REQUESTS} requests in {wall:.1f} s wall, server-side sum {server_total:.1f} s "
          f"(ratio {server_total / wall:.2f}: 1.0 = one at a time); RSS {baseline:.0f} MB idle, peak {peak:.0f} MB")
    assert peak - baseline < RSS_GROWTH_LIMIT_MB, f"server memory grew {peak - baseline:.0f} MB under load"


@pytestmark_server
def test_second_train_starts_a_new_run(server, reference):
    """A second "Train" with the same epochs after a finished one is a new run, not a resume of its checkpoint."""
    if "planted_map" not in reference:
        pytest.skip("needs test_infer_on_uploaded_volume_uses_the_bundle_weights")
    overrides = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False}
    if not list((server.bundle / "models").glob("last_checkpoint_*.pt")):  # no finished run yet: make one
        first = server.train(overrides)
        assert first["status"] == "DONE", f"{first}\n{server.log_tail()}"
    assert list((server.bundle / "models").glob("last_checkpoint_*.pt")), "the finished run left no checkpoint"
    log_before = server.log.read_text(errors="replace")
    second = server.train(overrides)
    assert second["status"] == "DONE", f"{second}\n{server.log_tail()}"
    log = server.log.read_text(errors="replace")[len(log_before):]
    assert "starting a new run" in log, log[-3000:]
    assert "resumed training from" not in log, log[-3000:]
