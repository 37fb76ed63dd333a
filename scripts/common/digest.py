"""SHA-256 of a file, read in 1 MiB blocks: output records, cached ONNX exports and the lean model's recipe."""

from __future__ import annotations

import hashlib
import os

__all__ = ["file_sha256"]


def file_sha256(path: str | os.PathLike, digest=None) -> str:
    """Hex SHA-256 of the file at ``path``; with ``digest`` (a ``hashlib`` object) the bytes are added to it and its
    hex digest so far is returned (several files into one digest)."""
    digest = hashlib.sha256() if digest is None else digest
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
