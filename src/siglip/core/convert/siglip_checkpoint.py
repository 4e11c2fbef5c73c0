"""`convert`: a source checkpoint in, a checkpoint folder out that `siglip` and transformers load (config,
weights, image processor config, and the source's tokenizer files)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..siglip.configuration import SiglipVisionConfig
from ..siglip.image_processing import SiglipImageProcessor
from ..siglip2.configuration import Siglip2Config
from ..siglip2.image_processing import Siglip2ImageProcessor
from . import open_clip
from .architecture import MODEL_CLASSES, Architecture, Config, convert_source
from .output import check_new, staged_output, tokenizer_files
from .sources import read_source


def convert(src: str | os.PathLike, to: str | os.PathLike, arch: str | None = None) -> Architecture:
    """Convert an open_clip, timm or big_vision checkpoint at `src` into a siglip/transformers folder `to`.

    Args:
        src: a weights file (`.bin`, `.pt`, `.pth`, `.safetensors`, `.npz`) or a folder holding one with its
            config (`open_clip_config.json`, or timm's `config.json`).
        to: the output folder; it must not exist or be empty. It receives `config.json`, `model.safetensors`,
            `preprocessor_config.json` and the source's tokenizer files, if it has any.
        arch: overrides the detected architecture: a family (`open_clip`, `timm`, `big_vision`), an open_clip
            SigLIP configuration name (`ViT-B-16-SigLIP`) or a timm tower name (`vit_base_patch16_siglip_224`).

    Returns:
        The architecture converted, with notes (tolerances, tensors dropped, tokenizer files to add).

    Raises:
        ConversionError: the source cannot be read or converted; the message names the file and the tensor.
    """
    target = Path(to)
    check_new(target)
    source = read_source(Path(src), arch)
    architecture, converted = convert_source(source, arch)
    config = architecture.config
    tokenizer = tokenizer_files(source.folder)
    if not isinstance(config, SiglipVisionConfig) and not tokenizer:
        vocab = config.text_config.vocab_size
        wanted = open_clip.TOKENIZERS.get(vocab, f"a tokenizer with a vocabulary of {vocab}")
        if isinstance(config, Siglip2Config) and vocab == 256000:  # NaFlex: released with Siglip2Tokenizer
            wanted = "the tokenizer files of google/siglip2-base-patch16-naflex (a Siglip2Tokenizer)"
        architecture.notes.append(f"the source carries no tokenizer: add to '{target}' {wanted}")
    with staged_output(target) as staging:
        with torch.device("meta"):
            model = MODEL_CLASSES[type(config)](config)
        model.load_state_dict(converted.tensors, strict=True, assign=True)
        model.save_pretrained(staging)
        _image_processor(config).save_pretrained(staging)
        for file in tokenizer:
            shutil.copyfile(file, staging / file.name)
    return architecture


def _image_processor(config: Config) -> SiglipImageProcessor | Siglip2ImageProcessor:
    if isinstance(config, Siglip2Config):  # 256 patches per image, as the released NaFlex processors
        return Siglip2ImageProcessor(patch_size=config.vision_config.patch_size)
    vision = config if isinstance(config, SiglipVisionConfig) else config.vision_config
    return SiglipImageProcessor(size={"height": vision.image_size, "width": vision.image_size})
