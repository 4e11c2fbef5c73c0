"""Reading embeddings back from Parquet: one file of `siglip embed --out FILE.parquet`, or a folder of the
shards `siglip embed --engine ray` writes (`siglip index --from-embeddings`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import InputNotFoundError, UsageError
from .deps import require

SHARD_METADATA = b"siglip"  # Parquet schema metadata key of a shard's JSON record (model, skipped files, ...)


def embedding_files(source: str | os.PathLike) -> list[Path]:
    """The Parquet files of `source`: itself, or the `*.parquet` files of a folder (those whose names start
    with `.` or `_` left out, as pyarrow and Ray leave them out), sorted."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise InputNotFoundError(f"no such file or folder: '{source}'")
    files = sorted(p for p in source.glob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        raise InputNotFoundError(f"'{source}' holds no .parquet files of embeddings")
    return files


def shard_record(path: Path) -> dict | None:
    """The JSON record of a shard of `siglip embed --engine ray` (None for another Parquet file)."""
    pq = require("pyarrow.parquet", "parquet", "reading embeddings")
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata[SHARD_METADATA]) if SHARD_METADATA in metadata else None


def embeddings_model(source: str | os.PathLike) -> str:
    """The model named by the first row of the embeddings in `source`."""
    pq = require("pyarrow.parquet", "parquet", "reading embeddings")
    first = pq.ParquetFile(embedding_files(source)[0]).read_row_group(0, columns=["model"])
    return str(first.column("model")[0])


def read_embeddings(
    source: str | os.PathLike, model: str, dims: int
) -> Iterator[tuple[list[str], np.ndarray, list[tuple[str, str]]]]:
    """(paths, vectors (N, dims) float32, unreadable files) chunks of the embeddings in `source`, one per
    row group; the unreadable files a shard records come with its first chunk. Embeddings of another model
    or size are refused before anything is read."""
    pq = require("pyarrow.parquet", "parquet", "reading embeddings")
    files = embedding_files(source)
    for path in files:
        schema = pq.read_schema(path)
        if "path" not in schema.names or "vector" not in schema.names:
            raise UsageError(f"{path} has no path and vector columns: not a file of `siglip embed`")
        models = set(pq.read_table(path, columns=["model"]).column("model").unique().to_pylist())
        if models - {model}:
            raise UsageError(f"{path} holds embeddings of model {sorted(models - {model})}, not '{model}'")
        size = schema.field("vector").type.list_size
        if size != dims:
            raise UsageError(f"{path} holds {size}-d embeddings, the index {dims}-d")
    for path in files:
        record = shard_record(path) or {}
        failed = [(p, reason) for p, reason in record.get("skipped", [])]
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=["path", "vector"])
            vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, dims)
            yield table.column("path").to_pylist(), vectors.astype(np.float32, copy=False), failed
            failed = []
        if not parquet.num_row_groups and failed:
            yield [], np.empty((0, dims), np.float32), failed
