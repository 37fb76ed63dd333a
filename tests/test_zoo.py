"""Model-zoo checks with MONAI's own tools: ``verify_metadata`` (offline schema copy), ``verify_net_in_out`` on the
default network, ``ckpt_export`` to TorchScript and back, ``large_files.yml`` entries, version and changelog.

(tests/test_workflows.py already checks the metadata with ``jsonschema``, the labels against the configs, and
``verify_net_in_out`` on a narrowed network; these tests add MONAI's entry points the zoo's CI runs.)
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml
from monai.bundle import ConfigParser, download_large_files, verify_metadata, verify_net_in_out

from conftest import BUNDLE_ROOT

CONFIGS = BUNDLE_ROOT / "configs"
META_FILE = CONFIGS / "metadata.json"
INFERENCE = CONFIGS / "inference.json"
LARGE_FILES = BUNDLE_ROOT / "large_files.yml"
SCHEMAS = BUNDLE_ROOT.parent / "shared" / "monai_meta_schemas"

# What a large_files.yml entry must hold for `python -m monai.bundle download_large_files` to fetch a file and
# check it. MONAI itself drops an empty or missing hash_val and then downloads WITHOUT any check, so this
# schema is what catches an entry that lost its hash.
LARGE_FILE_ENTRY_SCHEMA = {
    "type": "object",
    "required": ["path", "url", "hash_val", "hash_type"],
    "additionalProperties": False,
    "properties": {
        "path": {"type": "string", "pattern": r"^models/[^/]+\.(pt|ts|onnx)$"},
        "url": {"type": "string", "pattern": r"^(https|file)://\S+$"},
        "hash_type": {"enum": ["md5", "sha1", "sha256", "sha512"]},
        "hash_val": {"type": "string", "pattern": r"^[0-9a-f]+$"},
    },
}
HASH_LENGTH = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}


def _meta() -> dict:
    return json.loads(META_FILE.read_text())


def _local_schema(tmp_path: Path) -> Path:
    """A copy of the offline schema named like the URL in metadata.json, where verify_metadata will find it."""
    name = _meta()["schema"].rsplit("/", 1)[-1]
    source = SCHEMAS / name
    if not source.exists():
        pytest.skip(f"offline schema copy not available: {source}")
    target = tmp_path / name
    shutil.copy2(source, target)
    return target


def test_verify_metadata_against_the_offline_schema(tmp_path):
    # existing file: MONAI's download_url checks the md5 (PROVENANCE.md of the schema copies) and skips the download
    verify_metadata(meta_file=str(META_FILE), filepath=str(_local_schema(tmp_path)),
                    hash_val="662135097106b71067cd1fc657f8720f" if "20220324" in _meta()["schema"] else None)


def test_verify_metadata_rejects_a_broken_metadata(tmp_path):
    """The check can fail: a metadata.json without ``version`` is refused."""
    broken = _meta()
    del broken["version"]
    broken_file = tmp_path / "metadata.json"
    broken_file.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="version"):
        verify_metadata(meta_file=str(broken_file), filepath=str(_local_schema(tmp_path)))


def test_version_and_changelog_are_current():
    meta = _meta()
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"]), meta["version"]
    assert meta["version"] in meta["changelog"], "every version bump needs a changelog line"
    newest = max(meta["changelog"], key=lambda v: tuple(int(p) for p in v.split(".")))
    assert newest == meta["version"], f"changelog has {newest}, newer than version {meta['version']}"
    assert list(meta["changelog"])[0] == meta["version"], "the zoo lists the newest changelog entry first"
    versions = {"monai_version": "monai", "pytorch_version": "torch", "numpy_version": "numpy"}
    pinned = dict(line.split("==") for line in (BUNDLE_ROOT / "requirements.txt").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    for field, package in versions.items():
        assert meta[field] == pinned[package], f"{field} {meta[field]} != requirements.txt {pinned[package]}"
    # every other runtime pin is listed with the same version, and nothing else is
    others = {k: v for k, v in pinned.items() if k not in versions.values()}
    assert meta["optional_packages_version"] == others


def test_model_card_names_the_current_version():
    card = (BUNDLE_ROOT / "docs" / "README.md").read_text()
    stated = re.search(r"\| bundle version \| (\d+\.\d+\.\d+) ", card)
    assert stated and stated.group(1) == _meta()["version"], "docs/README.md states another bundle version"


def test_verify_net_in_out_on_the_default_network():
    """The shipped configuration (full WP-UNet, 256x256 slices) maps metadata's input to its output."""
    verify_net_in_out(net_id="network_def", meta_file=str(META_FILE), config_file=str(INFERENCE), device="cpu",
                      n=1, any=1)


@pytest.mark.slow
def test_ckpt_export_to_torchscript_reloads_and_matches_eager(tmp_path):
    """``python -m monai.bundle ckpt_export`` (as the zoo documents it); the TorchScript output equals eager."""
    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    parser["bundle_root"] = str(BUNDLE_ROOT)
    torch.manual_seed(0)
    eager = parser.get_parsed_content("network_def").eval()
    ckpt = tmp_path / "model.pt"
    torch.save({"model": eager.state_dict()}, ckpt)
    exported = tmp_path / "model.ts"
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(exported),
         "--ckpt_file", str(ckpt), "--meta_file", str(META_FILE), "--config_file", str(INFERENCE),
         "--key_in_ckpt", "model", "--bundle_root", str(BUNDLE_ROOT)],
        cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(exported), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == _meta()["version"]
    x = torch.rand(2, 1, *_meta()["network_data_format"]["inputs"]["image"]["spatial_shape"])
    with torch.no_grad():
        expected, got = eager(x), scripted(x)
    assert got.shape == expected.shape == (2, 3, *x.shape[2:])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _large_file_entries(path: Path) -> list[dict]:
    """Entries of a large_files.yml, validated; raises jsonschema.ValidationError or ValueError naming the entry."""
    content = yaml.safe_load(path.read_text())
    if not isinstance(content, dict) or not isinstance(content.get("large_files"), list):
        raise ValueError(f"{path}: needs a top-level 'large_files' list")
    for entry in content["large_files"]:
        jsonschema.validate(entry, LARGE_FILE_ENTRY_SCHEMA)
        if len(entry["hash_val"]) != HASH_LENGTH[entry["hash_type"]]:
            raise ValueError(f"{path}: {entry['path']}: a {entry['hash_type']} hash has "
                             f"{HASH_LENGTH[entry['hash_type']]} hex digits, got {len(entry['hash_val'])}")
    return content["large_files"]


def test_large_files_yml_parses_and_monai_reads_it():
    entries = _large_file_entries(LARGE_FILES)
    # MONAI's own reader agrees (an empty list is valid: no weights are published yet, see the file's comment)
    parser = ConfigParser()
    parser.read_config(str(LARGE_FILES))
    assert parser.get("large_files") == entries


def _bundle_with_large_files(tmp_path: Path, entries: list[dict]) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "large_files.yml").write_text(yaml.safe_dump({"large_files": entries}))
    return bundle


def test_large_files_entries_are_checked_and_downloaded_with_their_hash(tmp_path):
    """An entry in the documented form downloads and is hash-checked; a wrong hash stops the download;
    an entry without a hash is caught by the schema (MONAI alone would download it unchecked)."""
    weights = tmp_path / "released.pt"
    weights.write_bytes(b"stand-in for released weights")
    good = {"path": "models/model.pt", "url": weights.as_uri(), "hash_val": hashlib.md5(weights.read_bytes())
            .hexdigest(), "hash_type": "md5"}

    bundle = _bundle_with_large_files(tmp_path / "good", [good])
    assert _large_file_entries(bundle / "large_files.yml") == [good]
    download_large_files(bundle_path=str(bundle))
    assert (bundle / "models" / "model.pt").read_bytes() == weights.read_bytes()

    wrong = {**good, "hash_val": "0" * 32}
    bundle = _bundle_with_large_files(tmp_path / "wrong", [wrong])
    with pytest.raises(Exception, match="(?i)hash|md5"):
        download_large_files(bundle_path=str(bundle))

    for broken in ({k: v for k, v in good.items() if k != "hash_val"}, {**good, "hash_val": ""},
                   {**good, "hash_val": "abc"}, {k: v for k, v in good.items() if k != "url"},
                   {**good, "path": "/etc/passwd"}):
        path = _bundle_with_large_files(tmp_path / f"broken{len(str(broken))}", [broken]) / "large_files.yml"
        with pytest.raises((jsonschema.ValidationError, ValueError)):
            _large_file_entries(path)
