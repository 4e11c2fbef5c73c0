"""Embeddings of image files (`embed_to_file`) or texts (`embed_texts_to_file`) written to one Parquet or .npy
file, resumable (`siglip embed`, `siglip embed --texts`).

Finished batches are journalled in `<out>.partial` (a SQLite `VectorStore`) as they complete, so rerunning an
interrupted command embeds only what is left; the output file and its manifest appear only when complete.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import StoreError, UsageError
from ..deps import require
from ..inputs.files import ImageScan, skipped_as_json
from ..inputs.tar_shards import scan_inputs
from ..inputs.texts import TextRows
from ..metadata import SCHEMA, STORED, read_metadata
from ..search.store import FileState, VectorStore, pending_files, replace_together, stored_path
from .embedder import Embedder


@dataclass
class EmbedReport:
    """What `embed_to_file` did."""

    out: Path
    manifest: Path
    count: int  # rows written
    embedded: int  # images embedded by this run (the others were done by an interrupted earlier one)
    failed: int  # unreadable files found by this run
    skipped: list[tuple[str, str]]  # all unreadable files: (path, reason)


OUTPUT_FORMATS = (".parquet", ".npy")
_JOURNAL_SETTINGS = "settings"  # meta key of a journal: the settings its embeddings were made with (JSON)


def output_format(out: str | os.PathLike) -> str:
    """The format of an output path by its extension (one of OUTPUT_FORMATS), or a ValueError naming it."""
    suffix = Path(out).suffix.lower()
    if Path(out).is_dir():
        raise UsageError(f"--out '{out}' is an existing folder; give the name of a file to write")
    if suffix not in OUTPUT_FORMATS:
        raise UsageError(f"--out '{out}' must end with {' or '.join(OUTPUT_FORMATS)}")
    return suffix


def embed_to_file(
    paths: Sequence[str | os.PathLike] | ImageScan,
    out: str | os.PathLike,
    embedder: Embedder,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool | None = None,
) -> EmbedReport:
    """Embed the images named by `paths` (files, folders, globs, WebDataset shards: see `scan_inputs`) into
    `out`, a `.parquet` or `.npy` file; a shard's samples are named `SHARD:KEY`.

    Paths are stored absolute (`stored_path`). Parquet has columns path, vector (list of D float32), model,
    dims and the metadata of each image (`siglip.tools.metadata.SCHEMA`: date, camera, size, ...); `.npy`
    holds the (N, D) matrix, with the paths and metadata in the manifest. Both get a manifest `<out>.json`, e.g. `vectors.npy.json` (model, dims,
    count, `Embedder.settings`, unreadable files and why). Finished batches are kept in `<out>.partial`
    (SQLite) as they complete: rerunning an interrupted command embeds only what is left. The output appears
    only when complete.
    `paths` may also be the `ImageScan` of a scan already made; the entries it left out are listed as skipped.
    """
    out = Path(out)
    pa = require("pyarrow", "parquet", "writing Parquet") if output_format(out) == ".parquet" else None
    scan = paths if isinstance(paths, ImageScan) else scan_inputs(paths)
    files = [  # stored as every writer stores them: absolute (a shard's sample: its shard's absolute path)
        stored_path(f) if isinstance(f, str) else dataclasses.replace(f, path=stored_path(f.path))
        for f in scan.files
    ]
    names = [f.path if isinstance(f, FileState) else f for f in files]  # a shard's sample is a FileState
    out.parent.mkdir(parents=True, exist_ok=True)
    journal = out.with_name(out.name + ".partial")
    with VectorStore(journal, embedder.name, embedder.dims) as store:
        _check_journal(store, journal, embedder.settings)
        embedded = failed = 0
        for batch in embedder.embed_files(pending_files(store, files), batch_size, workers, progress):
            metadata = [read_metadata(f.path) for f in batch.files]  # read once, as each row is embedded
            store.record(batch.files, batch.vectors, batch.failed, metadata)
            embedded, failed = embedded + len(batch.files), failed + len(batch.failed)
        listed = set(names)
        skipped = scan.skipped + [(p, r) for p, r in store.skipped() if p in listed]
        unusable = {p for p, _ in skipped}  # files that vanished or failed to decode
        kept = [p for p in names if p not in unusable]
        manifest = {
            "model": embedder.name,
            "dims": embedder.dims,
            "count": len(kept),
            "format": out.suffix[1:],
            **embedder.settings,  # precision, image options: what an index importing them records
        }
        manifest_path = _write_output(out, store, kept, manifest, pa, {"skipped": skipped_as_json(skipped)})
    _remove_journal(journal)
    return EmbedReport(out, manifest_path, len(kept), embedded, failed, skipped)


def embed_texts_to_file(
    rows: TextRows, out: str | os.PathLike, embedder: Embedder, batch_size: int = 256
) -> EmbedReport:
    """Embed the texts of `rows` (`read_texts`) into `out`, as `embed_to_file` does images: Parquet with
    columns id, text, vector, model, dims, or `.npy` with the ids in the manifest `<out>.json`.

    Texts are embedded by `Embedder.embed_texts` (padded to the model's text length, unit length). Finished
    batches are journalled in `<out>.partial`, which records the input's digest: a rerun after an
    interruption embeds only what is left, and a journal of other input (the file changed) is started over.
    """
    out = Path(out)
    pa = require("pyarrow", "parquet", "writing Parquet") if output_format(out) == ".parquet" else None
    out.parent.mkdir(parents=True, exist_ok=True)
    journal = out.with_name(out.name + ".partial")
    if journal.exists():
        with VectorStore(journal) as store:
            stale = store.get_meta("texts") != rows.digest or store.model != embedder.name
        if stale:
            _remove_journal(journal)
    with VectorStore(journal, embedder.name, embedder.dims, meta={"texts": rows.digest}) as store:
        _check_journal(store, journal, embedder.text_settings)
        done = store.states()
        pending = [i for i, row_id in enumerate(rows.ids) if row_id not in done]
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            vectors = embedder.embed_texts([rows.texts[i] for i in chunk], batch_size)
            # a row is keyed by its id; size and time are unused (the digest stands for the input's state)
            store.record([FileState(rows.ids[i], 0, 0) for i in chunk], vectors)
        manifest = {
            "model": embedder.name,
            "dims": embedder.dims,
            "count": len(rows.ids),
            "format": out.suffix[1:],
            **embedder.text_settings,  # precision (int8-static: its calibration texts)
            "input": "texts",
        }
        texts = dict(zip(rows.ids, rows.texts, strict=True))
        manifest_path = _write_output(out, store, rows.ids, manifest, pa, {}, texts)
    _remove_journal(journal)
    return EmbedReport(out, manifest_path, len(rows.ids), len(pending), 0, [])


def _check_journal(store: VectorStore, journal: Path, settings: dict[str, Any]) -> None:
    """Record `settings` (`Embedder.settings` or `text_settings`) in a new journal; refuse to go on with one
    whose embeddings were made with other settings (another precision or calibration): its rows and the new
    ones would not be comparable. A journal of a version that kept no settings takes these."""
    wanted = json.dumps(settings, sort_keys=True)
    recorded = store.get_meta(_JOURNAL_SETTINGS)
    if recorded is None:
        store.set_meta(_JOURNAL_SETTINGS, wanted)
    elif recorded != wanted:
        raise UsageError(
            f"'{journal}' holds the embeddings of an interrupted run made with other settings "
            f"({settings_differences(json.loads(recorded), settings)}): resume with the same options, or "
            "delete it to start over"
        )


def settings_differences(made: dict[str, Any], now: dict[str, Any]) -> str:
    """The settings that differ between embeddings `made` and those about to be made `now`, for an error:
    "precision fp32, now int8; ..."."""
    return "; ".join(
        f"{key} {made.get(key)}, now {now.get(key)}"
        for key in sorted(made.keys() | now.keys())
        if made.get(key) != now.get(key)
    )


def _write_output(
    out: Path,
    store: VectorStore,
    keys: list[str],
    manifest: dict[str, Any],
    pa: Any,
    trailer: dict[str, Any],
    texts: dict[str, str] | None = None,
) -> Path:
    """Write the vectors of `keys` (paths, or with `texts` the ids of texts) from `store` to `out` and its
    manifest `<out>.json` (`manifest`, the keys for `.npy`, then `trailer`), together; returns the manifest's
    path."""
    if pa is None:
        if texts is None:
            manifest["paths"] = keys
            found = store.metadata_by_path(keys)
            manifest["metadata"] = [found.get(p) for p in keys]
        else:
            manifest["ids"] = keys
        write_data = partial(_write_npy, store, keys)
    else:
        write_data = partial(_write_parquet, pa, store, keys, texts)
    manifest.update(trailer)
    manifest_path = out.with_suffix(out.suffix + ".json")
    # the manifest, then the data: the output appears, with its manifest, only when both are written
    replace_together(
        {
            manifest_path: lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"),
            out: write_data,
        }
    )
    return manifest_path


def _remove_journal(journal: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{journal}{suffix}").unlink(missing_ok=True)


def parquet_schema(pa: Any, dims: int, texts: bool = False, metadata: bool = False) -> Any:
    """The columns of an embeddings Parquet file: path, vector (D float32), model, dims; for `texts`, id and
    text in place of path; with `metadata`, the `STORED` metadata fields (dates as timestamps in seconds, local
    time as read)."""
    keys = [("id", pa.string()), ("text", pa.string())] if texts else [("path", pa.string())]
    types = {
        "text": pa.string(),
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "date": pa.timestamp("s"),
    }
    extra = [(name, types[SCHEMA[name]]) for name in STORED] if metadata else []
    return pa.schema(
        [
            *keys,
            ("vector", pa.list_(pa.float32(), dims)),
            ("model", pa.string()),
            ("dims", pa.int32()),
            *extra,
        ]
    )


def parquet_table(
    pa: Any,
    schema: Any,
    model: str,
    paths: list[str],
    vectors: np.ndarray,
    texts: list[str] | None = None,
    metadata: Sequence[dict[str, Any] | None] | None = None,
) -> Any:
    """Rows of an embeddings Parquet file: one per path (or text id, with its text), with its vector and, for a
    schema with metadata columns, its `metadata` (None for a row without)."""
    n, dims = len(paths), schema.field("vector").type.list_size
    columns = [
        pa.array(paths, pa.string()),
        *([] if texts is None else [pa.array(texts, pa.string())]),
        pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dims),
        pa.array([model] * n, pa.string()),
        pa.array([dims] * n, pa.int32()),
    ]
    for field in list(schema)[len(columns) :]:
        values = [(m or {}).get(field.name) for m in metadata or [None] * n]
        if SCHEMA[field.name] == "date":
            values = [None if v is None else dt.datetime.fromisoformat(v) for v in values]
        columns.append(pa.array(values, field.type))
    return pa.table(columns, schema=schema)


def _write_parquet(
    pa: Any, store: VectorStore, paths: list[str], texts: dict[str, str] | None, out: Path
) -> None:
    """The vectors of `paths` (or text ids, with their `texts`), in order, as a Parquet file `out`, a chunk
    at a time."""
    import pyarrow.parquet as pq

    schema = parquet_schema(pa, store.dims, texts=texts is not None, metadata=texts is None)
    with pq.ParquetWriter(out, schema) as writer:
        for chunk, vectors in store.in_order(paths):
            if texts is None:
                found = store.metadata_by_path(chunk)
                table = parquet_table(
                    pa, schema, store.model, chunk, vectors, metadata=[found.get(p) for p in chunk]
                )
            else:
                table = parquet_table(
                    pa, schema, store.model, chunk, vectors, texts=[texts[i] for i in chunk]
                )
            writer.write_table(table)


def _write_npy(store: VectorStore, paths: list[str], out: Path) -> None:
    """The vectors of `paths`, in order, as an (N, D) float32 `.npy` file `out`, a chunk at a time.

    Plain writes, not a memory map: on a full disk a write fails with ENOSPC, where a store into a mapped
    page of a sparse file kills the process with SIGBUS.
    """
    shape = (len(paths), store.dims)
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
        "fortran_order": False,
        "shape": shape,
    }
    written = 0
    with open(out, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for _chunk, vectors in store.in_order(paths):
            f.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
            written += len(vectors)
    if written != len(paths):  # the header promised len(paths) rows: a short file would not load
        raise StoreError(
            f"'{store.path}' gave {written} of the {len(paths)} embeddings it recorded: delete it, run again"
        )
