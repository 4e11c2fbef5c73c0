"""SigLIP configurations: the same field names, defaults and `config.json` files as transformers.

Released checkpoints store sparse `config.json` files (only the keys that differ from the defaults), so every
default below must equal transformers'. Keys we do not know are kept as attributes and written back, so a file
round-trips through us unchanged in meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..config import PretrainedConfig


@dataclass(init=False)
class SiglipTextConfig(PretrainedConfig):
    """Text tower configuration (defaults are `google/siglip-base-patch16-224`).

    `max_position_embeddings` is the text length the model was trained with (64; 16 for so400m-224).
    `projection_size` is the width of the text head's output; it defaults to `hidden_size` (1536 for the
    SigLIP 2 giant-opt text head). `bos_token_id` and `eos_token_id` are CLIP leftovers that SigLIP never uses.
    """

    model_type: ClassVar[str] = "siglip_text_model"
    base_config_key: ClassVar[str | None] = "text_config"
    parent_model_type: ClassVar[str | None] = "siglip"

    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 64
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407
    projection_size: int | None = None

    def __post_init__(self) -> None:
        if self.projection_size is None:
            self.projection_size = self.hidden_size
        _check_heads(self)


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
        _check_heads(self)


def _check_heads(config: SiglipTextConfig | SiglipVisionConfig) -> None:
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"hidden_size {config.hidden_size} is not divisible by num_attention_heads "
            f"{config.num_attention_heads}"
        )


def _sub_config(value: Any, config_cls: type[PretrainedConfig]) -> PretrainedConfig:
    if value is None:
        return config_cls()
    if isinstance(value, config_cls):
        return value
    if isinstance(value, dict):
        return config_cls.from_dict(value)
    raise TypeError(f"expected a {config_cls.__name__} or a dict, got {type(value).__name__}")


@dataclass(init=False)
class TwoTowerConfig(PretrainedConfig):
    """What the two-tower configs share (`SiglipConfig`, `Siglip2Config`): a text config, a vision config and
    `initializer_factor`. Each family names its tower config classes in `text_config_class` /
    `vision_config_class`; the towers may be given as config objects, dictionaries or None (the defaults)."""

    text_config_class: ClassVar[type[PretrainedConfig]]
    vision_config_class: ClassVar[type[PretrainedConfig]]

    text_config: PretrainedConfig | None = None
    vision_config: PretrainedConfig | None = None
    initializer_factor: float = 1.0

    def __init__(
        self,
        text_config: PretrainedConfig | dict | None = None,
        vision_config: PretrainedConfig | dict | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(text_config=text_config, vision_config=vision_config, **kwargs)

    def __post_init__(self) -> None:
        self.text_config = _sub_config(self.text_config, self.text_config_class)
        self.vision_config = _sub_config(self.vision_config, self.vision_config_class)

    @classmethod
    def from_text_vision_configs(
        cls, text_config: PretrainedConfig, vision_config: PretrainedConfig, **kwargs: Any
    ) -> TwoTowerConfig:
        """Combine two tower configs into a two-tower config of this class."""
        return cls(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), **kwargs)


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
