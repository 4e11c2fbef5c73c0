"""What the processors of both families share: a tokenizer and an image processor behind one call, padding
text the way SigLIP needs (`TwoTowerProcessor`); `fixed_length_ids`, how the tools build text input; and
`load_tokenizer`, the tokenizer class a checkpoint needs, picked from its files.

Either tokenizer goes with either family: SigLIP 1's `SiglipTokenizer` (SentencePiece `spiece.model`) and
SigLIP 2's `GemmaTokenizer` / `Siglip2Tokenizer` (`tokenizer.json` or `tokenizer.model`), which the
fixed-resolution SigLIP 2 checkpoints (model_type "siglip") use too. So both tokenizers and their picker live
here, below both families, and processors and tools call `load_tokenizer` instead of naming a class.

Padding default (our decision, different from transformers): the text is padded with `</s>` and truncated to
`tokenizer.model_max_length` (64; 16 for so400m-224) unless the caller says otherwise. SigLIP was trained on
such fixed-length text and pools the last position, so any other padding silently degrades the embeddings
(e.g. MNIST zero-shot ~10% instead of 80%+ with `padding=True`, mteb PR #1424). transformers' processor has
no default (#28569), which makes every user rediscover this; asking explicitly for other padding still
works, with a warning.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ...errors import CheckpointError
from ..features import BatchFeature
from ..hub import Checkpoint, HubOptions, locate, read_json
from ..push_to_hub import PushToHubMixin
from ..staging import staged_directory
from .configuration import TextTowerConfig
from .gemma import (
    SPM_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    GemmaTokenizer,
    Siglip2Tokenizer,
    needs_lowercase,
)
from .gemma import lowercase as _lowercase
from .image_processing import BaseImageProcessor, ImageInput
from .sentencepiece import VOCAB_FILE, SiglipTokenizer
from .tokenization import LARGE_INTEGER

logger = logging.getLogger("siglip")

__all__ = ["TwoTowerProcessor", "fixed_length_ids", "load_tokenizer"]

Tokenizer = SiglipTokenizer | GemmaTokenizer  # Siglip2Tokenizer is a GemmaTokenizer

# `tokenizer_class` of tokenizer_config.json -> our class ("Fast" names are transformers 4.x spellings)
TOKENIZER_CLASSES: dict[str, type] = {
    "SiglipTokenizer": SiglipTokenizer,
    "GemmaTokenizer": GemmaTokenizer,
    "GemmaTokenizerFast": GemmaTokenizer,
    "Siglip2Tokenizer": Siglip2Tokenizer,
}
GENERIC_CLASS = "PreTrainedTokenizerFast"  # what we save a Siglip2Tokenizer as (see Siglip2Tokenizer)


def tokenizer_class(checkpoint: Checkpoint) -> type:
    """The class for the tokenizer of `checkpoint`: its config's `tokenizer_class` (`PreTrainedTokenizerFast`:
    Siglip2Tokenizer with `do_lower_case`, else GemmaTokenizer), else by the files present (`spiece.model`:
    SiglipTokenizer; `tokenizer.json` / `tokenizer.model`: GemmaTokenizer).

    A NaFlex checkpoint (`config.json` model_type "siglip2") always gets `Siglip2Tokenizer`, whatever its
    tokenizer config names (the hub's say GemmaTokenizer), as transformers 5 decides for that model type.
    """
    model_config = checkpoint.file("config.json", required=False)
    if model_config is not None and read_json(model_config).get("model_type") == "siglip2":
        return Siglip2Tokenizer
    config_file = checkpoint.file(TOKENIZER_CONFIG_FILE, required=False)
    config = read_json(config_file) if config_file is not None else {}
    name = config.get("tokenizer_class")
    if name == GENERIC_CLASS:  # transformers runs its tokenizer.json as it is: lowercasing or not
        return Siglip2Tokenizer if config.get("do_lower_case") else GemmaTokenizer
    if name is not None:
        if name not in TOKENIZER_CLASSES:
            raise CheckpointError(
                f"'{config_file}' names tokenizer_class {name!r}; siglip reads {sorted(TOKENIZER_CLASSES)}"
            )
        return TOKENIZER_CLASSES[name]
    if checkpoint.file(VOCAB_FILE, required=False) is not None:
        return SiglipTokenizer
    if any(checkpoint.file(name, required=False) is not None for name in (TOKENIZER_FILE, SPM_FILE)):
        return GemmaTokenizer
    raise CheckpointError(
        f"'{checkpoint}' has no tokenizer: none of '{VOCAB_FILE}' (SigLIP), '{TOKENIZER_FILE}' or '{SPM_FILE}' "
        "(SigLIP 2) was found"
    )


def load_tokenizer(pretrained_model_name_or_path: str | os.PathLike | Checkpoint, **kwargs: Any) -> Tokenizer:
    """Load the tokenizer of a checkpoint directory, hub id or `Checkpoint` with the class it needs.

    Keyword arguments go to that class's `from_pretrained` (hub options, config overrides).
    """
    checkpoint = locate(pretrained_model_name_or_path, HubOptions.pop_from(kwargs))
    return tokenizer_class(checkpoint).from_pretrained(checkpoint, **kwargs)


def fixed_length_ids(
    tokenizer: Tokenizer, texts: Sequence[str], text_config: TextTowerConfig, *, lowercase: bool | None = None
) -> torch.Tensor:
    """(N, L) token ids of `texts` as the text tower of `text_config` was trained on them: padded and truncated
    (keeping the end-of-text token last) to its L = `max_position_embeddings` positions (64; 16 for
    so400m-224), and lowercased first where the model was trained on lowercased text that its tokenizer does
    not lowercase (SigLIP 2 through a `GemmaTokenizer`: see `siglip.core.two_tower.gemma`).

    The one place the tools build text input for a model: SigLIP pools the last position, so any shorter
    padding gives wrong embeddings. A text longer than L is cut with a warning: two texts that differ only
    after their first L tokens get the same embedding. `lowercase` overrides the lowercasing rule (True: always,
    False: never, None: the rule above).
    """
    return fixed_length_inputs(tokenizer, texts, text_config, lowercase=lowercase)["input_ids"]


def fixed_length_inputs(
    tokenizer: Tokenizer, texts: Sequence[str], text_config: TextTowerConfig, *, lowercase: bool | None = None
) -> dict[str, torch.Tensor]:
    """`fixed_length_ids` with everything the tokenizer returns: `input_ids`, and `attention_mask` when the
    tokenizer lists it in `model_input_names` (transformers' zero-shot pipeline gives it to the model)."""
    return fixed_length_inputs_counted(tokenizer, texts, text_config, lowercase=lowercase)[0]


def fixed_length_inputs_counted(
    tokenizer: Tokenizer, texts: Sequence[str], text_config: TextTowerConfig, *, lowercase: bool | None = None
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """`fixed_length_inputs` and the number of tokens the model reads of each text (its tokens, special ones
    included, cut to the model's text positions; padding excluded): the `usage` of an embeddings API."""
    lowercase = needs_lowercase(tokenizer) if lowercase is None else lowercase
    texts = [_lowercase(text) for text in texts] if lowercase else list(texts)
    limit = text_config.max_position_embeddings
    with warnings.catch_warnings():  # the tokenizer's own too-long warning: the one below says it, once
        warnings.simplefilter("ignore", UserWarning)
        lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    cut = [i for i, n in enumerate(lengths) if n > limit]
    if cut:
        first = cut[0]
        logger.warning(
            "%d text(s) longer than the model's %d text positions were truncated, e.g. %r (%d tokens): texts "
            "that differ only after the cut score the same",
            len(cut), limit, texts[first], lengths[first],
        )  # fmt: skip
    inputs = tokenizer(texts, padding="max_length", truncation=True, max_length=limit, return_tensors="pt")
    return dict(inputs), [min(n, limit) for n in lengths]


class TwoTowerProcessor(PushToHubMixin):
    """A tokenizer and an image processor as one preprocessing step for a two-tower model: the processor of
    both families (`SiglipProcessor`, `Siglip2Processor`), which name their `image_processor_class` and
    `default_max_length`.

    The tokenizer is a `SiglipTokenizer` (SigLIP 1) or a `GemmaTokenizer` (SigLIP 2). `processor(text=...,
    images=...)` returns a `BatchFeature` with `input_ids` (plus `attention_mask` when the tokenizer's
    `model_input_names` lists it; released checkpoints do not) and the image processor's outputs, ready for
    `model(**inputs)`. Text is padded to `max_length` by default: see `__call__`.
    """

    image_processor_class: ClassVar[type[BaseImageProcessor]]
    tokenizer_description: ClassVar[str] = "a SiglipTokenizer or GemmaTokenizer"
    default_max_length: ClassVar[int | None] = None  # None: the tokenizer's model_max_length

    def __init__(self, image_processor: BaseImageProcessor, tokenizer: Tokenizer) -> None:
        in_order = isinstance(image_processor, self.image_processor_class) and self._accepts_tokenizer(
            tokenizer
        )
        if not in_order:
            raise TypeError(
                f"{type(self).__name__}(image_processor, tokenizer) takes a {self.image_processor_class.__name__} "
                f"and {self.tokenizer_description}, in that order; got {type(image_processor).__name__} and "
                f"{type(tokenizer).__name__}"
            )
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    @property
    def model_input_names(self) -> list[str]:
        names = [*self.tokenizer.model_input_names, *self.image_processor.model_input_names]
        return list(dict.fromkeys(names))

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: ImageInput | Sequence[ImageInput] | None = None,
        *,
        padding: bool | str | None = None,
        truncation: bool | str | None = True,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Tokenize `text` and preprocess `images`; either may be omitted, not both.

        Args:
            text: a string or a list of strings.
            images: an image or a list of images (anything the image processor accepts).
            padding: None (default) pads to `max_length`, which is what the checkpoints need. Anything else
                (`True`, `"longest"`, `False`) is passed to the tokenizer, with a warning.
            truncation: truncate to `max_length`, keeping `</s>` last (default True).
            max_length: default `tokenizer.model_max_length` (the model's number of text positions); 64 for
                `Siglip2Processor`, as transformers'.
            return_tensors: `"pt"` (default, as transformers 4.x), `"np"` or None.
            **kwargs: `add_special_tokens` and `return_attention_mask` go to the tokenizer, everything
                else (`size`, `resample`, `do_rescale`, ...) to the image processor.
        """
        if text is None and images is None:
            raise ValueError("Pass text, images or both")
        text_kwargs = {
            k: kwargs.pop(k) for k in ("add_special_tokens", "return_attention_mask") if k in kwargs
        }
        features = BatchFeature()
        if text is not None:
            if padding is None:
                padding = "max_length"
            elif padding != "max_length":
                warnings.warn(
                    f"padding={padding!r}: SigLIP checkpoints were trained on text padded to max_length and pool "
                    "the last position, so other padding degrades results; the processor's default is "
                    "padding='max_length'",
                    stacklevel=2,
                )
            features.update(
                self.tokenizer(
                    text,
                    padding=padding,
                    truncation=truncation,
                    max_length=self.default_max_length if max_length is None else max_length,
                    return_tensors=return_tensors,
                    **text_kwargs,
                )
            )
        if images is not None:
            features.update(self.image_processor(images, return_tensors=return_tensors, **kwargs))
        elif kwargs:
            raise TypeError(f"Unexpected arguments without images: {sorted(kwargs)}")
        return features

    def decode(
        self,
        token_ids: Sequence[int] | np.ndarray | torch.Tensor,
        skip_special_tokens: bool = False,
        **kwargs: Any,
    ) -> str | list[str]:
        """The tokenizer's `decode`."""
        return self.tokenizer.decode(token_ids, skip_special_tokens, **kwargs)

    def batch_decode(
        self,
        sequences: Sequence[Sequence[int]] | np.ndarray | torch.Tensor,
        skip_special_tokens: bool = False,
        **kwargs: Any,
    ) -> list[str]:
        """The tokenizer's `batch_decode`."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | Checkpoint,
        use_fast: bool | None = None,
        backend: str | None = None,
        **kwargs: Any,
    ) -> TwoTowerProcessor:
        """Load the tokenizer and image processor files of a checkpoint directory or hub id.

        `revision`, `cache_dir`, `local_files_only` and `token` go to huggingface_hub; the name is resolved
        once for both. `use_fast` / `backend` choose the image backend as for the image processor's
        `from_pretrained`. The tokenizer class follows the checkpoint (`load_tokenizer`). SigLIP 2 tokenizer
        configs may leave `model_max_length` unset; it is then the text tower's number of positions
        (`config.json`'s `text_config.max_position_embeddings`, 64 without one), so text is padded to 64 by
        default as for SigLIP 1.

        Other keyword arguments go, as in transformers, to the image processor when they are its settings
        (`size=...`, `do_resize=False`) and to the tokenizer otherwise (`model_max_length=...`), which refuses
        names it does not know.
        """
        checkpoint = locate(pretrained_model_name_or_path, HubOptions.pop_from(kwargs))
        image_keys = cls.image_processor_class._config_keys
        image_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in image_keys}
        images = cls.image_processor_class.from_pretrained(
            checkpoint, use_fast=use_fast, backend=backend, **image_kwargs
        )
        return cls(images, cls._load_tokenizer(checkpoint, **kwargs))

    @classmethod
    def _accepts_tokenizer(cls, tokenizer: Any) -> bool:
        return isinstance(tokenizer, SiglipTokenizer | GemmaTokenizer)

    @classmethod
    def _load_tokenizer(cls, checkpoint: Checkpoint, **kwargs: Any) -> Tokenizer:
        """The checkpoint's tokenizer, of the class its files name (`load_tokenizer`, given `kwargs`); without a
        `model_max_length` (SigLIP 2 configs), the text tower's number of positions."""
        tokenizer = load_tokenizer(checkpoint, **kwargs)
        if tokenizer.model_max_length > LARGE_INTEGER:
            config_file = checkpoint.file("config.json", required=False)
            text_config = (read_json(config_file).get("text_config") or {}) if config_file is not None else {}
            tokenizer.model_max_length = int(
                text_config.get("max_position_embeddings", TextTowerConfig().max_position_embeddings)
            )
        return tokenizer

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write the tokenizer and image processor files into `save_directory`, all or nothing."""
        with staged_directory(save_directory) as staging:
            if hasattr(self.tokenizer, "_write_files"):  # ours: records the processor class, as transformers
                self.tokenizer._write_files(staging, processor_class=type(self).__name__)
            else:
                self.tokenizer.save_pretrained(staging)
            self.image_processor._write_files(staging, processor_class=type(self).__name__)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_processor={self.image_processor!r}, tokenizer={self.tokenizer!r})"
        )
