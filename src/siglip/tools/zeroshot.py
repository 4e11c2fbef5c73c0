"""Zero-shot classification building blocks: text and class embeddings, image embeddings, and scoring.

A class is represented by the normalised mean of the normalised text embeddings of its prompts (one per
template), the prompt ensembling of CLIP, open_clip and big_vision. SigLIP scores an image against a class
with `sigmoid(exp(logit_scale) * cos + logit_bias)`: each score is an independent probability, not a softmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..core.modeling import SiglipModel
from ..core.tokenization import SiglipTokenizer

DEFAULT_TEMPLATE = "This is a photo of {}."  # transformers' zero-shot-image-classification pipeline


def text_embeddings(
    model: SiglipModel, tokenizer: SiglipTokenizer, texts: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """(len(texts), D) normalised text embeddings (float32, on the model's device).

    Text is padded to the model's own number of text positions (64, or 16 for so400m-224), as the
    checkpoints were trained: SigLIP pools the last position, so shorter padding gives wrong embeddings.
    """
    if not texts:
        raise ValueError("no texts to embed: pass at least one string")
    length = model.config.text_config.max_position_embeddings
    embeds = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            ids = tokenizer(
                list(texts[start : start + batch_size]),
                padding="max_length",
                truncation=True,
                max_length=length,
                return_tensors="pt",
            )["input_ids"]
            embeds.append(F.normalize(model.get_text_features(ids.to(model.device)).float(), dim=-1))
    return torch.cat(embeds)


def class_embeddings(
    model: SiglipModel,
    tokenizer: SiglipTokenizer,
    labels: Sequence[str],
    templates: Sequence[str] = (DEFAULT_TEMPLATE,),
    batch_size: int = 256,
) -> torch.Tensor:
    """(len(labels), D) normalised class embeddings: per label, the normalised mean of its prompts' embeddings.

    Each template must contain `{}`, replaced by the label (`str.format`, as transformers' pipeline does).
    """
    check_labels(labels)
    check_templates(templates)
    prompts = [t.format(label) for label in labels for t in templates]
    per_prompt = text_embeddings(model, tokenizer, prompts, batch_size).view(len(labels), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def image_embeddings(model: SiglipModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, D) normalised image embeddings of preprocessed pixels."""
    with torch.inference_mode():
        pixel_values = pixel_values.to(model.device, model.dtype, non_blocking=True)
        return F.normalize(model.get_image_features(pixel_values).float(), dim=-1)


def scores(model: SiglipModel, image_embeds: torch.Tensor, class_embeds: torch.Tensor) -> torch.Tensor:
    """(B, C) sigmoid probabilities of each image for each class, from normalised embeddings."""
    scale = model.logit_scale.detach().float().exp().to(image_embeds.device)
    bias = model.logit_bias.detach().float().to(image_embeds.device)
    return torch.sigmoid(image_embeds @ class_embeds.to(image_embeds.device).t() * scale + bias)


def check_labels(labels: Sequence[str]) -> None:
    """Refuse an empty label list, blank labels and non-strings, naming the culprit."""
    if isinstance(labels, str) or not labels:
        raise ValueError("the label list is empty: pass at least one class name, e.g. ['cat', 'dog']")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"label {i} is {label!r}: every label must be a non-empty string")


def check_templates(templates: Sequence[str]) -> None:
    """Refuse templates without `{}` or with other replacement fields, which `str.format` cannot fill."""
    if isinstance(templates, str) or not templates:
        raise ValueError("no prompt template: pass at least one, e.g. 'This is a photo of {}.'")
    for template in templates:
        try:
            ok = isinstance(template, str) and "\0" in template.format("\0")
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ValueError(
                f"prompt template {template!r} must contain '{{}}' (where the label goes) and no other "
                "braces; write literal braces as '{{' and '}}'"
            )
