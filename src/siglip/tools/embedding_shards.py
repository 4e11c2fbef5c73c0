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

READ_ROWS = 16_384  # rows per read of a Parquet file: 48 MiB at 768-d, whatever its row groups
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


def open_embeddings(source: str | os.PathLike, model: str, dims: int) -> tuple[list[Path], int]:
    """The Parquet files of `source` and the rows they hold; embeddings of another model or size are refused
    before any vector is read."""
    pq = require("pyarrow.parquet", "parquet", "reading embeddings")
    files = embedding_files(source)
    rows = 0
    for path in files:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        if "path" not in schema.names or "vector" not in schema.names:
            raise UsageError(f"{path} has no path and vector columns: not a file of `siglip embed`")
        models = set(pq.read_table(path, columns=["model"]).column("model").unique().to_pylist())
        if models - {model}:
            raise UsageError(f"{path} holds embeddings of model {sorted(models - {model})}, not '{model}'")
        size = schema.field("vector").type.list_size
        if size != dims:
            raise UsageError(f"{path} holds {size}-d embeddings, the index {dims}-d")
        rows += parquet.metadata.num_rows
    return files, rows


def read_embeddings(
    files: list[Path], dims: int, vectors: bool = True
) -> Iterator[tuple[list[str], np.ndarray | None, list[tuple[str, str]]]]:
    """(paths, vectors (N, dims) float32, unreadable files) chunks of at most `READ_ROWS` rows of `files` (from
    `open_embeddings`), in order, whatever their row groups; the unreadable files a shard records come with
    its first chunk. `vectors=False` reads the paths alone (vectors None)."""
    pq = require("pyarrow.parquet", "parquet", "reading embeddings")
    columns = ["path", "vector"] if vectors else ["path"]
    for path in files:
        record = shard_record(path) or {}
        failed = [(p, reason) for p, reason in record.get("skipped", [])]
        for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS, columns=columns):
            matrix = None
            if vectors:
                flat = batch.column("vector").flatten().to_numpy(zero_copy_only=False)
                matrix = flat.reshape(-1, dims).astype(np.float32, copy=False)
            yield batch.column("path").to_pylist(), matrix, failed
            failed = []
        if failed:  # a shard of unreadable files only
            yield [], np.empty((0, dims), np.float32) if vectors else None, failed
