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

import glob
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
from ...errors import ImageInputError, InputNotFoundError, NoImagesError, UsageError
from ..inputs.files import display_path, scan_images
from ..inputs.texts import read_texts

logger = logging.getLogger("siglip")
# At most this many of each are calibrated on (the first, in order): each input costs an observed float32
# forward of the tower while the package is made (32 photos added ~3 s to a base image tower's ~33 s compile
# on a 2-core Zen 5, BENCHMARKS.md); the benchmarks calibrated on 32-64.
MAX_IMAGES = 128
MAX_TEXTS = 512
TEXT_SUFFIX = ".txt"


UNCALIBRATED = (
    "none: per-call scales"  # what settings record for a tower int8-static gave no calibration inputs
)


@dataclass(frozen=True)
class CalibrationSet:
    """The calibration files of `paths`: image files and texts (in order, at most `MAX_IMAGES` and
    `MAX_TEXTS`), and a SHA-256 over each kind (the images' bytes; the texts), which names a tower's
    calibration in the settings an index or an output file records (None: none of that kind)."""

    images: list[str]
    texts: list[str]
    image_digest: str | None
    text_digest: str | None


class Calibration(NamedTuple):
    """Calibration inputs as the towers take them: pixels for the image tower and token ids (padded to the
    model's text length) for the text tower, None where none are used; the digests are `CalibrationSet`'s
    of the inputs used."""

    pixel_values: torch.Tensor | None
    input_ids: torch.Tensor | None
    image_digest: str | None = None
    text_digest: str | None = None

    @property
    def recorded(self) -> dict[str, str]:
        """What the settings of the image side (`Embedder.settings`) and of the text side record of it."""
        return {"image": recorded(self.image_digest), "text": recorded(self.text_digest)}

    def without_inputs(self) -> Calibration:
        """The digests alone: what a model keeps once its towers are compiled (a 384-pixel model's 128
        calibration images are 226 MB of pixels)."""
        return self._replace(pixel_values=None, input_ids=None)


def recorded(digest: str | None) -> str:
    """What settings record of a tower's calibration: its inputs' digest, or `UNCALIBRATED` without any."""
    return digest or UNCALIBRATED


def check_takes_calibration(precision: str | None) -> None:
    """A `UsageError` unless `precision` (None: not known yet) is int8-static, the one --calibration is for."""
    if precision not in (None, "int8-static"):
        raise UsageError(f"--calibration applies to --precision int8-static, not to {precision!r}")


def read_calibration(paths: Sequence[str | os.PathLike]) -> CalibrationSet:
    """The calibration files named by `paths`: `.txt` files (one text per non-blank line) and images, given
    as files, folders (searched recursively, sorted: images and `.txt` files) or glob patterns (matching
    either). A path that does not exist, or paths that give neither images nor texts, raise a `UsageError`
    naming them."""
    if not paths:
        raise UsageError("--calibration: give image files, folders or .txt files of texts")
    text_files: list[Path] = []
    image_paths: list[str] = []  # given to `scan_images`, which picks the images of folders and patterns
    for path in map(os.fspath, paths):
        if path.endswith(TEXT_SUFFIX) and os.path.isfile(path):
            text_files.append(Path(path))
            continue
        image_paths.append(path)
        matches = sorted(glob.glob(path, recursive=True)) if glob.has_magic(path) else [path]
        for match in matches:
            if os.path.isdir(match):
                text_files += sorted(Path(match).rglob(f"*{TEXT_SUFFIX}"))
            elif match.endswith(TEXT_SUFFIX) and os.path.isfile(match):
                text_files.append(Path(match))
    text_files = list(dict.fromkeys(text_files))  # a folder and a pattern may name the same file
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
    image_digest = _digest([Path(image).read_bytes() for image in images])
    return CalibrationSet(images, texts, image_digest, _digest([f"{text}\n".encode() for text in texts]))


def _digest(chunks: list[bytes]) -> str | None:
    """The SHA-256 of `chunks` one after another, in hex; None for no chunks."""
    return hashlib.sha256(b"".join(chunks)).hexdigest() if chunks else None


def used_images(calibration: CalibrationSet, config: PretrainedConfig) -> tuple[list[str], str | None]:
    """The calibration images a model of `config` uses, and their digest: none for a SigLIP 2 NaFlex image
    tower, which is not compiled (its int8 keeps per-call scales; a warning says so)."""
    from ...core.auto import is_naflex

    if calibration.images and is_naflex(config):
        logger.warning(
            "int8-static: NaFlex image towers run int8 with per-call scales (they are not compiled); the "
            "calibration images are not used"
        )
        return [], None
    return calibration.images, calibration.image_digest


def calibration_inputs(
    calibration: CalibrationSet, processor: Processor, config: PretrainedConfig
) -> Calibration:
    """The inputs of `calibration` made by the model's `processor` (its image processor and tokenizer, as for
    the job itself) for a model of `config`. A SigLIP 2 NaFlex image tower is not compiled (its int8 keeps
    per-call scales): its calibration images are left out, with a warning."""
    pixels = ids = None
    images, image_digest = used_images(calibration, config)
    try:
        if images:
            pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        if calibration.texts:
            ids = fixed_length_inputs(processor.tokenizer, calibration.texts, config.text_config)["input_ids"]
    except (ImageInputError, OSError, ValueError) as error:
        raise UsageError(f"--calibration: {error}") from error
    return Calibration(pixels, ids, image_digest, calibration.text_digest)
