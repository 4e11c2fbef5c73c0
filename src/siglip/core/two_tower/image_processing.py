"""What the image processors of both families share: the base class (calling, config files, `repr`), the
resolved settings of a call (`Steps`), and the pipeline up to the pixels: decoding (`open_image`, with the
decompression-bomb pixel limit), conversion to RGB (`pil_to_rgb`), resizing and the rescale-and-normalise
arithmetic, on a thread pool. `open_image` and `pil_to_rgb` are the one owner of how an image file becomes
RGB pixels; the tools call them rather than Pillow.

What makes it fast while staying bit-identical to transformers (the tests check it):
- PIL images are resized directly, without transformers' numpy -> PIL -> numpy round trips;
- rescale and normalise of a uint8 image take one table lookup per pixel: the table holds, for each of the
  256 values and each channel, the result of the very same float64/float32 arithmetic;
- the images of a batch are decoded, converted and resized on a thread pool (PIL releases the GIL);
- JPEG files are decoded by libjpeg-turbo directly (`jpeg`), Pillow's pixels without Pillow's decoding loop
  (the PIL backend once its compiled resize is loaded);
- the PIL backend resizes by Pillow's arithmetic in compiled, vectorised loops where numba is installed
  (`pil_resize`, the `fast-resize` extra), 3-5x faster than Pillow, to the same pixels.

Two backends share everything up to RGB (`Steps.backend`): "torch" resizes, rescales and normalises tensors as
transformers 5's default, torchvision processors (`torch_resize`); "pil" resizes with Pillow and rescales through
the table, as transformers' `*Pil` processors. A family has one class per backend, named as in transformers
(`SiglipImageProcessor`, `SiglipImageProcessorPil`; `BaseImageProcessor.with_backend`).

Differences from transformers, all deliberate and documented on `SiglipImageProcessor`: 16-bit grey images
are scaled to 8 bits instead of clipped, files with transparency are composited like in-memory images, and
bad input raises an `ImageInputError` that names the image.
"""

from __future__ import annotations

import copy
import ctypes
import io
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, cached_property, partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ...errors import CheckpointError, ImageInputError
from ..cpu import usable_cores
from ..features import BatchFeature, write_json
from ..hub import Checkpoint, HubOptions, locate, read_json
from ..image_utils import heif_missing, register_heif
from ..push_to_hub import PushToHubMixin
from ..staging import staged_directory
from . import jpeg, pil_resize, torch_resize

PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"
PROCESSOR_CONFIG_FILE = "processor_config.json"  # transformers 5 saves the image settings only here
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
DATA_FORMATS = ("channels_first", "channels_last")
_MODES_16_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# preprocessor_config.json switches for steps SigLIP does not have: refused when on rather than ignored.
_UNSUPPORTED_STEPS = ("do_center_crop", "do_pad")

ImageInput = Image.Image | np.ndarray | torch.Tensor | str | os.PathLike | bytes


@dataclass(frozen=True)
class Steps:
    """The resolved settings of one `preprocess` call, shared by all worker threads."""

    size: tuple[int, int] | None  # (height, width); None: no resize
    resample: Image.Resampling
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    exif_transpose: bool | None
    input_data_format: str | None
    reduced_decode: bool
    max_image_pixels: int | None  # None: Pillow's `Image.MAX_IMAGE_PIXELS` (as before a processor raised it)
    backend: str = "pil"  # "pil" or "torch" (resize, rescale and normalise of `torch_resize`)

    def target_size(self, height: int, width: int, name: str) -> tuple[int, int] | None:
        """(height, width) to resize an image of `height` x `width` pixels to, or None for no resize."""
        return self.size

    def from_uint8(self, image: np.ndarray) -> np.ndarray:
        """The output of a resized (H, W, 3) uint8 image: (3, H, W) pixels through the per-channel table."""
        return _apply_table(image, self.lookup_table)

    def from_float(self, image: np.ndarray) -> np.ndarray:
        """The output of a resized (H, W, 3) image of another dtype: its rescaled, normalised pixels laid out."""
        return self.layout(self.rescale_normalize(image).transpose(2, 0, 1))

    def layout(self, pixels: np.ndarray) -> np.ndarray:
        """The output of an image's final (3, H, W) pixels: themselves (contiguous)."""
        return np.ascontiguousarray(pixels)

    def from_tensor(self, image: torch.Tensor, name: str) -> np.ndarray:
        """The output of a (3, H, W) RGB tensor through the torch backend: resized, rescaled, normalised."""
        size = self.target_size(image.shape[1], image.shape[2], name)
        if size is not None:
            image = torch_resize.resize(image, size, self.resample)
        pixels = torch_resize.rescale_normalize(
            image, self.do_rescale, self.rescale_factor, self.do_normalize, self.mean, self.std
        )
        if pixels.dtype == torch.bfloat16:  # unnormalised bfloat16: numpy has none, widen exactly
            pixels = pixels.float()
        return self.layout(pixels.numpy())

    def rescale_normalize(self, x: np.ndarray) -> np.ndarray:
        """transformers' arithmetic on a channels-last array: rescale in float64 -> float32, then normalise.

        Normalising keeps a floating input's own dtype and casts other inputs to float32, as transformers does.
        """
        if self.do_rescale:
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            if not np.issubdtype(x.dtype, np.floating):
                x = x.astype(np.float32)
            x = (x - np.asarray(self.mean, dtype=x.dtype)) / np.asarray(self.std, dtype=x.dtype)
        return x

    @cached_property  # made at the first uint8 image of a call: the torch backend never needs it
    def lookup_table(self) -> np.ndarray:
        """(3, 256): the output of `rescale_normalize` for every uint8 value of every channel."""
        values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
        return np.ascontiguousarray(self.rescale_normalize(values).T)


class BaseImageProcessor(PushToHubMixin):
    """The half of an image processor that is not pixels: calling, its config files and `repr`.

    A subclass defines `__init__` (its settings), `preprocess`, `_family_settings` (what `to_dict` stores
    beside the settings both families have) and `_config_keys` (the keys of that file its `__init__` takes).
    A family has one class per image backend (`_backend`, "torch" or "pil"), listed in `_backend_classes`:
    the same settings and files, the pixels of transformers' torchvision (its default) or PIL processor.
    """

    _config_keys: tuple[str, ...] = ()
    _backend: ClassVar[str] = "torch"
    _backend_classes: ClassVar[dict[str, type[BaseImageProcessor]]] = {}

    @property
    def backend(self) -> str:
        """The image backend as transformers names it: "pil" or "torchvision" (our torch backend)."""
        return "torchvision" if self._backend == "torch" else "pil"

    def with_backend(self, backend: str) -> BaseImageProcessor:
        """This processor (a copy, every setting kept) with the image backend `backend`: "pil" or "torch"."""
        other = copy.copy(self)
        other.__class__ = self._backend_classes[torch_resize.resolve_backend(backend)]
        return other

    def __call__(self, images: ImageInput | Sequence[ImageInput], **kwargs: Any) -> BatchFeature:
        """Same as `preprocess`."""
        return self.preprocess(images, **kwargs)

    def preprocess(self, images: ImageInput | Sequence[ImageInput], **kwargs: Any) -> BatchFeature:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The settings as `preprocessor_config.json` stores them (transformers reads this file), by name."""
        settings = {
            "do_convert_rgb": True,
            "do_normalize": self.do_normalize,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "exif_transpose": self.exif_transpose,
            "image_mean": list(self.image_mean),
            # one name for both backends, the default class's, as transformers 5 writes (and 4.x reads)
            "image_processor_type": self._backend_classes["torch"].__name__,
            "image_std": list(self.image_std),
            "resample": int(self.resample),
            "rescale_factor": self.rescale_factor,
            **self._family_settings(),
        }
        return dict(sorted(settings.items()))

    def _family_settings(self) -> dict[str, Any]:
        """The settings of `to_dict` that only this family has (the target size, the patch budget)."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **kwargs: Any) -> BaseImageProcessor:
        """Build from a `preprocessor_config.json` dictionary; `kwargs` override its values.

        Bookkeeping keys and settings of other transformers versions (`do_convert_rgb`, ...) are ignored;
        a config that turns on a step SigLIP does not have (center crop, padding) raises a `ValueError`.
        """
        steps_on = [key for key in _UNSUPPORTED_STEPS if config.get(key)]
        if steps_on:
            raise ValueError(f"{', '.join(steps_on)} is not part of SigLIP's preprocessing and not supported")
        names = cls._config_keys
        return cls(**{**{k: config[k] for k in names if k in config}, **kwargs})

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | Checkpoint,
        use_fast: bool | None = None,
        backend: str | None = None,
        **kwargs: Any,
    ) -> BaseImageProcessor:
        """Load `preprocessor_config.json` from a directory or hub id (or the `image_processor` entry of the
        `processor_config.json` transformers 5 writes instead).

        `use_fast=True` or `backend="torch"` (transformers' "torchvision") give the class of this family with
        the torch backend (`SiglipImageProcessor`), `use_fast=False` or `backend="pil"` the one with the PIL
        backend (`SiglipImageProcessorPil`); by default, this class. The file does not decide: both backends
        write the same one, as in transformers.
        `revision`, `cache_dir`, `local_files_only` and `token` go to huggingface_hub; other keyword
        arguments override values of the file, e.g. `size={"height": 384, "width": 384}` (SigLIP) or
        `max_num_patches=576` (SigLIP 2).
        """
        chosen = torch_resize.resolve_backend(backend, use_fast)
        if chosen is not None:
            cls = cls._backend_classes[chosen]
        checkpoint = locate(pretrained_model_name_or_path, HubOptions.pop_from(kwargs))
        path = checkpoint.file(PREPROCESSOR_CONFIG_FILE, required=False)
        if path is not None:
            config = read_json(path)
        else:
            path = checkpoint.file(PROCESSOR_CONFIG_FILE, required=False)
            config = read_json(path).get("image_processor") if path is not None else None
            if not isinstance(config, dict):
                raise CheckpointError(
                    f"'{checkpoint}' has no {PREPROCESSOR_CONFIG_FILE} (nor image settings in "
                    f"{PROCESSOR_CONFIG_FILE})"
                )
        try:
            return cls.from_dict(config, **kwargs)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"Invalid image processor config '{path}': {err}") from err

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write `preprocessor_config.json` into `save_directory` (created if needed)."""
        with staged_directory(save_directory) as staging:
            self._write_files(staging)

    def _write_files(self, directory: Path, processor_class: str | None = None) -> None:
        config = self.to_dict()
        if processor_class is not None:
            config["processor_class"] = processor_class
        write_json(directory / PREPROCESSOR_CONFIG_FILE, config)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "image_processor_type")
        return f"{type(self).__name__}({settings})"


def process_images(images: Any, steps: Steps, num_threads: int | None) -> list[np.ndarray]:
    """The pixels of each image of a call (an image, a list or a 4-D batch), decoded, converted, resized and
    normalised by `steps` on a thread pool ((3, H, W) arrays, or what `steps.from_uint8` / `from_float` make);
    the warnings worth giving are given once per kind."""
    items = _as_list(images)
    # Each distinct object is processed once: a lazily opened PIL image listed twice must not be
    # decoded by two threads at the same time.
    first_index: dict[int, int] = {}
    for i, item in enumerate(items):
        first_index.setdefault(id(item), i)
    todo = sorted(set(first_index.values()))
    work = partial(_process_image, steps=steps)
    # each image's torch operations on its own thread: a pool's threads already keep the cores busy, and
    # OpenMP teams of their own would only compete with each other (and with a model's threads)
    threads = min(len(todo), _threads(num_threads)) if len(todo) > 1 else 1
    if threads > 1:
        with ThreadPoolExecutor(threads, initializer=_set_torch_threads_here, initargs=(1,)) as pool:
            done = dict(zip(todo, pool.map(work, [items[i] for i in todo], todo), strict=True))
    else:
        before = _set_torch_threads_here(1)
        try:
            done = {i: work(items[i], i) for i in todo}
        finally:
            _set_torch_threads_here(before)
    results = [done[first_index[id(item)]] for item in items]
    _warn_about([note for _, note in results], stacklevel=4)
    return [p for p, _ in results]


def _threads(num_threads: int | None) -> int:
    """The threads of a call's pool: `num_threads`, else one per usable core (one inside a DataLoader worker,
    whose workers already run in parallel)."""
    if num_threads:
        return num_threads
    return 1 if torch.utils.data.get_worker_info() is not None else usable_cores()


def _set_torch_threads_here(threads: int) -> int:
    """Run torch's CPU operations of the calling thread alone on `threads` threads, and return the number they
    ran on before. Only this thread changes: OpenMP keeps a thread count per thread, which
    `torch.set_num_threads` would also set for every thread started afterwards. A no-op (returning the
    current number) where torch's OpenMP runtime cannot be reached."""
    before = torch.get_num_threads()  # also torch's once-per-thread set-up, which would undo the change
    setter = _omp_set_num_threads()
    if setter is not None and threads != before:
        setter(threads)
    return before


@cache
def _omp_set_num_threads() -> Any:
    """`omp_set_num_threads` of the OpenMP runtime torch's CPU operations use, or None (another runtime, or
    one whose symbols the process does not export: then nothing is changed)."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        return ctypes.CDLL(None).omp_set_num_threads
    except (OSError, AttributeError, TypeError):
        return None


# --- argument checks ----------------------------------------------------------------------------------------
def check_resample(resample: Any) -> Image.Resampling:
    try:
        return Image.Resampling(resample)
    except ValueError:
        names = ", ".join(f"{r.name}={r.value}" for r in Image.Resampling)
        raise ValueError(f"resample must be a PIL filter ({names}), got {resample!r}") from None


def check_stats(values: Any, name: str) -> tuple[float, float, float]:
    if isinstance(values, int | float):
        values = (values,) * 3
    if not isinstance(values, Sequence | np.ndarray) or len(values) != 3:
        raise ValueError(f"{name} must be a number or 3 numbers (one per RGB channel), got {values!r}")
    values = tuple(float(v) for v in values)
    if name == "image_std" and 0.0 in values:
        raise ValueError(f"image_std must not contain 0, got {values}")
    return values


def _as_list(images: Any) -> list[Any]:
    """A flat list of the images of a call: a list stays a list, a 4-D array is split, anything else is one."""
    if isinstance(images, list | tuple) or (
        isinstance(images, np.ndarray | torch.Tensor) and images.ndim == 4
    ):
        if len(images) == 0:
            raise ImageInputError("images is an empty batch: pass at least one image")
        return list(images)
    return [images]


# --- one image ----------------------------------------------------------------------------------------------
def _process_image(image: ImageInput, index: int, steps: Steps) -> tuple[np.ndarray, str | None]:
    """Pixels (3, H, W) of one image, and the name of a problem worth a warning (or None).

    An `ImageInputError` records how its message names the image (`subject`) and the image's file (`path`),
    so that a caller with a better name for it (a command line: the file) can say it instead.
    """
    name, path = f"images[{index}]", None
    if isinstance(image, str | os.PathLike):
        path = os.fspath(image)
        name = f"{name} ('{path}')"
    elif isinstance(image, bytes | bytearray | memoryview):
        name = f"{name} (bytes)"
    try:
        return _pixels_of(image, name, steps)
    except ImageInputError as err:
        err.subject, err.path = name, path
        raise


def _pixels_of(image: ImageInput, name: str, steps: Steps) -> tuple[np.ndarray, str | None]:
    """`_process_image` of an image called `name` in messages."""
    if isinstance(image, str | os.PathLike | bytes | bytearray | memoryview):
        source = image if isinstance(image, str | os.PathLike) else io.BytesIO(image)
        image = open_image(source, name, steps)
        if isinstance(image, torch.Tensor):  # a JPEG's RGB pixels, decoded by libjpeg-turbo
            if steps.backend == "torch":
                return steps.from_tensor(image, name), None
            size = steps.target_size(image.shape[1], image.shape[2], name)
            return steps.from_uint8(_resize_rgb(image.permute(1, 2, 0).numpy(), size, steps.resample)), None
    elif isinstance(image, Image.Image) and steps.exif_transpose:
        image = ImageOps.exif_transpose(image)

    if isinstance(image, Image.Image):
        image, note = pil_to_rgb(image, name)
        _check_not_empty(image.height, image.width, name)
        if steps.backend == "torch":
            return steps.from_tensor(torch_resize.from_pil(image), name), note
        size = steps.target_size(image.height, image.width, name)
        return steps.from_uint8(_resize_rgb(image, size, steps.resample)), note

    if not isinstance(image, np.ndarray | torch.Tensor):
        raise TypeError(
            f"{name} is a {type(image).__name__}; expected a PIL image, array, tensor, path or bytes"
        )
    if steps.backend == "torch":
        pixels = torch_resize.to_rgb(image, name, steps.input_data_format)
        note = "unit_float" if steps.do_rescale and torch_resize.is_unit_float(pixels) else None
        _check_not_empty(pixels.shape[1], pixels.shape[2], name)
        return steps.from_tensor(pixels, name), note
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    note = "unit_float" if steps.do_rescale and _is_unit_float(image) else None
    pixels = _array_to_rgb(image, name, steps.input_data_format)
    _check_not_empty(pixels.shape[0], pixels.shape[1], name)
    size = steps.target_size(pixels.shape[0], pixels.shape[1], name)
    if size is not None:
        pixels = _resize_array(pixels, name, size, steps.resample)
    if pixels.dtype == np.uint8:
        return steps.from_uint8(pixels), note
    return steps.from_float(pixels), note


# (Pillow's limit before a processor raised it, the value it was raised to): see `open_image`
_raised_pillow_limit: tuple[int | None, int] | None = None


def _pillow_limit() -> int | None:
    """Pillow's `Image.MAX_IMAGE_PIXELS` as Pillow or the user set it, not as a processor raised it."""
    if _raised_pillow_limit is not None and _raised_pillow_limit[1] == Image.MAX_IMAGE_PIXELS:
        return _raised_pillow_limit[0]
    return Image.MAX_IMAGE_PIXELS


def open_image(source: str | os.PathLike | io.BytesIO, name: str, steps: Steps) -> Image.Image | torch.Tensor:
    """Decode a whole image file, turning every way it can fail into an `ImageInputError` naming it. HEIC/HEIF
    decodes when the `heif` extra is installed (see `siglip.core.image_utils.register_heif`).

    A PIL image, upright unless `steps.exif_transpose` is False; a JPEG that libjpeg-turbo decodes as Pillow
    would comes as its (3, H, W) uint8 RGB pixels instead (`jpeg.decode`), for the torch backend, and for the
    PIL backend once its compiled resize is loaded (`pil_resize`), which reads them in place."""
    global _raised_pillow_limit
    register_heif()
    limit = _pillow_limit() if steps.max_image_pixels is None else steps.max_image_pixels
    if limit is not None and Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        # Pillow refuses at twice its own limit, inside `Image.open`, before the check below: a limit raised
        # for this processor must raise Pillow's too (in the process that decodes: a worker's own copy). The
        # value before is kept: a processor without a limit of its own still refuses files above it.
        _raised_pillow_limit = (_pillow_limit(), limit)
        Image.MAX_IMAGE_PIXELS = limit
    upright = steps.exif_transpose is not False  # None, the default, turns files upright too
    try:
        with Image.open(source) as image:
            if limit is not None and image.width * image.height > limit:
                pixels = f"{image.width} x {image.height} = {image.width * image.height}"
                raise Image.DecompressionBombError(pixels)
            if steps.reduced_decode and steps.size is not None and image.format in ("JPEG", "MPO"):
                # libjpeg scales by 1/2, 1/4 or 1/8 while decoding; PIL picks the largest factor that keeps
                # both sides >= the request. A square request stays valid if EXIF then turns the image.
                side = max(steps.size)
                image.draft(None, (side, side))
            elif steps.backend == "torch" or pil_resize.kernels() is not None:
                decoded = jpeg.decode(image, upright, padded=steps.backend == "torch")
                if decoded is not None:
                    return decoded
            image.load()  # decode now, so that a truncated file fails here
            if upright:
                ImageOps.exif_transpose(image, in_place=True)
            return image
    except FileNotFoundError:
        raise ImageInputError(f"{name}: no such file") from None
    except UnidentifiedImageError:
        raise ImageInputError(
            heif_missing(source, name) or f"{name} is not an image file Pillow can read"
        ) from None
    except Image.DecompressionBombError as err:  # ours, or Pillow's own at twice its limit: say ours
        pillows = re.search(r"\((\d+) pixels\)", str(err))
        raise ImageInputError(
            f"{name} has {pillows[1] if pillows else err} pixels, more than the limit of {limit}: refused as a "
            "possible decompression bomb; if the file is trusted, raise the limit (--max-image-pixels on the "
            "command line, max_image_pixels of the image processor in Python)"
        ) from None
    except OSError as err:
        if err.errno is not None:  # the file system refused (permission, a folder, I/O error): not the data
            raise ImageInputError(f"{name} cannot be opened: {(err.strerror or str(err)).lower()}") from None
        raise ImageInputError(f"{name} cannot be read (truncated or corrupt file?): {err}") from err
    except (SyntaxError, ValueError) as err:  # truncated or corrupt
        raise ImageInputError(f"{name} cannot be read (truncated or corrupt file?): {err}") from err


def pil_to_rgb(image: Image.Image, name: str) -> tuple[Image.Image, str | None]:
    """RGB version of a PIL image as transformers makes it (alpha over white), except 16-bit grey (scaled)."""
    note = None
    if image.mode in _MODES_16_BIT:
        grey = np.asarray(image).astype(np.uint32)
        image = Image.fromarray(((grey * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    elif image.mode in ("I", "F"):
        low, high = image.getextrema()
        if low < 0 or high > 255 or (image.mode == "F" and 0 < high <= 1):
            note = "clipped"
    try:
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB"), note
        return (image if image.mode == "RGB" else image.convert("RGB")), note
    except ValueError as err:  # a mode PIL cannot convert (e.g. HSV)
        raise ImageInputError(
            f"{name} has mode {image.mode!r}, which cannot be converted to RGB: {err}"
        ) from err


def _is_unit_float(image: np.ndarray) -> bool:
    return (
        np.issubdtype(image.dtype, np.floating) and image.size > 0 and image.min() >= 0 and image.max() <= 1
    )


def _array_to_rgb(image: np.ndarray, name: str, data_format: str | None) -> np.ndarray:
    """(H, W, 3) version of an array image, in its own dtype, as transformers converts arrays."""
    if image.ndim == 2:
        image = image[:, :, None]
    elif image.ndim != 3:
        raise ImageInputError(f"{name} has shape {image.shape}; expected (H, W), (H, W, C) or (C, H, W)")
    if data_format is None:  # transformers' inference: a first axis of 1, 3 or 4 entries holds the channels
        data_format = "channels_first" if image.shape[0] in (1, 3, 4) else "channels_last"
    if data_format == "channels_first":
        image = np.moveaxis(image, 0, -1)
    channels = image.shape[-1]
    if channels == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 3:
        return image
    if channels != 4:
        raise ImageInputError(f"{name} has shape {image.shape}: {channels} channels, expected 1, 3 or 4")
    floating = np.issubdtype(image.dtype, np.floating)
    if floating and image.size and (image.min() < 0 or image.max() > 1):
        raise ImageInputError(f"{name} is a float RGBA image with values outside [0, 1]")
    white = 1.0 if floating else 255  # composite over white with transformers' arithmetic and rounding
    alpha = image[..., 3:4] / white
    composite = alpha * image[..., :3] + (1 - alpha) * white
    return (composite if floating else np.round(composite)).astype(image.dtype)


def _resize_array(
    image: np.ndarray, name: str, size: tuple[int, int], resample: Image.Resampling
) -> np.ndarray:
    """Resize an (H, W, 3) array to `size` (height, width) through a uint8 PIL image, as transformers does.

    Whole numbers 0..255 (any dtype) are resized as they are and stay uint8; floats in [0, 1] are scaled by
    255 and truncated to uint8, resized, and scaled back to float32 [0, 1]. Anything else cannot be an image.
    """
    to_unit = False
    if image.dtype != np.uint8:
        low, high = image.min(), image.max()
        if np.allclose(image, image.astype(int)) and low >= 0 and high <= 255:
            image = image.astype(np.uint8)
        elif low >= 0 and high <= 1:
            image = (image.astype(np.float64) * 255).astype(np.float32).astype(np.uint8)
            to_unit = True
        else:
            raise ImageInputError(
                f"{name} has values from {low} to {high}: expected uint8, whole numbers 0..255 or floats in [0, 1]"
            )
    resized = _resize_rgb(image, size, resample)
    return (resized.astype(np.float64) * (1 / 255)).astype(np.float32) if to_unit else resized


def _resize_rgb(
    image: Image.Image | np.ndarray, size: tuple[int, int] | None, resample: Image.Resampling
) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an RGB PIL image or (H, W, 3) uint8 array, resized to `size` (height, width;
    None: not resized) as Pillow resizes: by the compiled loops of `pil_resize` where they are loaded, else
    by Pillow (the same pixels)."""
    if size is None:
        return np.asarray(image)
    resized = pil_resize.resize(image, size, resample)
    if resized is None:
        image = image if isinstance(image, Image.Image) else Image.fromarray(image)
        resized = np.asarray(image.resize(size[::-1], resample=resample))
    return resized


def _apply_table(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(3, H, W) output of an (H, W, 3) uint8 image: one lookup per pixel in the per-channel table (in the PIL
    backend's compiled loops where they are loaded and the table holds float32, the usual case)."""
    out = np.empty((3, *image.shape[:2]), dtype=table.dtype)
    loops = pil_resize.kernels()
    if loops is not None and table.dtype == np.float32:
        loops.apply_table(image, table, out)
        return out
    # one plane per channel first (a uint8 copy): gathering from contiguous planes is ~1.8x faster than from
    # the interleaved image's strided channels
    planes = np.ascontiguousarray(image.transpose(2, 0, 1))
    for c in range(3):
        # uint8 indices cannot leave the table, so mode="clip" changes nothing but lets numpy write straight
        # into `out`; the default mode ("raise") goes through a buffer, ~5x slower here
        np.take(table[c], planes[c], out=out[c], mode="clip")
    return out


def _check_not_empty(height: int, width: int, name: str) -> None:
    if height == 0 or width == 0:
        raise ImageInputError(f"{name} is empty: {width} x {height} pixels")


_WARNINGS = {
    "unit_float": "float pixel values already in [0, 1] are divided by 255 again because do_rescale=True, which "
    "makes the image nearly uniform; pass do_rescale=False for such images (or uint8 / 0..255 values)",
    "clipped": "32-bit grey pixels (PIL mode I or F) are converted to 8 bits by clipping to 0..255, as "
    "transformers does, but these values use another range; scale them to 0..255 first",
}


def _warn_about(notes: list[str | None], stacklevel: int = 3) -> None:
    """One warning per kind of problem, listing the images it concerns."""
    for kind, message in _WARNINGS.items():
        indices = [i for i, note in enumerate(notes) if note == kind]
        if indices:
            warnings.warn(f"images {indices}: {message}", stacklevel=stacklevel)
