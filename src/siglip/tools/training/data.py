"""Image-caption data for training: pairs files, class folders and WebDataset shards.

Three sources, chosen by the `data` argument:
- a `.csv`, `.tsv` or `.jsonl` file of (image path, caption) rows; relative paths are relative to the file;
  an optional group column labels the pairs (rows of one group are positives for each other in the loss);
- a directory with one sub-folder of images per class; each sample's caption is a template (`"a photo of
  a {}."`) filled with the class name (the folder name, `_` read as a space), and its label is the class;
- WebDataset `.tar` shards (a path, a glob or a brace pattern such as `shards/{000000..000099}.tar`), each
  sample an image (`jpg`, `png`, `webp`, ...) plus a caption (`txt`, or `json` with a "caption" field).

Everything a run can know before training is checked before training starts: columns, empty captions,
missing files. Images that fail to decode during training are skipped and counted; the run stops only when
more than `max_bad_fraction` of them fail.

Order and resumption: every source is read as one seeded stream per epoch (a permutation of a map-style
source; the shards in a seeded order for WebDataset), cut into global batches. Each global batch is cut into
`grad_accum` micro-batches and each micro-batch is split across the ranks (`share`), so N processes train on
exactly the (micro-)batches one process would, and any (epoch, batch) position resumes exactly. Random
choices (the caption template) depend only on (seed, epoch, index), never on which worker loads the sample.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ...core.auto import ImageProcessor
from ...errors import DataError
from ..inputs.data import (
    PAIRS_SUFFIXES,
    ClassFolders,
    PairsFile,
    Sample,
    collate,
    load_sample,
    worker_init_fn,
)
from ..inputs.tar_shards import count_samples, expand_shards, image_field, is_shards, sample_name
from ..zeroshot import check_templates, fill_template

logger = logging.getLogger("siglip")


@dataclass(frozen=True)
class BatchLayout:
    """How an epoch's stream is cut: global batches of `global_batch` pairs, each in `accum` micro-batches
    split across `world` ranks, of which this process is `rank`; `seed` fixes every epoch's order."""

    global_batch: int
    accum: int = 1
    rank: int = 0
    world: int = 1
    seed: int = 0

    def batches(self, samples: int, what: str) -> int:
        """Full global batches in `samples` samples (the last incomplete one is dropped); none is an error."""
        if samples < self.global_batch:
            raise DataError(
                f"{what} hold {samples} samples, fewer than one global batch of {self.global_batch}"
            )
        return samples // self.global_batch

    def share(self, batch: Sequence[Any]) -> list[tuple[int, Any]]:
        """This rank's part of a global batch, as (micro-batch index, item) pairs.

        The batch is cut into `accum` contiguous micro-batches, and each micro-batch into `world` contiguous
        slices (sizes differ by at most one; a rank's slice may be empty when a micro-batch is smaller than
        the world). One process with `accum` micro-batches sees the very micro-batches N processes share.
        """
        part = []
        micro_bounds = np.linspace(0, len(batch), self.accum + 1).round().astype(int)
        for m in range(self.accum):
            micro = batch[micro_bounds[m] : micro_bounds[m + 1]]
            bounds = np.linspace(0, len(micro), self.world + 1).round().astype(int)
            part += [(m, item) for item in micro[bounds[self.rank] : bounds[self.rank + 1]]]
        return part

    def epoch_seed(self, epoch: int) -> int:
        return self.seed * 100003 + epoch


# --- map-style sources -----------------------------------------------------------------------------------
class PairsDataset(Dataset):
    """The (image, caption) rows of a pairs file (`PairsFile`), loaded for training.

    Rows with a missing image file are dropped before training (and counted in `missing`). With
    `group_column`, each sample's label is the index of its group value among the file's distinct
    values, in order of first appearance.
    """

    def __init__(
        self,
        path: str | Path,
        processor: ImageProcessor,
        image_column: str = "image",
        caption_column: str = "caption",
        group_column: str | None = None,
    ) -> None:
        self.pairs = PairsFile(path, image_column, caption_column, group_column)
        self.processor = processor
        self.images, self.captions, self.missing = self.pairs.images, self.pairs.captions, self.pairs.missing
        self.labels = self.pairs.groups

    def __len__(self) -> int:
        return len(self.images)

    def caption(self, index: int, epoch: int) -> str:
        return self.captions[index]

    def __getitem__(self, key: tuple[int, int, int]) -> Sample:
        index, epoch, micro = key
        image, label = self.images[index], None if self.labels is None else self.labels[index]
        caption = self.caption(index, epoch)
        return load_sample(self.processor, image, image, caption=caption, micro=micro, label=label)


class ClassFolderDataset(Dataset):
    """Images in one folder per class (`ClassFolders`), captioned by templates filled with the class name.

    Each sample draws its template from `seed`, the epoch and its index.
    """

    def __init__(
        self,
        root: str | Path,
        processor: ImageProcessor,
        templates: Sequence[str],
        seed: int = 0,
        class_names: dict[str, str] | None = None,
    ) -> None:
        check_templates(templates)
        self.folders = ClassFolders(root, class_names)
        self.processor = processor
        self.templates = list(templates)
        self.seed = seed
        self.images, self.labels = self.folders.images, self.folders.labels
        self.classes, self.class_names = self.folders.classes, self.folders.class_names

    def __len__(self) -> int:
        return len(self.images)

    def caption(self, index: int, epoch: int) -> str:
        template = random.Random(f"{self.seed}-{epoch}-{index}").choice(self.templates)
        return fill_template(template, self.class_names[self.labels[index]])

    def __getitem__(self, key: tuple[int, int, int]) -> Sample:
        index, epoch, micro = key
        image, caption = self.images[index], self.caption(index, epoch)
        return load_sample(
            self.processor, image, image, caption=caption, micro=micro, label=self.labels[index]
        )


class GlobalBatchSampler(Sampler):
    """This rank's share (`BatchLayout.share`) of each global batch of a seeded per-epoch permutation.

    Global batch k of epoch e is `permutation(seed, e)[k * B : (k + 1) * B]`; iteration starts at batch
    `start`. Yields (index, epoch, micro-batch) keys.
    """

    def __init__(self, size: int, layout: BatchLayout, epoch: int, start: int) -> None:
        self.size, self.layout, self.epoch, self.start = size, layout, epoch, start
        self.batches_per_epoch = layout.batches(size, "the data")

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        generator = torch.Generator().manual_seed(self.layout.epoch_seed(self.epoch))
        order = torch.randperm(self.size, generator=generator)
        size = self.layout.global_batch
        for k in range(self.start, self.batches_per_epoch):
            batch = order[k * size : (k + 1) * size].tolist()
            yield [(i, self.epoch, m) for m, i in self.layout.share(batch)]


# --- WebDataset shards -----------------------------------------------------------------------------------
class WebDatasetSource(IterableDataset):
    """Samples of WebDataset tar shards, in a seeded per-epoch shard order.

    The stream of epoch e is the shards in a seeded order, read in turn; global batch k is samples
    [k B, (k + 1) B) of it and each rank keeps its `share`, so 1 and N processes see the same batches and a
    resumed run skips the samples it already used without decoding them. DataLoader workers take turns
    with the batches. An epoch is the full global batches of one pass (counted from the tar headers).

    Every rank and every worker reads the whole stream (and decodes only its own samples): exact global
    batches cost storage reads of world x workers times the data per epoch. Fine on local disks and for
    fine-tuning; at very large scale, shard the data per node instead.
    """

    def __init__(self, pattern: str, processor: ImageProcessor, layout: BatchLayout) -> None:
        try:
            import webdataset  # noqa: F401 (checked here so the error comes before training)
        except ImportError as err:
            raise DataError(
                "WebDataset shards need the webdataset library: pip install 'siglip[train]'"
            ) from err
        self.shards = expand_shards(pattern)
        self.processor = processor
        self.layout = layout
        self.batches_per_epoch = layout.batches(
            sum(count_samples(shard) for shard in self.shards), f"the shards {pattern}"
        )
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def _raw_samples(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        shards = list(self.shards)
        random.Random(self.layout.epoch_seed(self.epoch)).shuffle(shards)
        for shard in shards:
            yield from wds.tariterators.tarfile_samples([{"url": shard}])

    def __iter__(self) -> Iterator[list[Sample]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        stream = self._raw_samples()
        for k in range(self.batches_per_epoch):
            batch = [s for _, s in zip(range(self.layout.global_batch), stream, strict=False)]
            if k >= self.start and (k - self.start) % workers == worker:
                yield [self._decode(raw, m) for m, raw in self.layout.share(batch)]

    def _decode(self, raw: dict[str, Any], micro: int) -> Sample:
        source = sample_name(raw.get("__url__"), raw.get("__key__"))
        caption = _caption_of(raw)
        image_key = image_field(raw)
        if image_key is None or not caption:
            logger.debug("skipping %s: no image or no readable caption", source)
            return Sample(None, source, "no image or no readable caption", caption=caption or "", micro=micro)
        return load_sample(self.processor, raw[image_key], source, caption=caption, micro=micro)


def _caption_of(raw: dict[str, Any]) -> str | None:
    """The caption of a raw sample (`txt`, or `json` with a "caption"), or None if it has no usable one."""
    try:
        if "txt" in raw:
            return raw["txt"].decode("utf-8").strip()
        if "json" in raw:
            value = json.loads(raw["json"])
            caption = value.get("caption") if isinstance(value, dict) else None
            return caption.strip() if isinstance(caption, str) else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return None


def build_source(
    data: str,
    processor: ImageProcessor,
    *,
    templates: Sequence[str],
    layout: BatchLayout,
    image_column: str = "image",
    caption_column: str = "caption",
    group_column: str | None = None,
) -> Dataset | WebDatasetSource:
    """The source behind `data`: a pairs file, a folder of class folders, or WebDataset shards."""
    path = Path(data)
    if path.suffix.lower() in PAIRS_SUFFIXES:
        if not path.is_file():
            raise DataError(f"pairs file not found: {path}")
        return PairsDataset(path, processor, image_column, caption_column, group_column)
    if group_column is not None:
        raise DataError(f"a group column labels the rows of a pairs file; {data!r} is not one")
    if path.is_dir():
        return ClassFolderDataset(path, processor, templates, layout.seed)
    if is_shards(data):
        return WebDatasetSource(data, processor, layout)
    raise DataError(
        f"cannot tell what {data!r} is: expected a .csv/.tsv/.jsonl pairs file, a folder of class folders, "
        "or WebDataset .tar shards"
    )


def make_loader(
    source: Dataset | WebDatasetSource, layout: BatchLayout, *, epoch: int, start: int, workers: int
) -> DataLoader:
    """A DataLoader over this rank's share of the global batches of `epoch`, from batch `start` on.

    Its generator is seeded from (seed, epoch), not drawn from the global RNG, so that a resumed run's random
    state matches an uninterrupted one's.
    """
    options = dict(
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        collate_fn=collate,
        worker_init_fn=worker_init_fn(),  # workers die with this process, even by kill -9
        generator=torch.Generator().manual_seed(layout.epoch_seed(epoch)),
    )
    if isinstance(source, WebDatasetSource):
        source.set_position(epoch, start)
        return DataLoader(source, batch_size=None, **options)
    sampler = GlobalBatchSampler(len(source), layout, epoch, start)
    return DataLoader(source, batch_sampler=sampler, **options)


def batches_per_epoch(source: Dataset | WebDatasetSource, layout: BatchLayout) -> int:
    """Full global batches in one epoch of `source`; fewer samples than one batch is a `DataError`."""
    if isinstance(source, WebDatasetSource):
        return source.batches_per_epoch
    return layout.batches(len(source), "the data")


def missing_files(source: Dataset | WebDatasetSource) -> tuple[list[str], int]:
    """Image files of a pairs file found missing before training, and the number of rows checked."""
    if not isinstance(source, PairsDataset):
        return [], 0
    return source.missing, len(source.missing) + len(source)
