"""SigLIP 2 NaFlex image preprocessing, pixel for pixel transformers 5's: `Siglip2ImageProcessor` (its default,
the torchvision backend) and `Siglip2ImageProcessorPil` (the PIL backend).

Per image: convert to RGB, exactly as `SiglipImageProcessor` does (the same decoding, EXIF, transparency and
16-bit rules: the code is shared) -> resize (bilinear by default; torch's resize, or PIL's for `Pil`) to the
largest size that keeps the aspect ratio, has both sides a multiple of `patch_size` (at least one patch each)
and at most `max_num_patches` patches -> rescale and normalise (the same float arithmetic as transformers'
backend) -> cut into patches in row-major order, each flattened as (patch row, patch column, channel) ->
zero-pad to `max_num_patches` patches.

Outputs: `pixel_values` (B, max_num_patches, 3 * patch_size**2) float32, `pixel_attention_mask`
(B, max_num_patches) int32 with 1 for real patches, `spatial_shapes` (B, 2) int64 = (patches high, wide).
An image's row does not depend on the rest of its batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...errors import ImageInputError
from ..features import BatchFeature
from ..two_tower.image_processing import (
    SIGLIP_MEAN,
    SIGLIP_STD,
    BaseImageProcessor,
    ImageInput,
    Steps,
    check_resample,
    check_stats,
    process_images,
)

__all__ = [
    "Siglip2ImageProcessor",
    "Siglip2ImageProcessorFast",
    "Siglip2ImageProcessorPil",
    "get_image_size_for_max_num_patches",
]


def get_image_size_for_max_num_patches(
    image_height: int, image_width: int, patch_size: int, max_num_patches: int, eps: float = 1e-5
) -> tuple[int, int]:
    """(height, width) in pixels NaFlex resizes an image to: the image scaled by one factor, each side rounded
    up to a multiple of `patch_size` and at least one patch, with at most `max_num_patches` patches.

    The factor is found by bisection on [eps / 10, 100] down to an interval narrower than `eps`, keeping the
    largest factor known to fit: the same search, with the same float arithmetic, as transformers and
    big_vision (`_get_image_size_for_seq`), so the sizes agree exactly. A side may be squeezed to one patch
    when the aspect ratio is more extreme than `max_num_patches` allows.
    """

    def side(scale: float, length: int) -> int:
        return max(patch_size, math.ceil(length * scale / patch_size) * patch_size)

    low, high = eps / 10, 100.0
    while high - low >= eps:
        middle = (low + high) / 2
        patches = (side(middle, image_height) / patch_size) * (side(middle, image_width) / patch_size)
        if patches <= max_num_patches:
            low = middle
        else:
            high = middle
    return side(low, image_height), side(low, image_width)


@dataclass(frozen=True)
class _NaflexSteps(Steps):
    """`Steps` whose target size depends on the image: NaFlex's aspect-preserving size (or none)."""

    resize: bool = True
    patch_size: int = 16
    max_num_patches: int = 256

    def target_size(self, height: int, width: int, name: str) -> tuple[int, int] | None:
        if self.resize:
            return get_image_size_for_max_num_patches(height, width, self.patch_size, self.max_num_patches)
        p = self.patch_size
        if height % p or width % p or (height // p) * (width // p) > self.max_num_patches:
            raise ImageInputError(
                f"{name} is {width} x {height} pixels: with do_resize=False each side must be a multiple of "
                f"patch_size={p} and the image at most max_num_patches={self.max_num_patches} patches; "
                "pass do_resize=True"
            )
        return None

    def from_uint8(self, image: np.ndarray) -> np.ndarray:
        """(h, w, p * p * 3) patches of a resized uint8 image: the uint8 pixels are put in patch order first
        (a quarter of the bytes to move), then looked up in the (channel, value) table in one gather."""
        offsets = np.tile(np.arange(3, dtype=np.intp) * 256, self.patch_size**2)  # channel c -> row c
        # indices built as numpy's own index type (no conversion inside `take`), and always within the table,
        # so mode="clip" changes nothing but skips the bounds pass: ~3x faster than uint16 indices, "raise"
        indices = np.add(_patches(image, self.patch_size), offsets, dtype=np.intp)
        return np.take(self.lookup_table.reshape(-1), indices, mode="clip")

    def layout(self, pixels: np.ndarray) -> np.ndarray:
        """(h, w, p * p * 3) patches of an image's final (3, H, W) pixels."""
        return _patches(pixels.transpose(1, 2, 0), self.patch_size)


def _patches(image: np.ndarray, p: int) -> np.ndarray:
    """(H, W, C) -> (H / p, W / p, p * p * C): row-major patches, each flattened as (patch row, column, C)."""
    height, width, channels = image.shape
    grid = image.reshape(height // p, p, width // p, p, channels).transpose(0, 2, 1, 3, 4)
    return grid.reshape(height // p, width // p, p * p * channels)


class Siglip2ImageProcessor(BaseImageProcessor):
    """Image preprocessing of SigLIP 2 NaFlex checkpoints, identical to transformers 5's `Siglip2ImageProcessor`,
    its default torchvision backend (each image resized to its patch-budget size by torchvision's resize with
    antialias, then rescaled, normalised and cut into patches; see `siglip.core.two_tower.torch_resize`),
    without torchvision. `Siglip2ImageProcessorFast` is the same class (transformers' deprecated name for it);
    `Siglip2ImageProcessorPil` is the same with the PIL backend, pixel for pixel transformers'
    `Siglip2ImageProcessorPil`.

    Args:
        do_resize: resize each image to the largest patch-aligned size with at most `max_num_patches` patches
            that keeps its aspect ratio (see `get_image_size_for_max_num_patches`). With False, every image
            must already be a whole number of patches, at most `max_num_patches` of them.
        resample: PIL filter (`PIL.Image.Resampling` or its int); BILINEAR (2) as in the released configs. The
            torch backend resamples with NEAREST, BILINEAR, BICUBIC or LANCZOS only, as torchvision.
        do_rescale, rescale_factor: multiply by 1/255.
        do_normalize, image_mean, image_std: `(x - mean) / std` per channel, 0.5 / 0.5 (values in [-1, 1]).
        patch_size: side of a patch in pixels (16; the model's `vision_config.patch_size`).
        max_num_patches: patches per image after padding (256; 576 and 1024 for more detail). Any number up
            to `MAX_NUM_PATCHES` (4096) works with a NaFlex model: its position grid is resized to each image.
        exif_transpose, num_threads, max_image_pixels: as for `SiglipImageProcessor` (files are turned upright
            by their EXIF orientation, in-memory PIL images are used as given; one thread per core; files of
            more pixels than `max_image_pixels` are refused, by default Pillow's `MAX_IMAGE_PIXELS`).

    Accepted images and conversion to RGB: as `SiglipImageProcessor` (its documented differences from
    transformers for 16-bit grey, transparent files and bad input apply here too; files are decoded to
    Pillow's pixels with both backends). Deliberate difference: transformers' SigLIP 2 image processors leave
    `do_convert_rgb` unset and then fail on grey, RGBA, palette or CMYK images; ours always convert (and save
    `do_convert_rgb: true`, which transformers honours). An image of any size from 1 x 1 pixel up is resized
    to at least one patch, as transformers does; an empty image, or with `do_resize=False` one that is not a
    whole number of patches, raises `ImageInputError` naming it.
    """

    model_input_names = ("pixel_values", "pixel_attention_mask", "spatial_shapes")
    MAX_NUM_PATCHES = 64 * 64  # the largest patch budget: 12 MB of pixel values an image at patch size 16
    _config_keys = ("do_resize", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                    "image_std", "patch_size", "max_num_patches", "exif_transpose")  # fmt: skip

    def __init__(
        self,
        do_resize: bool = True,
        resample: int | Image.Resampling = Image.Resampling.BILINEAR,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        patch_size: int = 16,
        max_num_patches: int = 256,
        exif_transpose: bool | None = None,
        num_threads: int | None = None,
        max_image_pixels: int | None = None,
    ) -> None:
        self.do_resize = bool(do_resize)
        self.resample = check_resample(resample)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = check_stats(SIGLIP_MEAN if image_mean is None else image_mean, "image_mean")
        self.image_std = check_stats(SIGLIP_STD if image_std is None else image_std, "image_std")
        self.patch_size = _check_positive(patch_size, "patch_size")
        self.max_num_patches = self.check_max_num_patches(max_num_patches)
        self.exif_transpose = exif_transpose
        self.num_threads = num_threads
        self.max_image_pixels = max_image_pixels

    def preprocess(
        self,
        images: ImageInput | Sequence[ImageInput],
        do_resize: bool | None = None,
        resample: int | Image.Resampling | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        patch_size: int | None = None,
        max_num_patches: int | None = None,
        return_tensors: str | None = None,
        input_data_format: str | None = None,
        exif_transpose: bool | None = None,
    ) -> BatchFeature:
        """Turn an image or a batch of images into `pixel_values`, `pixel_attention_mask`, `spatial_shapes`.

        Every setting left as None takes the processor's own value. `return_tensors`: None (lists: one
        (max_num_patches, 3 * p * p) array and one mask per image, and (h, w) tuples), `"np"` or `"pt"`
        (stacked). `input_data_format`: the layout of array inputs, as for `SiglipImageProcessor`. Bad input
        raises `ImageInputError` (or `TypeError` for objects that are no image), naming the image.
        """
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")
        if input_data_format not in ("channels_first", "channels_last", None):
            raise ValueError(
                f"input_data_format must be None, 'channels_first' or 'channels_last', got {input_data_format!r}"
            )
        steps = _NaflexSteps(
            size=None,
            resample=check_resample(self.resample if resample is None else resample),
            do_rescale=self.do_rescale if do_rescale is None else bool(do_rescale),
            rescale_factor=self.rescale_factor if rescale_factor is None else float(rescale_factor),
            do_normalize=self.do_normalize if do_normalize is None else bool(do_normalize),
            mean=self.image_mean if image_mean is None else check_stats(image_mean, "image_mean"),
            std=self.image_std if image_std is None else check_stats(image_std, "image_std"),
            exif_transpose=self.exif_transpose if exif_transpose is None else exif_transpose,
            input_data_format=input_data_format,
            reduced_decode=False,
            max_image_pixels=self.max_image_pixels,
            resize=self.do_resize if do_resize is None else bool(do_resize),
            patch_size=self.patch_size if patch_size is None else _check_positive(patch_size, "patch_size"),
            max_num_patches=self.check_max_num_patches(  # the attribute too: it may have been set since
                self.max_num_patches if max_num_patches is None else max_num_patches
            ),
            backend=self._backend,
        )
        pixels = process_images(images, steps, self.num_threads)
        p, length = steps.patch_size, steps.max_num_patches
        values = np.zeros((len(pixels), length, 3 * p * p), dtype=np.float32)
        masks = np.zeros((len(pixels), length), dtype=np.int32)
        shapes = np.empty((len(pixels), 2), dtype=np.int64)
        for i, patches in enumerate(pixels):  # (h, w, p * p * 3) each
            h, w = patches.shape[:2]
            values[i, : h * w] = patches.reshape(h * w, -1)
            masks[i, : h * w] = 1
            shapes[i] = h, w
        if return_tensors is None:
            return BatchFeature(
                pixel_values=list(values),
                pixel_attention_mask=list(masks),
                spatial_shapes=[(int(h), int(w)) for h, w in shapes],
            )
        if return_tensors == "pt":
            values, masks, shapes = (torch.from_numpy(a) for a in (values, masks, shapes))
        return BatchFeature(pixel_values=values, pixel_attention_mask=masks, spatial_shapes=shapes)

    @classmethod
    def check_max_num_patches(cls, value: Any) -> int:
        """`value` as a patch budget, or a `ValueError` saying the bounds: a whole number from 1 to
        `MAX_NUM_PATCHES`, checked before anything is allocated (each image takes `max_num_patches` x 3 x
        `patch_size`**2 floats, and attention grows with the square of the patches)."""
        patches = _check_positive(value, "max_num_patches")
        if patches > cls.MAX_NUM_PATCHES:
            raise ValueError(
                f"max_num_patches must be at most {cls.MAX_NUM_PATCHES} (a 64 x 64 patch grid, 4x the largest "
                f"budget NaFlex models were trained with), got {patches}"
            )
        return patches

    def _family_settings(self) -> dict[str, Any]:
        return {"max_num_patches": self.max_num_patches, "patch_size": self.patch_size}


class Siglip2ImageProcessorPil(Siglip2ImageProcessor):
    """`Siglip2ImageProcessor` with the PIL backend: pixel for pixel transformers' `Siglip2ImageProcessorPil`
    (PIL's resize to the patch-budget size, then one table lookup per pixel with transformers' float
    arithmetic). Everything else is `Siglip2ImageProcessor`'s; every PIL filter resamples.
    """

    _backend = "pil"


Siglip2ImageProcessorFast = Siglip2ImageProcessor  # transformers 5's deprecated name for its default backend
Siglip2ImageProcessor._backend_classes = {"pil": Siglip2ImageProcessorPil, "torch": Siglip2ImageProcessor}


def _check_positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)
