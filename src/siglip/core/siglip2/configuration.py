"""SigLIP 2 NaFlex configurations: the same field names, defaults and `config.json` files as transformers'
`Siglip2TextConfig`, `Siglip2VisionConfig` and `Siglip2Config`.

The text tower is SigLIP's, so its config is `TextTowerConfig` under the `siglip2` model types. The vision tower
has no fixed `image_size`: `num_patches` (a square number) is the size of its learned position grid, which is
resized to each image's own grid of patches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..config import PretrainedConfig
from ..two_tower.configuration import TextTowerConfig, TwoTowerConfig, check_heads


@dataclass(init=False)
class Siglip2TextConfig(TextTowerConfig):
    """Text tower configuration of SigLIP 2 NaFlex: the fields and defaults of `TextTowerConfig` (SigLIP's).

    The released NaFlex checkpoints use a Gemma vocabulary (`vocab_size` 256000) and 64 text positions.
    """

    model_type: ClassVar[str] = "siglip2_text_model"
    parent_model_type: ClassVar[str | None] = "siglip2"


@dataclass(init=False)
class Siglip2VisionConfig(PretrainedConfig):
    """Vision tower configuration of SigLIP 2 NaFlex (defaults are `google/siglip2-base-patch16-naflex`).

    `num_patches` is the number of learned position embeddings, a square grid (256 = 16 x 16) that is resized
    to each image's patch grid; how many patches an image gets is the image processor's `max_num_patches`.
    Each patch of `patch_size` x `patch_size` pixels is embedded by a linear layer.
    `vision_use_head=False` drops the attention-pooling head: `pooler_output` is None.
    """

    model_type: ClassVar[str] = "siglip2_vision_model"
    base_config_key: ClassVar[str | None] = "vision_config"
    parent_model_type: ClassVar[str | None] = "siglip2"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    patch_size: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    vision_use_head: bool = True
    num_patches: int = 256

    def __post_init__(self) -> None:
        if isinstance(
            self.patch_size, (list, tuple)
        ):  # transformers' type allows a pair; NaFlex uses squares
            if len(self.patch_size) != 2 or self.patch_size[0] != self.patch_size[1]:
                raise ValueError(f"patch_size must be one int (square), got {self.patch_size!r}")
            self.patch_size = int(self.patch_size[0])
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be positive, got {self.patch_size}")
        if self.num_patches < 1 or math.isqrt(self.num_patches) ** 2 != self.num_patches:
            raise ValueError(
                f"num_patches must be a square number (the side of the position grid squared), got "
                f"{self.num_patches}"
            )
        check_heads(self)


@dataclass(init=False)
class Siglip2Config(TwoTowerConfig):
    """Configuration of the two-tower `Siglip2Model`: a `Siglip2TextConfig`, a `Siglip2VisionConfig` and
    `initializer_factor`.

    `text_config` / `vision_config` may be config objects, dictionaries (as in `config.json`) or None for
    the defaults. `num_labels` / `id2label` are used by `Siglip2ForImageClassification`.
    """

    model_type: ClassVar[str] = "siglip2"
    text_config_class: ClassVar[type[PretrainedConfig]] = Siglip2TextConfig
    vision_config_class: ClassVar[type[PretrainedConfig]] = Siglip2VisionConfig

    text_config: Siglip2TextConfig | None = None
    vision_config: Siglip2VisionConfig | None = None
