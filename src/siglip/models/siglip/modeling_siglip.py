"""`transformers.models.siglip.modeling_siglip`: the models, and the building blocks that vision-language
models built on a SigLIP tower import by name (encoder layers, attention, MLP, pooling head)."""

from ...core.siglip.modeling import (
    SiglipForImageClassification,
    SiglipModel,
    SiglipPreTrainedModel,
    SiglipTextModel,
    SiglipVisionEmbeddings,
    SiglipVisionModel,
)
from ...core.two_tower.modeling import (
    SiglipAttention,
    SiglipEncoder,
    SiglipEncoderLayer,
    SiglipMLP,
    SiglipMultiheadAttentionPoolingHead,
    SiglipTextEmbeddings,
)

__all__ = [
    "SiglipAttention",
    "SiglipEncoder",
    "SiglipEncoderLayer",
    "SiglipForImageClassification",
    "SiglipMLP",
    "SiglipModel",
    "SiglipMultiheadAttentionPoolingHead",
    "SiglipPreTrainedModel",
    "SiglipTextEmbeddings",
    "SiglipTextModel",
    "SiglipVisionEmbeddings",
    "SiglipVisionModel",
]
