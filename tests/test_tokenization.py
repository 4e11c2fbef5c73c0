"""SiglipTokenizer: identical ids and masks to transformers' SiglipTokenizer, files, and misuse."""

import itertools
import json
import random
import warnings

import numpy as np
import pytest
import torch
import transformers

from siglip import CheckpointError, SiglipTokenizer
from siglip.core.two_tower.sentencepiece import canonicalize_text

# Our own length warnings fire on purpose in the parity sweeps; test_too_long_sequences_warn checks them.
pytestmark = pytest.mark.filterwarnings("ignore:A sequence has", "ignore:max_length is ignored")

EDGE_CASES = [
    "", " ", "   ", "\n", "\t\n \r", "hello", "  hello", "hello  ", "Hello, World!", "A.B", "a\t\nb", "!!!", "...?!",
    "a photo of a cat.", "This is a photo of {}.", "The quick brown fox jumps over the lazy dog",
    # special-token text: split out verbatim, in every position and spacing
    "</s>", "</s>>", " </s> ", "</s></s>", "a </s> b", "a</s>b", "hello </s>", "  </s>x", "<unk>", "x<unk>y",
    "a<unk>", "<unk>b", "mixed</s>punct!!</s>", "<s>", "</S>", "<UNK>", "<pad>", "< /s>",
    # the SentencePiece word marker written in the text
    "▁", " ▁ ", "▁▁hi", "a▁b",
    # unicode: accents, case mapping, compatibility forms, CJK, emoji, unicode punctuation (kept)
    "Zürich", "São Paulo", "ÀÉÎ ÕÜ", "Straße", "İstanbul", "ﬁne ﬂow", "①②③", "ＡＢＣ　全角", "“quoted” — dash’s",
    "日本語のテキストです。", "中文文本，标点。", "한국어 텍스트", "🙂🙃 emoji 👍🏽", "e\u0301 combining", "zero\u200bwidth",
    "\x00\x01control", "Ελληνικά κείμενο", "кириллица Текст", "עברית", "مرحبا",
    # long input: truncation must keep </s> last
    "a" * 300, "word " * 100, "Supercalifragilisticexpialidocious " * 20,
]  # fmt: skip


def _corpus(size: int = 300, seed: int = 0) -> list[str]:
    """EDGE_CASES plus sentences cut from the CPython docs: mixed case, punctuation, code, numbers."""
    from pydoc_data.topics import topics

    words = " ".join(topics.values()).split(" ")  # keeps newlines and runs of whitespace inside words
    rng = random.Random(seed)
    sampled = []
    for _ in range(size):
        start = rng.randrange(len(words))
        sampled.append(" ".join(words[start : start + rng.randint(0, 40)]))
    return EDGE_CASES + sampled


CORPUS = _corpus()


@pytest.fixture(scope="module")
def pair(any_spiece_model):
    """(ours, transformers') tokenizers on one trained model."""
    return SiglipTokenizer(any_spiece_model), transformers.SiglipTokenizer(str(any_spiece_model))


@pytest.fixture(scope="module")
def tokenizer(spiece_model):
    return SiglipTokenizer(spiece_model)


def _hf(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' warnings are not what these tests check
        return call(*args, **kwargs)


def _assert_same_features(ours, theirs, context):
    assert set(ours) == set(theirs), context
    for key in theirs:
        mine, ref = ours[key], theirs[key]
        if isinstance(ref, list):
            assert mine == ref, (context, key)
        else:
            assert type(mine) is type(ref) and mine.dtype == ref.dtype, (context, key)
            assert mine.shape == ref.shape and (mine == ref).all(), (context, key)


# --- parity with transformers ---------------------------------------------------------------------------------
def test_ids_and_pieces_match_transformers_on_every_string(pair):
    ours, theirs = pair
    mismatches = [
        (text, ours(text)["input_ids"], _hf(theirs, text)["input_ids"])
        for text in CORPUS
        if ours(text)["input_ids"] != _hf(theirs, text)["input_ids"]
        or ours.tokenize(text) != theirs.tokenize(text)
    ]
    assert not mismatches, mismatches[:5]


def test_the_quirks_the_trick_of_transformers_causes_are_reproduced(spiece_models):
    # Text right after a special token gets no word-boundary marker, and with an identity normaliser a
    # leading space survives as an extra "▁": both differ from plain sp.encode(canonical text).
    path = spiece_models["identity"]
    ours, theirs = SiglipTokenizer(path), transformers.SiglipTokenizer(str(path))
    for text in ("a </s> b", "  hello"):
        plain = [*ours.sp_model.encode(canonicalize_text(text)), 1]
        assert ours(text)["input_ids"] == theirs(text)["input_ids"] != plain


@pytest.mark.parametrize("padding", [False, True, "max_length"])
def test_batch_padding_and_truncation_match_transformers(pair, padding):
    ours, theirs = pair
    texts = CORPUS[:40] + CORPUS[-20:]
    for truncation, max_length, return_tensors, mask in itertools.product(
        [None, True, "only_first"], [None, 1, 5, 64], [None, "np", "pt"], [None, True]
    ):
        kwargs = dict(
            padding=padding, truncation=truncation, max_length=max_length, return_attention_mask=mask
        )
        context = (padding, truncation, max_length, return_tensors, mask)
        try:
            reference = _hf(theirs, texts, return_tensors=return_tensors, **kwargs)
        except ValueError:  # ragged tensors: transformers and we both refuse ("pt")
            with pytest.raises(ValueError, match="padding='max_length' and truncation=True"):
                ours(texts, return_tensors=return_tensors, **kwargs)
            continue
        if return_tensors == "np" and reference["input_ids"].dtype == object:
            # transformers returns a useless object array for ragged sequences; we refuse, as for "pt"
            with pytest.raises(ValueError, match="Cannot make one tensor"):
                ours(texts, return_tensors=return_tensors, **kwargs)
            continue
        _assert_same_features(ours(texts, return_tensors=return_tensors, **kwargs), reference, context)


@pytest.mark.parametrize("truncation", [True, "longest_first", "only_first", "only_second", None])
def test_pairs_match_transformers(pair, truncation):
    ours, theirs = pair
    firsts, seconds = CORPUS[40:100], CORPUS[100:160]
    for max_length, padding in itertools.product([None, 3, 7, 12, 30], [False, "max_length"]):
        kwargs = dict(truncation=truncation, max_length=max_length, padding=padding)
        reference = _hf(theirs, firsts, seconds, **kwargs)
        _assert_same_features(ours(firsts, seconds, **kwargs), reference, kwargs)
        assert (
            ours(firsts[3], seconds[3], **kwargs)["input_ids"]
            == _hf(theirs, firsts[3], seconds[3], **kwargs)["input_ids"]
        )


def test_single_text_outputs_match_transformers(pair):
    ours, theirs = pair
    for return_tensors in (None, "np", "pt"):
        kwargs = dict(padding="max_length", truncation=True, return_tensors=return_tensors)
        _assert_same_features(
            ours("A photo of a dog.", **kwargs), _hf(theirs, "A photo of a dog.", **kwargs), kwargs
        )
    assert ours.encode("Hello world", max_length=3) == theirs.encode("Hello world", max_length=3)
    assert (
        ours("a b c", add_special_tokens=False)["input_ids"]
        == theirs("a b c", add_special_tokens=False)["input_ids"]
    )


def test_decode_matches_transformers(pair):
    ours, theirs = pair
    rng = random.Random(1)
    sequences = [
        [rng.randrange(ours.vocab_size) for _ in range(rng.randint(0, 20))] + [1] * (i % 3)
        for i in range(200)
    ]
    sequences += [ours(text)["input_ids"] for text in CORPUS[:60]]
    for ids, skip, clean_up in itertools.product(sequences, [False, True], [False, True]):
        kwargs = dict(skip_special_tokens=skip, clean_up_tokenization_spaces=clean_up)
        assert ours.decode(ids, **kwargs) == theirs.decode(ids, **kwargs), (ids, kwargs)
    batch = ours(CORPUS[:10], padding="max_length", return_tensors="pt")["input_ids"]
    assert ours.batch_decode(batch, skip_special_tokens=True) == theirs.batch_decode(
        batch, skip_special_tokens=True
    )
    assert ours.decode(batch) == theirs.decode(batch)  # 2-D input decodes each row


def test_vocabulary_accessors_match_transformers(pair):
    ours, theirs = pair
    assert len(ours) == len(theirs) == ours.vocab_size == theirs.vocab_size
    assert (ours.eos_token_id, ours.pad_token_id, ours.unk_token_id) == (1, 1, 2)
    assert (theirs.eos_token_id, theirs.pad_token_id, theirs.unk_token_id) == (1, 1, 2)
    assert ours.model_max_length == theirs.model_max_length == 64
    tokens = ["</s>", "<unk>", "<pad>", "▁the", "not-a-piece", "▁"]
    assert ours.convert_tokens_to_ids(tokens) == theirs.convert_tokens_to_ids(tokens)
    assert ours.convert_tokens_to_ids("▁the") == theirs.convert_tokens_to_ids("▁the")
    for skip in (False, True):
        ids = [0, 1, 2, 3, 10, 999]
        assert ours.convert_ids_to_tokens(ids, skip) == theirs.convert_ids_to_tokens(
            ids, skip_special_tokens=skip
        )
    assert ours.convert_ids_to_tokens(5) == theirs.convert_ids_to_tokens(5)
    assert ours.get_vocab() == theirs.get_vocab()


# --- behaviour, checked by hand -------------------------------------------------------------------------------
def test_option_spellings_are_aliases(tokenizer):
    texts = CORPUS[:20]
    for alias, value in (("longest", True), ("do_not_pad", False)):
        assert tokenizer(texts, padding=alias) == tokenizer(texts, padding=value)
    for alias, value in (("longest_first", True), (False, None), ("do_not_truncate", None)):
        assert tokenizer(texts, truncation=alias) == tokenizer(texts, truncation=value)


def test_canonicalization_by_hand():
    assert canonicalize_text("  Hello,   World!\t“Quote” — it’s\n") == "hello world “quote” — it’s"
    assert canonicalize_text("A.B-C_D", lower=False) == "ABCD"
    assert canonicalize_text("!!!  ") == ""


def test_eos_stays_last_and_pads_with_eos(tokenizer):
    out = tokenizer(["word " * 100, "short"], padding="max_length", truncation=True, return_tensors="np")
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == (2, 64) and ids.dtype == np.int64
    assert ids[0, -1] == 1 and (ids[0, :-1] != 1).all()  # truncated: eos kept last
    short = int(mask[1].sum())
    assert (ids[1, short - 1 :] == 1).all() and (mask[1, short:] == 0).all()  # eos, then eos padding
    assert tokenizer("", padding="max_length")["input_ids"] == [1] * 64


def test_batches_encode_in_one_sentencepiece_call(tokenizer, monkeypatch):
    calls = []
    encode = tokenizer.sp_model.encode
    monkeypatch.setattr(
        tokenizer.sp_model, "encode", lambda texts, **kw: calls.append(len(texts)) or encode(texts, **kw)
    )
    tokenizer(["a cat </s> on a mat", "a dog", "x <unk> y"] * 50, ["pair"] * 150, padding=True)
    assert calls == [5 * 50 + 150]  # all chunks (text split at special tokens) of texts and pairs at once


def test_model_input_names_decide_the_attention_mask(spiece_model):
    assert "attention_mask" in SiglipTokenizer(spiece_model)("a")
    assert list(SiglipTokenizer(spiece_model, model_input_names=["input_ids"])("a")) == ["input_ids"]
    assert "attention_mask" in SiglipTokenizer(spiece_model, model_input_names=["input_ids"])(
        "a", return_attention_mask=True
    )


def test_output_supports_attribute_access_and_to(tokenizer):
    out = tokenizer(["a", "b c"], padding=True, return_tensors="pt")
    assert out.input_ids is out["input_ids"] and out.input_ids.dtype == torch.int64
    assert out.to(torch.float16).input_ids.dtype == torch.int64  # ids are never cast
    with pytest.raises(AttributeError, match="pixel_values"):
        _ = out.pixel_values


# --- files --------------------------------------------------------------------------------------------------
def test_save_and_load_round_trip_and_transformers_reads_ours(spiece_model, tmp_path):
    ours = SiglipTokenizer(spiece_model, model_max_length=16, model_input_names=["input_ids"])
    ours.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "spiece.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    reloaded = SiglipTokenizer.from_pretrained(tmp_path)
    theirs = transformers.SiglipTokenizer.from_pretrained(tmp_path)
    kwargs = dict(padding="max_length", truncation=True, return_tensors="pt")
    expected = ours(CORPUS[:50], **kwargs)
    assert list(expected) == ["input_ids"] and expected["input_ids"].shape == (50, 16)
    for other in (reloaded(CORPUS[:50], **kwargs), _hf(theirs, CORPUS[:50], **kwargs)):
        _assert_same_features(other, expected, "round trip")


def test_loads_what_transformers_saves(spiece_model, tmp_path):
    theirs = transformers.SiglipTokenizer(
        str(spiece_model), model_input_names=["input_ids"], model_max_length=16
    )
    theirs.save_pretrained(tmp_path)
    ours = SiglipTokenizer.from_pretrained(
        tmp_path, model_max_length=32
    )  # keyword arguments override the file
    assert ours.model_input_names == ["input_ids"] and ours.model_max_length == 32
    assert (
        ours(CORPUS[:30], padding="max_length", truncation=True)["input_ids"]
        == _hf(theirs, CORPUS[:30], padding="max_length", truncation=True, max_length=32)["input_ids"]
    )


def test_tokens_saved_as_added_token_dicts_are_read(spiece_model, tmp_path):
    SiglipTokenizer(spiece_model).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["eos_token"] = {"content": "</s>", "lstrip": True, "rstrip": True, "__type": "AddedToken"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert SiglipTokenizer.from_pretrained(tmp_path).eos_token == "</s>"


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"padding_side": "left"}, "padding_side='left'"),
        ({"additional_special_tokens": ["<extra>"]}, "additional_special_tokens"),
        ({"added_tokens_decoder": {"5": {"content": "<extra>"}}}, "added token '<extra>'"),
    ],
)
def test_unsupported_settings_in_files_raise(spiece_model, tmp_path, setting, message):
    SiglipTokenizer(spiece_model).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, **setting}))
    with pytest.raises(CheckpointError, match=message):
        SiglipTokenizer.from_pretrained(tmp_path)


def test_missing_or_broken_vocabulary_raises(tmp_path):
    with pytest.raises(CheckpointError, match=r"spiece\.model"):
        SiglipTokenizer.from_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(CheckpointError, match="Cannot load SentencePiece model"):
        SiglipTokenizer.from_pretrained(tmp_path)


# --- misuse ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda t: t(["ok", 3, "ok"]), TypeError, r"text\[1\] is int"),
        (lambda t: t(["ok", None]), TypeError, r"text\[1\] is NoneType"),
        (lambda t: t(42), TypeError, "text must be a string or a list of strings"),
        (lambda t: t([]), ValueError, "empty batch"),
        (lambda t: t(["a", "b"], ["x"]), ValueError, "text_pair must match text"),
        (lambda t: t("a", ["x", "y"]), ValueError, "text_pair must match text"),
        (lambda t: t(["a"], [b"x"]), TypeError, r"text_pair\[0\] is bytes"),
        (lambda t: t("a", padding="max"), ValueError, "padding must be one of"),
        (lambda t: t("a", truncation="yes"), ValueError, "truncation must be one of"),
        (lambda t: t("a", return_tensors="tf"), ValueError, "return_tensors"),
        (
            lambda t: t(["a", "b c d"], return_tensors="pt"),
            ValueError,
            "padding='max_length' and truncation=True",
        ),
        (
            lambda t: t(["a", "b c d " * 40], padding="max_length", return_tensors="pt"),
            ValueError,
            "Cannot make one tensor",
        ),
        (lambda t: t.decode([5, 100000]), ValueError, "Token id 100000 is outside the vocabulary"),
        (lambda t: t.decode([-1]), ValueError, "Token id -1"),
        (lambda t: t.decode("hello"), TypeError, "token_ids must be ids"),
    ],
)
def test_bad_input_raises_a_clear_error(tokenizer, call, error, message):
    with pytest.raises(error, match=message):
        call(tokenizer)


def test_special_tokens_must_be_in_the_vocabulary(spiece_model):
    with pytest.raises(ValueError, match="'<eos>' is not a piece"):
        SiglipTokenizer(spiece_model, eos_token="<eos>")


def test_too_long_sequences_warn(tokenizer):
    with pytest.warns(UserWarning, match="more than model_max_length=64"):
        tokenizer("word " * 100)
    with pytest.warns(UserWarning, match="max_length is ignored with padding=True"):
        tokenizer(["a", "b"], padding=True, max_length=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer("word " * 100, padding="max_length", truncation=True)
