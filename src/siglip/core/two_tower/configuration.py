"""What the configurations of both families share: the two-tower config, the text tower's fields and the
check of the attention heads. Each family (`siglip.core.siglip`, `siglip.core.siglip2`) names its own
`model_type`s and vision-tower fields on top; every default below equals transformers'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..config import PretrainedConfig


@dataclass(init=False)
class TextTowerConfig(PretrainedConfig):
    """The text tower's fields, the same in both families (defaults are `google/siglip-base-patch16-224`).

    `max_position_embeddings` is the text length the model was trained with (64; 16 for so400m-224).
    `projection_size` is the width of the text head's output; it defaults to `hidden_size` (1536 for the
    SigLIP 2 giant-opt text head). `bos_token_id` and `eos_token_id` are CLIP leftovers that SigLIP never uses.
    """

    base_config_key: ClassVar[str | None] = "text_config"

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
        check_heads(self)


def check_heads(config: PretrainedConfig) -> None:
    """A tower's `hidden_size` must split evenly into its `num_attention_heads`."""
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
