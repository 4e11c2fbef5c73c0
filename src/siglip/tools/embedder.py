"""Image and text embeddings: in memory (`embed_images`, `embed_texts`) and for image files on disk.

    from siglip import Embedder
    embedder = Embedder.from_pretrained("google/siglip-base-patch16-224")
    vectors = embedder.embed_images(["cat.jpg", "dog.png"])       # (2, 768) float32, unit length
    query = embedder.embed_texts(["a photo of a cat"])           # (1, 768)
    ranking = (vectors @ query.T).ravel().argsort()[::-1]

Files and folders go through `embed_files`: images are decoded and preprocessed by DataLoader worker processes
while the model runs, and unreadable files are skipped and reported rather than stopping the run.
`embed_to_file` writes a Parquet or .npy file and resumes an interrupted run where it stopped.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..core.hub import CheckpointError, bundled_models
from ..core.image_processing import (
    IMAGE_EXTENSIONS,
    ImageInput,
    ImageInputError,
    SiglipImageProcessor,
    images_in,
    is_image_file,
)
from ..core.modeling import SiglipModel
from ..core.processing import SiglipProcessor
from . import zeroshot
from .inference import InferenceMode
from .store import FileState, VectorStore, replace_atomically

DEFAULT_MODEL = "google/siglip-base-patch16-224"


class NoImagesError(ValueError):
    """A path or pattern names no image file."""


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""


def require(module: str, extra: str, purpose: str) -> Any:
    """Import an optional dependency, or fail with the `pip install` line that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{purpose} needs the '{module}' package: pip install 'siglip[{extra}]'"
        ) from err


def default_device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- finding images -----------------------------------------------------------------------------------------
def find_images(paths: Sequence[str | os.PathLike], allow_empty: bool = False) -> list[str]:
    """The image files named by `paths`, in order and without duplicates.

    A file is taken as it is (whatever its extension); a folder is searched recursively for files with an
    image extension (hidden files and folders left out), sorted; a glob pattern (`photos/*.jpg`, `**/*.png`)
    gives the image files it matches. A path that does not exist raises `FileNotFoundError`, and a folder or
    pattern without images raises `NoImagesError` (unless `allow_empty`), both naming it.
    """
    if not paths:
        raise NoImagesError("no images given: pass image files, folders or glob patterns")
    found: dict[str, None] = {}
    for arg in map(os.fspath, paths):
        if os.path.isfile(arg):
            found[arg] = None
        elif os.path.isdir(arg):
            images = images_in(arg)
            if not images and not allow_empty:
                raise NoImagesError(f"folder '{arg}' contains no image files ({' '.join(IMAGE_EXTENSIONS)})")
            found.update(dict.fromkeys(images))
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            images = [
                p for m in matches for p in (images_in(m) if os.path.isdir(m) else [m]) if is_image_file(p)
            ]
            if not images and not allow_empty:
                raise NoImagesError(f"pattern '{arg}' matches no image files")
            found.update(dict.fromkeys(images))
        else:
            raise FileNotFoundError(f"no such file or folder: '{arg}'")
    return list(found)


# --- the model ----------------------------------------------------------------------------------------------
@dataclass
class EmbeddedBatch:
    """The embeddings of one batch of files, and the files of the batch that could not be read."""

    files: list[FileState]
    vectors: np.ndarray  # (len(files), D) float32, unit length
    failed: list[tuple[FileState, str]] = field(default_factory=list)  # (file, reason)


class Embedder:
    """A SigLIP model with its processor, turning images and texts into unit-length embeddings (numpy, float32).

    Image and text embeddings live in one space: their dot product is the cosine similarity SigLIP was
    trained on. `name` is how the model was named (an absolute path for a local directory), so that an
    index or output file can name the model that made it.
    """

    def __init__(
        self,
        model: SiglipModel,
        processor: SiglipProcessor,
        name: str = "",
        mode: InferenceMode | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.mode = mode or InferenceMode(_precision_of(model))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        precision: str = "auto",
        compile: bool = False,
        reduced_decode: bool = False,
    ) -> Embedder:
        """Load a bundled model by its short name, a local checkpoint directory, or a hub id.

        `device` defaults to the GPU when there is one, else the CPU. `precision` and `compile` choose the
        inference mode (see `siglip.tools.inference.PRECISIONS`): "auto" runs bf16 where the hardware has bf16
        matrix units, fp16 on older GPUs, fp32 on other CPUs. `reduced_decode` decodes JPEG files at
        a reduced scale when they are at least twice the model's image size (see `SiglipImageProcessor`).
        """
        device = torch.device(device) if device is not None else default_device()
        mode = InferenceMode(precision, compile).resolve(device)
        name = model_name(name_or_path)
        with hint_bundled_models(name):
            model = SiglipModel.from_pretrained(name, device=device, dtype=mode.dtype)
            processor = SiglipProcessor.from_pretrained(name)
        processor.image_processor.reduced_decode = reduced_decode
        return cls(mode.apply(model), processor, name, mode)

    @property
    def dims(self) -> int:
        """Length of the embeddings."""
        return self.model.config.text_config.projection_size

    @property
    def device(self) -> torch.device:
        return self.model.device

    def embed_texts(self, texts: str | Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(N, D) embeddings of a text or a list of texts (padded to the model's text length)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self._in_mode(zeroshot.text_embeddings, self.processor.tokenizer, texts, batch_size)

    def class_embeddings(self, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """(C, D) unit-length embeddings of each label, averaged over `templates` (a prompt ensemble)."""
        return self._in_mode(zeroshot.class_embeddings, self.processor.tokenizer, labels, templates)

    def embed_images(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 32) -> np.ndarray:
        """(N, D) embeddings of an image or a list of images: paths, PIL images, arrays, tensors or bytes.

        An image that cannot be read raises `ImageInputError` naming it; `embed_files` skips such files.
        """
        images = list(images) if isinstance(images, list | tuple) else [images]
        if not images:
            raise ImageInputError("no images to embed: pass at least one")
        chunks = []
        for start in range(0, len(images), batch_size):
            pixels = self.processor.image_processor(images[start : start + batch_size], return_tensors="pt")
            chunks.append(self.embed_pixels(pixels["pixel_values"]))
        return np.concatenate(chunks)

    def embed_pixels(self, pixel_values: torch.Tensor) -> np.ndarray:
        """(N, D) embeddings of preprocessed pixels: the image processor's (N, 3, H, W) `pixel_values`."""
        return self._in_mode(zeroshot.image_embeddings, pixel_values)

    def _in_mode(self, embed: Callable[..., torch.Tensor], *args: Any) -> np.ndarray:
        """`embed(model, *args)` (a `zeroshot` function) in this embedder's inference mode, as numpy."""
        with self.mode.autocast(self.device):
            return embed(self.model, *args).cpu().numpy()

    def embed_files(
        self,
        files: Sequence[FileState | str],
        batch_size: int = 32,
        workers: int | None = None,
        progress: bool | None = None,
    ) -> Iterator[EmbeddedBatch]:
        """Embed image files batch by batch, in order; unreadable files are reported in `failed`, not raised.

        Files are decoded and preprocessed by `workers` DataLoader processes (default: one per CPU core, at
        most 8; 0 decodes in this process) ahead of the model. `progress` shows a bar with images/s on
        stderr (None: only when stderr is a terminal).
        """
        from tqdm.auto import tqdm

        files = [f if isinstance(f, FileState) else FileState(os.fspath(f), -1, -1) for f in files]
        if not files:
            return
        workers = min(os.cpu_count() or 1, 8) if workers is None else workers
        batches = math.ceil(len(files) / batch_size)
        workers = min(workers, batches) if batches > 1 else 0  # one batch: nothing to overlap with the model
        loader = DataLoader(
            _ImageFiles(files, self.processor.image_processor),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,  # keep batches ready so the model never waits
        )
        skipped = 0
        show = _stderr_is_terminal() if progress is None else progress
        with tqdm(
            total=len(files), unit="img", desc="embedding", disable=not show, dynamic_ncols=True
        ) as bar:
            for indices, pixels, failed in loader:
                vectors = (
                    self.embed_pixels(pixels) if len(indices) else np.empty((0, self.dims), dtype=np.float32)
                )
                skipped += len(failed)
                bar.update(len(indices) + len(failed))
                if skipped:
                    bar.set_postfix(skipped=skipped)
                yield EmbeddedBatch([files[i] for i in indices], vectors, [(files[i], r) for i, r in failed])


def _precision_of(model: SiglipModel) -> str:
    """The precision a model was given to `Embedder` in: its weights' dtype."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(model.dtype, "fp32")


def model_name(name_or_path: str | os.PathLike) -> str:
    """How an index or output file records a model: a local directory by its absolute path, else the name."""
    name = os.fspath(name_or_path)
    return os.path.abspath(name) if os.path.isdir(name) else name


def _stderr_is_terminal() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()


@contextlib.contextmanager
def hint_bundled_models(name: str) -> Iterator[None]:
    """Add the names of the bundled models (and the closest one) to a `CheckpointError` for a short name."""
    try:
        yield
    except CheckpointError as err:
        if "/" in name or os.path.exists(name):
            raise
        available = bundled_models()
        close = difflib.get_close_matches(name, available, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise type(err)(f"{err}{hint} Models shipped with siglip: {', '.join(available) or 'none'}.") from err


class _ImageFiles(Dataset):
    """Pixels of image files, or the reason a file cannot be used (runs in DataLoader workers)."""

    def __init__(self, files: list[FileState], processor: SiglipImageProcessor) -> None:
        self.files = files
        self.processor = processor

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None]:
        path = self.files[index].path
        try:
            return index, self.processor(path, return_tensors="np")["pixel_values"][0], None
        except (ImageInputError, OSError) as err:
            # the processor names the image "images[0] ('path')"; the caller lists the path itself
            return index, None, str(err).removeprefix(f"images[0] ('{path}')").lstrip(": ")


def _collate(
    items: list[tuple[int, np.ndarray | None, str | None]],
) -> tuple[list[int], torch.Tensor, list[tuple[int, str]]]:
    good = [(i, p) for i, p, _ in items if p is not None]
    pixels = torch.from_numpy(np.stack([p for _, p in good])) if good else torch.empty(0)
    return [i for i, _ in good], pixels, [(i, reason) for i, p, reason in items if p is None]


@lru_cache(maxsize=1)
def load_embedder(name: str = DEFAULT_MODEL, device: str | None = None, **options: Any) -> Embedder:
    """`Embedder.from_pretrained(name, device, **options)`, keeping the last model loaded for the next call."""
    return Embedder.from_pretrained(name, device=device, **options)


def as_embedder(model: str | os.PathLike | Embedder, device: str | None = None) -> Embedder:
    """`model` itself when it is an `Embedder`, else the model of that name (see `load_embedder`)."""
    return model if isinstance(model, Embedder) else load_embedder(os.fspath(model), device)


def embed_images(
    images: ImageInput | Sequence[ImageInput],
    model: str | Embedder = DEFAULT_MODEL,
    batch_size: int = 32,
    device: str | None = None,
) -> np.ndarray:
    """(N, D) unit-length embeddings of images (paths, PIL images, arrays, tensors or bytes).

    `model` is a name (bundled short name, local directory or hub id; the last one loaded by name is kept
    in memory for the next call) or an `Embedder`.
    """
    return as_embedder(model, device).embed_images(images, batch_size)


def embed_texts(
    texts: str | Sequence[str],
    model: str | Embedder = DEFAULT_MODEL,
    batch_size: int = 256,
    device: str | None = None,
) -> np.ndarray:
    """(N, D) unit-length embeddings of texts, comparable with `embed_images` by dot product."""
    return as_embedder(model, device).embed_texts(texts, batch_size)


# --- embeddings of files, written to Parquet or .npy ---------------------------------------------------------
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


def output_format(out: str | os.PathLike) -> str:
    """The format of an output path by its extension (one of OUTPUT_FORMATS), or a ValueError naming it."""
    suffix = Path(out).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"--out '{out}' must end with {' or '.join(OUTPUT_FORMATS)}")
    return suffix


def embed_to_file(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    embedder: Embedder,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool | None = None,
) -> EmbedReport:
    """Embed the images named by `paths` (files, folders, globs) into `out`, a `.parquet` or `.npy` file.

    Parquet has columns path, vector (list of D float32), model and dims; `.npy` holds the (N, D) matrix,
    with the paths in the manifest. Both get a manifest `<out>.json`, e.g. `vectors.npy.json` (model, dims,
    count, unreadable files and why). Finished batches are kept in `<out>.partial` (SQLite) as they complete:
    rerunning an interrupted command embeds only what is left. The output appears only when complete.
    """
    out = Path(out)
    pa = require("pyarrow", "parquet", "writing Parquet") if output_format(out) == ".parquet" else None
    files = find_images(paths)
    out.parent.mkdir(parents=True, exist_ok=True)
    journal = out.with_name(out.name + ".partial")
    with VectorStore(journal, embedder.name, embedder.dims) as store:
        embedded = failed = 0
        for batch in embedder.embed_files(pending_files(store, files), batch_size, workers, progress):
            store.record(batch.files, batch.vectors, batch.failed)
            embedded, failed = embedded + len(batch.files), failed + len(batch.failed)
        listed = set(files)
        skipped = [(p, r) for p, r in store.skipped() if p in listed]
        unusable = {p for p, _ in skipped}
        kept = [f for f in files if f not in unusable]
        manifest = {
            "model": embedder.name,
            "dims": embedder.dims,
            "count": len(kept),
            "format": out.suffix[1:],
            "precision": embedder.mode.precision,
        }
        if pa is not None:
            _write_parquet(pa, store, kept, out)
        else:
            _write_npy(store, kept, out)
            manifest["paths"] = kept
        manifest["skipped"] = skipped_as_json(skipped)
        manifest_path = out.with_suffix(out.suffix + ".json")
        replace_atomically(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{journal}{suffix}").unlink(missing_ok=True)
    return EmbedReport(out, manifest_path, len(kept), embedded, failed, skipped)


def skipped_as_json(skipped: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """Unreadable files as JSON output lists them."""
    return [{"path": path, "reason": reason} for path, reason in skipped]


def pending_files(store: VectorStore, files: list[str]) -> list[FileState]:
    """The files `store` lacks in their current state; those that vanished since listing are recorded skipped."""
    states, vanished = [], []
    for path in files:
        try:
            states.append(FileState.of(path))
        except OSError as err:
            vanished.append((FileState(path, -1, -1), f"cannot be read: {err.strerror}"))
    if vanished:
        store.record([], np.empty((0, store.dims), np.float32), vanished)
    return store.pending(states)


def _write_parquet(pa: Any, store: VectorStore, paths: list[str], out: Path) -> None:
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("path", pa.string()),
            ("vector", pa.list_(pa.float32(), store.dims)),
            ("model", pa.string()),
            ("dims", pa.int32()),
        ]
    )

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            for chunk, vectors in store.in_order(paths):
                n = len(chunk)
                writer.write_table(
                    pa.table(
                        [
                            pa.array(chunk, pa.string()),
                            pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), store.dims),
                            pa.array([store.model] * n, pa.string()),
                            pa.array([store.dims] * n, pa.int32()),
                        ],
                        schema=schema,
                    )
                )

    replace_atomically(out, write)


def _write_npy(store: VectorStore, paths: list[str], out: Path) -> None:
    def write(tmp: Path) -> None:
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(paths), store.dims))
        row = 0
        for chunk, vectors in store.in_order(paths):
            matrix[row : row + len(chunk)] = vectors
            row += len(chunk)
        matrix.flush()
        del matrix

    replace_atomically(out, write)
