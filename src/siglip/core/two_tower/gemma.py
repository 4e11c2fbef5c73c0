"""SigLIP 2's text tokenizers: Gemma's SentencePiece BPE (256,000 pieces, byte fallback) on the `tokenizers`
library, with the ids, masks, padding and truncation transformers 5.24 gives for the same files.

- `GemmaTokenizer`: what the fixed-resolution checkpoints (`google/siglip2-*-patch16-{224,256,384,512}`,
  model_type "siglip") name in `tokenizer_config.json`. It does **not** lowercase, as in transformers.
- `Siglip2Tokenizer`: what transformers loads for the NaFlex checkpoints (model_type "siglip2"): the same
  tokenizer with a Lowercase normaliser in front.

Lowercasing, the one rule (`needs_lowercase`): SigLIP 2 was trained on lowercased text (big_vision:
`lower | tok(model="gemma", bos="no", eos="sticky", length=64)`); without lowercasing, zero-shot accuracy
drops (big_vision issues 166 and 187). The tokenizers stay identical to transformers' (a `GemmaTokenizer`
keeps case), so code that feeds a SigLIP 2 model text lowercases it first with `lowercase` when
`needs_lowercase(tokenizer)` says so: True for a `GemmaTokenizer`, False for a `Siglip2Tokenizer` (it
lowercases itself) and for a SigLIP 1 `SiglipTokenizer` (its canonicalisation lowercases). `lowercase` is the
`tokenizers` Lowercase normaliser `Siglip2Tokenizer` applies, character by character: it differs from
`str.lower` (which writes a word-final "Σ" as "ς"), and with it a `GemmaTokenizer` gives exactly the ids of a
`Siglip2Tokenizer` on the same files (special tokens such as "<eos>" written in the text aside).

How transformers 5.24 builds these tokenizers, and so how this module does (`from_pretrained`):
1. The BPE model (vocabulary and merges) comes from `tokenizer.json` when present, else from `tokenizer.model`
   (merges: every split of a piece into two pieces, ranked by the piece's id). The normaliser (" " -> "▁"),
   pre-tokeniser and decoder are always Gemma's, whatever `tokenizer.json` says.
2. Added tokens come from `tokenizer_config.json`'s `added_tokens_decoder`; without one, from
   `special_tokens_map.json` and `tokenizer.json`'s `added_tokens` (or `tokenizer.model`'s control and
   user-defined pieces). The named special tokens and `extra_special_tokens` are added too.
3. With `tokenizer.json`, its post-processor decides `<bos>` / `<eos>` (the config's `add_bos_token` and
   `add_eos_token` are ignored unless passed to `from_pretrained`); with `tokenizer.model` alone, they do.
4. Truncation is the `tokenizers` library's (it keeps `<eos>` last); padding uses `<pad>` (id 0) on
   `padding_side`.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from ...errors import CheckpointError
from ..features import write_json
from ..hub import Checkpoint, HubOptions, locate, read_json
from .tokenization import (
    VERY_LARGE_INTEGER,
    TokenizerBase,
    check_texts,
    ids_to_decode,
)

__all__ = ["GemmaTokenizer", "Siglip2Tokenizer", "lowercase", "needs_lowercase"]

TOKENIZER_FILE = "tokenizer.json"
SPM_FILE = "tokenizer.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
_NAMED_TOKENS = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
                 "mask_token": "<mask>"}  # the named special tokens and their defaults  # fmt: skip
_SIDES = ("right", "left")
_LOWERCASE = normalizers.Lowercase()
_SPM_CONTROL, _SPM_USER_DEFINED, _SPM_BPE = 3, 4, 2  # SentencePiece's piece types and model type


def needs_lowercase(tokenizer: Any) -> bool:
    """Whether text must be lowercased before `tokenizer` to give a SigLIP 2 model what it was trained on.

    True only for a `GemmaTokenizer` (fixed-resolution SigLIP 2): transformers' `GemmaTokenizer` keeps case
    and ours matches it, while the model was trained on lowercased text. See the module docstring.
    """
    return isinstance(tokenizer, GemmaTokenizer) and not tokenizer.lowercases


def lowercase(text: str) -> str:
    """`text` lowercased exactly as `Siglip2Tokenizer` does (the `tokenizers` Lowercase normaliser)."""
    return _LOWERCASE.normalize_str(text)


class GemmaTokenizer(TokenizerBase):
    """Gemma's tokenizer as SigLIP 2 uses it, with transformers' `GemmaTokenizer` API and ids.

    Args:
        vocab: piece -> id of the BPE model (Gemma: `<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3, `<mask>` 4).
        merges: the BPE merges, highest priority first.
        bos_token, eos_token, unk_token, pad_token, mask_token: the named special tokens.
        add_bos_token, add_eos_token: put `<bos>` first / `<eos>` last (SigLIP 2: False / True). Used when no
            `post_processor` is given.
        post_processor: a `tokenizers` post-processor to use as it is (the one of a `tokenizer.json`).
        added_tokens: tokens split out of the text before the BPE (`tokenizers.AddedToken`s or strings).
        extra_special_tokens: more special tokens (skipped by `skip_special_tokens`), added if missing.
        padding_side, truncation_side: "right" or "left" (transformers' class defaults: left, right; the
            SigLIP 2 checkpoints say right).
        model_max_length: the default length of `padding="max_length"` and truncation; unset (1e30) means
            none, as in transformers: then pass `max_length=64`.
        model_input_names: the outputs of `__call__`; "attention_mask" is returned only if listed here
            (SigLIP 2 checkpoints list only "input_ids": the text tower was trained without a mask).
        vocab_file: the `tokenizer.model` this tokenizer was built from, copied by `save_pretrained`.

    Calling the tokenizer returns a `BatchFeature` with `input_ids` (and `attention_mask`): lists of ints
    by default, `return_tensors="pt"` / `"np"` for int64 tensors / arrays of shape (batch, length).
    `save_pretrained` writes `tokenizer.json` and `tokenizer_config.json` (and `tokenizer.model` if loaded from
    one), in a form transformers 4.x (from 4.38) and 5.x load.
    """

    lowercases: ClassVar[bool] = False
    saved_class: ClassVar[str] = "GemmaTokenizer"  # the `tokenizer_class` save_pretrained writes

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        bos_token: str = "<bos>",
        eos_token: str = "<eos>",
        unk_token: str = "<unk>",
        pad_token: str = "<pad>",
        mask_token: str = "<mask>",
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        post_processor: processors.PostProcessor | None = None,
        added_tokens: Sequence[AddedToken | str] = (),
        extra_special_tokens: Sequence[AddedToken | str] = (),
        padding_side: str = "left",
        truncation_side: str = "right",
        model_max_length: int = VERY_LARGE_INTEGER,
        model_input_names: Sequence[str] | None = None,
        vocab_file: str | os.PathLike | None = None,
    ) -> None:
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in _SIDES:
                raise ValueError(f"{name} must be 'right' or 'left', got {side!r}")
        named = {"bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token,
                 "pad_token": pad_token, "mask_token": mask_token}  # fmt: skip
        backend = Tokenizer(
            BPE(
                vocab=dict(vocab),
                merges=list(merges),
                unk_token=str(unk_token),
                fuse_unk=True,
                byte_fallback=True,
            )
        )
        backend.normalizer = normalizers.Replace(" ", "▁")
        backend.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
        backend.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
        backend.add_tokens(_tokens_to_add(added_tokens, [*named.values(), *extra_special_tokens], named))
        if self.lowercases:  # after the added tokens, as transformers' Siglip2Tokenizer does
            backend.normalizer = normalizers.Sequence([_LOWERCASE, backend.normalizer])
        self._tokenizer = backend
        self._lock = threading.Lock()  # each call sets the backend's truncation

        self.bos_token, self.eos_token, self.unk_token = str(bos_token), str(eos_token), str(unk_token)
        self.pad_token, self.mask_token = str(pad_token), str(mask_token)
        self.extra_special_tokens = [str(token) for token in extra_special_tokens]
        self.bos_token_id, self.eos_token_id, self.unk_token_id, self.pad_token_id, self.mask_token_id = (
            backend.token_to_id(token) for token in (self.bos_token, self.eos_token, self.unk_token,
                                                     self.pad_token, self.mask_token)
        )  # fmt: skip
        self.all_special_ids = sorted(
            {backend.token_to_id(str(t)) for t in [*named.values(), *extra_special_tokens]} - {None}
        )
        if post_processor is None:
            post_processor = self._template(add_bos_token, add_eos_token)
        backend.post_processor = post_processor
        self.padding_side, self.truncation_side = padding_side, truncation_side
        self.model_max_length = int(model_max_length)
        self.model_input_names = list(model_input_names or ("input_ids", "attention_mask"))
        self.vocab_file = None if vocab_file is None else os.fspath(vocab_file)

    def _template(self, add_bos: bool, add_eos: bool) -> processors.TemplateProcessing:
        """transformers' post-processor for `add_bos_token` / `add_eos_token`: `[<bos>] $A [<eos>]`."""

        def sequence(name: str, type_id: int) -> str:
            bos = [f"{self.bos_token}:{type_id}"] * add_bos
            return " ".join([*bos, f"${name}:{type_id}", *[f"{self.eos_token}:{type_id}"] * add_eos])

        special = [(self.bos_token, self.bos_token_id)] * add_bos + [
            (self.eos_token, self.eos_token_id)
        ] * add_eos
        single = sequence("A", 0)
        return processors.TemplateProcessing(
            single=single, pair=f"{single} {sequence('B', 1)}", special_tokens=special
        )

    @property
    def add_bos_token(self) -> bool:
        """Whether `<bos>` is put first (read from the post-processor, whatever configured it)."""
        ids = self._tokenizer.post_process(self._tokenizer.encode("", add_special_tokens=False)).ids
        return bool(ids) and ids[0] == self.bos_token_id

    @property
    def add_eos_token(self) -> bool:
        """Whether `<eos>` is put last (read from the post-processor, whatever configured it)."""
        ids = self._tokenizer.post_process(self._tokenizer.encode("", add_special_tokens=False)).ids
        return bool(ids) and ids[-1] == self.eos_token_id

    # --- vocabulary ---------------------------------------------------------------------------------------
    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The `tokenizers.Tokenizer` doing the work (as transformers' attribute of the same name)."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Size of the BPE vocabulary, without added tokens."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """Piece -> id, added tokens included."""
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def _token_to_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        return self.unk_token_id if token_id is None else token_id

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> str | list[str]:
        """Piece of an id (or list of pieces); `skip_special_tokens` drops the special tokens."""
        if isinstance(ids, int | np.integer):
            return self._tokenizer.id_to_token(self._check_id(int(ids)))
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(self._check_id(int(i))) for i in ids if int(i) not in skip]

    # --- encoding -----------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[str]:
        """Pieces of `text`, without special tokens added, as transformers' `tokenize`."""
        return self._encode(check_texts([text], "text"), False, "do_not_truncate", None)[0].tokens

    def _encode(
        self, inputs: list, add_special_tokens: bool, truncation: str, max_length: int | None
    ) -> list:
        """`tokenizers` encodings of the texts (or pairs), truncated as transformers has the backend do it."""
        with self._lock:
            if truncation == "do_not_truncate":
                self._tokenizer.no_truncation()
            else:
                self._tokenizer.enable_truncation(
                    max_length, stride=0, strategy=truncation, direction=self.truncation_side
                )
            try:
                return self._tokenizer.encode_batch(inputs, add_special_tokens=add_special_tokens)
            except Exception as err:  # the backend raises plain Exceptions ("Truncation error: ...")
                raise ValueError(
                    f"Cannot encode with truncation={truncation!r}, max_length={max_length}: {err}"
                ) from err

    def _encode_ids(
        self,
        texts: list[str],
        pairs: list[str] | None,
        add_special_tokens: bool,
        truncation: str,
        max_length: int | None,
    ) -> list[list[int]]:
        inputs: list = texts if pairs is None else list(zip(texts, pairs, strict=True))
        return [encoding.ids for encoding in self._encode(inputs, add_special_tokens, truncation, max_length)]

    # --- decoding -----------------------------------------------------------------------------------------
    def decode(
        self,
        token_ids: int | Sequence[int] | Sequence[Sequence[int]] | np.ndarray | torch.Tensor,
        skip_special_tokens: bool = False,
    ) -> str | list[str]:
        """Text of a sequence of ids (bytes of byte-fallback pieces joined back); a batch (2-D) gives a list.

        Special tokens are written verbatim unless `skip_special_tokens`. Lowercasing is not undone.
        """
        ids, is_batch = ids_to_decode(token_ids)
        if is_batch:
            return self.batch_decode(ids, skip_special_tokens)
        return self._tokenizer.decode(
            [self._check_id(int(i)) for i in ids], skip_special_tokens=skip_special_tokens
        )

    def batch_decode(
        self,
        sequences: Sequence[Sequence[int]] | np.ndarray | torch.Tensor,
        skip_special_tokens: bool = False,
    ) -> list[str]:
        """`decode` of each sequence of a batch."""
        return [self.decode(sequence, skip_special_tokens) for sequence in sequences]

    # --- files --------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike | Checkpoint, **kwargs: Any
    ) -> GemmaTokenizer:
        """Load `tokenizer.json` (else `tokenizer.model`), `tokenizer_config.json` and `special_tokens_map.json`
        from a directory, hub id or `Checkpoint`, as transformers 5.24 does (see the module docstring).

        `revision`, `cache_dir`, `local_files_only` and `token` go to huggingface_hub; other keyword
        arguments override the values of the config file (e.g. `model_max_length=64`, `padding_side="right"`).
        """
        checkpoint = locate(pretrained_model_name_or_path, HubOptions.pop_from(kwargs))
        unknown = set(kwargs) - _SETTINGS
        if unknown:
            raise TypeError(
                f"{cls.__name__}.from_pretrained() got unexpected keyword arguments {sorted(unknown)}"
            )
        json_file = checkpoint.file(TOKENIZER_FILE, required=False)
        spm_file = None if json_file is not None else checkpoint.file(SPM_FILE, required=False)
        if json_file is None and spm_file is None:
            raise CheckpointError(
                f"'{checkpoint}' has no Gemma tokenizer: neither '{TOKENIZER_FILE}' nor '{SPM_FILE}' was found"
            )
        config_file = checkpoint.file(TOKENIZER_CONFIG_FILE, required=False)
        config = read_json(config_file) if config_file is not None else {}
        if json_file is not None:  # its post-processor decides, unless the caller says otherwise
            config.pop("add_bos_token", None)
            config.pop("add_eos_token", None)
        config.update(kwargs)
        decoder = config.get("added_tokens_decoder")
        added: list[AddedToken] = []
        if decoder is not None:
            added = [_added_token(decoder[key], config_file) for key in sorted(decoder, key=int)]
        else:  # transformers' legacy path: special_tokens_map.json wins over the config
            map_file = checkpoint.file(SPECIAL_TOKENS_MAP_FILE, required=False)
            legacy = read_json(map_file) if map_file is not None else {}
            for key in _NAMED_TOKENS.keys() & legacy.keys() - kwargs.keys():
                value = legacy[key]
                config[key] = AddedToken(**{**value, "special": True}) if isinstance(value, dict) else value
        extras = config.get("extra_special_tokens", config.get("additional_special_tokens"))
        if json_file is not None:
            vocab, merges, post_processor, file_added, sides = _read_tokenizer_json(json_file)
            config = {**sides, **config}
            added = added if decoder is not None else file_added
        else:
            vocab, spm_added = _read_spm(spm_file)
            merges, post_processor = _merges(vocab), None
            extras = spm_added if extras is None else extras
        by_content = {token.content: token for token in added}
        named = {key: config.get(key, default) for key, default in _NAMED_TOKENS.items()}
        named = {
            key: by_content.get(str(value), _token_value(value, config_file)) for key, value in named.items()
        }
        if isinstance(extras, dict):
            extras = list(extras.values())
        return cls(
            vocab,
            merges,
            **named,
            add_bos_token=bool(config.get("add_bos_token", False)),
            add_eos_token=bool(config.get("add_eos_token", False)),
            post_processor=post_processor,
            added_tokens=added,
            extra_special_tokens=[_token_value(t, config_file) for t in extras or ()],
            padding_side=config.get("padding_side", "left"),
            truncation_side=config.get("truncation_side", "right"),
            model_max_length=config.get("model_max_length") or VERY_LARGE_INTEGER,
            model_input_names=config.get("model_input_names"),
            vocab_file=spm_file,
        )

    def _write_files(self, directory: Path, processor_class: str | None = None) -> None:
        self._tokenizer.save(str(directory / TOKENIZER_FILE))
        if self.vocab_file is not None:
            shutil.copyfile(self.vocab_file, directory / SPM_FILE)
        added = self._tokenizer.get_added_tokens_decoder()
        config = {
            "add_bos_token": self.add_bos_token,
            "add_eos_token": self.add_eos_token,
            "added_tokens_decoder": {str(i): _token_dict(token) for i, token in sorted(added.items())},
            # the 4.x name, which 5.x reads too (4.x's `extra_special_tokens` is a dict of named tokens)
            "additional_special_tokens": self.extra_special_tokens,
            "bos_token": self.bos_token,
            "clean_up_tokenization_spaces": False,
            "eos_token": self.eos_token,
            "mask_token": self.mask_token,
            "model_input_names": self.model_input_names,
            "model_max_length": self.model_max_length,
            "pad_token": self.pad_token,
            "padding_side": self.padding_side,
            "tokenizer_class": self.saved_class,
            "truncation_side": self.truncation_side,
            "unk_token": self.unk_token,
        }
        if self.lowercases:
            config["do_lower_case"] = True
        if processor_class is not None:
            config["processor_class"] = processor_class
        write_json(directory / TOKENIZER_CONFIG_FILE, config)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
            f"padding_side={self.padding_side!r}, add_bos_token={self.add_bos_token}, "
            f"add_eos_token={self.add_eos_token}, model_input_names={self.model_input_names})"
        )


class Siglip2Tokenizer(GemmaTokenizer):
    """transformers' `Siglip2Tokenizer` (NaFlex checkpoints): `GemmaTokenizer` with a Lowercase normaliser.

    The lowercasing is unconditional, as in transformers 5.24 (`do_lower_case` in a config is ignored).

    `save_pretrained` names the class `PreTrainedTokenizerFast` (with `do_lower_case: true`): transformers 4.x
    has no `Siglip2Tokenizer`, and 5.x reads `GemmaTokenizer` as a tokenizer that keeps case unless a
    `config.json` beside it says "siglip2". `PreTrainedTokenizerFast` runs `tokenizer.json` as written, its
    Lowercase normaliser included, so transformers 4.x and 5.x give this tokenizer's ids (5.x loads a
    `Siglip2Tokenizer` where `config.json` says "siglip2").
    """

    lowercases: ClassVar[bool] = True
    saved_class: ClassVar[str] = "PreTrainedTokenizerFast"


# keyword arguments `from_pretrained` takes as overrides of the config files
_SETTINGS = {*_NAMED_TOKENS, "add_bos_token", "add_eos_token", "padding_side", "truncation_side", "model_max_length",
             "model_input_names", "extra_special_tokens", "additional_special_tokens"}  # fmt: skip


def _tokens_to_add(
    added: Sequence[AddedToken | str], special: Sequence[AddedToken | str], named: dict
) -> list:
    """The added tokens, then the special tokens not among them, as transformers adds them to the backend.

    Strings become special tokens; an added token that is also a named special token is marked special.
    """
    tokens = [t if isinstance(t, AddedToken) else AddedToken(t, special=True) for t in added]
    contents = {t.content for t in tokens}
    for token in special:
        if str(token) not in contents:
            tokens.append(token if isinstance(token, AddedToken) else AddedToken(str(token), special=True))
            contents.add(str(token))
    named_contents = {str(value) for value in named.values()}
    for token in tokens:
        if not token.special and token.content in named_contents:
            token.special = True
    return tokens


def _added_token(value: Any, source: Any) -> AddedToken:
    """An `AddedToken` from its config form (a dictionary of its fields, or a plain string)."""
    if isinstance(value, str):
        return AddedToken(value, special=True)
    if not isinstance(value, dict) or not isinstance(value.get("content"), str):
        raise CheckpointError(f"'{source}': an added token must be a string or a dictionary with a 'content'")
    fields = {k: value[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in value}
    return AddedToken(value["content"], **fields)


def _token_value(value: Any, source: Any) -> AddedToken | str | None:
    """A special token of a config file: a string, or an `AddedToken` saved as a dictionary."""
    return _added_token(value, source) if isinstance(value, dict) else value


def _token_dict(token: AddedToken) -> dict[str, Any]:
    return {"content": token.content, "lstrip": token.lstrip, "normalized": token.normalized,
            "rstrip": token.rstrip, "single_word": token.single_word, "special": token.special}  # fmt: skip


def _read_tokenizer_json(path: Path) -> tuple[dict, list, Any, list[AddedToken], dict[str, str]]:
    """Vocabulary, merges, post-processor, added tokens and padding / truncation sides of a `tokenizer.json`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"'{path}' is not a tokenizers file: {err!r}") from err
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise CheckpointError(f"'{path}' holds a {model.get('type')} model; a Gemma tokenizer is a BPE model")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    # Read the post-processor (and padding / truncation) with the library, without the large vocabulary.
    shell = {**data, "added_tokens": [], "model": {**model, "vocab": {}, "merges": []}}
    try:
        settings = Tokenizer.from_str(json.dumps(shell))
    except Exception as err:  # the library raises plain Exceptions
        raise CheckpointError(f"'{path}' cannot be read by the tokenizers library: {err}") from err
    sides = {}
    if settings.padding is not None:
        sides["padding_side"] = settings.padding["direction"]
    if settings.truncation is not None:
        sides["truncation_side"] = settings.truncation["direction"]
    added = [
        _added_token(token, path) for token in sorted(data.get("added_tokens", []), key=lambda t: t["id"])
    ]
    return model["vocab"], merges, settings.post_processor, added, sides


def _read_spm(path: Path) -> tuple[dict[str, int], list[AddedToken]]:
    """Vocabulary of a SentencePiece BPE `tokenizer.model`, and its control / user-defined pieces as added
    tokens (control ones special), which transformers takes as the extra special tokens."""
    try:
        pieces, model_type = _spm_pieces(path.read_bytes())
    except (IndexError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"'{path}' is not a SentencePiece model: {err!r}") from err
    if model_type != _SPM_BPE or not pieces:
        raise CheckpointError(f"'{path}' is not a SentencePiece BPE model (Gemma's tokenizer is one)")
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    added = [
        AddedToken(piece, normalized=False, special=kind == _SPM_CONTROL)
        for piece, kind in pieces
        if kind in (_SPM_CONTROL, _SPM_USER_DEFINED)
    ]
    return vocab, added


def _merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges of a SentencePiece vocabulary, as transformers derives them: every split of a piece into
    two pieces, ranked by the piece's id (SentencePiece numbers BPE pieces in merge order), then by the
    length of the left part."""
    merges = []
    for piece in sorted(vocab, key=vocab.__getitem__):
        merges.extend(
            (piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab
        )
    return merges


def _spm_pieces(data: bytes) -> tuple[list[tuple[str, int]], int]:
    """(piece, type) of each piece of a serialized SentencePiece `ModelProto`, and its model type.

    A few lines of protobuf wire format instead of a protobuf dependency: `pieces` is field 1 (each with
    `piece` 1 and `type` 3, default NORMAL 1), `trainer_spec` field 2 (with `model_type` 3, default UNIGRAM 1).
    """
    pieces, model_type = [], 1
    for field, value in _proto_fields(data):
        if field == 1:
            entry = dict(_proto_fields(value))
            pieces.append((entry[1].decode("utf-8"), entry.get(3, 1)))
        elif field == 2:
            model_type = dict(_proto_fields(value)).get(3, 1)
    return pieces, model_type


def _proto_fields(data: bytes) -> Iterator[tuple[int, Any]]:
    """(field number, value) of a protobuf message: ints for varints, bytes for everything else."""
    position = 0

    def varint() -> int:
        nonlocal position
        result = shift = 0
        while True:
            byte = data[position]
            position += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return result

    while position < len(data):
        key = varint()
        wire = key & 7
        if wire == 0:
            yield key >> 3, varint()
            continue
        size = {1: 8, 5: 4}.get(wire) or (varint() if wire == 2 else None)
        if size is None:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield key >> 3, data[position : position + size]
        position += size
