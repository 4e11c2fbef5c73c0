"""SiglipProcessor: the reference call contract, our padding default, model inputs and files (with each
library's default image backend, the same: torchvision's pixels)."""

import warnings

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from siglip import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

TEXTS = ["a photo of a cat.", "A PHOTO of two dogs, playing in the snow!", "", "word " * 100]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(4)]


@pytest.fixture(scope="module")
def processor(spiece_model):
    tokenizer = SiglipTokenizer(spiece_model, model_input_names=["input_ids"])  # as released checkpoints
    return SiglipProcessor(SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer)


@pytest.fixture(scope="module")
def reference(spiece_model):
    tokenizer = transformers.SiglipTokenizer(str(spiece_model), model_input_names=["input_ids"])
    image_processor = transformers.SiglipImageProcessor(
        size={"height": 32, "width": 32}
    )  # as ours, its default
    return transformers.SiglipProcessor(image_processor, tokenizer)


def _assert_same(ours, theirs):
    assert set(ours) == set(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key


def test_default_pads_text_to_max_length_like_transformers_with_explicit_padding(
    processor, reference, images
):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default gives no warning
        ours = processor(text=TEXTS, images=images)
    theirs = reference(
        text=TEXTS, images=images, padding="max_length", truncation=True, max_length=64, return_tensors="pt"
    )
    _assert_same(ours, theirs)
    assert ours["input_ids"].shape == (4, 64) and ours["pixel_values"].shape == (4, 3, 32, 32)
    assert processor.model_input_names == ["input_ids", "pixel_values"]


def test_other_padding_is_honoured_with_a_warning(processor, reference):
    with pytest.warns(UserWarning, match="padding='max_length'"):
        ours = processor(text=TEXTS[:3], padding="longest")
    _assert_same(ours, reference(text=TEXTS[:3], padding="longest", truncation=True, return_tensors="pt"))
    assert ours["input_ids"].shape[1] < 64
    with pytest.warns(UserWarning, match="degrades results"):
        unpadded = processor(text="a cat", padding=False, return_tensors=None)
    assert unpadded["input_ids"] == processor.tokenizer("a cat")["input_ids"]


def test_options_reach_the_tokenizer_and_the_image_processor(processor, reference, images):
    ours = processor(
        text=TEXTS, images=images, max_length=16, resample=0, do_normalize=False, return_tensors="np"
    )
    theirs = reference(
        text=TEXTS, images=images, padding="max_length", truncation=True, max_length=16, resample=0,
        do_normalize=False, return_tensors="np",
    )  # fmt: skip
    for key in theirs:
        assert np.array_equal(ours[key], theirs[key]), key
    with_mask = processor(text=TEXTS, return_attention_mask=True)
    assert with_mask["attention_mask"].shape == (4, 64)
    assert with_mask["attention_mask"][2].sum() == 1  # "" is just </s>


def test_text_only_and_images_only(processor, images):
    assert list(processor(text="a cat")) == ["input_ids"]
    assert list(processor(images=images[0])) == ["pixel_values"]


def test_outputs_unpack_into_the_model(processor, images):
    config = SiglipConfig(
        text_config=dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
    )  # fmt: skip
    model = SiglipModel(config).eval()
    inputs = processor(text=TEXTS, images=images).to("cpu")
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits_per_image.shape == (4, 4)
    # the attention mask, when the tokenizer returns it, is a model input too
    with torch.no_grad():
        model(**processor(text=TEXTS, images=images, return_attention_mask=True))


def test_decode_goes_to_the_tokenizer(processor):
    ids = processor(text=TEXTS[:2])["input_ids"]
    assert processor.batch_decode(ids, skip_special_tokens=True) == [
        "a photo of a cat",
        "a photo of two dogs playing in the snow",
    ]
    assert processor.decode(ids[0]) == processor.tokenizer.decode(ids[0])


def test_save_and_load_round_trip_and_transformers_reads_ours(processor, images, tmp_path):
    processor.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {
        "spiece.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
    }
    expected = processor(text=TEXTS, images=images)
    _assert_same(SiglipProcessor.from_pretrained(tmp_path)(text=TEXTS, images=images), expected)
    theirs = transformers.SiglipProcessor.from_pretrained(tmp_path)  # its default backend, as ours
    _assert_same(
        theirs(text=TEXTS, images=images, padding="max_length", truncation=True, return_tensors="pt"),
        expected,
    )


def test_loads_what_transformers_saves(reference, images, tmp_path):
    reference.save_pretrained(tmp_path)
    ours = SiglipProcessor.from_pretrained(tmp_path)
    _assert_same(ours(text=TEXTS, images=images), reference(text=TEXTS, images=images, padding="max_length",
                                                              truncation=True, return_tensors="pt"))  # fmt: skip


def test_misuse_raises(processor, images):
    with pytest.raises(ValueError, match="Pass text, images or both"):
        processor()
    with pytest.raises(TypeError, match="in that order"):
        SiglipProcessor(processor.tokenizer, processor.image_processor)
    with pytest.raises(TypeError, match="do_resise"):
        processor(text="a", images=images, do_resise=False)
    with pytest.raises(TypeError, match="without images"):
        processor(text="a", do_resize=False)
    with pytest.raises(TypeError, match=r"text\[1\] is int"):
        processor(text=["a", 1])
