"""One way in: the model family of a checkpoint, read from its `config.json`, picks every class.

    from siglip import AutoModel, AutoProcessor
    model = AutoModel.from_pretrained("google/siglip2-base-patch16-naflex")    # a Siglip2Model
    processor = AutoProcessor.from_pretrained("google/siglip2-base-patch16-naflex")

| `model_type` | family | model, processor |
|---|---|---|
| "siglip" | SigLIP, and SigLIP 2 fixed-resolution checkpoints (a Gemma tokenizer) | SiglipModel, SiglipProcessor |
| "siglip2" | SigLIP 2 NaFlex (native aspect ratio, a variable number of patches) | Siglip2Model, Siglip2Processor |

Every tool loads through these, so a checkpoint of either family works everywhere with no flag.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError
from .config import PretrainedConfig
from .hub import CONFIG_NAME, Checkpoint, HubOptions, locate, read_json
from .pretrained import PreTrainedModel
from .siglip.configuration import SiglipConfig
from .siglip.image_processing import SiglipImageProcessor
from .siglip.modeling import SiglipModel
from .siglip.processing import SiglipProcessor
from .siglip2.configuration import Siglip2Config
from .siglip2.image_processing import Siglip2ImageProcessor
from .siglip2.modeling import Siglip2Model
from .siglip2.processing import Siglip2Processor
from .two_tower.image_processing import PREPROCESSOR_CONFIG_FILE
from .two_tower.processing import TwoTowerProcessor


@dataclass(frozen=True)
class Family:
    """The classes of one model family."""

    config: type[PretrainedConfig]
    model: type[PreTrainedModel]
    processor: type


# What the tools take: a two-tower model and its processor, of any family.
TwoTowerModel = SiglipModel | Siglip2Model
Processor = TwoTowerProcessor  # SiglipProcessor or Siglip2Processor
ImageProcessor = (
    SiglipImageProcessor | Siglip2ImageProcessor
)  # one image in, a BatchFeature of model inputs out

FAMILIES: dict[str, Family] = {
    "siglip": Family(SiglipConfig, SiglipModel, SiglipProcessor),
    "siglip2": Family(Siglip2Config, Siglip2Model, Siglip2Processor),
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
    """The family of a `config.json` dictionary read from `source`."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"'{source}' has model_type {model_type!r}; siglip loads {', '.join(map(repr, FAMILIES))}"
        )
    return FAMILIES[model_type]


class AutoConfig:
    """`AutoConfig.from_pretrained(name)` / `from_json_file(path)`: the config class of the family."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike | Checkpoint, **kwargs: Any) -> Any:
        checkpoint = locate(pretrained_model_name_or_path, HubOptions.pop_from(kwargs))
        return family_of(checkpoint).config.from_pretrained(checkpoint, **kwargs)

    @staticmethod
    def from_json_file(path: str | os.PathLike) -> Any:
        config = read_json(path)
        return family_of_config(config, path).config.from_dict(config)


class AutoModel:
    """`AutoModel.from_pretrained(name, **kwargs)`: the two-tower model of the checkpoint's family, loaded
    with that class's `from_pretrained` (same keyword arguments); `from_config(config)` builds one."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike | Checkpoint, **kwargs: Any) -> Any:
        checkpoint = locate(pretrained_model_name_or_path, HubOptions.pop_from(kwargs))
        return family_of(checkpoint).model.from_pretrained(checkpoint, **kwargs)

    @staticmethod
    def from_config(config: PretrainedConfig) -> Any:
        for family in FAMILIES.values():
            if isinstance(config, family.config):
                return family.model(config)
        raise TypeError(f"no model family takes a {type(config).__name__}")


class AutoProcessor:
    """`AutoProcessor.from_pretrained(name)`: the processor (tokenizer and image processor) of the
    checkpoint's family."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike | Checkpoint, **kwargs: Any) -> Any:
        checkpoint = locate(pretrained_model_name_or_path, HubOptions.pop_from(kwargs))
        return family_of(checkpoint).processor.from_pretrained(checkpoint, **kwargs)
