"""SigLIP in PyTorch: transformers-compatible models and checkpoints, preprocessing, training and tools."""

from .core.configuration import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from .core.convert import ConversionError, convert, to_open_clip
from .core.hub import CheckpointError, OfflineError
from .core.image_processing import ImageInputError, SiglipImageProcessor
from .core.loss import siglip_loss, sigmoid_loss
from .core.modeling import (
    SiglipForImageClassification,
    SiglipModel,
    SiglipPreTrainedModel,
    SiglipTextModel,
    SiglipVisionModel,
)
from .core.processing import SiglipProcessor
from .core.tokenization import SiglipTokenizer
from .tools.embedder import Embedder, embed_images, embed_texts, embed_to_file, find_images
from .tools.evaluation import evaluate_retrieval, evaluate_zeroshot
from .tools.index import Hit, SearchIndex
from .tools.pipelines import ZeroShotImageClassificationPipeline, pipeline

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConversionError",
    "Embedder",
    "Hit",
    "ImageInputError",
    "OfflineError",
    "SearchIndex",
    "SiglipConfig",
    "SiglipForImageClassification",
    "SiglipImageProcessor",
    "SiglipModel",
    "SiglipPreTrainedModel",
    "SiglipProcessor",
    "SiglipTextConfig",
    "SiglipTextModel",
    "SiglipTokenizer",
    "SiglipVisionConfig",
    "SiglipVisionModel",
    "ZeroShotImageClassificationPipeline",
    "convert",
    "embed_images",
    "embed_texts",
    "embed_to_file",
    "evaluate_retrieval",
    "evaluate_zeroshot",
    "find_images",
    "pipeline",
    "siglip_loss",
    "sigmoid_loss",
    "to_open_clip",
]
