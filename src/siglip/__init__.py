"""SigLIP in PyTorch: transformers-compatible models and checkpoints, preprocessing, training and tools.

Two halves, each importable on its own:
- `siglip.core`: the transformers SigLIP API (configs, models, tokenizer, image processor, processor,
  checkpoint files, the sigmoid loss). It knows nothing of the tools.
- `siglip.tools`: what is built on it (embeddings, search index, zero-shot pipeline, evaluation, inference
  modes, training, the `siglip` command).
Every error raised on purpose is a `siglip.errors.SiglipError`.
"""

from .core.auto import AutoConfig, AutoModel, AutoProcessor
from .core.convert import ConversionError, convert, to_open_clip
from .core.loss import siglip_loss, sigmoid_loss
from .core.siglip.configuration import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from .core.siglip.image_processing import SiglipImageProcessor
from .core.siglip.modeling import (
    SiglipForImageClassification,
    SiglipModel,
    SiglipPreTrainedModel,
    SiglipTextModel,
    SiglipVisionModel,
)
from .core.siglip.processing import SiglipProcessor
from .core.siglip.tokenization import SiglipTokenizer
from .core.siglip2.configuration import Siglip2Config, Siglip2TextConfig, Siglip2VisionConfig
from .core.siglip2.image_processing import Siglip2ImageProcessor
from .core.siglip2.modeling import (
    Siglip2ForImageClassification,
    Siglip2Model,
    Siglip2PreTrainedModel,
    Siglip2TextModel,
    Siglip2VisionModel,
)
from .core.siglip2.processing import Siglip2Processor
from .core.siglip2.tokenization import GemmaTokenizer, Siglip2Tokenizer
from .core.tokenizers import load_tokenizer
from .errors import CheckpointError, ImageInputError, OfflineError, SiglipError
from .tools.embedder import Embedder, embed_images, embed_texts
from .tools.embedding_files import embed_to_file
from .tools.evaluation import evaluate_retrieval, evaluate_zeroshot
from .tools.files import find_images
from .tools.index import Hit, SearchIndex
from .tools.pipelines import ZeroShotImageClassificationPipeline, pipeline

__version__ = "0.1.0"

__all__ = [
    "AutoConfig",
    "AutoModel",
    "AutoProcessor",
    "CheckpointError",
    "ConversionError",
    "Embedder",
    "GemmaTokenizer",
    "Hit",
    "ImageInputError",
    "OfflineError",
    "SearchIndex",
    "Siglip2Config",
    "Siglip2ForImageClassification",
    "Siglip2ImageProcessor",
    "Siglip2Model",
    "Siglip2PreTrainedModel",
    "Siglip2Processor",
    "Siglip2TextConfig",
    "Siglip2TextModel",
    "Siglip2Tokenizer",
    "Siglip2VisionConfig",
    "Siglip2VisionModel",
    "SiglipConfig",
    "SiglipError",
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
    "load_tokenizer",
    "pipeline",
    "siglip_loss",
    "sigmoid_loss",
    "to_open_clip",
]
