"""SigLIP in PyTorch: transformers-compatible models and checkpoints, preprocessing, training and tools."""

from .configuration import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from .embeddings import Embedder, embed_images, embed_texts, embed_to_file, find_images
from .evaluation import evaluate_retrieval, evaluate_zeroshot
from .hub import CheckpointError, OfflineError
from .image_processing import ImageInputError, SiglipImageProcessor
from .index import Hit, SearchIndex
from .loss import siglip_loss, sigmoid_loss
from .modeling import (
    SiglipForImageClassification,
    SiglipModel,
    SiglipPreTrainedModel,
    SiglipTextModel,
    SiglipVisionModel,
)
from .pipelines import ZeroShotImageClassificationPipeline, pipeline
from .processing import SiglipProcessor
from .tokenization import SiglipTokenizer

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
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
    "embed_images",
    "embed_texts",
    "embed_to_file",
    "evaluate_retrieval",
    "evaluate_zeroshot",
    "find_images",
    "pipeline",
    "siglip_loss",
    "sigmoid_loss",
]
