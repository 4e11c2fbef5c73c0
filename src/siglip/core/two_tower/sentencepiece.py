"""SigLIP's text tokenizer: big_vision's text canonicalisation in front of a SentencePiece model.

The ids are exactly those of transformers' `SiglipTokenizer` (the reference for every released checkpoint):

1. `</s>` and `<unk>` written in the text are split out verbatim and become their ids;
2. every other piece of text is canonicalised: lower-cased, ASCII punctuation deleted, whitespace runs
   collapsed to one space, stripped;
3. SentencePiece encodes it (`spiece.model`, with the model's own normaliser and word-boundary prefix);
4. `</s>` (id 1) is appended, unless the sequence already ends with it, and kept last under truncation;
   padding uses the same id.

transformers encodes step 3 as `"<unk>" + text` and then drops the pieces of `"<unk>"`, with a "▁" put in
front of the whole text. That trick decides the ids in corner cases (leading whitespace, text right after a
special token), so it is reproduced as is. All chunks of a batch go through one native
`SentencePieceProcessor.encode` call, and padding is done with numpy: no Python loop per token.

The checkpoints were trained on 64 tokens padded with `</s>`, and the model pools the last position: encode
with `padding="max_length", truncation=True` (`SiglipProcessor` does so by default) or results degrade.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch

from ...errors import CheckpointError
from ..features import write_json
from ..hub import Checkpoint, HubOptions, locate, read_json
from .tokenization import (
    TokenizerBase,
    check_texts,
    ids_to_decode,
)

VOCAB_FILE = "spiece.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
SPIECE_UNDERLINE = "▁"
_GEMMA_FILES = ("tokenizer.json", "tokenizer.model")  # what SigLIP 2 checkpoints ship instead

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]+")  # ASCII only: ’ “ ” — are kept
_CONFIG_KEYS = ("eos_token", "unk_token", "pad_token", "model_max_length", "do_lower_case", "model_input_names",
                "clean_up_tokenization_spaces", "sp_model_kwargs")  # fmt: skip
# tokenizer_config.json settings we do not implement, with the values we accept (absent is fine too);
# transformers 4.x writes `extra_special_tokens` as a dictionary (of named tokens), 5.x as a list.
_FIXED_SETTINGS = {"padding_side": ("right",), "truncation_side": ("right",), "split_special_tokens": (False,),
                   "additional_special_tokens": ([],), "extra_special_tokens": ([], {})}  # fmt: skip


def canonicalize_text(text: str, lower: bool = True) -> str:
    """big_vision's `canonicalize_text`: lower-case, delete ASCII punctuation, collapse whitespace, strip."""
    if lower:
        text = text.lower()
    return " ".join(_PUNCTUATION.sub("", text).split())  # str.split() and re's \s agree on whitespace


class SiglipTokenizer(TokenizerBase):
    """Tokenizer of SigLIP (v1) checkpoints, with transformers' `SiglipTokenizer` API and ids.

    Args:
        vocab_file: the SentencePiece model (`spiece.model`).
        eos_token, unk_token, pad_token: special tokens; they must be pieces of the model (ids 1, 2, 1 in
            every released checkpoint: padding is done with `</s>`).
        model_max_length: the length `padding="max_length"` and `truncation=True` use by default (64; 16 for
            `siglip-so400m-patch14-224`).
        do_lower_case: lower-case during canonicalisation (always on in released checkpoints).
        model_input_names: the outputs of `__call__`; "attention_mask" is returned only if listed here.
            The class default lists it (as transformers does), while released `tokenizer_config.json` files
            list only "input_ids": SigLIP's text tower was trained without a mask.
        clean_up_tokenization_spaces: default of `decode`'s option of the same name.
        sp_model_kwargs: passed to `sentencepiece.SentencePieceProcessor` (e.g. sampling options).

    Calling the tokenizer returns a `BatchFeature` with `input_ids` (and `attention_mask`): lists of ints
    by default, `return_tensors="pt"` / `"np"` for int64 tensors / arrays of shape (batch, length). SigLIP
    checkpoints need `padding="max_length"` (their text tower was trained on sequences padded with `</s>`).
    `save_pretrained` writes `spiece.model`, `tokenizer_config.json` and `special_tokens_map.json`.
    """

    def __init__(
        self,
        vocab_file: str | os.PathLike,
        eos_token: str = "</s>",
        unk_token: str = "<unk>",
        pad_token: str = "</s>",
        model_max_length: int = 64,
        do_lower_case: bool = True,
        model_input_names: list[str] | None = None,
        clean_up_tokenization_spaces: bool = False,
        sp_model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.vocab_file = os.fspath(vocab_file)
        self.sp_model_kwargs = dict(sp_model_kwargs or {})
        try:
            self.sp_model = spm.SentencePieceProcessor(model_file=self.vocab_file, **self.sp_model_kwargs)
        except (OSError, RuntimeError) as err:
            raise CheckpointError(f"Cannot load SentencePiece model '{self.vocab_file}': {err}") from err
        self.eos_token, self.unk_token, self.pad_token = eos_token, unk_token, pad_token
        self._special_ids = {token: self._special_id(token) for token in (eos_token, unk_token, pad_token)}
        self._special_tokens = {i: token for token, i in self._special_ids.items()}
        self.eos_token_id, self.unk_token_id, self.pad_token_id = (
            self._special_ids[token] for token in (eos_token, unk_token, pad_token)
        )
        self.model_max_length = int(model_max_length)
        self.do_lower_case = bool(do_lower_case)
        self.model_input_names = list(model_input_names or ("input_ids", "attention_mask"))
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)

        longest_first = sorted(self._special_ids, key=len, reverse=True)
        self._special_split = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")
        self._prefix_length = len(self.sp_model.encode(self.unk_token))
        self._underline_id = self.sp_model.piece_to_id(SPIECE_UNDERLINE)

    def _special_id(self, token: str) -> int:
        token_id = self.sp_model.piece_to_id(token)
        if self.sp_model.id_to_piece(token_id) != token:
            raise ValueError(
                f"Special token {token!r} is not a piece of the SentencePiece model {self.vocab_file}"
            )
        return token_id

    # --- vocabulary ---------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.sp_model.get_piece_size()

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        return {self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}

    def _token_to_id(self, token: str) -> int:
        return self._special_ids.get(token, self.sp_model.piece_to_id(token))

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> str | list[str]:
        """Piece of an id (or list of pieces); `skip_special_tokens` drops `</s>` and `<unk>`."""
        if isinstance(ids, int):
            return self.sp_model.id_to_piece(self._check_id(ids))
        return [
            self.sp_model.id_to_piece(self._check_id(int(i)))
            for i in ids
            if not (skip_special_tokens and int(i) in self._special_tokens)
        ]

    # --- encoding -----------------------------------------------------------------------------------------
    def canonicalize_text(self, text: str) -> str:
        """The canonical form SentencePiece sees (lower-cased if `do_lower_case`, no ASCII punctuation)."""
        return canonicalize_text(text, lower=self.do_lower_case)

    def tokenize(self, text: str) -> list[str]:
        """SentencePiece pieces of `text` (no `</s>` added), as transformers' `tokenize`."""
        return self._encode_texts(check_texts([text], "text"), out_type=str)[0]

    def _encode_texts(self, texts: list[str], out_type: type) -> list[list]:
        """Pieces (`out_type=str`) or ids (`out_type=int`) of each text, without special tokens added.

        Every returned list is new: callers may extend it in place.
        """
        chunks: list[str] = []  # every canonical chunk of the batch, prefixed, for the one encode call
        # per text: the index of its only chunk, or a list of items: a chunk index or [a special token]
        plans: list[int | list] = []
        for text in texts:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
            if self._special_split.search(text) is None:  # the usual case: one chunk, no special token
                plans.append(len(chunks))
                chunks.append(self.unk_token + self.canonicalize_text(text))
                continue
            plan = []
            for i, part in enumerate(self._special_split.split(text)):
                if i % 2:  # a special token
                    plan.append([part if out_type is str else self._special_ids[part]])
                elif i == 0 or part.strip():  # an empty chunk would add no pieces
                    plan.append(len(chunks))
                    chunks.append(self.unk_token + self.canonicalize_text(part))
            plans.append(plan)

        n = self._prefix_length
        encoded = [e[n:] if len(e) >= n else e for e in self.sp_model.encode(chunks, out_type=out_type)]
        underline = SPIECE_UNDERLINE if out_type is str else self._underline_id
        results = []
        for plan in plans:
            if isinstance(plan, int):
                results.append(encoded[plan])
                continue
            if len(plan) > 1 and encoded[plan[0]] == [underline] and isinstance(plan[1], list):
                plan = plan[1:]  # transformers drops a lone "▁" in front of a special token
            tokens = []
            for item in plan:
                tokens.extend(item if isinstance(item, list) else encoded[item])
            results.append(tokens)
        return results

    def _encode_ids(
        self,
        texts: list[str],
        pairs: list[str] | None,
        add_special_tokens: bool,
        truncation: str,
        max_length: int | None,
    ) -> list[list[int]]:
        encoded = self._encode_texts(texts + (pairs or []), out_type=int)
        firsts, seconds = encoded[: len(texts)], (encoded[len(texts) :] if pairs else [None] * len(texts))
        num_special = (1 if pairs is None else 2) if add_special_tokens else 0
        return [
            self._build(ids, pair_ids, num_special, truncation, max_length)
            for ids, pair_ids in zip(firsts, seconds, strict=True)
        ]

    def _build(
        self,
        ids: list[int],
        pair_ids: list[int] | None,
        num_special: int,
        truncation: str,
        max_length: int | None,
    ) -> list[int]:
        """Truncate (as transformers does) and add `</s>` to one example; may change `ids` in place."""
        excess = len(ids) + len(pair_ids or ()) + num_special - (max_length or 0)
        if truncation != "do_not_truncate" and max_length and excess > 0:
            ids, pair_ids = _truncate(ids, pair_ids, excess, truncation)
        if num_special:  # </s> after each sequence, unless it already ends with one (written in the text)
            for sequence in (ids, pair_ids):
                if sequence is not None and (not sequence or sequence[-1] != self.eos_token_id):
                    sequence.append(self.eos_token_id)
        return ids if pair_ids is None else ids + pair_ids

    # --- decoding -----------------------------------------------------------------------------------------
    def decode(
        self,
        token_ids: int | Sequence[int] | Sequence[Sequence[int]] | np.ndarray | torch.Tensor,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str | list[str]:
        """Text of a sequence of ids; a batch (2-D) gives a list of texts.

        Special tokens are written verbatim unless `skip_special_tokens`. The canonicalisation is not
        undone: decoded text is lower-case and without ASCII punctuation.
        """
        ids, is_batch = ids_to_decode(token_ids)
        if is_batch:
            return self.batch_decode(ids, skip_special_tokens, clean_up_tokenization_spaces)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        text = self._decode_ids([self._check_id(int(i)) for i in ids], skip_special_tokens)
        return _clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def batch_decode(
        self,
        sequences: Sequence[Sequence[int]] | np.ndarray | torch.Tensor,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[str]:
        """`decode` of each sequence of a batch."""
        return [self.decode(seq, skip_special_tokens, clean_up_tokenization_spaces) for seq in sequences]

    def _decode_ids(self, ids: list[int], skip_special_tokens: bool) -> str:
        # transformers' layout: each special token is glued to the text before it, with one space in front
        # of that text when the previous token was not special.
        out, run, previous_special = "", [], False
        for i in ids:
            token = self._special_tokens.get(i)
            if token is None:
                run.append(i)
                previous_special = False
            elif not skip_special_tokens:
                out += ("" if previous_special else " ") + self.sp_model.decode(run) + token
                run, previous_special = [], True
        return (out + self.sp_model.decode(run)).strip()

    # --- files --------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike | Checkpoint, **kwargs: Any
    ) -> SiglipTokenizer:
        """Load `spiece.model`, `tokenizer_config.json` and `special_tokens_map.json` from a directory or hub id.

        `revision`, `cache_dir`, `local_files_only` and `token` go to huggingface_hub; other keyword
        arguments override the values of the config file (e.g. `model_max_length=16`). Settings this class
        does not implement (left padding, extra special tokens, ...) raise a `CheckpointError`.
        """
        checkpoint = locate(pretrained_model_name_or_path, HubOptions.pop_from(kwargs))
        vocab_file = checkpoint.file(VOCAB_FILE, required=False)
        if vocab_file is None:
            gemma = [name for name in _GEMMA_FILES if checkpoint.file(name, required=False) is not None]
            if gemma:
                raise CheckpointError(
                    f"'{checkpoint}' has no '{VOCAB_FILE}': its '{gemma[0]}' is a Gemma (SigLIP 2) tokenizer, "
                    "which SiglipTokenizer cannot read; load it with siglip's GemmaTokenizer (Siglip2Tokenizer "
                    "for NaFlex checkpoints) or load_tokenizer(), which picks the class"
                )
            vocab_file = checkpoint.file(VOCAB_FILE)  # raises, naming the missing file
        config: dict[str, Any] = {}
        for name in (SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE):  # the config file wins
            path = checkpoint.file(name, required=False)
            if path is not None:
                config.update(read_json(path))
        _check_supported(config, checkpoint)
        init_kwargs = {
            key: _token_content(config[key]) for key in _CONFIG_KEYS if config.get(key) is not None
        }
        return cls(vocab_file, **{**init_kwargs, **kwargs})

    def _write_files(self, directory: Path, processor_class: str | None = None) -> None:
        (directory / VOCAB_FILE).write_bytes(self.sp_model.serialized_model_proto())
        special = {"eos_token": self.eos_token, "pad_token": self.pad_token, "unk_token": self.unk_token}
        added_token = {
            "lstrip": True,
            "normalized": False,
            "rstrip": True,
            "single_word": False,
            "special": True,
        }
        config = {
            "added_tokens_decoder": {
                str(i): {"content": token, **added_token} for i, token in sorted(self._special_tokens.items())
            },
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "do_lower_case": self.do_lower_case,
            "model_input_names": self.model_input_names,
            "model_max_length": self.model_max_length,
            "sp_model_kwargs": self.sp_model_kwargs,
            "tokenizer_class": type(self).__name__,
            **special,
        }
        if processor_class is not None:
            config["processor_class"] = processor_class
        write_json(directory / TOKENIZER_CONFIG_FILE, config)
        write_json(directory / SPECIAL_TOKENS_MAP_FILE, special)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
            f"do_lower_case={self.do_lower_case}, model_input_names={self.model_input_names})"
        )


def _truncate(
    ids: list[int], pair_ids: list[int] | None, excess: int, strategy: str
) -> tuple[list[int], list[int] | None]:
    """Remove `excess` tokens from the right, split between the two sequences as transformers does."""
    if strategy == "only_second":  # without a second sequence: nothing is cut
        return ids, (pair_ids[:-excess] if pair_ids else pair_ids)
    if pair_ids is None or strategy == "only_first":
        return ids[:-excess], pair_ids
    # longest_first: first even out the two lengths, then take the rest from both, the first one rounding down
    first = min(abs(len(pair_ids) - len(ids)), excess)
    rest = excess - first
    if len(ids) > len(pair_ids):
        cut, pair_cut = first + rest // 2, rest - rest // 2
    else:
        cut, pair_cut = rest // 2, first + rest - rest // 2
    return (ids[:-cut] if cut else ids), (pair_ids[:-pair_cut] if pair_cut and pair_ids else pair_ids)


def _clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: no space before punctuation and English contractions."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):  # fmt: skip
        text = text.replace(before, after)
    return text


def _token_content(value: Any) -> Any:
    """Special tokens are saved as plain strings or as `AddedToken` dictionaries."""
    return value["content"] if isinstance(value, dict) and "content" in value else value


def _check_supported(config: dict[str, Any], source: Any) -> None:
    problems = [
        f"{key}={config[key]!r}"
        for key, supported in _FIXED_SETTINGS.items()
        if config.get(key) not in (None, *supported)
    ]
    specials = {
        "</s>",
        "<unk>",
        *(_token_content(config.get(k)) for k in ("eos_token", "unk_token", "pad_token")),
    }
    problems += [
        f"added token {_token_content(t)!r}"
        for t in (config.get("added_tokens_decoder") or {}).values()
        if _token_content(t) not in specials
    ]
    if problems:
        raise CheckpointError(f"Tokenizer settings of '{source}' are not supported: {', '.join(problems)}")
