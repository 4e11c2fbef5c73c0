"""`SiglipProcessor`: the tokenizer and `SiglipImageProcessor` behind one call, padding text the way SigLIP
needs (the call contract is `TwoTowerProcessor`'s, shared with SigLIP 2)."""

from __future__ import annotations

from typing import ClassVar

from ..two_tower.processing import Tokenizer, TwoTowerProcessor
from .image_processing import SiglipImageProcessor

__all__ = ["SiglipProcessor"]


class SiglipProcessor(TwoTowerProcessor):
    """A tokenizer and a `SiglipImageProcessor` as one preprocessing step for `SiglipModel`.

    The tokenizer is a `SiglipTokenizer` (SigLIP 1) or a `GemmaTokenizer` (SigLIP 2 fixed-resolution
    checkpoints, which load into `SiglipModel` too).

    `processor(text=..., images=...)` returns a `BatchFeature` with `input_ids` (plus `attention_mask` when
    the tokenizer's `model_input_names` lists it; released checkpoints do not) and `pixel_values`, ready for
    `model(**inputs)`. Text is padded to `max_length` by default: see `__call__`.
    """

    image_processor_class: ClassVar[type] = SiglipImageProcessor

    def __init__(self, image_processor: SiglipImageProcessor, tokenizer: Tokenizer) -> None:
        super().__init__(image_processor, tokenizer)
