"""A persistent image search index: build it once, update it incrementally, search it by text or by image.

    from siglip import SearchIndex
    index = SearchIndex("photos.index", model="google/siglip-base-patch16-224")
    index.update(["~/Pictures"])                    # embeds only new or changed files, drops deleted ones
    index.search_text("a dog on the beach", k=10)   # [Hit(path=..., score=0.13), ...]

An index is a folder with two files (and `update.lock`, which makes a second `update` wait for the first):
- `index.sqlite`, the records (a `VectorStore`): per image its path (absolute: `stored_path`, the rule of
  every writer), size, modification time and embedding, written one batch per transaction, so `kill -9`
  during a build loses at most the batch in flight and a rerun completes the build, with exactly one entry
  per file;
- `vectors.faiss`, a faiss index of the embeddings keyed by record id (see `siglip.tools.search.ann` for the
  types: exact `flat`, `ivf`, `hnsw`, compressed `ivfpq` re-ranked with its fp16 vectors, or `auto` by size
  and memory budget; fp32 or fp16 storage); for `ivfpq`, the compressed index only, keyed by rows of its
  sidecar files `rerank-<generation>.f16` and `.ids` (the fp16 vectors and each row's record id), which it
  names with their row count before its stamp. After every change it catches up by id difference (ids are
  never reused; `ivfpq` appends to its sidecars, flushed to disk before the file that counts the new rows
  replaces the old one, and removes in place), or is rebuilt when the size calls for another type, codes or
  cell count, when HNSW must drop vectors, or when half an `ivfpq`'s rows are dead (a rebuild writes a new
  sidecar generation; the old one is deleted once the file naming the new one is in place), and is replaced
  atomically. Only then do the records
  release their copy of the vectors it took over (in one transaction): each vector is stored once, and a
  `kill -9` at any moment leaves either the old file with the vectors still in the records, or the new one.
  Searches open it memory-mapped. A missing or damaged file (or `ivfpq` sidecar, named in a warning of its
  own) loses the vectors it held: their records are dropped with a warning, and the next `update` embeds
  those images again. An import of embeddings
  (`import_embeddings`) never puts vectors in the records: it records the paths and adds the vectors to the
  vector file in one transaction, under ids reserved beforehand.

The two files prove they belong together: the records hold an identity (a random UUID, made with them) and
every vector file they write ends with it. A vector file that does not carry its records' identity (left
beside records that were deleted and made again, or copied in from another index) would name other images by
the same ids: it is moved aside (`vectors.faiss.set-aside`) with a warning, never read, and the index
rebuilds its vectors from what the records hold (those already handed over are embedded again by the next
`update`). Records made before identities existed take one on first opening, and accept the unstamped file
beside them until the next save stamps it. The `update.lock` is a `filelock` lock: the operating system
drops it with a killed process.

Each record keeps its image's metadata (`siglip.tools.metadata`: EXIF date, camera, size, ...), read as the
image is embedded; records of an index made before that get theirs at the next `update`, without embedding
again. A search can be restricted by a `--where` filter (`siglip.tools.search.filters`) inside the search
(`ann.search`'s `allowed`), and every hit carries its metadata.

Search is cosine similarity (inner product of unit vectors): exact for `flat`, else approximate, with the
recall@10 measured against exact search at build time stored with the index (`build_info`, `siglip info`).

The records name the model and hold a fingerprint of its weights (SHA-256): weights changed behind the same
name are refused (their embeddings would not be comparable), and a model folder that moved can be given again
by its new path. They also hold the settings the images were embedded with (`Embedder.settings`: precision,
a NaFlex model's `max_num_patches`, a fixed-size model's `reduced_decode`; an index made by an import, those
its embeddings record): reopened, the index embeds as it was built unless told otherwise, and
another value, asked for or in the `Embedder` that adds images, is refused, so that every vector in it was
made alike. An index on read-only media is searched with its vectors caught up in memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from filelock import FileLock, Timeout

from ...core.hub import locate
from ...core.two_tower.image_processing import ImageInput
from ...core.two_tower.modeling import l2_normalize
from ...errors import (
    CheckpointError,
    DataError,
    InputNotFoundError,
    NoImagesError,
    StoreError,
    UsageError,
)
from ..deps import require
from ..embeddings.calibration import UNCALIBRATED
from ..embeddings.embedder import Embedder, load_embedder, resolve_device
from ..embeddings.inference import InferenceMode
from ..embeddings.options import ModelOptions
from ..inputs.files import ImageScan, scan_images
from ..inputs.media import split_address
from ..inputs.video import Sampled, Sampling, VideoFrame, expand_videos
from ..metadata import read_metadata
from . import ann
from .filters import Filter, as_filter
from .fingerprint import model_fingerprint
from .store import FileState, Seen, VectorStore, pending_files, replace_atomically, stored_path

if TYPE_CHECKING:
    from ..embeddings.readers import EmbeddingFile

logger = logging.getLogger("siglip")

RECORDS_FILE = "index.sqlite"
VECTORS_FILE = "vectors.faiss"
LOCK_FILE = "update.lock"
_VECTORS_GENERATION = "vectors_generation"  # meta key: the records generation vectors.faiss matches
_WEIGHTS = "weights_sha256"  # meta key: the fingerprint of the model's weights
_BUILD_INFO = "vectors_build"  # meta key: the ann.BuildInfo of vectors.faiss (JSON)
_EMBEDDING = "embedding_settings"  # meta key: the Embedder.settings the images were embedded with (JSON)
_VIDEO = "video_sampling"  # meta key: the `Sampling.key` of the last update that sampled videos
_SETTINGS = (
    "index_type",
    "storage",
    "memory_budget",
)  # meta keys: the index type, storage and memory budget (bytes) asked for (ann.INDEX_TYPES, STORAGES)
_LEGACY = ann.Plan("flat", "fp32", "Flat")  # vectors.faiss of an index made before the types existed
_IDENTITY = "records_identity"  # meta key: the identity of these records, stamped on their vector file
_UNSTAMPED = "vectors_unstamped"  # meta key: "1" while vectors.faiss is an older version's, without a stamp
_STAMP = b"siglip-records:"  # vectors.faiss ends with this and the identity of its records (32 hex digits)
_STAMP_BYTES = len(_STAMP) + 32
# an ivfpq vector file names its sidecars before the stamp: this, their generation (32 hex digits) and the rows
# it refers to (16 hex digits); see `ann.Reranked`
_SIDECARS = b"siglip-rerank:"
_SIDECARS_BYTES = len(_SIDECARS) + 32 + 16
SET_ASIDE = ".set-aside"  # suffix of a vector file that belongs to other records, moved out of the way


@dataclass(frozen=True)
class Hit:
    """One search result: an image path, its cosine similarity to the query, its id in the index and its
    metadata (`siglip.tools.metadata.SCHEMA`'s fields; None for a row indexed before metadata was kept)."""

    path: str
    score: float
    id: int | None = None  # how `siglip serve` addresses the image
    metadata: dict[str, Any] | None = field(default=None, compare=False)  # describes the hit, not its rank


@dataclass
class UpdateReport:
    """What `SearchIndex.update` changed."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) newly found unreadable
    total: int = 0  # images in the index afterwards


class SearchIndex:
    """An image index in `directory` (see the module doc).

    Opening an existing index needs no model (it records its own); creating one needs `model`, a name as
    `Embedder.from_pretrained` takes, or an `Embedder`. `device` and `options` (or the `ModelOptions` of
    `option_values`: `precision`, `compile`, `reduced_decode`, `max_num_patches`, `max_image_pixels`) are how
    a model loaded by name runs; an `Embedder` runs as it was made. `precision`, `max_num_patches` and
    `reduced_decode` default to those the index was built with ("auto" and the
    checkpoint's for a new one); others than those are refused (`StoreError`). `index_type` and `storage` (see
    `siglip.tools.search.ann`; default: as stored, else "auto") are kept with the index from the next update,
    import or search, which rebuilds the vector file; `ivf` or `ivfpq` asked for an index too small to train
    it is refused there (`UsageError` naming the minimum), before anything is embedded or changed.
    `memory_budget` (bytes or a size such as "8GiB"; default: as stored, else 8 GiB) is what `auto` plans for.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        model: str | os.PathLike | Embedder | None = None,
        device: str | None = None,
        *,
        options: ModelOptions | None = None,
        index_type: str | None = None,
        storage: str | None = None,
        memory_budget: int | str | None = None,
        **option_values: Any,
    ) -> None:
        # checked now, not when the model is needed; precision None and reduced_decode False: not asked (an
        # existing index's recorded value holds)
        self.options = ModelOptions.of(options, **option_values)
        ann.check_options(index_type or "auto", storage or "auto")
        budget = None if memory_budget is None else str(ann.parse_memory(str(memory_budget)))
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise UsageError(f"index '{self.directory}' is a file, not an index folder: give another path")
        self.device = device
        records = self.directory / RECORDS_FILE
        self._embedder = model if isinstance(model, Embedder) else None
        name = (
            model.name
            if isinstance(model, Embedder)
            else locate(model).record_name
            if model is not None
            else None
        )
        self._weights_checked = False
        start_over = f"delete the index folder '{self.directory}' and build the index again"
        if records.exists():
            self.store = VectorStore(records, start_over=start_over)
            if self.store.get_meta(_IDENTITY) is None and not self.store.read_only:
                self._give_identity()
            if name is not None:
                self._check_model(name)
            self._take_recorded_settings()
        elif name is None:
            raise InputNotFoundError(
                f"no index at '{self.directory}': build one with `siglip index FOLDER --index {self.directory}`"
            )
        else:
            self._embedder = self._embedder or load_embedder(name, device, self.options)
            self.directory.mkdir(parents=True, exist_ok=True)
            identity = {_IDENTITY: uuid.uuid4().hex}
            self.store = VectorStore(records, name, self._embedder.dims, meta=identity, start_over=start_over)
            self.store.set_meta(_EMBEDDING, json.dumps(self._embedder.settings))
            fingerprint = model_fingerprint(name)
            if fingerprint is not None:
                self.store.set_meta(_WEIGHTS, fingerprint)
            self._weights_checked = True
        self._faiss: Any = None
        self._faiss_generation = -1
        self._scratch: tempfile.TemporaryDirectory | None = None  # read-only media: sidecars rebuilt here
        self._asked = {  # recorded by the next update, import or search, once the size is known
            key: value
            for key, value in zip(_SETTINGS, (index_type, storage, budget), strict=True)
            if value is not None and value != (self.store.get_meta(key) or "auto")
        }

    def _give_identity(self) -> None:
        """Give records made before identities existed theirs; a vector file beside them is an older version's,
        accepted unstamped until the next save stamps it."""
        with self.store.transaction():
            self.store.set_meta(_IDENTITY, uuid.uuid4().hex)
            if (self.directory / VECTORS_FILE).exists():
                self.store.set_meta(_UNSTAMPED, "1")

    def _apply_settings(self, total: int) -> None:
        """Record the index type and storage asked for, in the running transaction, for an index about to hold
        `total` images: a type asked for by name must be trainable on them (`ann.check_size`). The vector
        file is rebuilt at the next sync."""
        if "index_type" in self._asked:
            ann.check_size(self._asked["index_type"], total)
        for key, value in self._asked.items():
            self.store.set_meta(key, value)
        if self._asked:
            self.store.set_meta(_VECTORS_GENERATION, "-1")  # stale
        self._asked = {}

    @staticmethod
    def exists(directory: str | os.PathLike) -> bool:
        """Whether `directory` holds an index."""
        return (Path(directory) / RECORDS_FILE).exists()

    @property
    def model(self) -> str:
        """The name of the model the index was built with."""
        return self.store.model

    @property
    def embedding_settings(self) -> dict[str, Any] | None:
        """The `Embedder.settings` the images were embedded with (None: an index made before they were kept)."""
        text = self.store.get_meta(_EMBEDDING)
        if not text:
            return None
        # an index from before the image backend was recorded was embedded with PIL, then the only backend
        return {"image_backend": "pil", **json.loads(text)}

    def _take_recorded_settings(self) -> None:
        """Load the model as the index was built, refusing asked-for settings that differ from those."""
        recorded = self.embedding_settings
        if recorded is None:
            return
        options = self.options
        device = resolve_device(self.device)
        asked = {  # None: not asked; "auto" is compared as what it means on this device
            "precision": options.precision and InferenceMode(options.precision).resolve(device).precision,
            "max_num_patches": options.max_num_patches,
            "reduced_decode": options.reduced_decode or None,
            "image_backend": options.image_backend,
        }
        self._check_settings(asked, "asked for")
        self.options = options.replace(
            precision=options.precision or recorded.get("precision"),
            max_num_patches=options.max_num_patches or recorded.get("max_num_patches"),
            reduced_decode=options.reduced_decode or bool(recorded.get("reduced_decode")),
            image_backend=options.image_backend or recorded.get("image_backend"),
        )

    def _check_settings(self, settings: dict[str, Any], source: str) -> None:
        """Refuse `settings` (values None: not given) that differ from the recorded ones; `source` says whose
        they are in the error ("asked for")."""
        recorded = self.embedding_settings or {}
        for key, value in settings.items():
            if None not in (value, recorded.get(key)) and value != recorded[key]:
                option = "--" + key.replace("_", "-")
                raise StoreError(
                    f"index '{self.directory}' was built with {option} {recorded[key]}, {source} {value}: "
                    f"its embeddings would not be comparable; leave {option} out to use {recorded[key]}, or "
                    "build another --index"
                )

    @property
    def embedder(self) -> Embedder:
        """The index's model (loaded on first use)."""
        if self._embedder is None:
            if self.options.precision == "int8-static" and not self.options.calibration:
                calibrated = (self.embedding_settings or {}).get("calibration")
                inputs = {UNCALIBRATED: "texts only", None: "inputs it did not record"}.get(
                    calibrated, f"images with SHA-256 {calibrated}"
                )
                raise UsageError(
                    f"index '{self.directory}' was built with --precision int8-static, calibrated on {inputs}: "
                    "give the same --calibration to embed with it"
                )
            try:
                self._embedder = load_embedder(self.store.model, self.device, self.options)
            except CheckpointError as err:
                raise type(err)(f"{err} If the model moved, give its new place with --model.") from err
        if not self._weights_checked:
            self._check_model(self.store.model)
        return self._embedder

    def _check_model(self, name: str) -> None:
        """Accept `name` as the index's model when its weights are the ones the index was built with.

        The same weights under another name (a model folder that moved) become the recorded name; other
        weights, behind the same name or another, are refused. An index made before fingerprints were
        recorded compares names, and records the fingerprint.
        """
        recorded = self.store.get_meta(_WEIGHTS)
        fingerprint = model_fingerprint(name)
        same_name = name == self.store.model
        if recorded is not None and fingerprint == recorded:
            if not same_name and not self.store.read_only:
                logger.info("the index's model is now at %s (it was %s)", name, self.store.model)
                self.store.rename_model(name)
        elif same_name and recorded is None:
            if fingerprint is not None and not self.store.read_only:
                self.store.set_meta(_WEIGHTS, fingerprint)
        elif same_name and fingerprint is not None:
            raise StoreError(
                f"the weights of model '{name}' changed since the index '{self.directory}' was built "
                f"(fingerprint {fingerprint[:12]}, not {recorded[:12]}): their embeddings are not comparable; "
                "build a new index with another --index, or restore the weights"
            )
        elif not same_name:
            raise StoreError(
                f"'{self.store.path}' holds embeddings of model '{self.store.model}', not '{name}': use that "
                "model, or another --index for this one"
            )
        self._weights_checked = True

    def __len__(self) -> int:
        return len(self.store)

    # --- building ----------------------------------------------------------------------------------------
    def update(
        self,
        paths: Sequence[str | os.PathLike],
        batch_size: int = 32,
        workers: int | None = None,
        progress: bool | None = None,
        sampling: Sampling | None = None,
    ) -> UpdateReport:
        """Bring the index up to date with the images under `paths` (folders, files, globs).

        New files and files whose size or modification time changed are embedded. Entries whose file is gone
        are removed, wherever they came from, and so are entries under the given folders that are no longer
        image files there (a folder that could not be searched keeps its entries). Unreadable files are
        recorded, and retried once changed (a chmod included); entries the scan left out are reported too.

        With `sampling`, video files are indexed too: each frame it picks is an entry addressed
        `<video>#t=<seconds>`; a changed video is sampled again (its frames no longer picked are removed).
        Without it, an index that has sampled videos samples them by its last rule.
        """
        self.store.check_writable()
        with self._update_lock():
            return self._update(paths, batch_size, workers, progress, sampling)

    @contextlib.contextmanager
    def _update_lock(self) -> Any:
        """Hold `update.lock`: a second update of this index (another process too) waits for the first, then
        finds its work done."""
        lock = FileLock(self.directory / LOCK_FILE)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.warning(
                "another update of index '%s' is running: waiting for it to finish", self.directory
            )
            lock.acquire()
        try:
            yield  # the operating system drops the lock with the process, if it is killed
        finally:
            lock.release()

    def _update(
        self,
        paths: Sequence[str | os.PathLike],
        batch_size: int,
        workers: int | None,
        progress: bool | None,
        sampling: Sampling | None,
    ) -> UpdateReport:
        states = self.store.states()
        recorded = self.store.get_meta(_VIDEO)
        sampling = sampling or (None if recorded is None else Sampling(**json.loads(recorded)))
        scan = scan_images(paths, allow_empty=True, videos=sampling is not None)
        sampled = _sampled(states) if sampling and recorded == sampling.key() else None
        scan = expand_videos(ImageScan([stored_path(f) for f in scan.files], scan.skipped), sampling, sampled)
        entries = scan.files  # paths of images, and `VideoFrame`s
        files = [f if isinstance(f, str) else f.path for f in entries]
        videos = {f.video for f in entries if isinstance(f, VideoFrame)}
        roots = tuple(os.path.join(stored_path(p), "") for p in paths if os.path.isdir(p))
        unsearched = tuple(os.path.join(stored_path(p), "") for p, _ in scan.skipped)
        if not files and not scan.skipped and not any(p.startswith(roots) for p in states):
            raise NoImagesError(f"no image files in {', '.join(map(os.fspath, paths))}")
        listed = set(files)
        gone = [
            p
            for p in states
            if p not in listed
            and not p.startswith(unsearched)
            and (p.startswith(roots) or _deleted(split_address(p)[0]) or split_address(p)[0] in videos)
        ]
        todo = pending_files(self.store, entries)
        if todo:  # before any change: an Embedder given as it is must embed as the index was built
            self._check_settings(self.embedder.settings, "the model given runs with")
        if self._asked:  # before any embedding: a type that cannot be trained on this many is refused now
            kept = {p for p, seen in states.items() if seen.embedded}.difference(gone)
            with self.store.transaction():
                self._apply_settings(len(kept) + sum(f.path not in kept for f in todo))
        report = UpdateReport(removed=self.store.remove(gone), skipped=list(scan.skipped))
        report.unchanged = len(files) - len(todo)
        self._describe_unchanged({f.path for f in todo})
        for batch in self.embedder.embed_files(todo, batch_size, workers, progress):
            metadata = [read_metadata(f.path) for f in batch.files]  # read once, as each row is embedded
            self.store.record(batch.files, batch.vectors, batch.failed, metadata)
            updated = sum(states.get(f.path, (0, 0, False))[2] for f in batch.files)
            report.updated += updated
            report.added += len(batch.files) - updated
            report.skipped += [(f.path, reason) for f, reason in batch.failed]
        if sampling is not None:  # the frames recorded are this rule's now: unchanged videos keep their times
            self.store.set_meta(_VIDEO, sampling.key())
        self.sync()
        report.total = len(self.store)
        return report

    def _describe_unchanged(self, todo: set[str]) -> None:
        """Read the metadata of the rows indexed before it was kept (their vectors stay as they are); those
        about to be embedded again get theirs then."""
        missing = [p for p in self.store.missing_metadata() if p not in todo]
        if missing:
            logger.info("reading the metadata of %d images indexed before it was kept", len(missing))
            self.store.record_metadata({p: read_metadata(p) for p in missing})

    @property
    def build_info(self) -> ann.BuildInfo | None:
        """How the vector file was built and the recall@10 it reached (None before the first build)."""
        text = self.store.get_meta(_BUILD_INFO)
        return ann.BuildInfo.from_json(text) if text else None

    def import_embeddings(self, source: str | os.PathLike) -> UpdateReport:
        """Add or update the images of an embeddings Parquet file, or a folder of them (the shards of
        `siglip embed --engine ray`), without embedding again. Files that still exist keep their size and
        modification time, so a later `update` of their folder finds them unchanged.

        The vectors stream from the files to the vector file in bounded reads (`read_embeddings`), never
        through the records: a first pass records the paths, a second adds the vectors (a rebuild reads them
        twice more: its sample, then the rest). One transaction: a killed import leaves the index as it was,
        and a rerun starts it again. Embeddings made with other settings than the index's
        (`Embedder.settings`) are refused; an empty index takes theirs.

        Paths are stored by the rule of every writer (`stored_path`: a relative one is taken from the working
        directory); a path given twice is refused, and so is a non-finite or all-zero vector (the index is
        then unchanged); a vector off unit length is normalised, with a warning (`read_embeddings`).
        """
        from ..embeddings.readers import open_embeddings

        self.store.check_writable()
        files, made_with = open_embeddings(source, self.store.model, self.store.dims)
        rows = sum(f.rows for f in files)
        faiss = require("faiss", "search", "the search index")
        path = self.directory / VECTORS_FILE
        with self._update_lock():
            empty = len(self.store) == 0
            if not empty:
                self._check_settings(made_with, "the embeddings were made with")
            first = self.store.reserve_ids(rows)  # row r of the files, if new or changed, gets id first + r
            with self.store.transaction():
                if empty:  # the index holds these embeddings alone: it embeds from now on as they were made
                    self.store.set_meta(_EMBEDDING, json.dumps(made_with))
                report = self._record_imported_paths(files, first)
                self._apply_settings(len(self.store))
                renormalised: dict[Path, int] = {}
                index, info = self._catch_up(
                    self._read_vectors(faiss, path, mmap=False),
                    (range(first, first + rows), lambda: self._imported_vectors(files, first, renormalised)),
                )
                self._save_vectors(faiss, path, index, info)
            self._faiss = None
        for file, count in renormalised.items():
            if count:
                logger.warning(
                    "%d vectors of %s were not of unit length: normalised (scores are cosine similarities)",
                    count,
                    file,
                )
        self.sync()
        report.total = len(self.store)
        return report

    def _record_imported_paths(self, files: list[EmbeddingFile], first: int) -> UpdateReport:
        """An import's first pass, in its transaction: the new or changed rows of `files` recorded without
        their vectors, row r under id `first` + r. A path given twice (once relative, once absolute too) is
        refused: the input does not say which vector is the image's."""
        from ..embeddings.readers import read_embeddings

        states = self.store.states()
        seen: dict[str, tuple[Path, int]] = {}  # stored path -> (file, row) where the import gives it
        report = UpdateReport()
        at = first
        for chunk in read_embeddings(files, self.store.dims, vectors=False):
            entries = [_state_of(stored_path(p)) for p in chunk.paths]
            for row, entry in enumerate(entries, chunk.first_row):
                if entry.path in seen:
                    raise DataError(_given_twice(entry.path, *seen[entry.path], chunk.file, row))
                seen[entry.path] = (chunk.file, row)
            new = [
                (i, f)
                for i, f in enumerate(entries, at)
                if f.path not in states or not states[f.path].current(f)
            ]
            unreadable = [(_state_of(stored_path(p)), reason) for p, reason in chunk.failed]
            self.store.record_released(
                [f for _, f in new],
                [i for i, _ in new],
                unreadable,
                [read_metadata(f.path) for _, f in new],
            )
            report.updated += sum(states[f.path].embedded for _, f in new if f.path in states)
            report.unchanged += len(chunk.paths) - len(new)
            report.skipped += chunk.failed
            at += len(chunk.paths)
        report.added = self.store.ids(first, at).size - report.updated
        return report

    def _imported_vectors(
        self, files: list[EmbeddingFile], first: int, renormalised: dict[Path, int]
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of the rows `_record_imported_paths` recorded, checked and of unit length (the
        vectors each file had to have normalised counted in `renormalised`)."""
        from ..embeddings.readers import read_embeddings

        at = first
        for chunk in read_embeddings(files, self.store.dims, renormalised=renormalised):
            vectors = chunk.vectors
            ids = np.arange(at, at + len(vectors))
            at += len(vectors)
            if len(ids):
                kept = np.isin(ids, self.store.ids(at - len(ids), at))
                yield ids[kept], vectors[kept]

    def sync(self) -> Any:
        """The faiss index, brought up to date with the records (and saved) when they changed.

        The vector file is rewritten under the store's write lock, so concurrent searches and builds (other
        processes too) never write it at the same time; readers always see a whole file.
        """
        if self._asked:
            with self.store.transaction():
                self._apply_settings(len(self.store))
        generation = self.store.generation
        if self._faiss is not None and self._faiss_generation == generation:
            return self._faiss
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # not its "Loading faiss..." lines
        faiss = require("faiss", "search", "the search index")
        path = self.directory / VECTORS_FILE
        fresh = self.store.get_meta(_VECTORS_GENERATION) == str(generation)
        index = self._read_vectors(faiss, path, mmap=True) if fresh else None
        if index is None:
            read_only = self.store.read_only  # read-only media: caught up in memory, not saved
            released = 0
            with contextlib.nullcontext() if read_only else self.store.transaction():
                index = self._read_vectors(faiss, path, mmap=False)
                if index is None or self.store.get_meta(_VECTORS_GENERATION) != str(self.store.generation):
                    index, info = self._catch_up(index)
                    if not read_only:
                        released = self._save_vectors(faiss, path, index, info)
                generation = self.store.generation
            if released > self.store.path.stat().st_size // 2:
                self.store.compact()
        info = self.build_info
        ann.apply_search_params(index, info.search_params if info else "")
        self._faiss, self._faiss_generation = index, generation
        return index

    def _save_vectors(self, faiss: Any, path: Path, index: Any, info: ann.BuildInfo) -> int:
        """Replace the vector file with `index`, inside the write transaction, and only then release the
        records' copies of the vectors it holds; returns the bytes released.

        An `ann.Reranked` index's sidecars are made durable first and named in the file (generation and rows),
        so that a kill at any moment pairs every vector file with the rows it refers to; the sidecars of other
        generations are deleted once the file naming this one is in place. The file is streamed to disk
        (faiss writes through Python's I/O: a full disk is an OSError), never copied in memory."""
        identity = self.store.get_meta(_IDENTITY) or ""
        reranked = isinstance(index, ann.Reranked)
        if reranked:
            index.flush()

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                faiss.write_index(index.base if reranked else index, faiss.PyCallbackIOWriter(f.write))
                if reranked:  # faiss reads its own bytes and no further
                    f.write(_SIDECARS + index.generation.encode("ascii") + f"{index.rows:016x}".encode())
                f.write(_STAMP + identity.encode("ascii"))
                f.flush()
                os.fsync(f.fileno())

        replace_atomically(path, write)
        ann.remove_sidecars(self.directory, index.generation if reranked else None)
        self.store.set_meta(_UNSTAMPED, "0")
        released = self.store.release_vectors()
        self.store.set_meta(_BUILD_INFO, info.to_json())
        self.store.set_meta(_VECTORS_GENERATION, str(self.store.generation))
        return released

    def _catch_up(
        self, index: Any, incoming: tuple[range, ann.Chunks] | None = None
    ) -> tuple[Any, ann.BuildInfo]:
        """The vector index grown or shrunk to the records by id difference, or rebuilt when it must be.

        Runs inside the write transaction. `incoming` is the id range of rows recorded without their vectors
        (`record_released`) and a fresh pass over those vectors. Other records whose vectors were released
        to a file that no longer has them (it was deleted or damaged) are dropped, so that the next update
        embeds their images again.
        """
        arriving, incoming_chunks = incoming or (range(0), lambda: iter(()))
        have = ann.ids_of(index) if index is not None else np.empty(0, np.int64)
        released = self.store.released_ids()
        released = released[(released < arriving.start) | (released >= arriving.stop)]
        lost = np.setdiff1d(released, have)
        if lost.size:
            paths = self.store.paths_of(lost).values()
            logger.warning(
                "%s lost the vectors of %d images; they drop out of the index until the next update embeds "
                "them again",
                self.directory / VECTORS_FILE,
                self.store.remove(paths),
            )
        want = self.store.ids()
        info = self.build_info
        current = ann.Plan(info.kind, info.storage, info.factory) if info else _LEGACY
        kind, storage, budget = (self.store.get_meta(key) or "auto" for key in _SETTINGS)
        budget = ann.MEMORY_BUDGET if budget == "auto" else int(budget)
        wanted = ann.plan(kind, storage, len(want), self.store.dims, budget)
        extra = np.setdiff1d(have, want)
        keep = np.intersect1d(have, want)
        folder = self._sidecar_folder()
        if (
            index is None
            or not ann.still_fits(current, wanted)
            or (extra.size and not ann.can_remove(current))
            or ann.needs_compaction(index)
            or (isinstance(index, ann.Reranked) and index.folder != folder)  # read-only: rebuilt elsewhere
        ):
            old = index

            def chunks() -> Any:
                if old is not None:
                    yield from ann.vectors_of(old, keep)
                for ids, vectors in self.store.vectors_from(0):
                    fresh = ~np.isin(ids, keep)  # a kill after the last save left these in both
                    yield ids[fresh], vectors[fresh]
                yield from incoming_chunks()

            return ann.build(wanted, self.store.dims, len(want), chunks, folder=folder)
        if extra.size:
            ann.remove_ids(index, extra)
        for ids, vectors in self.store.vectors_from(0):
            fresh = ~np.isin(ids, keep)
            index.add_with_ids(vectors[fresh], ids[fresh])
        for ids, vectors in incoming_chunks():
            index.add_with_ids(vectors, ids)
        return index, info or ann.BuildInfo(
            _LEGACY.kind, _LEGACY.storage, _LEGACY.factory, "", 1.0, 0, len(want)
        )

    def _sidecar_folder(self) -> Path:
        """Where an `ivfpq` build writes its sidecars: beside the vector file, or for an index on read-only
        media a temporary folder, removed with this object."""
        if not self.store.read_only:
            return self.directory
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="siglip-rerank-")
        return Path(self._scratch.name)

    def _read_vectors(self, faiss: Any, path: Path, mmap: bool) -> Any:
        """The vector file (memory-mapped for searching, read whole for changing), or None when there is none,
        it cannot be read, or it is not these records' (see `_belongs`). Read whole, inside the write
        transaction, a file of other records is set aside (`_set_aside`), and an `ivfpq` file whose sidecars
        are missing or short is named in a warning (its vectors are then rebuilt from the records)."""
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _SIDECARS_BYTES - _STAMP_BYTES))
                tail = f.read()
        except FileNotFoundError:
            return None
        stamped, sidecars = tail[-_STAMP_BYTES:], tail[:-_STAMP_BYTES][-_SIDECARS_BYTES:]
        stamp = stamped[len(_STAMP) :].decode("ascii", "replace") if stamped.startswith(_STAMP) else None
        if not self._belongs(stamp):
            if not mmap:  # a file cut short has lost its stamp with its end
                why = "belongs to other records (an index.sqlite deleted or replaced since)"
                self._set_aside(
                    path,
                    why if stamp else "is truncated or damaged (its end, the records' stamp, is missing)",
                )
            return None
        info = self.build_info
        reranked = len(sidecars) == _SIDECARS_BYTES and sidecars.startswith(_SIDECARS)
        flags = 0  # read whole: a file to change, and an ivfpq base (its codes; the sidecars are mapped)
        if info and ann.refines(info.factory):  # the older ivfpq layout, never changed in place (rebuilt)
            flags = faiss.IO_FLAG_MMAP_IFC
        elif mmap and not reranked:  # faiss maps inverted lists and flat codes with different flags
            flags = faiss.IO_FLAG_MMAP if info and info.factory.startswith("IVF") else faiss.IO_FLAG_MMAP_IFC
        try:
            index = faiss.read_index(os.fspath(path), flags)
        except RuntimeError as err:
            logger.warning("rebuilding %s, which cannot be read: %s", path, err)
            return None
        if index.d != self.store.dims:
            if not mmap:
                self._set_aside(path, f"holds {index.d}-d vectors, the records {self.store.dims}-d")
            return None
        if reranked:
            generation, rows = sidecars[len(_SIDECARS) : -16].decode("ascii"), int(sidecars[-16:], 16)
            try:
                return ann.Reranked.open(index, self.directory, generation, rows)
            except ann.SidecarError as err:
                if not mmap:  # searching: the write path that follows says it, once
                    logger.warning("%s: the index's vectors are rebuilt from the records", err)
                return None
        return index

    def _belongs(self, stamp: str | None) -> bool:
        """Whether a vector file stamped `stamp` (None: no stamp) holds these records' vectors: it carries their
        identity, or it is the unstamped file of an index made before identities (`_give_identity`)."""
        identity = self.store.get_meta(_IDENTITY)
        return stamp == identity or (stamp is None and self.store.get_meta(_UNSTAMPED) == "1")

    def _set_aside(self, path: Path, why: str) -> None:
        """Move a vector file that is not these records' out of the way, never to be served: its ids would
        name other images. The records' own vectors are then rebuilt from what they hold."""
        if self.store.read_only:
            raise StoreError(
                f"'{path}' {why}: its vectors are not this index's, and the index is read-only; copy the "
                "index folder to a writable place and run `siglip index` there to rebuild it"
            )
        aside = path.with_name(path.name + SET_ASIDE)
        os.replace(path, aside)
        logger.warning(
            "'%s' %s: moved to '%s' and not used; the index's vectors are rebuilt", path, why, aside
        )

    # --- searching ---------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 10, where: str | Filter | None = None) -> list[list[Hit]]:
        """The `k` nearest images by cosine similarity for each query vector ((D,) or (N, D)), best first.

        `where` (a `--where` filter, see `siglip.tools.search.filters`) restricts the search to the rows whose
        metadata satisfies it, inside the search: `k` results come back whenever `k` rows match. An index
        with rows indexed before metadata was kept refuses a filter until `siglip index` reads it.
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.ndim != 2 or queries.shape[1] != self.store.dims:
            raise UsageError(
                f"query vectors must have {self.store.dims} dimensions, got shape {queries.shape}"
            )
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}")
        if not np.linalg.norm(queries, axis=1).all():
            raise UsageError("a query vector is all zeros: it has no direction to search in")
        queries = l2_normalize(torch.from_numpy(queries)).numpy()
        where = as_filter(where)
        index = self.sync()
        if index.ntotal == 0:
            return [[] for _ in queries]
        allowed = None if where is None else self.matching(where)
        if allowed is not None and self.store.generation != self._faiss_generation:
            # another process changed the rows since the sync: only the ids the vector file holds can be found
            allowed = np.intersect1d(allowed, ann.ids_of(index))
        scores, ids = ann.search(index, queries, min(k, index.ntotal), allowed)
        paths = self.store.paths_of(ids[ids >= 0])
        metadata = self.store.metadata_of(paths)
        return [
            [
                Hit(paths[i], float(s), int(i), metadata.get(int(i)))
                for s, i in zip(row_scores, row_ids, strict=True)
                if i in paths
            ]
            for row_scores, row_ids in zip(scores, ids, strict=True)
        ]

    def matching(self, where: str | Filter) -> np.ndarray:
        """The ids (int64, ascending) of the rows whose metadata satisfies the filter `where`; a `UsageError`
        when it does not parse, or when some rows have no metadata yet (indexed before it was kept)."""
        parsed = as_filter(where)
        missing = self.store.count_missing_metadata()
        if missing:
            raise UsageError(
                f"filter {parsed.text!r}: {missing} images of index '{self.directory}' were indexed before "
                f"metadata was kept; run `siglip index FOLDER --index {self.directory}` to read it (nothing is "
                "embedded again)"
            )
        return self.store.matching_ids(parsed.sql, parsed.params)

    def entry(self, image_id: int) -> tuple[str, np.ndarray] | None:
        """(path, embedding) of the indexed image with this id, or None when the index has no such id.

        The embedding comes from the vector file: fp16-rounded with fp16 storage, approximate for `ivfpq`.
        """
        path = self.store.paths_of([image_id]).get(int(image_id))
        return None if path is None else (path, self.sync().reconstruct(int(image_id)))

    def search_text(self, text: str, k: int = 10, where: str | Filter | None = None) -> list[Hit]:
        """The `k` images that best match `text` (a non-blank string), among those `where` admits."""
        if not isinstance(text, str) or not text.strip():
            raise UsageError(f"the search text is {text!r}: give some words to look for")
        where = as_filter(where)  # a mistake is told before the model loads
        return self.search(self.embedder.embed_texts([text]), k, where)[0]

    def search_image(self, image: ImageInput, k: int = 10, where: str | Filter | None = None) -> list[Hit]:
        """The `k` images most similar to `image` (a path, PIL image, array or bytes), among those `where`
        admits."""
        where = as_filter(where)
        return self.search(self.embedder.embed_images([image]), k, where)[0]

    def close(self) -> None:
        self.store.close()
        if self._scratch is not None:
            self._faiss = None
            self._scratch.cleanup()
            self._scratch = None

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _given_twice(path: str, file: Path, row: int, again: Path, again_row: int) -> str:
    """The message for an import that gives `path` twice: it blames the input, whose rows it names."""
    where = (
        f"'{file}' rows {row} and {again_row}"
        if file == again
        else f"'{file}' row {row} and '{again}' row {again_row}"
    )
    return (
        f"the embeddings give '{path}' twice ({where}, as written or once relative): an image has one vector; "
        "remove one of the rows and import again (the index is unchanged)"
    )


def _sampled(states: dict[str, Seen]) -> Sampled:
    """`video_frames`'s `sampled` from the records: the frame times of a video, when all its frames were
    recorded in the state it has now."""
    frames: dict[str, list[tuple[float, Seen]]] = {}
    for address, seen in states.items():
        video, seconds = split_address(address)
        if seconds is not None:
            frames.setdefault(video, []).append((seconds, seen))

    def sampled(video: str, size: int, mtime_ns: int) -> list[float] | None:
        known = frames.get(video)
        if not known or any((seen.size, seen.mtime_ns) != (size, mtime_ns) for _, seen in known):
            return None
        return sorted(seconds for seconds, _ in known)

    return sampled


def _deleted(path: str) -> bool:
    """Whether `path` no longer exists (a file that cannot be reached for another reason is not deleted)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def _state_of(path: str) -> FileState:
    """The state of an address's file (a video frame: its video's), or an unknown one (-1) for a URI or a file
    this machine cannot see."""
    try:
        st = os.stat(split_address(path)[0])
    except OSError:
        return FileState(path, -1, -1)
    return FileState(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
