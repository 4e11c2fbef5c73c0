"""Image and text embeddings: in memory (`embed_images`, `embed_texts`) and for image files on disk.

    from siglip import Embedder
    embedder = Embedder.from_pretrained("google/siglip-base-patch16-224")
    vectors = embedder.embed_images(["cat.jpg", "dog.png"])       # (2, 768) float32, unit length
    query = embedder.embed_texts(["a photo of a cat"])           # (1, 768)
    ranking = (vectors @ query.T).ravel().argsort()[::-1]

Files and folders go through `embed_files`: images are decoded and preprocessed a batch at a time, by
DataLoader worker processes while the model runs (or, by default on a CPU of two cores or fewer, in this
process between batches), and unreadable files are skipped and reported rather than stopping the run
(`siglip.tools.embeddings.writers.embed_to_file` writes them to Parquet or .npy). Every embedding comes from the
model's `encode_images` / `encode_texts`: unit length, float32.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ...core.auto import (
    AutoModel,
    AutoProcessor,
    ImageProcessor,
    Processor,
    TwoTowerModel,
    is_naflex,
)
from ...core.cpu import usable_cores
from ...core.hub import Checkpoint, locate
from ...core.two_tower.image_processing import ImageInput
from ...core.two_tower.torch_resize import resolve_backend
from ...errors import CheckpointError, ImageInputError, UsageError
from .. import zeroshot
from ..inputs.data import Sample, collate, load_sample, load_samples, worker_init_fn
from ..inputs.tar_shards import TarMember
from ..inputs.video import VideoFrame
from ..search.store import FileState
from .calibration import calibration_inputs, check_takes_calibration, read_calibration
from .inference import InferenceMode
from .options import ModelOptions
from .precision import precision_of_dtype

DEFAULT_MODEL = "google/siglip-base-patch16-224"


def default_device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` as a `torch.device` this machine has (None: `default_device()`), else a `UsageError`."""
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(
                f"device {device!r} needs CUDA, which this machine or torch build lacks: use cpu"
            )
        if resolved.index is not None and resolved.index >= count:
            raise UsageError(
                f"device {device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {device!r}: Apple's MPS is not available here: use cpu")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"device {device!r} is not supported: use cpu, cuda, cuda:N or mps")
    return resolved


# --- the model ----------------------------------------------------------------------------------------------
@dataclass
class EmbeddedBatch:
    """The embeddings of one batch of files (or a classifier's probabilities, see `file_batches`), and the
    files of the batch that could not be read."""

    files: list[FileState]
    vectors: np.ndarray  # (len(files), D) float32: unit length embeddings, or one row of outputs per file
    failed: list[tuple[FileState, str]] = field(default_factory=list)  # (file, reason)


class Embedder:
    """A SigLIP model with its processor, turning images and texts into unit-length embeddings (numpy, float32).

    Image and text embeddings live in one space: their dot product is the cosine similarity SigLIP was
    trained on. `name` is how the model was named (an absolute path for a local directory), so that an
    index or output file can name the model that made it.
    """

    def __init__(
        self,
        model: TwoTowerModel,
        processor: Processor,
        name: str = "",
        mode: InferenceMode | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.mode = mode or InferenceMode(precision_of_dtype(model.dtype))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        options: ModelOptions | None = None,
        **option_values: Any,
    ) -> Embedder:
        """Load a bundled model by its short name, a local checkpoint directory, or a hub id, of either
        family (SigLIP, SigLIP 2 fixed-resolution or NaFlex: `AutoModel` reads `config.json`).

        `device` defaults to the GPU when there is one, else the CPU. How the model runs is `options`, or the
        `ModelOptions` of `option_values` (`precision`, `compile`, `reduced_decode`, `max_num_patches`,
        `max_image_pixels`, `image_backend`, `calibration`): precision "auto" is the table of
        `siglip.tools.embeddings.precision` (bf16 on GPUs with bf16 units and CPUs with AMX, fp16 on older
        GPUs, int8 on other x86 CPUs, else fp32); "int8-static" is calibrated on the files `calibration`
        names (`siglip.tools.embeddings.calibration`).
        """
        options = ModelOptions.of(options, **option_values)
        device = resolve_device(device)
        mode = InferenceMode(options.precision_word, options.compile).resolve(device)
        checkpoint = locate(name_or_path)  # once, for the model and its processor
        model = AutoModel.from_pretrained(checkpoint, device=device, dtype=mode.dtype)
        processor = load_processor(checkpoint, options)
        if options.calibration:  # a precision None (an index's, or "auto") is known only now
            check_takes_calibration(mode.precision)
            calibration = read_calibration(options.calibration)
            mode = replace(mode, calibration=calibration_inputs(calibration, processor, model.config))
        model = mode.apply(model)
        if mode.calibration is not None:  # compiled (or compiling on a first call that keeps its own)
            mode = replace(mode, calibration=mode.calibration.without_inputs())
        return cls(model, processor, checkpoint.record_name, mode)

    @property
    def dims(self) -> int:
        """Length of the embeddings."""
        return self.model.config.text_config.projection_size

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def settings(self) -> dict[str, Any]:
        """What, besides the weights, decides the image embeddings: the resolved precision (for int8-static
        with the SHA-256 of its calibration images, `calibration.UNCALIBRATED` without) and the processor's
        `image_settings`. An index and an embedding file record them (see `SearchIndex`)."""
        return {**self._precision_settings("image"), **image_settings(self.processor)}

    @property
    def text_settings(self) -> dict[str, Any]:
        """What, besides the weights, decides the text embeddings: the resolved precision (for int8-static
        with the SHA-256 of its calibration texts). A text embedding file records them."""
        return self._precision_settings("text")

    def _precision_settings(self, side: str) -> dict[str, Any]:
        calibration = self.mode.calibration
        recorded = {} if calibration is None else {"calibration": calibration.recorded[side]}
        return {"precision": self.mode.precision, **recorded}

    def embed_texts(self, texts: str | Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(N, D) embeddings of a text or a list of texts (padded to the model's text length)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self._in_mode(zeroshot.text_embeddings, self.processor.tokenizer, texts, batch_size)

    def class_embeddings(
        self, labels: Sequence[str], templates: Sequence[str], **text_options: bool | None
    ) -> np.ndarray:
        """(C, D) unit-length embeddings of each label, averaged over `templates` (a prompt ensemble).
        `text_options` (`lowercase`, `attention_mask`) are `zeroshot.text_embeddings`'."""
        return self._in_mode(
            functools.partial(zeroshot.class_embeddings, **text_options),
            self.processor.tokenizer,
            labels,
            templates,
        )

    def embed_images(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 32) -> np.ndarray:
        """(N, D) embeddings of an image or a list of images: paths, PIL images, arrays, tensors or bytes.

        An image that cannot be read raises `ImageInputError` naming it; `embed_files` skips such files.
        """
        images = list(images) if isinstance(images, list | tuple) else [images]
        if not images:
            raise ImageInputError("no images to embed: pass at least one")
        chunks = []
        for start in range(0, len(images), batch_size):
            inputs = self.processor.image_processor(images[start : start + batch_size], return_tensors="pt")
            chunks.append(self.embed_inputs(inputs))
        return np.concatenate(chunks)

    def embed_inputs(self, inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
        """(B, D) unit-length embeddings of preprocessed images: the image processor's output for a batch
        (`pixel_values`, plus `pixel_attention_mask` and `spatial_shapes` for NaFlex models)."""
        return self._in_mode(lambda model: model.encode_images(**inputs))

    def embed_token_ids(self, input_ids: torch.Tensor) -> np.ndarray:
        """(B, D) unit-length embeddings of texts already tokenized and padded to the model's text length
        (`fixed_length_inputs`' `input_ids`): `embed_texts` for a caller that keeps the tokenization."""
        return self._in_mode(lambda model: model.encode_texts(input_ids.to(model.device)))

    def _in_mode(self, embed: Callable[..., torch.Tensor], *args: Any) -> np.ndarray:
        """`embed(model, *args)` without autograd, in this embedder's inference mode, as numpy."""
        with torch.inference_mode(), self.mode.autocast(self.device):
            vectors = embed(self.model, *args).cpu().numpy()
        if not np.isfinite(vectors).all():
            raise CheckpointError(
                f"model '{self.name}' gave NaN or infinite embeddings: {_non_finite(self.model)}"
            )
        return vectors

    def embed_files(
        self,
        files: Sequence[FileState | str],
        batch_size: int = 32,
        workers: int | None = None,
        progress: bool | None = None,
    ) -> Iterator[EmbeddedBatch]:
        """Embed image files batch by batch, in order; unreadable files are reported in `failed`, not raised.
        A `TarMember` (a sample of a WebDataset shard, see `siglip.tools.inputs.tar_shards`) is read from its shard,
        a `VideoFrame` (`siglip.tools.inputs.video`) from its video.

        Files are decoded and preprocessed by `workers` DataLoader processes ahead of the model (default:
        `decoding_workers`; 0 decodes in this process). `progress` shows a bar with images/s on stderr (None:
        only when stderr is a terminal).
        """
        yield from file_batches(
            files, self.processor.image_processor, self.embed_inputs, self.dims,
            batch_size=batch_size, workers=workers, progress=progress, device=self.device,
        )  # fmt: skip


def decoding_workers(device: torch.device) -> int:
    """How many DataLoader processes decode image files ahead of a model on `device` by default: one per
    core, at most 8; none for a model on a CPU of two cores or fewer, where decoding each batch in the process
    (the processor's threads over the batch's files) ran faster than workers beside the model's threads,
    whose copies and cores cost the model more than the decoding itself (BENCHMARKS.md)."""
    cores = usable_cores()
    return 0 if device.type == "cpu" and cores <= 2 else min(cores, 8)


def file_batches(
    files: Sequence[FileState | str],
    image_processor: ImageProcessor,
    compute: Callable[[Mapping[str, torch.Tensor]], np.ndarray],
    width: int,
    *,
    device: torch.device,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool | None = None,
    desc: str = "embedding",
) -> Iterator[EmbeddedBatch]:
    """`compute` (preprocessed model inputs -> (B, `width`) rows, run on `device`) over image files, batch by
    batch, in order; unreadable files are reported in `failed`, not raised (see `Embedder.embed_files`)."""
    from tqdm.auto import tqdm

    files = [f if isinstance(f, FileState) else FileState(os.fspath(f), -1, -1) for f in files]
    if not files:
        return
    workers = decoding_workers(device) if workers is None else workers
    batches = math.ceil(len(files) / batch_size)
    workers = min(workers, batches) if batches > 1 else 0  # one batch: nothing to overlap with the model
    loader = DataLoader(
        _ImageFiles(files, image_processor),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=worker_init_fn(),  # workers die with this process, even by kill -9
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,  # keep batches ready so the model never waits
    )
    skipped = 0
    show = _stderr_is_terminal() if progress is None else progress
    with tqdm(total=len(files), unit="img", desc=desc, disable=not show, dynamic_ncols=True) as bar:
        for batch in loader:
            vectors = compute(batch.inputs) if batch.loaded else np.empty((0, width), dtype=np.float32)
            skipped += len(batch.failed)
            bar.update(len(batch.loaded) + len(batch.failed))
            if skipped:
                bar.set_postfix(skipped=skipped)
            yield EmbeddedBatch(
                [files[s.index] for s in batch.loaded],
                vectors,
                [(files[s.index], s.reason) for s in batch.failed],
            )


def _non_finite(model: TwoTowerModel) -> str:
    """Why a model's outputs are not finite: the first weight that is not, or else an overflow."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return f"its weight {name!r} holds NaN or infinite values; the checkpoint is damaged"
    return "its weights are finite, so the computation overflowed: try --precision fp32"


def load_processor(checkpoint: Checkpoint, options: ModelOptions | None = None) -> Processor:
    """The processor of `checkpoint`, its images set by `options` (see `configure_images`)."""
    processor = AutoProcessor.from_pretrained(checkpoint)
    configure_images(processor, checkpoint, options or ModelOptions())
    return processor


def configure_images(processor: Processor, model: object, options: ModelOptions) -> None:
    """Set the image options of the tools (see `ModelOptions`) on a loaded processor, refusing those its model
    family lacks; `model` names the checkpoint in the errors.

    `image_backend`: "pil" (transformers' PIL processors) or "torch" (transformers 5's torchvision
    processors, reproduced without torchvision); None: the processor as loaded. `reduced_decode` (fixed-size
    models): decode JPEG files at a reduced scale when they are at least twice the model's image size (see
    `SiglipImageProcessor`). `max_num_patches` (NaFlex models): the patch budget of each image, default the
    checkpoint's (256 for the released ones; more patches, more detail and time). `max_image_pixels`: image
    files with more pixels are refused as possible decompression bombs (default: Pillow's `MAX_IMAGE_PIXELS`,
    about 89 million).
    """
    if options.image_backend is not None:
        processor.image_processor = processor.image_processor.with_backend(options.image_backend)
    images = processor.image_processor
    naflex = is_naflex(images)
    if options.max_num_patches is not None:
        if not naflex:
            raise UsageError(
                f"--max-num-patches applies to SigLIP 2 NaFlex models; '{model}' resizes every image to "
                f"{images.size['height']}x{images.size['width']}"
            )
        images.max_num_patches = options.max_num_patches
    if options.reduced_decode:
        if naflex:
            raise UsageError(
                f"--reduced-decode applies to fixed-size models; '{model}' is a NaFlex model, which resizes each "
                "image to its own patch grid"
            )
        images.reduced_decode = True
    if options.max_image_pixels is not None:
        images.max_image_pixels = options.max_image_pixels


def patch_budget(processor: Processor) -> int | None:
    """The patches per image of a NaFlex model's processor (see `configure_images`); None for fixed-size ones."""
    images = processor.image_processor
    return images.max_num_patches if is_naflex(images) else None


def image_settings(processor: Processor) -> dict[str, Any]:
    """The processor's options that change the pixels of an image (see `configure_images`): the patch budget
    of a NaFlex model, whether a fixed-size model decodes JPEG files reduced (each None where the model
    family lacks it), and the image backend."""
    images = processor.image_processor
    return {
        "max_num_patches": patch_budget(processor),
        "reduced_decode": None if is_naflex(images) else images.reduced_decode,
        "image_backend": resolve_backend(images.backend),
    }


def _stderr_is_terminal() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()


class _ImageFiles(Dataset):
    """Image files decoded and preprocessed, or the reason each cannot be used (in DataLoader workers, or in
    this process: a batch of files at a time, `load_samples`)."""

    def __init__(self, files: list[FileState], processor: ImageProcessor) -> None:
        self.files = files
        self.processor = processor

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        file = self.files[index]
        if isinstance(file, TarMember | VideoFrame):  # a sample of a WebDataset shard, a frame of a video
            return file.load(self.processor, index=index)
        return load_sample(self.processor, file.path, file.path, index=index)

    def __getitems__(self, indices: list[int]) -> list[Sample]:
        """The samples of a batch (what the DataLoader asks for): files in one call of the processor, which
        decodes them on a thread per core; shard samples and video frames one by one."""
        files = [self.files[i] for i in indices]
        if any(isinstance(file, TarMember | VideoFrame) for file in files):
            return [self[i] for i in indices]
        return load_samples(self.processor, [file.path for file in files], indices)


@lru_cache(maxsize=1)
def load_embedder(
    name: str = DEFAULT_MODEL, device: str | None = None, options: ModelOptions | None = None
) -> Embedder:
    """`Embedder.from_pretrained(name, device, options)`, keeping the last model loaded for the next call."""
    return Embedder.from_pretrained(name, device, options)


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
