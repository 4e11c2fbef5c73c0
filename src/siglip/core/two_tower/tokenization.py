"""What every tokenizer of siglip shares: transformers' rules for the padding and truncation options, the
checks on the texts of a call, and the packing of token ids into lists, numpy arrays or torch tensors.

`SiglipTokenizer` (SentencePiece, SigLIP 1) and `GemmaTokenizer` / `Siglip2Tokenizer` (the `tokenizers`
library, SigLIP 2) encode differently but take the same call options and return the same `BatchFeature`.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..features import BatchFeature
from ..push_to_hub import PushToHubMixin
from ..staging import staged_directory

# transformers' "no limit" value of `model_max_length` (1e30); above LARGE_INTEGER a tokenizer has no limit
# of its own, and padding="max_length" / truncation without `max_length` then do nothing, as in transformers.
VERY_LARGE_INTEGER = int(1e30)
LARGE_INTEGER = int(1e20)

PADDING = {False: "do_not_pad", "do_not_pad": "do_not_pad", True: "longest", "longest": "longest",
           "max_length": "max_length"}  # fmt: skip
TRUNCATION = {None: "do_not_truncate", False: "do_not_truncate", "do_not_truncate": "do_not_truncate",
              True: "longest_first", "longest_first": "longest_first", "only_first": "only_first",
              "only_second": "only_second"}  # fmt: skip


def lookup(options: dict, value: Any, name: str) -> str:
    """`options[value]`, or a ValueError naming the argument and what it accepts."""
    try:
        return options[value]
    except (KeyError, TypeError):
        raise ValueError(f"{name} must be one of {sorted(map(repr, options))}, got {value!r}") from None


def resolve_strategies(
    padding: bool | str,
    truncation: bool | str | None,
    max_length: int | None,
    model_max_length: int,
    return_tensors: str | None,
) -> tuple[str, str, int | None]:
    """(padding strategy, truncation strategy, max_length) of a call, by transformers' rules.

    `max_length` alone turns truncation on; padding to `"max_length"` or truncating without a `max_length`
    uses `model_max_length`, unless that is unset (above 1e20), in which case that padding / truncation is
    dropped, as transformers does.
    """
    padding_strategy = lookup(PADDING, padding, "padding")
    truncation_strategy = lookup(TRUNCATION, truncation, "truncation")
    if return_tensors not in (None, "pt", "np"):
        raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")
    if max_length is not None and padding is False and truncation is None:
        truncation_strategy = "longest_first"  # transformers' rule: max_length alone means truncate
    if padding_strategy == "longest" and max_length is not None and truncation_strategy == "do_not_truncate":
        warnings.warn(
            "max_length is ignored with padding=True and no truncation; use padding='max_length' to pad to it",
            stacklevel=3,
        )
    if max_length is None:
        unlimited = model_max_length > LARGE_INTEGER
        if padding_strategy == "max_length":
            padding_strategy = "do_not_pad" if unlimited else padding_strategy
            max_length = None if unlimited else model_max_length
        if truncation_strategy != "do_not_truncate":
            truncation_strategy = "do_not_truncate" if unlimited else truncation_strategy
            max_length = None if unlimited else model_max_length
    return padding_strategy, truncation_strategy, max_length


def check_texts(texts: Any, name: str) -> list[str]:
    """The texts of a call as a list; anything but strings, or an empty batch, raises naming the index."""
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, Sequence | np.ndarray):
        raise TypeError(f"{name} must be a string or a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError(f"{name} is an empty batch: pass at least one string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] is {type(t).__name__} ({t!r:.40}), expected a string")
    return list(texts)


def check_pairs(texts: list[str], text_pair: Any, batched: bool) -> list[str]:
    """The second sequences of a call, one per text (a string for a single text, a list for a batch)."""
    pairs = check_texts(text_pair, "text_pair")
    if batched == isinstance(text_pair, str) or len(pairs) != len(texts):
        raise ValueError(f"text_pair must match text: {len(texts)} text(s), got {text_pair!r:.80}")
    return pairs


def warn_if_too_long(sequences: list[list[int]], max_length: int | None, model_max_length: int) -> None:
    """transformers' warning for a sequence longer than the model's positions when no max_length was given."""
    longest = max(map(len, sequences))
    if max_length is None and longest > model_max_length:
        warnings.warn(
            f"A sequence has {longest} tokens, more than model_max_length={model_max_length}, the "
            "number of positions of the text model; pass truncation=True (and padding='max_length')",
            stacklevel=3,
        )


def padding_width(sequences: list[list[int]], padding_strategy: str, max_length: int | None) -> int | None:
    """The length a padding strategy pads to (None: no padding)."""
    if padding_strategy == "longest":
        return max(map(len, sequences))
    return max_length if padding_strategy == "max_length" else None


def pack(
    sequences: list[list[int]],
    width: int | None,
    pad_id: int,
    *,
    batched: bool,
    return_tensors: str | None,
    return_attention_mask: bool,
    padding_side: str = "right",
) -> BatchFeature:
    """Pad the sequences to `width` (None: no padding) on `padding_side` and convert to the requested type.

    Lists of ints for `return_tensors=None` (one list, not a batch of one, when not `batched`); int64 numpy
    arrays or torch tensors of shape (batch, length) otherwise, which need equal lengths after padding.
    """
    left = padding_side == "left"
    if return_tensors is None:
        pad = width or 0
        ids, masks = [], []
        for s in sequences:
            fill = pad - len(s)
            ids.append([pad_id] * fill + s if left else s + [pad_id] * fill)
            if return_attention_mask:
                masks.append([0] * fill + [1] * len(s) if left else [1] * len(s) + [0] * fill)
        features = {"input_ids": ids, **({"attention_mask": masks} if return_attention_mask else {})}
        return BatchFeature({k: v if batched else v[0] for k, v in features.items()})

    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    if lengths.max() > (width or lengths.min()):
        raise ValueError(
            f"Cannot make one tensor from sequences of {lengths.min()} to {lengths.max()} tokens; pass "
            "padding='max_length' and truncation=True (what SigLIP checkpoints expect)"
        )
    width = width or int(lengths.max())
    positions = np.arange(width)
    keep = positions >= (width - lengths)[:, None] if left else positions < lengths[:, None]
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    ids[keep] = np.fromiter(
        itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum())
    )
    features = {"input_ids": ids}
    if return_attention_mask:
        features["attention_mask"] = keep.astype(np.int64)
    if return_tensors == "pt":
        features = {k: torch.from_numpy(v) for k, v in features.items()}
    return BatchFeature(features)


def ids_to_decode(token_ids: Any) -> tuple[list, bool]:
    """The ids given to `decode` as a list, and whether they are a batch (2-D) rather than one sequence."""
    ids = token_ids.tolist() if isinstance(token_ids, np.ndarray | torch.Tensor) else token_ids
    if isinstance(ids, int | np.integer):
        ids = [ids]
    if isinstance(ids, str) or not isinstance(ids, Sequence):
        raise TypeError(
            f"token_ids must be ids (a list, array or tensor of ints), got {type(token_ids).__name__}"
        )
    return list(ids), bool(ids) and not isinstance(ids[0], int | np.integer)


class TokenizerBase(PushToHubMixin):
    """What `SiglipTokenizer` and `GemmaTokenizer` share around their own encoders: `encode`, the piece <-> id
    look-ups' checks, and `save_pretrained` writing all files or none.

    A subclass defines `_encode_ids` (the ids of each text, special tokens added and truncated), `__len__`
    (ids run from 0 to `len - 1`), `_token_to_id`, `_write_files`, and the attributes `model_max_length`,
    `model_input_names` and `pad_token_id`.
    """

    padding_side = "right"

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool | None = None,
        add_special_tokens: bool = True,
    ) -> BatchFeature:
        """Encode a text or a batch of texts (optionally paired with `text_pair`) into model inputs.

        Args:
            text: a string, or a list of strings (a batch).
            text_pair: second sequences, one per text; a pair is encoded as `A <eos> B <eos>` (the class's
                end-of-sequence token: `</s>` for SigLIP, `<eos>` for SigLIP 2).
            padding: `"max_length"` (pad with the pad token to `max_length`, default `model_max_length`),
                `True` / `"longest"` (to the longest of the batch) or `False` (none, the default as in
                transformers). SigLIP and SigLIP 2 checkpoints need `"max_length"` (see the class).
            truncation: `True` / `"longest_first"`, `"only_first"`, `"only_second"`, or `False` / `None`.
                Truncation keeps the end-of-sequence token last. Passing `max_length` without `padding`
                turns it on.
            max_length: length for padding and truncation (default `model_max_length` when either needs one;
                if that is unset, such padding or truncation is not done, as in transformers).
            return_tensors: None (lists of ints), `"pt"` (torch int64) or `"np"` (numpy int64).
            return_attention_mask: default: whether "attention_mask" is in `model_input_names`.
            add_special_tokens: add the class's special tokens (default True).

        A single string gives one sequence (lists of ints, or tensors of shape (1, length)). A batch gives
        one row per text; tensors need equal lengths, so pad, or the call raises. A non-string text or an
        empty batch raises with the offending index.
        """
        padding_strategy, truncation_strategy, max_length = resolve_strategies(
            padding, truncation, max_length, self.model_max_length, return_tensors
        )
        batched = not isinstance(text, str)
        texts = check_texts(text, "text")
        pairs = None if text_pair is None else check_pairs(texts, text_pair, batched)
        sequences = self._encode_ids(texts, pairs, add_special_tokens, truncation_strategy, max_length)
        warn_if_too_long(sequences, max_length, self.model_max_length)
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        return pack(
            sequences,
            padding_width(sequences, padding_strategy, max_length),
            self.pad_token_id,
            batched=batched,
            return_tensors=return_tensors,
            return_attention_mask=return_attention_mask,
            padding_side=self.padding_side,
        )

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
    ) -> list[int] | np.ndarray | torch.Tensor:
        """The `input_ids` of one text (and optional pair), with the options of `__call__`."""
        return self(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_tensors=return_tensors,
            return_attention_mask=False,
        )["input_ids"]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Id of a piece (or list of ids); a string that is not a piece gives the `<unk>` id."""
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(token) for token in tokens]

    def _check_id(self, token_id: int) -> int:
        if not 0 <= token_id < len(self):
            raise ValueError(f"Token id {token_id} is outside the vocabulary (0 to {len(self) - 1})")
        return token_id

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write the tokenizer's files (listed in the class's docstring), all or nothing; transformers loads
        them back to the same ids."""
        with staged_directory(save_directory) as staging:
            self._write_files(staging)
