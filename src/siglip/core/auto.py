"""One way in: the model family of a checkpoint, read from its `config.json`, picks every class.

    from siglip import AutoModel, AutoProcessor
    model = AutoModel.from_pretrained("google/siglip2-base-patch16-naflex")    # a Siglip2Model
    processor = AutoProcessor.from_pretrained("google/siglip2-base-patch16-naflex")

| `model_type` | family | model, processor |
|---|---|---|
| "siglip" | SigLIP, and SigLIP 2 fixed-resolution checkpoints (a Gemma tokenizer) | SiglipModel, SiglipProcessor |
| "siglip2" | SigLIP 2 NaFlex (native aspect ratio, a variable number of patches) | Siglip2Model, Siglip2Processor |

Every tool loads through these, so a checkpoint of either family works everywhere with no flag. The names are
transformers': `AutoConfig`, `AutoModel` (a vision-tower checkpoint gives the vision model, as there),
`AutoModelForZeroShotImageClassification` (the two-tower model), `AutoModelForImageClassification`,
`AutoProcessor`, `AutoTokenizer` and `AutoImageProcessor`, each taking the keyword arguments of the class it
picks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError
from .config import CONFIG_DTYPE_OPTIONS, PretrainedConfig
from .hub import CONFIG_NAME, MODEL_LOADING_OPTIONS, Checkpoint, HubOptions, locate, read_json
from .pretrained import PreTrainedModel
from .siglip.configuration import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from .siglip.image_processing import SiglipImageProcessor
from .siglip.modeling import SiglipForImageClassification, SiglipModel, SiglipVisionModel
from .siglip.processing import SiglipProcessor
from .siglip2.configuration import Siglip2Config, Siglip2TextConfig, Siglip2VisionConfig
from .siglip2.image_processing import Siglip2ImageProcessor
from .siglip2.modeling import Siglip2ForImageClassification, Siglip2Model, Siglip2VisionModel
from .siglip2.processing import Siglip2Processor
from .two_tower.image_processing import PREPROCESSOR_CONFIG_FILE
from .two_tower.processing import TwoTowerProcessor, load_tokenizer


@dataclass(frozen=True)
class Family:
    """The classes of one model family."""

    config: type[PretrainedConfig]
    model: type[PreTrainedModel]
    processor: type
    classifier: type[PreTrainedModel]
    image_processor: type
    vision_config: type[PretrainedConfig]
    vision_model: type[PreTrainedModel]
    text_config: type[PretrainedConfig]


# What the tools take: a two-tower model and its processor, of any family.
TwoTowerModel = SiglipModel | Siglip2Model
Processor = TwoTowerProcessor  # SiglipProcessor or Siglip2Processor
ImageProcessor = (
    SiglipImageProcessor | Siglip2ImageProcessor
)  # one image in, a BatchFeature of model inputs out

FAMILIES: dict[str, Family] = {
    "siglip": Family(
        SiglipConfig, SiglipModel, SiglipProcessor, SiglipForImageClassification, SiglipImageProcessor,
        SiglipVisionConfig, SiglipVisionModel, SiglipTextConfig,
    ),
    "siglip2": Family(
        Siglip2Config, Siglip2Model, Siglip2Processor, Siglip2ForImageClassification, Siglip2ImageProcessor,
        Siglip2VisionConfig, Siglip2VisionModel, Siglip2TextConfig,
    ),
}  # fmt: skip
# model_type of a tower's own config.json -> (family, "vision" or "text")
TOWER_TYPES = {
    "siglip_vision_model": ("siglip", "vision"),
    "siglip_text_model": ("siglip", "text"),
    "siglip2_vision_model": ("siglip2", "vision"),
    "siglip2_text_model": ("siglip2", "text"),
}


def family_of(pretrained_model_name_or_path: str | os.PathLike | Checkpoint, **kwargs: Any) -> Family:
    """The family of a checkpoint, by the `model_type` of its `config.json`; a folder of processor files
    alone (no `config.json`) by the `image_processor_type` of its `preprocessor_config.json`."""
    checkpoint = locate(pretrained_model_name_or_path, HubOptions.pop_from(kwargs))
    path = checkpoint.file(CONFIG_NAME, required=False)
    if path is None:
        preprocessor = checkpoint.file(PREPROCESSOR_CONFIG_FILE, required=False)
        kind = read_json(preprocessor).get("image_processor_type", "") if preprocessor is not None else ""
        return FAMILIES["siglip2" if kind.startswith("Siglip2") else "siglip"]
    return family_of_config(read_json(path), path)


def family_of_config(config: dict[str, Any], source: str | os.PathLike) -> Family:
    """The family of a `config.json` dictionary read from `source` (a tower's own config included)."""
    model_type = config.get("model_type")
    if model_type in TOWER_TYPES:
        return FAMILIES[TOWER_TYPES[model_type][0]]
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"'{source}' has model_type {model_type!r}; siglip loads {', '.join(map(repr, FAMILIES))}"
        )
    return FAMILIES[model_type]


def is_naflex(obj: PretrainedConfig | PreTrainedModel | TwoTowerProcessor | ImageProcessor) -> bool:
    """Whether a config, model, processor or image processor (a vision tower's, a classifier's included) is of
    the SigLIP 2 NaFlex family ("siglip2"): images at their own aspect ratio within a patch budget, where the
    other family resizes every image to one `image_size`."""
    naflex = FAMILIES["siglip2"]
    classes = (naflex.config, naflex.vision_config, naflex.model, naflex.vision_model, naflex.classifier,
               naflex.processor, naflex.image_processor)  # fmt: skip
    return isinstance(obj, classes)


def _tower_of(checkpoint: Checkpoint) -> str | None:
    """ "vision" or "text" when the checkpoint's `config.json` is a tower's own, else None."""
    path = checkpoint.file(CONFIG_NAME, required=False)
    model_type = read_json(path).get("model_type") if path is not None else None
    return TOWER_TYPES[model_type][1] if model_type in TOWER_TYPES else None


class AutoConfig:
    """`AutoConfig.from_pretrained(name)` / `from_json_file(path)`: the config class of the family."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike | Checkpoint, **kwargs: Any) -> Any:
        options = HubOptions.pop_from(kwargs, keep=CONFIG_DTYPE_OPTIONS)
        checkpoint = locate(pretrained_model_name_or_path, options)
        family, tower = family_of(checkpoint), _tower_of(checkpoint)
        config_class = {None: family.config, "vision": family.vision_config, "text": family.text_config}[
            tower
        ]
        return config_class.from_pretrained(checkpoint, **kwargs)

    @staticmethod
    def from_json_file(path: str | os.PathLike) -> Any:
        config = read_json(path)
        family = family_of_config(config, path)
        tower = TOWER_TYPES.get(config.get("model_type"), (None, None))[1]
        config_class = {None: family.config, "vision": family.vision_config, "text": family.text_config}[
            tower
        ]
        return config_class.from_dict(config)


class AutoModel:
    """`AutoModel.from_pretrained(name, **kwargs)`: the two-tower model of the checkpoint's family (the vision
    model for a vision tower's checkpoint, as transformers), loaded with that class's `from_pretrained` (same
    keyword arguments); `from_config(config)` builds one."""

    @staticmethod
    def _model_class(family: Family, tower: str | None) -> type[PreTrainedModel]:
        if tower == "text":
            raise CheckpointError(
                "AutoModel does not load a text tower's own checkpoint (nor does transformers): use "
                f"{family.model.__name__.removesuffix('Model')}TextModel.from_pretrained"
            )
        return family.vision_model if tower == "vision" else family.model

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike | Checkpoint, **kwargs: Any
    ) -> Any:
        options = HubOptions.pop_from(kwargs, keep=MODEL_LOADING_OPTIONS)
        checkpoint = locate(pretrained_model_name_or_path, options)
        model_class = cls._model_class(family_of(checkpoint), _tower_of(checkpoint))
        return model_class.from_pretrained(checkpoint, **kwargs)

    @staticmethod
    def from_config(config: PretrainedConfig) -> Any:
        for family in FAMILIES.values():
            if isinstance(config, family.config):
                return family.model(config)
            if isinstance(config, family.vision_config):
                return family.vision_model(config)
        raise TypeError(f"no model family takes a {type(config).__name__}")


class AutoModelForZeroShotImageClassification(AutoModel):
    """transformers' name for the two-tower model of zero-shot classification (`SiglipModel`, `Siglip2Model`)."""

    @staticmethod
    def _model_class(family: Family, tower: str | None) -> type[PreTrainedModel]:
        if tower is not None:
            raise CheckpointError(
                f"a {tower} tower's checkpoint cannot classify images zero-shot: it has one tower"
            )
        return family.model

    @staticmethod
    def from_config(config: PretrainedConfig) -> Any:
        return _family_of_instance(config).model(config)


class AutoModelForImageClassification(AutoModel):
    """`SiglipForImageClassification` / `Siglip2ForImageClassification` of the checkpoint's family. From a
    two-tower checkpoint, the vision tower is loaded and the classifier starts fresh (pass `num_labels=...`)."""

    @staticmethod
    def _model_class(family: Family, tower: str | None) -> type[PreTrainedModel]:
        if tower is not None:
            raise CheckpointError(
                f"a {tower} tower's own checkpoint has no full config for {family.classifier.__name__}; load the "
                "two-tower checkpoint it came from"
            )
        return family.classifier

    @staticmethod
    def from_config(config: PretrainedConfig) -> Any:
        return _family_of_instance(config).classifier(config)


def _family_of_instance(config: PretrainedConfig) -> Family:
    for family in FAMILIES.values():
        if isinstance(config, family.config):
            return family
    raise TypeError(f"no model family takes a {type(config).__name__}")


class AutoProcessor:
    """`AutoProcessor.from_pretrained(name)`: the processor (tokenizer and image processor) of the
    checkpoint's family."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike | Checkpoint, **kwargs: Any) -> Any:
        checkpoint = locate(pretrained_model_name_or_path, HubOptions.pop_from(kwargs))
        return family_of(checkpoint).processor.from_pretrained(checkpoint, **kwargs)


class AutoTokenizer:
    """`AutoTokenizer.from_pretrained(name)`: the checkpoint's tokenizer (`load_tokenizer` picks the class from
    its files: `SiglipTokenizer`, `GemmaTokenizer` or `Siglip2Tokenizer`). `use_fast` is accepted and ignored, as
    each SigLIP tokenizer exists in one kind only."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike | Checkpoint, **kwargs: Any) -> Any:
        kwargs.pop("use_fast", None)
        return load_tokenizer(pretrained_model_name_or_path, **kwargs)


class AutoImageProcessor:
    """`AutoImageProcessor.from_pretrained(name, use_fast=None, **kwargs)`: the image processor of the
    checkpoint's family, with its `from_pretrained` (keyword arguments override the file's settings).
    `use_fast` and `backend` choose the resize backend where the family's image processor offers them."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike | Checkpoint, **kwargs: Any) -> Any:
        checkpoint = locate(pretrained_model_name_or_path, HubOptions.pop_from(kwargs))
        return family_of(checkpoint).image_processor.from_pretrained(checkpoint, **kwargs)
