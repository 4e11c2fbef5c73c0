"""SigLIP models: the square patch embeddings, the vision transformer and the public classes.

The text tower, encoder, pooling head and the bases of the public classes are shared with SigLIP 2
(`siglip.core.two_tower.modeling`). Parameter names follow transformers 4.x exactly (`text_model.*`,
`vision_model.*`, `logit_scale`, `logit_bias`, `classifier.*`), so checkpoint files move between the two
libraries unchanged.

Pixels to pooled image vector, top to bottom:
    patch conv -> + position embeddings -> pre-LN transformer encoder -> post LayerNorm -> attention pooling
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..outputs import BaseModelOutputWithPooling, ImageClassifierOutput, SiglipOutput
from ..two_tower.modeling import (
    ClassifierMixin,
    Embedding,
    TextTowerMixin,
    TwoTowerMixin,
    TwoTowerPreTrainedModel,
    VisionTowerMixin,
    VisionTransformerBase,
    as_embedding,
)
from .configuration import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

__all__ = [
    "SiglipForImageClassification",
    "SiglipModel",
    "SiglipPreTrainedModel",
    "SiglipTextModel",
    "SiglipVisionModel",
]


class SiglipVisionEmbeddings(nn.Module):
    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.num_positions = (config.image_size // config.patch_size) ** 2
        self.position_embedding = Embedding(self.num_positions, config.hidden_size)

    def position_grid(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for a (height x width) pixel input: the learned square grid resized bicubically.

        At the trained resolution this is the table itself; otherwise (any size, non-square included) the
        grid is interpolated (align_corners=False, no antialias, in the weight dtype, as transformers does).
        """
        table = self.position_embedding.weight
        rows, cols = height // self.patch_size, width // self.patch_size
        if rows * cols == self.num_positions and rows == cols and not torch.jit.is_tracing():
            return table
        side = math.isqrt(self.num_positions)
        grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(rows * cols, -1)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (batch, channels, height, width), got {tuple(pixel_values.shape)}"
            )
        height, width = pixel_values.shape[-2:]
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        x = patches.flatten(2).transpose(1, 2)  # (B, N, D), patches in row-major order
        if interpolate_pos_encoding:
            return x + self.position_grid(height, width)
        if x.shape[1] != self.num_positions:
            raise ValueError(
                f"pixel_values of {height}x{width} give {x.shape[1]} patches but the model has "
                f"{self.num_positions} position embeddings; resize the images to the model's image_size or "
                "pass interpolate_pos_encoding=True"
            )
        return x + self.position_embedding.weight


class SiglipVisionTransformer(VisionTransformerBase):
    """SigLIP's vision tower: square patch embeddings (a convolution) plus learned positions, then the shared
    encoder, post LayerNorm and pooling head."""

    embeddings_class = SiglipVisionEmbeddings

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> BaseModelOutputWithPooling:
        if pixel_values is None:
            raise ValueError("pixel_values are required")
        x = self.embeddings(pixel_values, interpolate_pos_encoding)
        return self._encode(x, None, output_attentions, output_hidden_states)


class SiglipPreTrainedModel(TwoTowerPreTrainedModel):
    """Base of the SigLIP models: `from_pretrained` / `save_pretrained` (see `PreTrainedModel`) and
    big_vision's initialisation for training from scratch."""

    config_class = SiglipConfig


class SiglipTextModel(TextTowerMixin, SiglipPreTrainedModel):
    """The SigLIP text tower. `pooler_output` is the text head's output at the last position (unnormalised).

    Tokenize with `padding="max_length"` (the models were trained on fixed-length, EOS-padded text).
    """

    config_class = SiglipTextConfig


class SiglipVisionModel(VisionTowerMixin, SiglipPreTrainedModel):
    """The SigLIP vision tower. `pooler_output` is the attention-pooled image vector (unnormalised)."""

    config_class = SiglipVisionConfig
    vision_transformer_class = SiglipVisionTransformer

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> BaseModelOutputWithPooling | tuple:
        out = self.vision_model(
            pixel_values,
            *self._output_flags(output_attentions, output_hidden_states),
            interpolate_pos_encoding,
        )
        return self._returned(out, return_dict)


class SiglipModel(TwoTowerMixin, SiglipPreTrainedModel):
    """Both towers plus the learned `logit_scale` (log temperature) and `logit_bias`.

    `logits_per_text = exp(logit_scale) * cos(text, image) + logit_bias`; probabilities are
    `sigmoid(logits_per_image)`. With `return_loss=True` the sigmoid loss of the (square) batch is returned.
    """

    config_class = SiglipConfig
    vision_transformer_class = SiglipVisionTransformer

    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """Image embeddings (B, D): the attention-pooled vision output, not normalised (see `TowerFeatures`:
        the tower's other outputs ride along)."""
        output_attentions, output_hidden_states = self._output_flags(output_attentions, output_hidden_states)
        return self._image_features(
            self.vision_model(pixel_values, output_attentions, output_hidden_states, interpolate_pos_encoding)
        )

    def encode_images(
        self, pixel_values: torch.Tensor, *, normalize: bool = True, interpolate_pos_encoding: bool = False
    ) -> torch.Tensor:
        """Image embeddings (B, D) in float32, unit-length unless `normalize=False`.

        The one embedding contract every tool calls (embedder, index, zero-shot, evaluation, training):
        `get_image_features`, cast to float32 (so a bf16 or fp16 model is normalised at full precision), then
        `l2_normalize`. Pixels are cast to the model's dtype and device.
        """
        pixel_values = pixel_values.to(self.device, self.dtype, non_blocking=True)
        features = self.get_image_features(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        return as_embedding(features, normalize)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> SiglipOutput | tuple:
        image_inputs = {"interpolate_pos_encoding": interpolate_pos_encoding}
        return self._contrastive_forward(
            input_ids, pixel_values, image_inputs, attention_mask, position_ids, return_loss,
            output_attentions, output_hidden_states, return_dict,
        )  # fmt: skip


class SiglipForImageClassification(ClassifierMixin, SiglipPreTrainedModel):
    """A linear classifier on the mean of the vision tower's final patch tokens (not the MAP pooler).

    Loading a `SiglipModel` checkpoint gives a freshly initialised `classifier` (with a warning) to train.
    `labels` select the loss by `config.problem_type` as transformers does: regression (MSE) when
    `num_labels == 1`, single-label cross-entropy for integer labels, multi-label BCE otherwise.
    """

    config_class = SiglipConfig
    vision_transformer_class = SiglipVisionTransformer

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> ImageClassifierOutput | tuple:
        vision_out = self.vision_model(
            pixel_values,
            *self._output_flags(output_attentions, output_hidden_states),
            interpolate_pos_encoding,
        )
        logits = self.classifier(vision_out.last_hidden_state.mean(dim=1))
        loss = self._loss(logits, labels) if labels is not None else None
        out = ImageClassifierOutput(loss, logits, vision_out.hidden_states, vision_out.attentions)
        return self._returned(out, return_dict)
