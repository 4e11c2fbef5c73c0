"""Large batches in groups of whole sequences: one rule for the encoder layers of the fast CPU modes and for
compiled towers.

Past a certain number of tokens per call, a CPU's products slow down per token: the MLP's 3072-wide
activations no longer stay in the caches. Where measured (BENCHMARKS.md), the fused bf16 layers ran faster in
groups of at most 4,096 tokens, the eager int8 layers of at most 1,024 (4,096 for `Int8Linear`s without AMX)
and the compiled int8 towers of at most 1,600; each mode owns its number. Each group is a call of its own: a
layer's numbers for a group are those of the group computed alone (in int8, whose activations are scaled per
call, an item's numbers depend on its group as they did on the batch; the eager int8 heads after the encoder
still take the whole batch).
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.two_tower.modeling import SiglipEncoderLayer


def group_count(batch: int, tokens: int, rows_per_call: int) -> int:
    """Into how many groups `batch` sequences of `tokens` tokens are split (`Tensor.tensor_split`: sizes that
    differ by at most one) so that each group holds at most `rows_per_call` tokens where whole sequences
    allow: as few as fit, 1 when the batch does (an empty one too), and at most one group per sequence."""
    return max(1, min(batch, -(-batch * tokens // rows_per_call)))


class GroupedEncoderLayer(SiglipEncoderLayer):
    """A `SiglipEncoderLayer` that runs a batch of more than `rows_per_call` tokens in groups of whole
    sequences (`group_count`), each through `_one_call`. `group_sequences` makes one by swapping the class of
    a layer (the same modules and parameters). Forward hooks on its submodules fire once per group."""

    rows_per_call: int

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = x.shape[0]
        groups = group_count(batch, x.shape[1], self.rows_per_call)
        if groups == 1 or not self._groups_pay(x):
            return self._one_call(x, attention_mask, output_attentions)
        parts = x.tensor_split(groups)
        masks = [attention_mask] * groups  # None, or one mask broadcast over the batch
        if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[0] == batch:
            masks = attention_mask.tensor_split(groups)
        outs, weights = zip(
            *(self._one_call(*pair, output_attentions) for pair in zip(parts, masks, strict=True)),
            strict=True,
        )
        return torch.cat(outs), torch.cat(weights) if output_attentions else None

    def _one_call(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None, output_attentions: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return SiglipEncoderLayer.forward(self, x, attention_mask, output_attentions)

    def _groups_pay(self, x: torch.Tensor) -> bool:
        """Whether this call takes the path the groups were measured on (a subclass may say no)."""
        return True


def group_sequences(model: nn.Module, rows_per_call: int) -> None:
    """Make every plain `SiglipEncoderLayer` of `model` a `GroupedEncoderLayer` of `rows_per_call`, in place."""
    for layer in model.modules():
        if type(layer) is SiglipEncoderLayer:
            layer.__class__ = GroupedEncoderLayer
            layer.rows_per_call = rows_per_call
