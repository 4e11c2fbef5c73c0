"""Global batches and the one-process reference for the loss tests, shared with the distributed workers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from siglip.core.loss import sigmoid_loss

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def global_batch(n: int, width: int = 8, dtype: torch.dtype = torch.float64, seed: int = 0) -> Batch:
    """L2-normalised images and texts of `n` pairs with logit_scale and logit_bias, equal on every process.

    Texts lie near their images and the scale and bias are mid-training values, so positives and negatives
    both carry gradient (at the initial bias of -10 almost every sigmoid would be saturated).
    """
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, width, generator=gen, dtype=torch.float64)
    texts = images + torch.randn(n, width, generator=gen, dtype=torch.float64)
    logit_scale = torch.tensor([math.log(10.0)], dtype=torch.float64)
    logit_bias = torch.tensor([-2.0], dtype=torch.float64)
    batch = (F.normalize(images, dim=-1), F.normalize(texts, dim=-1), logit_scale, logit_bias)
    return tuple(t.to(dtype) for t in batch)


def leaves(batch: Batch) -> Batch:
    return tuple(t.detach().clone().requires_grad_() for t in batch)


def class_labels(n: int, classes: int = 3, seed: int = 0) -> torch.Tensor:
    """Labels of `n` pairs drawn from `classes` classes (so most rows have several positives), or ids
    0..n-1 in a random order when `classes` is None (one positive per row)."""
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randperm(n, generator=gen) if classes is None else torch.randint(classes, (n,), generator=gen)
    )


def reference(batch: Batch, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, Batch]:
    """Loss and gradients (images, texts, scale, bias) of the whole batch: without labels computed as
    `SiglipModel` does; with labels from the label matrix `2 [c_i == c_j] - 1`, in float64."""
    images, texts, logit_scale, logit_bias = inputs = leaves(batch)
    loss = reference_loss(texts @ images.T * logit_scale.exp() + logit_bias, labels)
    return loss.detach(), torch.autograd.grad(loss, inputs)


def reference_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """The loss of square `logits`: `sigmoid_loss` without labels, else from the label matrix in float64."""
    if labels is None:
        return sigmoid_loss(logits)
    matrix = 2.0 * (labels[:, None] == labels[None, :]).double() - 1.0
    return -F.logsigmoid(matrix * logits.double()).sum() / len(labels)


def max_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return (ours.double() - theirs.double()).abs().max().item() if ours.numel() else 0.0
