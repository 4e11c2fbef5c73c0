"""The inputs `int8-static` calibrates its activation scales on (`--calibration PATH ...`).

`int8-static` quantises each activation with a scale measured ahead on calibration inputs rather than on each
call, as OpenVINO's NNCF and ONNX Runtime's static quantisation do: the quantisation then fuses into the
operation before each product, and the compiled base towers ran about 1.1x the per-call scales of `int8`
(BENCHMARKS.md). The embeddings then depend on the calibration inputs, so those are named by the user, not
taken from a job: images like the ones to embed (a few dozen to a hundred photos) for the image tower, and
texts like the ones to embed (`.txt` files, one text per line) for the text tower. A tower given no
calibration inputs of its kind runs `int8` with per-call scales.

    calibration = read_calibration(["calibration/photos", "calibration/queries.txt"])
    inputs = calibration_inputs(calibration, processor, model.config)   # what `InferenceMode` takes
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from ...core.auto import Processor
from ...core.config import PretrainedConfig
from ...core.two_tower.processing import fixed_length_inputs
from ...errors import InputNotFoundError, NoImagesError, UsageError
from ..inputs.files import display_path, scan_images
from ..inputs.texts import read_texts

logger = logging.getLogger("siglip")
# At most this many of each are calibrated on (the first, in order): HistogramObserver's ranges settle within
# a few dozen photos, and each input costs a float32 forward of the tower while the package is made.
MAX_IMAGES = 128
MAX_TEXTS = 512
TEXT_SUFFIX = ".txt"


@dataclass(frozen=True)
class CalibrationSet:
    """The calibration files of `paths`: image files and texts (in order, at most `MAX_IMAGES` and
    `MAX_TEXTS`), and a SHA-256 over the images' bytes, which names the image tower's calibration in the
    settings an index records (`Embedder.settings`)."""

    images: list[str]
    texts: list[str]
    digest: str


class Calibration(NamedTuple):
    """Calibration inputs as the towers take them: pixels for the image tower and token ids (padded to the
    model's text length) for the text tower; None where none were given. `digest` is `CalibrationSet`'s."""

    pixel_values: torch.Tensor | None
    input_ids: torch.Tensor | None
    digest: str

    def for_input(self, x: torch.Tensor) -> torch.Tensor | None:
        """The calibration inputs of the tower that takes `x`: token ids for integer inputs, else pixels."""
        return self.pixel_values if x.is_floating_point() else self.input_ids


def read_calibration(paths: Sequence[str | os.PathLike]) -> CalibrationSet:
    """The calibration files named by `paths`: `.txt` files (one text per non-blank line) and images, given
    as files, folders (searched recursively, sorted: images and `.txt` files) or glob patterns. A path that
    does not exist, or paths that give neither images nor texts, raise a `UsageError` naming them."""
    if not paths:
        raise UsageError("--calibration: give image files, folders or .txt files of texts")
    text_files: list[Path] = []
    image_paths: list[str] = []
    for path in map(os.fspath, paths):
        if path.endswith(TEXT_SUFFIX) and os.path.isfile(path):
            text_files.append(Path(path))
            continue
        if os.path.isdir(path):
            text_files += sorted(Path(path).rglob(f"*{TEXT_SUFFIX}"))
        image_paths.append(path)
    try:
        images = scan_images(image_paths, allow_empty=True).files if image_paths else []
    except (InputNotFoundError, NoImagesError) as error:
        raise UsageError(f"--calibration: {error}") from error
    texts = [text for file in text_files for text in read_texts(file).texts]
    if not images and not texts:
        named = ", ".join(f"'{display_path(p)}'" for p in map(os.fspath, paths))
        raise UsageError(f"--calibration {named}: no image files and no texts ({TEXT_SUFFIX} files) there")
    for kind, items, limit in (("images", images, MAX_IMAGES), ("texts", texts, MAX_TEXTS)):
        if len(items) > limit:
            logger.info("calibrating on the first %d of %d %s", limit, len(items), kind)
    images, texts = images[:MAX_IMAGES], texts[:MAX_TEXTS]
    digest = hashlib.sha256()
    for image in images:
        digest.update(Path(image).read_bytes())
    return CalibrationSet(images, texts, digest.hexdigest())


def calibration_inputs(
    calibration: CalibrationSet, processor: Processor, config: PretrainedConfig
) -> Calibration:
    """The inputs of `calibration` made by the model's `processor` (its image processor and tokenizer, as for
    the job itself) for a model of `config`."""
    pixels = ids = None
    if calibration.images:
        pixels = processor.image_processor(calibration.images, return_tensors="pt")["pixel_values"]
    if calibration.texts:
        ids = fixed_length_inputs(processor.tokenizer, calibration.texts, config.text_config)["input_ids"]
    return Calibration(pixels, ids, calibration.digest)
