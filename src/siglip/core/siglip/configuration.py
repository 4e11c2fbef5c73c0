"""SigLIP configurations: the same field names, defaults and `config.json` files as transformers.

Released checkpoints store sparse `config.json` files (only the keys that differ from the defaults), so every
default below must equal transformers'. Keys we do not know are kept as attributes and written back, so a file
round-trips through us unchanged in meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import PretrainedConfig
from ..two_tower.configuration import TextTowerConfig, TwoTowerConfig, check_heads


@dataclass(init=False)
class SiglipTextConfig(TextTowerConfig):
    """Text tower configuration (defaults are `google/siglip-base-patch16-224`): the fields of
    `TextTowerConfig` under the `siglip` model types."""

    model_type: ClassVar[str] = "siglip_text_model"
    parent_model_type: ClassVar[str | None] = "siglip"


@dataclass(init=False)
class SiglipVisionConfig(PretrainedConfig):
    """Vision tower configuration (defaults are `google/siglip-base-patch16-224`).

    The image is cut into `(image_size // patch_size) ** 2` patches, each with a learned position embedding.
    `vision_use_head=False` drops the attention-pooling head (PaliGemma-style towers): `pooler_output` is None.
    """

    model_type: ClassVar[str] = "siglip_vision_model"
    base_config_key: ClassVar[str | None] = "vision_config"
    parent_model_type: ClassVar[str | None] = "siglip"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    vision_use_head: bool = True

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):  # transformers' type allows a pair; SigLIP uses squares
                if len(value) != 2 or value[0] != value[1]:
                    raise ValueError(f"{name} must be one int (square), got {value!r}")
                setattr(self, name, int(value[0]))
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        check_heads(self)


@dataclass(init=False)
class SiglipConfig(TwoTowerConfig):
    """Configuration of the two-tower `SiglipModel`: a text config, a vision config and `initializer_factor`.

    `text_config` / `vision_config` may be config objects, dictionaries (as in `config.json`) or None for
    the defaults. `num_labels` / `id2label` are used by `SiglipForImageClassification`.
    """

    model_type: ClassVar[str] = "siglip"
    text_config_class: ClassVar[type[PretrainedConfig]] = SiglipTextConfig
    vision_config_class: ClassVar[type[PretrainedConfig]] = SiglipVisionConfig

    text_config: SiglipTextConfig | None = None
    vision_config: SiglipVisionConfig | None = None
