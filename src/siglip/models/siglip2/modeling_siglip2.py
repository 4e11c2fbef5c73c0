"""`transformers.models.siglip2.modeling_siglip2`: the models and the NaFlex patch embeddings."""

from ...core.siglip2.modeling import (
    Siglip2ForImageClassification,
    Siglip2Model,
    Siglip2PreTrainedModel,
    Siglip2TextModel,
    Siglip2VisionEmbeddings,
    Siglip2VisionModel,
)

__all__ = [
    "Siglip2ForImageClassification",
    "Siglip2Model",
    "Siglip2PreTrainedModel",
    "Siglip2TextModel",
    "Siglip2VisionEmbeddings",
    "Siglip2VisionModel",
]
