"""`Siglip2Processor`: a tokenizer and `Siglip2ImageProcessor` behind one call, as transformers' processor.

It is `TwoTowerProcessor`, as `SiglipProcessor` is (the same call contract: text padded to `max_length` and
truncated by default, images through the image processor, `return_tensors="pt"` by default), with the NaFlex
image processor, transformers' text length default of 64, and the checkpoint's tokenizer (`load_tokenizer`: a `Siglip2Tokenizer` for the
SigLIP 2 checkpoints).

`max_num_patches` (and `patch_size`) default to the image processor's own settings (the checkpoint's
`preprocessor_config.json`); pass `max_num_patches=...` to the call for another budget.
"""

from __future__ import annotations

from typing import ClassVar

from ..two_tower.processing import Tokenizer, TwoTowerProcessor
from .image_processing import Siglip2ImageProcessor

__all__ = ["Siglip2Processor"]


class Siglip2Processor(TwoTowerProcessor):
    """A tokenizer and a `Siglip2ImageProcessor` as one preprocessing step for `Siglip2Model`.

    `processor(text=..., images=...)` returns a `BatchFeature` with `input_ids` (plus `attention_mask` when
    the tokenizer lists it) and `pixel_values`, `pixel_attention_mask`, `spatial_shapes`, ready for
    `model(**inputs)`. Text is padded and truncated to 64 tokens unless the call says otherwise.
    """

    image_processor_class: ClassVar[type] = Siglip2ImageProcessor
    default_max_length: ClassVar[int | None] = 64

    def __init__(self, image_processor: Siglip2ImageProcessor, tokenizer: Tokenizer) -> None:
        super().__init__(image_processor, tokenizer)
