"""Zero-shot classification building blocks: text and class embeddings, image embeddings, and scoring.

A class is represented by the normalised mean of the normalised text embeddings of its prompts (one per
template), the prompt ensembling of CLIP, open_clip and big_vision. SigLIP scores an image against a class
with `sigmoid(exp(logit_scale) * cos + logit_bias)`: each score is an independent probability, not a softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from string import Formatter

import torch

from ..core.auto import TwoTowerModel
from ..core.two_tower.modeling import l2_normalize
from ..core.two_tower.processing import Tokenizer, fixed_length_inputs
from ..errors import UsageError

DEFAULT_TEMPLATE = "This is a photo of {}."  # transformers' zero-shot-image-classification pipeline


def text_embeddings(
    model: TwoTowerModel,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    batch_size: int = 256,
    *,
    lowercase: bool | None = None,
    attention_mask: bool = False,
) -> torch.Tensor:
    """(len(texts), D) unit-length text embeddings (float32, on the model's device), `batch_size` at a time.

    Text is padded to the model's own number of text positions (`fixed_length_ids`), as the checkpoints were
    trained: SigLIP pools the last position, so shorter padding gives wrong embeddings. `lowercase` overrides
    the lowercasing rule of `fixed_length_ids` (None: lowercase where a SigLIP 2 model needs it). With
    `attention_mask`, the tokenizer's attention mask (where it returns one) goes to the model, as transformers'
    zero-shot pipeline does; the checkpoints were trained without one.
    """
    if not texts:
        raise UsageError("no texts to embed: pass at least one string")
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            inputs = fixed_length_inputs(
                tokenizer, texts[start : start + batch_size], model.config.text_config, lowercase=lowercase
            )
            mask = inputs.get("attention_mask") if attention_mask else None
            chunks.append(
                model.encode_texts(inputs["input_ids"], None if mask is None else mask.to(model.device))
            )
    return torch.cat(chunks)


def class_embeddings(
    model: TwoTowerModel,
    tokenizer: Tokenizer,
    labels: Sequence[str],
    templates: Sequence[str] = (DEFAULT_TEMPLATE,),
    batch_size: int = 256,
    **text_options: bool | None,
) -> torch.Tensor:
    """(len(labels), D) unit-length class embeddings: per label, the normalised mean of its prompts' embeddings.

    Each template must contain `{}`, replaced by the label (see `fill_template`). `text_options`
    (`lowercase`, `attention_mask`) go to `text_embeddings`.
    """
    check_labels(labels)
    check_templates(templates)
    prompts = [fill_template(t, label) for label in labels for t in templates]
    per_prompt = text_embeddings(model, tokenizer, prompts, batch_size, **text_options)
    return l2_normalize(per_prompt.view(len(labels), len(templates), -1).mean(dim=1))


def scores(model: TwoTowerModel, image_embeds: torch.Tensor, class_embeds: torch.Tensor) -> torch.Tensor:
    """(B, C) sigmoid probabilities of each image for each class, from normalised embeddings."""
    scale = model.logit_scale.detach().float().exp().to(image_embeds.device)
    bias = model.logit_bias.detach().float().to(image_embeds.device)
    return torch.sigmoid(image_embeds @ class_embeds.to(image_embeds.device).t() * scale + bias)


def check_labels(labels: Sequence[str]) -> None:
    """Refuse an empty label list, blank labels, non-strings and repeated labels, naming the culprit (in one
    pass: a set remembers the labels seen)."""
    if isinstance(labels, str) or not labels:
        raise UsageError("the label list is empty: pass at least one class name, e.g. ['cat', 'dog']")
    seen: set[str] = set()
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise UsageError(f"label {i} is {label!r}: every label must be a non-empty string")
        if label in seen:
            raise UsageError(f"label {label!r} is given twice: each label must be different")
        seen.add(label)


def _template_parts(template: object) -> list[str] | None:
    """The literal texts before and after the one `{}` of a template (`{{`, `}}` read as braces), or None when
    it has no `{}`, more than one, or any other replacement field (a name, an index, a conversion, a spec).

    The template is only parsed, never formatted: a spec such as `{:>300000000}` is refused, not evaluated.
    """
    if not isinstance(template, str):
        return None
    parts, text = [], ""
    try:
        for literal, field, spec, conversion in Formatter().parse(template):
            text += literal
            if field is not None:
                if field or spec or conversion:
                    return None
                parts.append(text)
                text = ""
    except ValueError:  # a single '{' or '}'
        return None
    return [*parts, text] if len(parts) == 1 else None


def fill_template(template: str, label: str) -> str:
    """`template` with `label` where its `{}` stands: what `str.format(label)` gives for every template that
    `check_templates` accepts, without ever evaluating a format spec."""
    parts = _template_parts(template)
    if parts is None:
        check_templates([template])  # raises, naming the template
    return label.join(parts or ())


def check_templates(templates: Sequence[str]) -> None:
    """Refuse templates without exactly one `{}` or with any other replacement field (names, indices, format
    specs): `fill_template` never evaluates one."""
    if isinstance(templates, str) or not templates:
        raise UsageError("no prompt template: pass at least one, e.g. 'This is a photo of {}.'")
    for template in templates:
        if _template_parts(template) is None:
            raise UsageError(
                f"prompt template {template!r} must contain '{{}}' (where the label goes) and no other "
                "braces; write literal braces as '{{' and '}}'"
            )
