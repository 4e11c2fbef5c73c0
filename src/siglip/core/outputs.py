"""What the models return: dataclasses that also index like transformers' `ModelOutput`.

Fields are read by name (`out.logits_per_image`, `out["logits_per_image"]`), by position over the fields that
are not None (`out[0]`), or all at once (`out.to_tuple()`); `return_dict=False` gives that tuple.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch


class ModelOutput:
    """Base of the output dataclasses. Fields that are None are skipped when indexing by position."""

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-None fields in order; nested outputs become tuples too."""
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    """A tower's output.

    `last_hidden_state` (B, N, D) is after the final LayerNorm; `pooler_output` is the pooled vector (B, D')
    (None for a vision tower without head); `hidden_states` are the embedding output and every layer's output
    (L + 1 tensors, the last before the final LayerNorm); `attentions` are L maps (B, heads, N, N).
    """

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class SiglipOutput(ModelOutput):
    """`SiglipModel` output. `logits_per_image` (images, texts) = `logits_per_text.T`; probabilities are
    `torch.sigmoid(logits_per_image)` (not softmax). `text_embeds`/`image_embeds` are L2-normalised."""

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None


@dataclass
class ImageClassifierOutput(ModelOutput):
    """`SiglipForImageClassification` output: `logits` (B, num_labels) and the loss when labels are given."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
