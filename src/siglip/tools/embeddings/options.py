"""How the tools load and run a model: one frozen object, checked once when it is made, taken as it is by
every command, the server, both embedding engines (in-process and Ray) and the search index, which records it.

    options = ModelOptions(precision="int8", max_num_patches=576)
    embedder = Embedder.from_pretrained("google/siglip2-base-patch16-naflex", options=options)

| option | what it changes |
|---|---|
| `precision` | the inference precision word (see `siglip.tools.embeddings.precision`); None: "auto", or what an index recorded |
| `compile` | compile both towers (see `InferenceMode`); "cached": only where the image tower's package is cached |
| `reduced_decode` | fixed-size models: decode large JPEG files at 1/2, 1/4 or 1/8 scale (faster, other pixels) |
| `max_num_patches` | NaFlex models: the patch budget of each image (default the checkpoint's) |
| `max_image_pixels` | image files with more pixels are refused as possible decompression bombs |
| `image_backend` | "pil" or "torch": transformers' PIL or torchvision pixels (None: the processor's default) |
| `calibration` | precision "int8-static": the image files, folders and `.txt` files its scales are calibrated on |
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from ...core.auto import Siglip2ImageProcessor
from ...core.two_tower.torch_resize import BACKENDS
from ..values import Choice, whole
from .calibration import check_takes_calibration
from .compiled import CACHED
from .precision import PRECISIONS

_RULES = {
    "precision": Choice(tuple(PRECISIONS)),
    "max_num_patches": whole(1, Siglip2ImageProcessor.MAX_NUM_PATCHES),
    "max_image_pixels": whole(1),
    "image_backend": Choice(BACKENDS),
}


@dataclass(frozen=True)
class ModelOptions:
    """How a model is loaded for the tools (see the module doc); a value outside its meaning is a
    `UsageError` when the object is made."""

    precision: str | None = None
    compile: bool | str = False
    reduced_decode: bool = False
    max_num_patches: int | None = None
    max_image_pixels: int | None = None
    image_backend: str | None = None
    calibration: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name, rule in _RULES.items():
            if getattr(self, name) is not None:
                rule.check(getattr(self, name), name)
        if not isinstance(self.reduced_decode, bool):
            raise TypeError(f"reduced_decode must be True or False, got {self.reduced_decode!r}")
        if not isinstance(self.compile, bool) and self.compile != CACHED:
            raise TypeError(f"compile must be True, False or {CACHED!r}, got {self.compile!r}")
        if self.calibration is not None:
            if isinstance(self.calibration, str | os.PathLike):
                raise TypeError("calibration must be a list of paths, not one path")
            object.__setattr__(self, "calibration", tuple(map(os.fspath, self.calibration)))
            check_takes_calibration(self.precision)

    @classmethod
    def of(cls, options: ModelOptions | None, **values: Any) -> ModelOptions:
        """`options` with `values` changed, or the options of `values` alone: what a function taking both an
        options object and single option keywords runs with."""
        return cls(**values) if options is None else options.replace(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelOptions:
        """The options of a command line (`add_model_options` and `add_loader_options`; an option a command
        lacks keeps its default)."""
        return cls(
            **{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        )

    @property
    def precision_word(self) -> str:
        """The precision to run in: the one asked for, else "auto"."""
        return self.precision or "auto"

    def replace(self, **changes: Any) -> ModelOptions:
        """These options with `changes` (checked again)."""
        return dataclasses.replace(self, **changes)
