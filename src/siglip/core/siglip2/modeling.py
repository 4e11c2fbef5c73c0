"""SigLIP 2 NaFlex models: the two towers, the two-tower model and an image classifier.

Module and parameter names follow transformers' `Siglip2*` classes (`text_model.*`, `vision_model.*`,
`logit_scale`, `logit_bias`, `classifier.*`), so checkpoint files move between the two libraries unchanged.

Only the image side differs from SigLIP (the encoder, attention, MLP, text tower and pooling head are the shared
ones of `siglip.core.two_tower.modeling`, used here as they are):
- the image arrives as patches (B, N, 3 * p * p), flattened (py, px, channel) and zero-padded to N, with
  `pixel_attention_mask` (B, N; 1 = real patch) and `spatial_shapes` (B, 2; patches high and wide);
- patches are embedded by a linear layer, and the learned square position grid is resized to each image's
  (h, w) patch grid (bilinear, antialiased, align_corners=False, in float32), padding patches taking the
  first position's embedding;
- padding patches are hidden from the attention keys and from the pooling head; the classifier takes the mean
  of the real patches only.
"""

from __future__ import annotations

import math

import torch
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
    key_padding_mask,
)
from .configuration import Siglip2Config, Siglip2TextConfig, Siglip2VisionConfig

__all__ = [
    "Siglip2ForImageClassification",
    "Siglip2Model",
    "Siglip2Output",
    "Siglip2PreTrainedModel",
    "Siglip2TextModel",
    "Siglip2VisionModel",
]


class Siglip2Output(SiglipOutput):
    """`Siglip2Model` output: the fields of `SiglipOutput` (logits, normalised embeddings, loss, tower outputs)."""


def _antialiased_bilinear_weights(index: torch.Tensor, sizes: torch.Tensor, grid: int) -> torch.Tensor:
    """Weights (..., grid) of `F.interpolate(mode="bilinear", align_corners=False, antialias=True)` that make
    output pixel `index` of an axis resized from `grid` to `sizes` entries (float32 tensors broadcasting
    together). Downscaling widens the triangle filter by the scale factor; each row sums to one."""
    scale = grid / sizes
    support = scale.clamp(min=1)
    centre = (index + 0.5) * scale - 0.5
    source = torch.arange(grid, dtype=torch.float32, device=index.device)
    distance = (source - centre[..., None]).abs_()
    weights = (1 - distance.div_(support[..., None])).clamp_(min=0)
    return weights / weights.sum(-1, keepdim=True)


class Siglip2VisionEmbeddings(nn.Module):
    """Linear patch embedding plus the learned position grid resized to each image's patch grid."""

    def __init__(self, config: Siglip2VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_size = config.patch_size
        self.patch_embedding = nn.Linear(config.num_channels * config.patch_size**2, config.hidden_size)
        self.num_patches = config.num_patches
        self.position_embedding_size = math.isqrt(config.num_patches)
        self.position_embedding = Embedding(config.num_patches, config.hidden_size)

    def resized_positions(self, spatial_shapes: torch.Tensor, length: int) -> torch.Tensor:
        """Position embeddings (B, length, D): for image b, the learned grid resized to `spatial_shapes[b]`
        = (h, w) patches in row-major order, then the first position's embedding for the padding up to `length`.

        Resizing is linear, so each output is a weighted sum of the grid's entries: the weights of its row times
        those of its column (computed in float32), applied in one matrix product, in float32 whatever the
        weights' dtype, the result cast back to it.
        """
        grid = self.position_embedding_size
        table = self.position_embedding.weight
        device = spatial_shapes.device
        heights, widths = spatial_shapes[:, 0:1], spatial_shapes[:, 1:2]
        position = torch.arange(length, device=device)[None, :]
        real = position < heights * widths
        # (row, column) of each output position in its image; padding positions take (0, 0)
        row = torch.where(real, torch.div(position, widths, rounding_mode="floor"), 0)
        column = torch.where(real, position - row * widths, 0)
        index = torch.stack((row, column), dim=-1).float()  # (B, length, 2)
        weights = _antialiased_bilinear_weights(index, spatial_shapes.float()[:, None, :], grid)
        weights = (weights[..., 0, :, None] * weights[..., 1, None, :]).flatten(-2)  # (B, length, grid**2)
        resized = weights.to(table.device) @ table.reshape(grid * grid, -1).float()
        return resized.to(table.dtype)

    def forward(self, pixel_values: torch.Tensor, spatial_shapes: torch.Tensor) -> torch.Tensor:
        _check_patch_inputs(pixel_values, spatial_shapes, self.patch_embedding.in_features)
        patches = self.patch_embedding(
            pixel_values.to(self.position_embedding.weight.dtype)
        )  # (int8: no .weight)
        return patches + self.resized_positions(spatial_shapes, pixel_values.shape[1])


def _check_patch_inputs(
    pixel_values: torch.Tensor, spatial_shapes: torch.Tensor, patch_features: int
) -> None:
    """Clear errors for inputs that are not what `Siglip2ImageProcessor` makes."""
    if pixel_values.ndim != 3 or pixel_values.shape[-1] != patch_features:
        raise ValueError(
            f"pixel_values must be patches (batch, max_num_patches, {patch_features}) as Siglip2ImageProcessor "
            f"makes them, got {tuple(pixel_values.shape)}"
        )
    if spatial_shapes is None or spatial_shapes.shape != (pixel_values.shape[0], 2):
        shape = None if spatial_shapes is None else tuple(spatial_shapes.shape)
        raise ValueError(
            f"spatial_shapes must be (batch, 2) patches high and wide, one row per image of pixel_values "
            f"{tuple(pixel_values.shape)}; got {shape}"
        )
    if torch.compiler.is_exporting():
        return  # the values are the graph's inputs, unknown while it is traced
    counts = spatial_shapes.prod(-1)
    if bool((spatial_shapes < 1).any()) or bool((counts > pixel_values.shape[1]).any()):
        raise ValueError(
            f"spatial_shapes {spatial_shapes.tolist()} must be positive and hold at most "
            f"{pixel_values.shape[1]} patches per image (the patch axis of pixel_values)"
        )


class Siglip2VisionTransformer(VisionTransformerBase):
    """SigLIP's vision tower on NaFlex patches: `Siglip2VisionEmbeddings`, then the shared encoder, post
    LayerNorm and pooling head with the padding patches masked."""

    embeddings_class = Siglip2VisionEmbeddings

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor | None,
        spatial_shapes: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        if pixel_values is None:
            raise ValueError("pixel_values are required")
        x = self.embeddings(pixel_values, spatial_shapes)
        if pixel_attention_mask is not None and pixel_attention_mask.shape != x.shape[:2]:
            raise ValueError(
                f"pixel_attention_mask must be (batch, max_num_patches) = {tuple(x.shape[:2])}, got "
                f"{tuple(pixel_attention_mask.shape)}"
            )
        key_mask = key_padding_mask(pixel_attention_mask, x.dtype)
        return self._encode(x, key_mask, output_attentions, output_hidden_states)


# --------------------------------------------------------------------------------------------------------
# Public models
# --------------------------------------------------------------------------------------------------------
class Siglip2PreTrainedModel(TwoTowerPreTrainedModel):
    """Base of the SigLIP 2 models: `from_pretrained` / `save_pretrained` (see `PreTrainedModel`) and
    big_vision's initialisation for training from scratch (the SigLIP rules)."""

    config_class = Siglip2Config
    _supports_flash_attn = False  # as transformers: eager and sdpa only


class Siglip2TextModel(TextTowerMixin, Siglip2PreTrainedModel):
    """The SigLIP 2 text tower: SigLIP's (as `SiglipTextModel`) under a `Siglip2TextConfig`. `pooler_output` is the
    text head's output at the last position (unnormalised); tokenize with `padding="max_length"` (64)."""

    config_class = Siglip2TextConfig


class Siglip2VisionModel(VisionTowerMixin, Siglip2PreTrainedModel):
    """The SigLIP 2 NaFlex vision tower. `pooler_output` is the attention-pooled image vector (unnormalised)."""

    config_class = Siglip2VisionConfig
    vision_transformer_class = Siglip2VisionTransformer

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """Run the tower on `Siglip2ImageProcessor` output: patches (B, N, 3 * p * p), their mask (B, N) and
        `spatial_shapes` (B, 2)."""
        out = self.vision_model(
            pixel_values,
            pixel_attention_mask,
            spatial_shapes,
            *self._output_flags(output_attentions, output_hidden_states),
        )
        return self._returned(out, return_dict)


class Siglip2Model(TwoTowerMixin, Siglip2PreTrainedModel):
    """SigLIP 2 NaFlex: both towers plus the learned `logit_scale` (log temperature) and `logit_bias`.

    `logits_per_text = exp(logit_scale) * cos(text, image) + logit_bias`; probabilities are
    `sigmoid(logits_per_image)`. With `return_loss=True` the sigmoid loss of the (square) batch is returned.
    `get_text_features` / `get_image_features` return tensors (transformers 4.x style), as `SiglipModel`'s do.
    """

    config_class = Siglip2Config
    vision_transformer_class = Siglip2VisionTransformer
    _output_class = Siglip2Output

    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> torch.Tensor:
        """Image embeddings (B, D): the attention-pooled vision output, not normalised (see `TowerFeatures`:
        the tower's other outputs ride along)."""
        output_attentions, output_hidden_states = self._output_flags(output_attentions, output_hidden_states)
        return self._image_features(
            self.vision_model(
                pixel_values, pixel_attention_mask, spatial_shapes, output_attentions, output_hidden_states
            )
        )

    def encode_images(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor | None,
        spatial_shapes: torch.Tensor,
        *,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Image embeddings (B, D) in float32, unit-length unless `normalize=False`: the embedding contract of
        `SiglipModel.encode_images` for NaFlex inputs (`Siglip2ImageProcessor`'s three outputs).

        Pixels are cast to the model's dtype; all three inputs are moved to the model's device.
        """
        device = self.device
        pixel_values = pixel_values.to(device, self.dtype, non_blocking=True)
        if pixel_attention_mask is not None:
            pixel_attention_mask = pixel_attention_mask.to(device, non_blocking=True)
        features = self.get_image_features(pixel_values, pixel_attention_mask, spatial_shapes.to(device))
        return as_embedding(features, normalize)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Siglip2Output | tuple:
        image_inputs = {"pixel_attention_mask": pixel_attention_mask, "spatial_shapes": spatial_shapes}
        return self._contrastive_forward(
            input_ids, pixel_values, image_inputs, attention_mask, position_ids, return_loss,
            output_attentions, output_hidden_states, return_dict,
        )  # fmt: skip


class Siglip2ForImageClassification(ClassifierMixin, Siglip2PreTrainedModel):
    """A linear classifier on the mean of the vision tower's final real patch tokens (padding patches left
    out; the plain mean without `pixel_attention_mask`), not the MAP pooler.

    Loading a `Siglip2Model` checkpoint gives a freshly initialised `classifier` (with a warning) to train.
    `labels` select the loss by `config.problem_type` as transformers does (see `SiglipForImageClassification`).
    """

    config_class = Siglip2Config
    vision_transformer_class = Siglip2VisionTransformer

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        vision_out = self.vision_model(
            pixel_values,
            pixel_attention_mask,
            spatial_shapes,
            *self._output_flags(output_attentions, output_hidden_states),
        )
        tokens = vision_out.last_hidden_state
        if pixel_attention_mask is None:
            pooled = tokens.mean(dim=1)
        else:
            weight = pixel_attention_mask[..., None].to(tokens.device)
            pooled = (tokens * weight).sum(dim=1) / weight.sum(dim=1)
        logits = self.classifier(pooled)
        loss = self._loss(logits, labels) if labels is not None else None
        out = ImageClassifierOutput(loss, logits, vision_out.hidden_states, vision_out.attentions)
        return self._returned(out, return_dict)
