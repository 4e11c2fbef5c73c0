"""`transformers.models.siglip2`: the SigLIP 2 (NaFlex) family's public classes."""

from .configuration_siglip2 import Siglip2Config, Siglip2TextConfig, Siglip2VisionConfig
from .image_processing_pil_siglip2 import Siglip2ImageProcessorPil
from .image_processing_siglip2 import Siglip2ImageProcessor
from .modeling_siglip2 import (
    Siglip2ForImageClassification,
    Siglip2Model,
    Siglip2PreTrainedModel,
    Siglip2TextModel,
    Siglip2VisionModel,
)
from .processing_siglip2 import Siglip2Processor

__all__ = [
    "Siglip2Config",
    "Siglip2ForImageClassification",
    "Siglip2ImageProcessor",
    "Siglip2ImageProcessorPil",
    "Siglip2Model",
    "Siglip2PreTrainedModel",
    "Siglip2Processor",
    "Siglip2TextConfig",
    "Siglip2TextModel",
    "Siglip2VisionConfig",
    "Siglip2VisionModel",
]
