"""The one fingerprint of a model: which weights made a set of embeddings.

The search index records it (weights changed behind the same name are refused, a moved model folder is
recognised) and so do the shards of `siglip embed --engine ray` (a rerun refuses shards of other weights).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ...core.hub import locate
from ...errors import CheckpointError


def model_fingerprint(name: str) -> str | None:
    """SHA-256 over the SHA-256 of each weight file of model `name` (a name `locate` resolves), or None when
    it has no weight files to read (an `Embedder` made in memory).

    Only the weights count: a config or tokenizer file rewritten with the same values keeps the fingerprint.
    """
    try:
        files = locate(name).weight_files()
    except CheckpointError:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(_file_sha256(path).encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    real = path.resolve()
    if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", real.name):
        return real.name  # the hub cache names a large file's blob by its SHA-256, checked on download
    digest = hashlib.sha256()
    with open(real, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
