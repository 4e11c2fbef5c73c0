"""`Siglip2Processor`: a tokenizer and `Siglip2ImageProcessor` behind one call, as transformers' processor.

It is `SiglipProcessor` (the same call contract: text padded to `max_length` and truncated by default, images
through the image processor, `return_tensors="pt"` by default) with the NaFlex image processor, transformers'
text length default of 64, and any tokenizer that has our tokenizer API (`__call__` with `padding`,
`truncation`, `max_length`, `return_tensors`; `decode`; `batch_decode`; `model_input_names`): the SigLIP 2
checkpoints ship a Gemma tokenizer.

`max_num_patches` (and `patch_size`) default to the image processor's own settings (the checkpoint's
`preprocessor_config.json`); pass `max_num_patches=...` to the call for another budget.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..hub import Checkpoint
from ..siglip.processing import SiglipProcessor
from .image_processing import Siglip2ImageProcessor

__all__ = ["Siglip2Processor"]


class Siglip2Processor(SiglipProcessor):
    """A tokenizer and a `Siglip2ImageProcessor` as one preprocessing step for `Siglip2Model`.

    `processor(text=..., images=...)` returns a `BatchFeature` with `input_ids` (plus `attention_mask` when
    the tokenizer lists it) and `pixel_values`, `pixel_attention_mask`, `spatial_shapes`, ready for
    `model(**inputs)`. Text is padded and truncated to 64 tokens unless the call says otherwise.
    """

    image_processor_class: ClassVar[type] = Siglip2ImageProcessor
    tokenizer_description: ClassVar[str] = "a tokenizer (callable, with decode and batch_decode)"
    default_max_length: ClassVar[int | None] = 64

    def __init__(self, image_processor: Siglip2ImageProcessor, tokenizer: Any) -> None:
        super().__init__(image_processor, tokenizer)

    @classmethod
    def _accepts_tokenizer(cls, tokenizer: Any) -> bool:
        return callable(tokenizer) and all(
            callable(getattr(tokenizer, name, None)) for name in ("decode", "batch_decode")
        )

    @classmethod
    def _load_tokenizer(cls, checkpoint: Checkpoint) -> Any:
        """The checkpoint's tokenizer, by the loader that picks the class from its files
        (`siglip.core.tokenizers.load_tokenizer`, Gemma and SentencePiece) when present."""
        try:
            from ..tokenizers import load_tokenizer
        except (
            ImportError
        ):  # LEAD: until core/tokenizers lands, only SentencePiece (spiece.model) checkpoints
            return super()._load_tokenizer(checkpoint)
        return load_tokenizer(checkpoint)
