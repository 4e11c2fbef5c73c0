"""The data layer shared by the embedder, training and evaluation: labelled and captioned collections, and
decode-or-skip loading of their images.

- `ClassFolders`: a folder with one sub-folder of images per class (zero-shot evaluation, class-folder
  training); class names are the folder names with `_` read as a space.
- `PairsFile`: a `.csv`, `.tsv` or `.jsonl` file of (image path, caption) rows (retrieval evaluation, pairs
  training); relative paths are relative to the file.
- `load_sample` decodes and preprocesses one image or records why it cannot be used, never raising for a bad
  image; `collate` stacks the samples that loaded and keeps the others aside. Every loop over image files
  (DataLoader workers included) goes through these two.
- `worker_init_fn`: every DataLoader's workers die with the process that started them, and do not hold its
  file locks.
"""

from __future__ import annotations

import csv
import ctypes
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...core.auto import ImageProcessor
from ...errors import DataError, ImageInputError
from .files import IMAGE_EXTENSIONS, images_in

logger = logging.getLogger("siglip")

PAIRS_SUFFIXES = (".csv", ".tsv", ".jsonl")


# --- decode or skip ------------------------------------------------------------------------------------
@dataclass
class Sample:
    """One image after loading: its model inputs (`pixel_values`, and for NaFlex models
    `pixel_attention_mask` and `spatial_shapes`, each without the batch axis), or None with the `reason` it
    could not be used; `index` (its position in the caller's list), `caption`, `micro` (its micro-batch) and
    `label` (a class or group id, the same on every rank; None when the source has none) travel with it."""

    inputs: dict[str, np.ndarray] | None
    source: str
    reason: str = ""
    index: int = 0
    caption: str = ""
    micro: int = 0
    label: int | None = None


def load_sample(processor: ImageProcessor, image: Any, source: str, **fields: Any) -> Sample:
    """`image` (a path, bytes, ...) preprocessed, or a `Sample` without inputs saying why it cannot be used."""
    try:
        features = processor(image, return_tensors="np")
    except (ImageInputError, TypeError, OSError) as err:
        logger.debug("skipping %s: %s", source, err)
        reason = err.reason if isinstance(err, ImageInputError) else str(err)  # callers name the source
        return Sample(None, source, reason, **fields)
    return Sample({name: value[0] for name, value in features.items()}, source, **fields)


def load_samples(processor: ImageProcessor, paths: Sequence[str], indices: Sequence[int]) -> list[Sample]:
    """`load_sample` of each image file of `paths` (its `index` from `indices`), preprocessed in one call of
    `processor`, which decodes a list's images on a thread per core (one inside a DataLoader worker); when one
    of them cannot be used, each is loaded on its own again, so that only that one fails."""
    try:
        features = processor(list(paths), return_tensors="np")
    except (ImageInputError, TypeError, OSError):
        return [
            load_sample(processor, path, path, index=index)
            for path, index in zip(paths, indices, strict=True)
        ]
    return [
        Sample({name: value[i] for name, value in features.items()}, path, index=index)
        for i, (path, index) in enumerate(zip(paths, indices, strict=True))
    ]


@dataclass
class Batch:
    """The samples of a batch that loaded, their model inputs stacked (`inputs`, each with a batch axis), and
    the samples that did not load."""

    inputs: dict[str, torch.Tensor]
    loaded: list[Sample]
    failed: list[Sample]

    @property
    def captions(self) -> list[str]:
        return [s.caption for s in self.loaded]

    @property
    def micro(self) -> list[int]:
        return [s.micro for s in self.loaded]

    @property
    def labels(self) -> list[int | None]:
        return [s.label for s in self.loaded]


def collate(samples: list[Sample]) -> Batch:
    """Stack the inputs of the samples that loaded; the others go to `failed`."""
    loaded = [s for s in samples if s.inputs is not None]
    names = loaded[0].inputs if loaded else {}
    inputs = {name: torch.from_numpy(np.stack([s.inputs[name] for s in loaded])) for name in names}
    return Batch(inputs, loaded, [s for s in samples if s.inputs is None])


def empty_inputs(processor: ImageProcessor) -> dict[str, torch.Tensor]:
    """Model inputs for a batch of no image, shaped as `processor` shapes them (for a rank whose share of a
    batch is empty: it must still run the model, which communicates)."""
    blank = processor(Image.new("RGB", (64, 64)), return_tensors="pt")
    return {name: value[:0] for name, value in blank.items()}


# --- DataLoader workers ----------------------------------------------------------------------------------
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): the signal this process gets when its parent dies
PARENT_CHECK_S = 1.0  # how often a worker checks that its parent is alive


def worker_init_fn() -> Callable[[int], None]:
    """A DataLoader `worker_init_fn` tying each worker to this process: when it dies, even by `kill -9`, its
    workers die too, rather than wait forever on a full queue nobody reads (holding what they inherited, an
    index's `update.lock` among it).

    On Linux the kernel kills a worker when the thread that started it ends (`PR_SET_PDEATHSIG`), so iterate a
    DataLoader in a thread that lives as long as the iteration. Everywhere, a thread of each worker kills the
    worker once its parent is gone; and each worker closes the file locks (`flock`) it inherited, which stay
    with the process that took them.
    """
    return functools.partial(_die_with_parent, os.getpid())


def _die_with_parent(parent: int, worker_id: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            logger.debug(
                "worker %d: prctl(PR_SET_PDEATHSIG) failed: %s", worker_id, os.strerror(ctypes.get_errno())
            )
        _close_inherited_locks()
    if os.getppid() != parent:  # the parent died before the signal was set
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=_watch_parent, args=(parent,), name="siglip-parent-watch", daemon=True).start()


def _watch_parent(parent: int) -> None:
    """Kill this process once `parent` is no longer its parent (it died and this one was adopted). SIGKILL:
    no exit handler runs, so none can block on the queue the dead parent no longer reads."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os.kill(os.getpid(), signal.SIGKILL)


def _close_inherited_locks() -> None:
    """Point this process's descriptors that hold an `flock` lock (Linux: their /proc fdinfo says so) at
    /dev/null. A forked child shares its parent's locked files; dropping the child's copy leaves the parent's
    lock held, released when the parent ends, whatever becomes of the child. (/dev/null, not a close: the
    number stays taken, so nothing opened later gets it and meets the parent's file object.)"""
    locked = []
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            with open(f"/proc/self/fdinfo/{fd}") as info:
                if any(line.startswith("lock:") and "FLOCK" in line for line in info):
                    locked.append(int(fd))
        except OSError:  # closed meanwhile (the descriptor of the listing itself)
            continue
    if locked:
        null = os.open(os.devnull, os.O_RDONLY)
        for fd in locked:
            os.dup2(null, fd)
        os.close(null)


# --- collections ----------------------------------------------------------------------------------------
class ClassFolders:
    """Images in one folder per class: `images` with their class `labels`, and the `class_names`.

    `class_names` maps folder names to the names used in captions and prompts (default: the folder name with
    `_` read as a space). Each class folder is searched as every command searches a folder (`images_in`);
    what that leaves out is listed in `skipped` as (path, reason).
    """

    def __init__(self, root: str | Path, class_names: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise DataError(f"{self.root} has no class sub-folders")
        self.classes = [p.name for p in folders]
        names = class_names or {}
        self.class_names = [names.get(c, c.replace("_", " ")) for c in self.classes]
        self.images: list[str] = []
        self.labels: list[int] = []
        self.skipped: list[tuple[str, str]] = []
        for label, folder in enumerate(folders):
            scan = images_in(folder)
            self.images += scan.files
            self.labels += [label] * len(scan.files)
            self.skipped += scan.skipped
        if not self.images:
            raise DataError(f"{self.root} has class folders but no images ({', '.join(IMAGE_EXTENSIONS)})")

    def __len__(self) -> int:
        return len(self.images)


class PairsFile:
    """(image path, caption) rows of a CSV, TSV or JSONL file: `images`, `captions`, and `missing` (the image
    files that do not exist, whose rows are dropped); with `group_column`, `groups`: each kept row's group as
    the index of its value among the file's distinct values, in order of first appearance (else None). A wrong column name, an empty caption or an unreadable
    file is a `DataError` naming the file and the line. Files are read as spreadsheets and other programs
    write them: UTF-8 with or without a byte-order mark, CRLF line ends, quoted fields (a quoted caption may
    span lines; errors give the line where its row starts).
    """

    def __init__(
        self,
        path: str | Path,
        image_column: str = "image",
        caption_column: str = "caption",
        group_column: str | None = None,
    ) -> None:
        self.path = Path(path)
        rows = read_rows(self.path)
        if not rows:
            raise DataError(f"{self.path} has no rows")
        for column in (image_column, caption_column, *([group_column] if group_column else [])):
            if column not in rows[0][1]:
                raise DataError(
                    f"{self.path} has no column {column!r} (columns: {sorted(rows[0][1])}); set "
                    "--image-column / --caption-column / --group-column"
                )
        self.images: list[str] = []
        self.captions: list[str] = []
        self.missing: list[str] = []
        self.groups: list[int] | None = None if group_column is None else []
        group_ids: dict[str, int] = {}
        for line, row in rows:
            caption = row.get(caption_column)
            if not isinstance(caption, str) or not caption.strip():
                raise DataError(f"{self.path} line {line}: empty or missing caption ({caption!r})")
            image = (self.path.parent / str(row.get(image_column) or "")).resolve()
            if not image.is_file():
                self.missing.append(str(image))
                continue
            self.images.append(str(image))
            self.captions.append(caption)
            if self.groups is not None:
                self.groups.append(group_ids.setdefault(str(row.get(group_column)), len(group_ids)))

    def __len__(self) -> int:
        return len(self.images)


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of each row of a CSV, TSV or JSONL file (the line where the row starts); every
    problem is a `DataError` naming the file and line (`PairsFile`, `siglip embed --texts`)."""
    number = 0
    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name
        with open(path, encoding="utf-8-sig", newline="") as f:
            if path.suffix == ".jsonl":
                rows = []
                for number, line in enumerate(f, start=1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict):
                            raise DataError(f"{path} line {number} is not a JSON object")
                        rows.append((number, row))
                return rows
            reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",", strict=True)
            reader.fieldnames  # noqa: B018 (reads the header, so that line_num counts it)
            rows, number = [], reader.line_num + 1
            for row in reader:
                if None in row:  # DictReader's key for the fields beyond the header's
                    raise DataError(
                        f"{path} line {number} has {len(reader.fieldnames) + len(row[None])} fields, the header "
                        f"{len(reader.fieldnames)}: quote fields that contain the delimiter"
                    )
                rows.append((number, row))
                number = reader.line_num + 1
            return rows
    except json.JSONDecodeError as err:
        raise DataError(f"{path} line {number}: not valid JSON ({err.msg})") from err
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start} of a line); save it as UTF-8"
        ) from err
    except csv.Error as err:
        raise DataError(f"{path} line {number}: {err}") from err
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from err
