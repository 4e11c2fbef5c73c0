"""SigLIP's image preprocessing, pixel for pixel transformers 5's: `SiglipImageProcessor` (its default, the
torchvision backend) and `SiglipImageProcessorPil` (the PIL backend, transformers 4.x's pipeline).

Per image: convert to RGB (transparency composited over white) -> resize to height x width (bicubic by
default; no crop, the aspect ratio is not kept) -> `x * (1/255)` -> `(x - mean) / std`, with torch's resize
and arithmetic (`siglip.core.two_tower.torch_resize`) or with PIL's resize and transformers' float64 -> float32
arithmetic (`Pil`). Output `pixel_values` (batch, 3, height, width) float32. The pipeline itself is shared with
SigLIP 2 (`siglip.core.two_tower.image_processing`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..features import BatchFeature
from ..two_tower.image_processing import (
    DATA_FORMATS,
    SIGLIP_MEAN,
    SIGLIP_STD,
    BaseImageProcessor,
    ImageInput,
    Steps,
    check_resample,
    check_stats,
    process_images,
)

__all__ = ["SiglipImageProcessor", "SiglipImageProcessorFast", "SiglipImageProcessorPil"]


class SiglipImageProcessor(BaseImageProcessor):
    """Image preprocessing of SigLIP checkpoints, identical to transformers 5's `SiglipImageProcessor`, its
    default torchvision backend (torchvision's resize with antialias, fused rescale and normalise; see
    `siglip.core.two_tower.torch_resize`), without torchvision. `SiglipImageProcessorFast` is the same class
    (transformers' deprecated name for it); `SiglipImageProcessorPil` is the same with the PIL backend, pixel
    for pixel transformers' `SiglipImageProcessorPil` (transformers 4.x's `SiglipImageProcessor`). The two
    backends' `pixel_values` differ by one 8-bit level on about half the values.

    Args:
        do_resize: resize to `size` (the model needs exactly its image size).
        size: `{"height": H, "width": W}` (224 x 224 by default; the checkpoint's `image_size`). Images are
            warped to it: no crop, the aspect ratio is not kept, as SigLIP was trained.
        resample: PIL filter (`PIL.Image.Resampling` or its int); BICUBIC (3) as in the released configs. The
            torch backend resamples with NEAREST, BILINEAR, BICUBIC or LANCZOS only, as torchvision.
        do_rescale, rescale_factor: multiply by 1/255.
        do_normalize, image_mean, image_std: `(x - mean) / std` per channel, 0.5 / 0.5 (values in [-1, 1]).
        exif_transpose: turn images upright by their EXIF orientation (phone photos). None (default) does what
            transformers does: images read from paths or bytes are turned, PIL images passed in are used as
            they are. True turns PIL images too; False never turns.
        num_threads: threads for a batch (default: one per CPU core, at most one per image; one inside a
            torch DataLoader worker, where the workers already run in parallel). Where torch runs on OpenMP
            (its Linux builds), each thread runs its image's torch operations by itself (no OpenMP team of
            its own), and so does the calling thread while it works alone; no other thread's settings change.
        reduced_decode: decode JPEG files (paths and bytes) at 1/2, 1/4 or 1/8 scale, the smallest that
            still has at least the output size, then resize as usual. Decoding a 640 x 480 photo for a
            224 x 224 model takes about half the time; the pixels differ slightly from a full decode (the
            embedding cost is measured in BENCHMARKS.md). Off by default, as transformers decodes fully;
            like `num_threads`, a runtime choice not saved with the settings.
        max_image_pixels: image files (paths and bytes) with more pixels are refused before decoding, as
            possible decompression bombs. None (default): Pillow's `PIL.Image.MAX_IMAGE_PIXELS` (about 89
            million). A larger value also raises Pillow's, in the process that decodes, since Pillow refuses
            files of twice its own limit before this check; processors left at None still use the value
            Pillow had before. A runtime choice, not saved with the settings.

    Accepted images: PIL images of any mode, numpy arrays and torch tensors (H x W, H x W x C or C x H x W
    with C in 1, 3, 4; uint8, integers in 0..255, or floats in [0, 1]; a 4-D array is a batch), file paths
    and encoded bytes; a single image or a list. Conversion to RGB follows transformers: transparency (RGBA,
    LA, PA, P or L with a transparent colour) is composited over white, CMYK, 1-bit and palette images are
    converted by PIL, 32-bit grey (modes I and F) is clipped to 0..255.

    Paths and bytes are decoded to Pillow's pixels with both backends (JPEGs by libjpeg-turbo directly where
    that gives them, see `siglip.core.two_tower.jpeg`; transformers' torchvision processor decodes paths with
    torchvision); arrays and tensors of any dtype are resized in that dtype by the torch backend, as there.
    The PIL backend resizes by Pillow's arithmetic in compiled loops where the `fast-resize` extra is
    installed (`siglip.core.two_tower.pil_resize`): Pillow's pixels, faster.

    Deliberate differences from transformers:
    - 16-bit grey (mode I;16, e.g. 16-bit PNG and TIFF) is scaled to 8 bits, `round(v * 255 / 65535)`;
      transformers clips it to 0..255, which turns nearly every pixel white.
    - Paths with transparency are composited over white like PIL images (transformers drops the alpha
      channel of files it opens itself).
    - 2-D arrays are accepted as grey images.
    - A warning when float images already in [0, 1] meet `do_rescale=True` (transformers silently divides
      by 255 again), and when 32-bit grey values get clipped.
    - Unreadable, truncated, non-image or oversized files (more pixels than `max_image_pixels`, a
      decompression-bomb guard), empty batches and zero-sized images raise `ImageInputError` naming the image.
    """

    model_input_names = ("pixel_values",)
    _config_keys = ("do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                    "image_std", "exif_transpose")  # fmt: skip

    def __init__(
        self,
        do_resize: bool = True,
        size: Mapping[str, int] | None = None,
        resample: int | Image.Resampling = Image.Resampling.BICUBIC,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        exif_transpose: bool | None = None,
        num_threads: int | None = None,
        reduced_decode: bool = False,
        max_image_pixels: int | None = None,
    ) -> None:
        self.do_resize = bool(do_resize)
        height, width = _check_size({"height": 224, "width": 224} if size is None else size)
        self.size = {"height": height, "width": width}
        self.resample = check_resample(resample)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = check_stats(SIGLIP_MEAN if image_mean is None else image_mean, "image_mean")
        self.image_std = check_stats(SIGLIP_STD if image_std is None else image_std, "image_std")
        self.exif_transpose = exif_transpose
        self.num_threads = num_threads
        self.reduced_decode = reduced_decode
        self.max_image_pixels = max_image_pixels

    def preprocess(
        self,
        images: ImageInput | Sequence[ImageInput],
        do_resize: bool | None = None,
        size: Mapping[str, int] | None = None,
        resample: int | Image.Resampling | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        return_tensors: str | None = None,
        data_format: str = "channels_first",
        input_data_format: str | None = None,
        exif_transpose: bool | None = None,
        reduced_decode: bool | None = None,
    ) -> BatchFeature:
        """Turn an image or a batch of images into `pixel_values`.

        Every setting left as None takes the processor's own value. `return_tensors`: None (a list of numpy
        arrays, one per image), `"np"` (one array) or `"pt"` (a torch tensor); both stack the batch, which
        needs equal sizes (always true with `do_resize`). `data_format`: "channels_first" (B, 3, H, W, what
        the model takes) or "channels_last". `input_data_format`: the layout of array inputs,
        "channels_first" or "channels_last"; inferred when None (C x H x W when the first axis has 1, 3 or 4
        entries). Bad input raises `ImageInputError` (or `TypeError` for objects that are no image), naming
        the image; nothing is returned for the rest of the batch.
        """
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")
        if data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
        if input_data_format not in (*DATA_FORMATS, None):
            raise ValueError(
                f"input_data_format must be None or one of {DATA_FORMATS}, got {input_data_format!r}"
            )
        resize = self.do_resize if do_resize is None else do_resize
        steps = Steps(
            size=_check_size(self.size if size is None else size) if resize else None,
            resample=check_resample(self.resample if resample is None else resample),
            do_rescale=self.do_rescale if do_rescale is None else bool(do_rescale),
            rescale_factor=self.rescale_factor if rescale_factor is None else float(rescale_factor),
            do_normalize=self.do_normalize if do_normalize is None else bool(do_normalize),
            mean=self.image_mean if image_mean is None else check_stats(image_mean, "image_mean"),
            std=self.image_std if image_std is None else check_stats(image_std, "image_std"),
            exif_transpose=self.exif_transpose if exif_transpose is None else exif_transpose,
            input_data_format=input_data_format,
            reduced_decode=self.reduced_decode if reduced_decode is None else reduced_decode,
            max_image_pixels=self.max_image_pixels,
            backend=self._backend,
        )
        pixels = process_images(images, steps, self.num_threads)
        if return_tensors is None:
            if data_format == "channels_last":
                pixels = [np.ascontiguousarray(p.transpose(1, 2, 0)) for p in pixels]
            return BatchFeature(pixel_values=pixels)
        shapes = {p.shape for p in pixels}
        if len(shapes) > 1:
            raise ValueError(
                f"Cannot stack images of different sizes {sorted(shapes)} into one tensor: keep do_resize=True "
                "or pass return_tensors=None"
            )
        batch = np.stack(pixels)
        if data_format == "channels_last":
            batch = np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
        return BatchFeature(pixel_values=torch.from_numpy(batch) if return_tensors == "pt" else batch)

    # --- files --------------------------------------------------------------------------------------------
    def _family_settings(self) -> dict[str, Any]:
        return {"size": dict(self.size)}


class SiglipImageProcessorPil(SiglipImageProcessor):
    """`SiglipImageProcessor` with the PIL backend: pixel for pixel transformers' `SiglipImageProcessorPil`
    (PIL's resize of the uint8 image, `x * (1/255)` in float64 stored as float32, normalised in float32), the
    pipeline of transformers 4.x's `SiglipImageProcessor`. Settings, files, decoding and errors are those of
    `SiglipImageProcessor`; every PIL filter resamples.
    """

    _backend = "pil"


SiglipImageProcessorFast = SiglipImageProcessor  # transformers 5's deprecated name for its default backend
SiglipImageProcessor._backend_classes = {"pil": SiglipImageProcessorPil, "torch": SiglipImageProcessor}


def _check_size(size: Any) -> tuple[int, int]:
    if not isinstance(size, Mapping) or set(size) != {"height", "width"}:
        raise ValueError(
            f"size must be {{'height': H, 'width': W}} (SigLIP resizes to a fixed size), got {size!r}"
        )
    height, width = size["height"], size["width"]
    if not all(isinstance(v, int | np.integer) and v > 0 for v in (height, width)):
        raise ValueError(f"size must hold positive integers, got {size!r}")
    return int(height), int(width)
