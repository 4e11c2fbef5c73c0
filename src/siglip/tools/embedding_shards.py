"""Reading embeddings back from Parquet: one file of `siglip embed --out FILE.parquet`, or a folder of the
shards `siglip embed --engine ray` writes (`siglip index --from-embeddings`)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, InputNotFoundError, UsageError
from .deps import require

READ_ROWS = 16_384  # rows per read of a Parquet file: 48 MiB at 768-d, whatever its row groups
SHARD_METADATA = b"siglip"  # Parquet schema metadata key of a shard's JSON record (model, skipped files, ...)
EMBEDDING_SETTINGS = ("precision", "max_num_patches", "reduced_decode")  # the keys of `Embedder.settings`


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
    return _record(pq.read_schema(path))


def _record(schema: Any) -> dict | None:
    metadata = schema.metadata or {}
    return json.loads(metadata[SHARD_METADATA]) if SHARD_METADATA in metadata else None


def embeddings_model(source: str | os.PathLike) -> str:
    """The model named by the first row of the embeddings in `source`."""
    pq = require("pyarrow.parquet", "parquet", "reading embeddings")
    first = pq.ParquetFile(embedding_files(source)[0]).read_row_group(0, columns=["model"])
    return str(first.column("model")[0])


@dataclass(frozen=True)
class EmbeddingFile:
    """A Parquet file of embeddings as `open_embeddings` checked it: `read_embeddings` refuses it changed."""

    path: Path
    rows: int
    identity: tuple[int, int, int]  # inode, size, modification time (ns): another file or a rewrite differs


def open_embeddings(
    source: str | os.PathLike, model: str, dims: int
) -> tuple[list[EmbeddingFile], dict[str, Any]]:
    """The Parquet files of `source`, and the settings their embeddings were made with (`Embedder.settings`:
    from a shard's record, or the manifest `siglip embed` wrote beside a file; None where not recorded).
    Embeddings of another model or size, or made with differing settings, are refused before any vector is
    read."""
    pq = require("pyarrow.parquet", "parquet", "reading embeddings")
    files, made = [], []
    for path in embedding_files(source):
        with open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            schema = parquet.schema_arrow
            if "path" not in schema.names or "vector" not in schema.names:
                raise UsageError(f"{path} has no path and vector columns: not a file of `siglip embed`")
            models = set(parquet.read(columns=["model"]).column("model").unique().to_pylist())
            if models - {model}:
                raise UsageError(
                    f"{path} holds embeddings of model {sorted(models - {model})}, not '{model}'"
                )
            size = schema.field("vector").type.list_size
            if size != dims:
                raise UsageError(f"{path} holds {size}-d embeddings, the index {dims}-d")
            files.append(EmbeddingFile(path, parquet.metadata.num_rows, _identity(f)))
            made.append(_made_with(path, schema))
    settings = {}
    for key in EMBEDDING_SETTINGS:
        values = {m[key] for m in made} - {None}
        if len(values) > 1:
            raise UsageError(
                f"the embeddings of '{source}' were made with differing {key} {sorted(values)}: they are not "
                "comparable; import them into separate indexes"
            )
        settings[key] = values.pop() if values else None
    return files, settings


def _made_with(path: Path, schema: Any) -> dict[str, Any]:
    """The `EMBEDDING_SETTINGS` of the embeddings in `path` (a shard's record, else `siglip embed`'s manifest
    `<path>.json`), None where not recorded (files of an earlier version, or a manifest left behind)."""
    record = _record(schema)
    if record is None:
        try:
            record = json.loads(path.with_name(path.name + ".json").read_text())
        except (OSError, ValueError):
            record = {}
    record = record if isinstance(record, dict) else {}
    return {key: record.get(key) for key in EMBEDDING_SETTINGS}


def _identity(f: Any) -> tuple[int, int, int]:
    stat = os.fstat(f.fileno())
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def read_embeddings(
    files: list[EmbeddingFile], dims: int, vectors: bool = True
) -> Iterator[tuple[list[str], np.ndarray | None, list[tuple[str, str]]]]:
    """(paths, vectors (N, dims) float32, unreadable files) chunks of at most `READ_ROWS` rows of `files` (from
    `open_embeddings`), in order, whatever their row groups; the unreadable files a shard records come with
    its first chunk. `vectors=False` reads the paths alone (vectors None).

    Each pass reads the files `open_embeddings` checked: one replaced or rewritten since is refused
    (`DataError`), as its rows would no longer be those counted and paired with ids.
    """
    pq = require("pyarrow.parquet", "parquet", "reading embeddings")
    columns = ["path", "vector"] if vectors else ["path"]
    for file in files:
        with contextlib.ExitStack() as opened:
            try:
                f = opened.enter_context(open(file.path, "rb"))
            except FileNotFoundError:
                raise DataError(f"{file.path} was removed while being imported: import it again") from None
            if _identity(f) != file.identity:
                raise DataError(f"{file.path} changed while being imported: import it again")
            parquet = pq.ParquetFile(f)
            failed = [(p, reason) for p, reason in (_record(parquet.schema_arrow) or {}).get("skipped", [])]
            for batch in parquet.iter_batches(batch_size=READ_ROWS, columns=columns):
                matrix = None
                if vectors:
                    flat = batch.column("vector").flatten().to_numpy(zero_copy_only=False)
                    matrix = flat.reshape(-1, dims).astype(np.float32, copy=False)
                yield batch.column("path").to_pylist(), matrix, failed
                failed = []
        if failed:  # a shard of unreadable files only
            yield [], np.empty((0, dims), np.float32) if vectors else None, failed
