"""GemmaTokenizer / Siglip2Tokenizer (SigLIP 2): identical ids and masks to transformers 5.24's classes on the
files SigLIP 2 checkpoints ship, round trips of those files, `load_tokenizer`, `SiglipProcessor` with a Gemma
tokenizer, the lowercasing rule, and misuse.

The tokenizer is a SentencePiece BPE with byte fallback and Gemma's special-token layout (pad 0, eos 1, bos 2,
unk 3, mask 4, user-defined `<start_of_turn>`... pieces) trained at test time on `pydoc_data.topics`, saved as
`tokenizer.model` and as the `tokenizer.json` transformers converts it to. The `tokenizer_config.json` files
are written as the hub checkpoints have them (our best knowledge, not checked against the hub: the 4.x
converter's `GemmaTokenizerFast(add_bos_token=False, add_eos_token=True, padding_side="right",
model_input_names=["input_ids"])` with Gemma's `added_tokens_decoder` and no `model_max_length`), and also
with `model_max_length: 64` and as transformers 5.24 saves them.
"""

import itertools
import json
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from _material import train_gemma_like
from siglip import CheckpointError, SiglipProcessor, SiglipTokenizer
from siglip.core.siglip.image_processing import SiglipImageProcessor
from siglip.core.two_tower.gemma import GemmaTokenizer, Siglip2Tokenizer, lowercase, needs_lowercase
from siglip.core.two_tower.processing import load_tokenizer

pytestmark = pytest.mark.filterwarnings(
    "ignore:A sequence has", "ignore:max_length is ignored", "ignore:`max_length` is ignored"
)

EDGE_CASES = [
    "",
    " ",
    "   ",
    "\n",
    "\t\n \r",
    "hello",
    "  hello",
    "hello  ",
    "Hello, World!",
    "A.B",
    "a\t\nb",
    "a  \t\t  b",
    "a photo of a cat.",
    "A PHOTO OF A CAT",
    "The Quick Brown Fox",
    "ÀÉÎ ÕÜ Straße İstanbul ΣΑΣ",
    "ﬁne ﬂow ①②③",
    "ＡＢＣ　全角",
    "“quoted” — dash’s",
    "日本語のテキストです。",
    "中文文本，标点。",
    "한국어 텍스트",
    "🙂🙃 emoji 👍🏽🐱",
    "e\u0301 combining",
    "zero\u200bwidth",
    "\x00\x01control",
    "Ελληνικά",
    "кириллица Текст",
    "עברית",
    "مرحبا",
    "<eos>",
    "a <eos> b",
    "x<eos>",
    "<bos>hi",
    "<pad><pad>",
    "<unk>",
    "<mask> token",
    "<EOS>",
    "< eos>",
    "<start_of_turn>user\nhi<end_of_turn>",
    "para\n\nbreak",
    "<table><tr>",
    "▁",
    "▁▁hi",
    "a▁b",
    "1234567890",
    "x" * 300,
    "word " * 100,
    "🐱" * 40,
    "\n" * 30,
    " " * 70,
]


def _strings() -> list[str]:
    """300+ strings: the edge cases, documentation lines in every case, and random unicode."""
    from pydoc_data.topics import topics

    rng = random.Random(0)
    lines = sorted({line for text in topics.values() for line in text.splitlines() if line.strip()})
    picked = rng.sample(lines, 150)
    cased = [
        line.upper() if i % 3 == 0 else line.title() if i % 3 == 1 else line for i, line in enumerate(picked)
    ]
    alphabet = "aZ 9\t\n.,!é日本😀🐱ß İΣ<>▁" + "".join(map(chr, range(0x400, 0x420)))
    noise = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(100)]
    return EDGE_CASES + cased + noise


STRINGS = _strings()


def _hub_config(tokenizer_class: str, oracle: transformers.PreTrainedTokenizerBase, **extra) -> dict:
    """tokenizer_config.json as the 4.x converter wrote it for the SigLIP 2 checkpoints (see the docstring)."""
    decoder = {str(i): t.__getstate__() for i, t in oracle.added_tokens_decoder.items()}
    return {
        "add_bos_token": False, "add_eos_token": True, "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"], "bos_token": "<bos>",
        "clean_up_tokenization_spaces": False, "eos_token": "<eos>", "mask_token": "<mask>",
        "model_input_names": ["input_ids"], "pad_token": "<pad>", "padding_side": "right",
        "sp_model_kwargs": {}, "spaces_between_special_tokens": False, "tokenizer_class": tokenizer_class,
        "unk_token": "<unk>", "use_default_system_prompt": False, **extra,
    }  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> checkpoint folder. "spm": tokenizer.model only; "hub": tokenizer.json + tokenizer.model + the
    hub-style config (no model_max_length); "hub64": the same with model_max_length 64; "naflex": the
    hub-style config naming Siglip2Tokenizer; "saved5": as transformers 5.24 saves a GemmaTokenizer."""
    root = tmp_path_factory.mktemp("gemma")
    spm_dir = root / "spm"
    spm_dir.mkdir()
    (spm_dir / "tokenizer.model").write_bytes(train_gemma_like())
    base = {"add_bos_token": False, "add_eos_token": True, "padding_side": "right", "model_max_length": 64,
            "model_input_names": ["input_ids"], "tokenizer_class": "GemmaTokenizer"}  # fmt: skip
    (spm_dir / "tokenizer_config.json").write_text(json.dumps(base))
    oracle = transformers.GemmaTokenizer.from_pretrained(spm_dir)
    oracle.save_pretrained(root / "saved5")
    folders = {"spm": spm_dir, "saved5": root / "saved5"}
    for name, cls, extra in (("hub", "GemmaTokenizer", {}), ("hub64", "GemmaTokenizer", {"model_max_length": 64}),
                             ("naflex", "Siglip2Tokenizer", {"processor_class": "Siglip2Processor"})):  # fmt: skip
        folders[name] = root / name
        folders[name].mkdir()
        shutil.copy(root / "saved5" / "tokenizer.json", folders[name])
        shutil.copy(spm_dir / "tokenizer.model", folders[name])
        (folders[name] / "tokenizer_config.json").write_text(json.dumps(_hub_config(cls, oracle, **extra)))
        special = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
        (folders[name] / "special_tokens_map.json").write_text(json.dumps(special))
    return folders


PAIRS = [(GemmaTokenizer, transformers.GemmaTokenizer), (Siglip2Tokenizer, transformers.Siglip2Tokenizer)]
OPTIONS = [
    dict(padding=padding, truncation=truncation, max_length=max_length)
    for padding, truncation, max_length in itertools.product(
        [False, True, "longest", "max_length"], [None, False, True, "longest_first", "only_first"], [None, 24]
    )
]


def _outcome(tokenizer, *args, **kwargs):
    """What a call gives: its outputs as plain lists, or "raises" (ours a ValueError; the oracle's backend
    raises a plain Exception for a max_length too short to truncate to)."""
    try:
        out = tokenizer(*args, **kwargs)
    except Exception as err:
        assert isinstance(err, ValueError) or not isinstance(tokenizer, GemmaTokenizer), err
        return "raises"
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in out.items()}


@pytest.mark.parametrize("folder", ["spm", "hub", "hub64", "naflex", "saved5"])
@pytest.mark.parametrize(("ours_cls", "oracle_cls"), PAIRS, ids=["gemma", "siglip2"])
def test_ids_identical_on_every_option(folders, folder, ours_cls, oracle_cls):
    ours, oracle = ours_cls.from_pretrained(folders[folder]), oracle_cls.from_pretrained(folders[folder])
    assert (ours.padding_side, ours.model_max_length) == (oracle.padding_side, oracle.model_max_length)
    calls = [({}, kw) for kw in OPTIONS] + [
        ({}, dict(padding="max_length", truncation=True, max_length=64, return_attention_mask=mask))
        for mask in (True, False)
    ]
    calls += [({}, dict(add_special_tokens=False, padding=True, truncation=True, max_length=10))]
    calls += [
        ({}, dict(padding="max_length", max_length=64, truncation=True, return_tensors=t))
        for t in ("pt", "np")
    ]
    calls += [({}, dict(padding=True, return_tensors="pt"))]
    for _, kwargs in calls:
        assert _outcome(ours, STRINGS, **kwargs) == _outcome(oracle, STRINGS, **kwargs), kwargs
    for text in STRINGS[:60]:  # single strings: unbatched lists
        assert ours(text) == dict(oracle(text)), text
        assert ours.tokenize(text) == oracle.tokenize(text), text


@pytest.mark.parametrize(("ours_cls", "oracle_cls"), PAIRS, ids=["gemma", "siglip2"])
def test_pairs_and_truncation_strategies(folders, ours_cls, oracle_cls):
    ours, oracle = ours_cls.from_pretrained(folders["hub64"]), oracle_cls.from_pretrained(folders["hub64"])
    firsts, seconds = STRINGS[:80], STRINGS[80:160]
    for truncation, max_length, padding in itertools.product(
        [True, "longest_first", "only_first", "only_second", False], [8, 30, None], [False, "max_length"]
    ):
        kwargs = dict(truncation=truncation, max_length=max_length, padding=padding)
        assert _outcome(ours, firsts, seconds, **kwargs) == _outcome(oracle, firsts, seconds, **kwargs), (
            kwargs
        )
    for max_length in (0, 1, 2):  # room for the eos alone, or not even that: the same outcome
        for args in ((["a b c"],), (["a b c"], ["d e"])):
            kwargs = dict(max_length=max_length, truncation=True)
            assert _outcome(ours, *args, **kwargs) == _outcome(oracle, *args, **kwargs), (args, max_length)


@pytest.mark.parametrize(("ours_cls", "oracle_cls"), PAIRS, ids=["gemma", "siglip2"])
def test_decode_and_vocabulary_match(folders, ours_cls, oracle_cls):
    ours, oracle = ours_cls.from_pretrained(folders["hub"]), oracle_cls.from_pretrained(folders["hub"])
    assert (ours.vocab_size, len(ours), ours.get_vocab()) == (
        oracle.vocab_size,
        len(oracle),
        oracle.get_vocab(),
    )
    assert (ours.pad_token_id, ours.eos_token_id, ours.bos_token_id, ours.unk_token_id) == (0, 1, 2, 3)
    assert ours.model_input_names == oracle.model_input_names == ["input_ids"]
    batch = oracle(STRINGS, padding=True)["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(batch, skip_special_tokens=skip) == oracle.batch_decode(
            batch, skip_special_tokens=skip
        )
        assert ours.decode(torch.tensor(batch[7]), skip) == oracle.decode(batch[7], skip_special_tokens=skip)
        assert ours.convert_ids_to_tokens(batch[3], skip) == oracle.convert_ids_to_tokens(batch[3], skip)
    assert ours.convert_tokens_to_ids(["<eos>", "no such piece"]) == oracle.convert_tokens_to_ids(
        ["<eos>", "no such piece"]
    )


@pytest.mark.parametrize("folder", ["spm", "hub", "naflex"])
@pytest.mark.parametrize(("ours_cls", "oracle_cls"), PAIRS, ids=["gemma", "siglip2"])
def test_round_trips(folders, folder, ours_cls, oracle_cls, tmp_path):
    kwargs = dict(padding="max_length", truncation=True, max_length=64)
    expected = oracle_cls.from_pretrained(folders[folder])(STRINGS, **kwargs)["input_ids"]
    # the oracle saves, we load
    oracle_cls.from_pretrained(folders[folder]).save_pretrained(tmp_path / "oracle")
    assert ours_cls.from_pretrained(tmp_path / "oracle")(STRINGS, **kwargs)["input_ids"] == expected
    # we save, the oracle (and we) load
    ours_cls.from_pretrained(folders[folder]).save_pretrained(tmp_path / "ours")
    assert (tmp_path / "ours" / "tokenizer.model").is_file() == (folder == "spm")
    for loaded in (
        oracle_cls.from_pretrained(tmp_path / "ours"),
        ours_cls.from_pretrained(tmp_path / "ours"),
    ):
        assert loaded(STRINGS, **kwargs)["input_ids"] == expected
        assert loaded.padding_side == "right"


def test_lowercasing_rule(folders, spiece_model, tmp_path):
    gemma, siglip2 = (
        GemmaTokenizer.from_pretrained(folders["hub"]),
        Siglip2Tokenizer.from_pretrained(folders["hub"]),
    )
    (tmp_path / "spiece.model").write_bytes(spiece_model.read_bytes())
    assert (needs_lowercase(gemma), needs_lowercase(siglip2)) == (True, False)
    assert needs_lowercase(SiglipTokenizer.from_pretrained(tmp_path)) is False
    assert gemma("A Cat")["input_ids"] != siglip2("A Cat")["input_ids"]
    # what the rule buys: lowercased text through GemmaTokenizer gives Siglip2Tokenizer's ids
    texts = [t for t in STRINGS if "<" not in t]  # special tokens are matched before lowercasing
    assert gemma([lowercase(t) for t in texts])["input_ids"] == siglip2(texts)["input_ids"]
    assert lowercase("ΣΑΣ Straße") == "σασ straße" != "ΣΑΣ Straße".lower()  # not str.lower: no final sigma


def test_load_tokenizer_picks_the_class(folders, spiece_model, tmp_path):
    assert type(load_tokenizer(folders["hub"])) is GemmaTokenizer
    assert type(load_tokenizer(folders["naflex"])) is Siglip2Tokenizer
    for name in ("tokenizer.json", "tokenizer.model"):  # no config: by the files present
        (tmp_path / name).mkdir(exist_ok=True)
        shutil.copy(folders["hub"] / name, tmp_path / name / name)
        assert type(load_tokenizer(tmp_path / name)) is GemmaTokenizer
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "spiece.model").write_bytes(spiece_model.read_bytes())
    assert type(load_tokenizer(tmp_path / "v1")) is SiglipTokenizer
    (tmp_path / "none").mkdir()
    with pytest.raises(CheckpointError, match=r"spiece.model.*tokenizer.json.*tokenizer.model"):
        load_tokenizer(tmp_path / "none")
    (tmp_path / "none" / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer"}')
    with pytest.raises(CheckpointError, match=r"tokenizer_config.json.*BertTokenizer"):
        load_tokenizer(tmp_path / "none")


def test_processor_takes_a_gemma_tokenizer_and_pads_to_64(folders, tmp_path):
    folder = tmp_path / "fixres"
    shutil.copytree(folders["hub"], folder)
    SiglipImageProcessor().save_pretrained(folder)
    processor = SiglipProcessor.from_pretrained(folder)
    assert type(processor.tokenizer) is GemmaTokenizer
    ids = processor(text=STRINGS)["input_ids"]
    oracle = transformers.GemmaTokenizer.from_pretrained(folder)
    expected = oracle(STRINGS, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    assert torch.equal(ids, expected["input_ids"])
    # the text tower's positions decide when the tokenizer config has no model_max_length
    (folder / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 16}}))
    assert SiglipProcessor.from_pretrained(folder)(text=["a cat"])["input_ids"].shape == (1, 16)
    processor.save_pretrained(tmp_path / "saved")
    assert torch.equal(SiglipProcessor.from_pretrained(tmp_path / "saved")(text=STRINGS)["input_ids"], ids)
    with pytest.raises(TypeError, match="SiglipTokenizer or GemmaTokenizer"):
        SiglipProcessor(processor.image_processor, oracle)


def test_siglip_tokenizer_on_a_gemma_checkpoint_names_the_class(folders):
    for folder in ("hub", "spm"):
        with pytest.raises(
            CheckpointError, match=r"no 'spiece.model'.*tokenizer\.(json|model)'.*GemmaTokenizer"
        ):
            SiglipTokenizer.from_pretrained(folders[folder])


def test_bad_files(folders, spiece_model, tmp_path):
    with pytest.raises(CheckpointError, match=r"neither 'tokenizer.json' nor 'tokenizer.model'"):
        GemmaTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(spiece_model.read_bytes())  # a unigram model
    with pytest.raises(CheckpointError, match=r"tokenizer.model.*not a SentencePiece BPE model"):
        GemmaTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(CheckpointError, match=r"tokenizer.model.*not a SentencePiece model"):
        GemmaTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"tokenizer.json.*not a tokenizers file"):
        GemmaTokenizer.from_pretrained(tmp_path)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments.*do_lowercase"):
        GemmaTokenizer.from_pretrained(folders["hub"], do_lowercase=True)


def test_bad_arguments(folders):
    tokenizer = GemmaTokenizer.from_pretrained(folders["hub64"])
    with pytest.raises(TypeError, match="text must be a string"):
        tokenizer(123)
    with pytest.raises(TypeError, match=r"text\[1\] is int"):
        tokenizer(["a", 5])
    with pytest.raises(ValueError, match="empty batch"):
        tokenizer([])
    with pytest.raises(ValueError, match="padding must be one of"):
        tokenizer("a", padding="bogus")
    with pytest.raises(ValueError, match="truncation must be one of"):
        tokenizer("a", truncation="middle")
    with pytest.raises(ValueError, match="return_tensors"):
        tokenizer("a", return_tensors="tf")
    with pytest.raises(ValueError, match="text_pair must match text"):
        tokenizer(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="Cannot make one tensor"):
        tokenizer(["a", "a b c d e f"], return_tensors="pt")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([len(tokenizer)])
    with pytest.raises(ValueError, match="padding_side must be"):
        GemmaTokenizer({"<unk>": 0}, [], padding_side="middle")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tokenizer("a", padding="max_length", truncation=True, return_tensors="np")[
            "input_ids"
        ].shape == (1, 64)
    assert np.array_equal(tokenizer.encode("a b", return_tensors="np"), [tokenizer("a b")["input_ids"]])
