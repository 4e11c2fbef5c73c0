"""`transformers.models.siglip`: the SigLIP family's public classes."""

from .configuration_siglip import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from .image_processing_pil_siglip import SiglipImageProcessorPil
from .image_processing_siglip import SiglipImageProcessor
from .modeling_siglip import (
    SiglipForImageClassification,
    SiglipModel,
    SiglipPreTrainedModel,
    SiglipTextModel,
    SiglipVisionModel,
)
from .processing_siglip import SiglipProcessor
from .tokenization_siglip import SiglipTokenizer

__all__ = [
    "SiglipConfig",
    "SiglipForImageClassification",
    "SiglipImageProcessor",
    "SiglipImageProcessorPil",
    "SiglipModel",
    "SiglipPreTrainedModel",
    "SiglipProcessor",
    "SiglipTextConfig",
    "SiglipTextModel",
    "SiglipTokenizer",
    "SiglipVisionConfig",
    "SiglipVisionModel",
]
