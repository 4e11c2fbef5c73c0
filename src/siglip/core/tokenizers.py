"""`load_tokenizer`: the tokenizer class a checkpoint needs, picked from its files.

A module of its own because it is the one place that knows every tokenizer family: SigLIP 1's
`SiglipTokenizer` (SentencePiece `spiece.model`) and SigLIP 2's `GemmaTokenizer` / `Siglip2Tokenizer`
(`tokenizer.json` or `tokenizer.model`). Processors and tools call it instead of naming a class.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import CheckpointError
from .hub import Checkpoint, HubOptions, locate, read_json
from .siglip.tokenization import VOCAB_FILE, SiglipTokenizer
from .siglip2.tokenization import (
    SPM_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    GemmaTokenizer,
    Siglip2Tokenizer,
)

Tokenizer = SiglipTokenizer | GemmaTokenizer  # Siglip2Tokenizer is a GemmaTokenizer

# `tokenizer_class` of tokenizer_config.json -> our class ("Fast" names are transformers 4.x spellings)
TOKENIZER_CLASSES: dict[str, type] = {
    "SiglipTokenizer": SiglipTokenizer,
    "GemmaTokenizer": GemmaTokenizer,
    "GemmaTokenizerFast": GemmaTokenizer,
    "Siglip2Tokenizer": Siglip2Tokenizer,
}


def tokenizer_class(checkpoint: Checkpoint) -> type:
    """The class for the tokenizer of `checkpoint`: its config's `tokenizer_class`, else by the files present
    (`spiece.model`: SiglipTokenizer; `tokenizer.json` / `tokenizer.model`: GemmaTokenizer)."""
    config_file = checkpoint.file(TOKENIZER_CONFIG_FILE, required=False)
    name = read_json(config_file).get("tokenizer_class") if config_file is not None else None
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
