"""SigLIP in PyTorch: transformers-compatible models and checkpoints, preprocessing, training and tools.

Two halves, each importable on its own:
- `siglip.core`: the transformers SigLIP API (configs, models, tokenizer, image processor, processor,
  checkpoint files, the sigmoid loss). It knows nothing of the tools.
- `siglip.tools`: what is built on it (embeddings, search index, zero-shot pipeline, evaluation, inference
  modes, training, the `siglip` command).
Every error raised on purpose is a `siglip.errors.SiglipError`.

The names below are loaded on first use (PEP 562), so `import siglip` (or `import siglip.core`) loads no tool
module: `siglip.SiglipModel` imports the model code only, `siglip.SearchIndex` the search index.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "AutoConfig",
            "AutoImageProcessor",
            "AutoModel",
            "AutoModelForImageClassification",
            "AutoModelForZeroShotImageClassification",
            "AutoProcessor",
            "AutoTokenizer",
        ),
        "siglip.core.auto",
    ),
    "BitsAndBytesConfig": "siglip.core.quantization",
    **dict.fromkeys(("ConversionError", "convert", "to_open_clip"), "siglip.core.convert"),
    **dict.fromkeys(("siglip_loss", "sigmoid_loss"), "siglip.core.loss"),
    **dict.fromkeys(
        ("SiglipConfig", "SiglipTextConfig", "SiglipVisionConfig"), "siglip.core.siglip.configuration"
    ),
    **dict.fromkeys(
        ("SiglipImageProcessor", "SiglipImageProcessorFast", "SiglipImageProcessorPil"),
        "siglip.core.siglip.image_processing",
    ),
    **dict.fromkeys(
        ("SiglipForImageClassification", "SiglipModel", "SiglipPreTrainedModel", "SiglipTextModel"),
        "siglip.core.siglip.modeling",
    ),
    "SiglipVisionModel": "siglip.core.siglip.modeling",
    "SiglipProcessor": "siglip.core.siglip.processing",
    **dict.fromkeys(
        ("Siglip2Config", "Siglip2TextConfig", "Siglip2VisionConfig"), "siglip.core.siglip2.configuration"
    ),
    **dict.fromkeys(
        ("Siglip2ImageProcessor", "Siglip2ImageProcessorFast", "Siglip2ImageProcessorPil"),
        "siglip.core.siglip2.image_processing",
    ),
    **dict.fromkeys(
        ("Siglip2ForImageClassification", "Siglip2Model", "Siglip2PreTrainedModel", "Siglip2TextModel"),
        "siglip.core.siglip2.modeling",
    ),
    "Siglip2VisionModel": "siglip.core.siglip2.modeling",
    "Siglip2Processor": "siglip.core.siglip2.processing",
    "SiglipTokenizer": "siglip.core.two_tower.sentencepiece",
    **dict.fromkeys(("GemmaTokenizer", "Siglip2Tokenizer"), "siglip.core.two_tower.gemma"),
    "load_tokenizer": "siglip.core.two_tower.processing",
    **dict.fromkeys(("CheckpointError", "ImageInputError", "OfflineError", "SiglipError"), "siglip.errors"),
    **dict.fromkeys(("Embedder", "embed_images", "embed_texts"), "siglip.tools.embeddings.embedder"),
    "ModelOptions": "siglip.tools.embeddings.options",
    "embed_to_file": "siglip.tools.embeddings.writers",
    **dict.fromkeys(("evaluate_retrieval", "evaluate_zeroshot"), "siglip.tools.evaluation"),
    "find_images": "siglip.tools.inputs.files",
    **dict.fromkeys(("Hit", "SearchIndex"), "siglip.tools.search.index"),
    **dict.fromkeys(("ZeroShotImageClassificationPipeline", "pipeline"), "siglip.tools.pipelines"),
    # transformers' training loop, which fine-tunes our models as they are: named here so that a script that
    # imports it beside the models ports by changing one import (it needs transformers installed)
    **dict.fromkeys(("Trainer", "TrainingArguments"), "transformers"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'siglip' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as err:
        if err.name != "transformers":
            raise
        raise ImportError(
            f"siglip.{name} is transformers' {name}, which runs siglip's models as they are: pip install "
            "transformers"
        ) from None
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
