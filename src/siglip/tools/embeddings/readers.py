"""Reading embeddings back from Parquet: one file of `siglip embed --out FILE.parquet`, or a folder of the
shards `siglip embed --engine ray` writes (`siglip index --from-embeddings`)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ...errors import DataError, InputNotFoundError, SiglipError, UsageError
from ..deps import require

READ_ROWS = 16_384  # rows per read of a Parquet file: 48 MiB at 768-d, whatever its row groups
SHARD_METADATA = b"siglip"  # Parquet schema metadata key of a shard's JSON record (model, skipped files, ...)
EMBEDDING_SETTINGS = (
    "precision",
    "calibration",  # int8-static's only: left out where no file records it
    "max_num_patches",
    "reduced_decode",
    "image_backend",
)  # `Embedder.settings` keys


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


@contextlib.contextmanager
def _parquet_errors(path: Path) -> Iterator[None]:
    """Turn pyarrow's errors while reading `path` (an empty, truncated or damaged file, or not Parquet) into
    one `DataError` naming the file."""
    pa = require("pyarrow", "parquet", "reading embeddings")
    try:
        yield
    except SiglipError:
        raise
    except (pa.ArrowException, OSError, ValueError) as err:  # ValueError: also a damaged record (JSON)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"'{path}' is not a readable Parquet file of embeddings ({reason}): give a file `siglip embed "
            "--out FILE.parquet` wrote, or make it again"
        ) from None


def _open_parquet(pq: Any, path: Path, source: Any = None) -> Any:
    """`pq.ParquetFile` of `path` (read from `source`, an open file, when given), its errors as `DataError`."""
    with _parquet_errors(path):
        return pq.ParquetFile(path if source is None else source)


def shard_record(path: Path) -> dict | None:
    """The JSON record of a shard of `siglip embed --engine ray` (None for another Parquet file)."""
    pq = require("pyarrow.parquet", "parquet", "reading embeddings")
    with _parquet_errors(path):
        return _record(pq.read_schema(path))


def _record(schema: Any) -> dict | None:
    metadata = schema.metadata or {}
    return json.loads(metadata[SHARD_METADATA]) if SHARD_METADATA in metadata else None


def embeddings_model(source: str | os.PathLike) -> str:
    """The model named by the first row of the embeddings in `source`."""
    pq = require("pyarrow.parquet", "parquet", "reading embeddings")
    for path in embedding_files(source):
        parquet = _open_parquet(pq, path)
        if "model" not in parquet.schema_arrow.names:
            raise UsageError(f"'{path}' has no model column: not a file of `siglip embed`")
        if parquet.metadata.num_rows:
            with _parquet_errors(path):
                return str(parquet.read_row_group(0, columns=["model"]).column("model")[0])
    raise DataError(f"'{source}' holds no embeddings (0 rows): there is nothing to import")


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
            parquet = _open_parquet(pq, path, f)
            schema = parquet.schema_arrow
            if {"id", "text"} <= set(schema.names):
                raise UsageError(
                    f"{path} holds text embeddings (`siglip embed --texts`): an index holds images"
                )
            if not {"path", "vector", "model"} <= set(schema.names):
                raise UsageError(
                    f"{path} has no path, vector and model columns: not a file of `siglip embed`"
                )
            with _parquet_errors(path):
                models = set(parquet.read(columns=["model"]).column("model").unique().to_pylist())
            if models - {model}:
                raise UsageError(
                    f"{path} holds embeddings of model {sorted(models - {model})}, not '{model}'"
                )
            size = getattr(schema.field("vector").type, "list_size", None)
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
        if values or key != "calibration":
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


class Chunk(NamedTuple):
    """Rows `first_row`... of one file of embeddings, as `read_embeddings` yields them."""

    file: Path
    first_row: int
    paths: list[str]
    vectors: np.ndarray | None  # (N, dims) float32, unit length; None when read without vectors
    failed: list[tuple[str, str]]  # unreadable files a shard records (path, reason), with its first chunk


def read_embeddings(
    files: list[EmbeddingFile], dims: int, vectors: bool = True, renormalised: dict[Path, int] | None = None
) -> Iterator[Chunk]:
    """Chunks of at most `READ_ROWS` rows of `files` (from `open_embeddings`), in order, whatever their row
    groups. `vectors=False` reads the paths alone.

    Each row is checked: a missing path or vector, or a vector with a non-finite or all-zero value, is
    refused (`DataError` naming the file, the row and its path); a vector off unit length by more than
    `UNIT_TOLERANCE` (made by another tool, or scaled) is normalised, and `renormalised[file]` says how many
    of a file's vectors were. Each pass reads the files `open_embeddings` checked: one replaced or rewritten
    since is refused, as its rows would no longer be those counted and paired with ids.
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
            parquet = _open_parquet(pq, file.path, f)
            failed = [(p, reason) for p, reason in (_record(parquet.schema_arrow) or {}).get("skipped", [])]
            row, fixed = 0, 0
            with _parquet_errors(file.path):
                for batch in parquet.iter_batches(batch_size=READ_ROWS, columns=columns):
                    paths = batch.column("path").to_pylist()
                    _check_present(file.path, row, batch.column("path"), "path", paths)
                    matrix = None
                    if vectors:
                        column = batch.column("vector")
                        _check_present(file.path, row, column, "vector", paths)
                        matrix = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dims)
                        matrix, count = _unit_rows(
                            file.path, row, paths, matrix.astype(np.float32, copy=False)
                        )
                        fixed += count
                    yield Chunk(file.path, row, paths, matrix, failed)
                    row, failed = row + len(paths), []
            if renormalised is not None and vectors:
                renormalised[file.path] = fixed
        if failed:  # a shard of unreadable files only
            yield Chunk(file.path, 0, [], np.empty((0, dims), np.float32) if vectors else None, failed)


UNIT_TOLERANCE = 1e-3  # |norm - 1| up to this is rounding (fp16 storage rounds by about 5e-4): kept as it is


def _check_present(path: Path, first_row: int, column: Any, name: str, names: list) -> None:
    """Refuse a chunk whose column `name` has an empty (null) entry, naming the first."""
    if column.null_count:
        at = column.is_null().to_pylist().index(True)
        raise DataError(f"'{path}' row {first_row + at} ({names[at]!r}) has no {name}: write the file again")


def _unit_rows(path: Path, first_row: int, paths: list[str], matrix: np.ndarray) -> tuple[np.ndarray, int]:
    """`matrix` with every row of unit length, and how many rows had to be normalised; a row that has no
    direction (a non-finite or all-zero vector) is refused, naming its row and path."""
    norms = np.linalg.norm(matrix, axis=1)
    bad = ~np.isfinite(matrix).all(axis=1) | (norms == 0)
    if bad.any():
        at = int(np.argmax(bad))
        what = "not finite (NaN or infinity)" if not np.isfinite(matrix[at]).all() else "all zeros"
        raise DataError(
            f"'{path}' row {first_row + at} ({paths[at]}): its vector is {what}, it cannot be searched; embed "
            "that image again (the index is unchanged)"
        )
    off = np.abs(norms - 1) > UNIT_TOLERANCE
    if not off.any():
        return matrix, 0
    matrix = matrix.copy()
    matrix[off] /= norms[off, None]
    return matrix, int(off.sum())
