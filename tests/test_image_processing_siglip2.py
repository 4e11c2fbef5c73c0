"""Siglip2ImageProcessorPil and Siglip2Processor: identical to transformers' `Siglip2ImageProcessorPil` and
`Siglip2Processor` on SigLIP's image matrix (every PIL mode, extreme sizes, arrays, EXIF files), files that
both libraries read, and clear errors for what NaFlex cannot represent.

transformers' default, torchvision backend (`Siglip2ImageProcessor`) is compared with ours (`Siglip2ImageProcessor`)
in test_image_backends.py.

One deliberate difference: transformers' `Siglip2ImageProcessorPil` does not convert to RGB unless
`do_convert_rgb=True` and raises on grey, RGBA, palette or CMYK images; ours converts them as SigLIP's does.
"""

import io
import json
import warnings

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from skimage import data as skimage_data

from siglip import (
    ImageInputError,
    Siglip2ImageProcessor,
    Siglip2ImageProcessorPil,
    Siglip2Processor,
    SiglipTokenizer,
)
from siglip.core.siglip2.image_processing import get_image_size_for_max_num_patches
from test_image_processing import PHOTOS, _arrays, _generated_images, _jpeg

KEYS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")
ARGUMENTS = [
    {},
    {"max_num_patches": 576},
    {"max_num_patches": 1024},
    {"max_num_patches": 1},
    {"max_num_patches": 7, "patch_size": 14},
    {"do_rescale": False},
    {"do_normalize": False},
    {"resample": Image.Resampling.BICUBIC},
    {"resample": Image.Resampling.NEAREST},
    {"resample": Image.Resampling.LANCZOS},
    {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]},
]


@pytest.fixture(scope="module")
def ours():
    return Siglip2ImageProcessorPil()


@pytest.fixture(scope="module")
def theirs():
    # transformers' Siglip2 processor leaves do_convert_rgb unset (None) and then fails on any image that is not
    # RGB ("mean must have 1 elements"); ours always converts, as SigLIP's does, and writes do_convert_rgb=True
    # into the files it saves, so the comparison turns conversion on.
    return transformers.Siglip2ImageProcessorPil(do_convert_rgb=True)


def _assert_identical(ours_out, theirs_out, name=""):
    for key in KEYS:
        a, b = ours_out[key], theirs_out[key]
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{name} {key}: {a.dtype} {a.shape} != {b.dtype} {b.shape}"
        )
        assert torch.equal(a, b), f"{name} {key}: max |diff| {(a.double() - b.double()).abs().max()}"


@pytest.mark.parametrize(
    "kwargs", ARGUMENTS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults"
)
def test_every_mode_and_size_is_identical_for_every_argument(ours, theirs, kwargs):
    images = _generated_images()
    for name, image in images.items():
        _assert_identical(
            ours(image, return_tensors="pt", **kwargs), theirs(image, return_tensors="pt", **kwargs), name
        )
    # the whole matrix as one padded batch: each row is the image's own
    batch = ours(list(images.values()), return_tensors="pt", **kwargs)
    _assert_identical(batch, theirs(list(images.values()), return_tensors="pt", **kwargs), "batch")
    assert batch.pixel_attention_mask.sum(1).tolist() == batch.spatial_shapes.prod(1).tolist()


@pytest.mark.parametrize("max_num_patches", [256, 576, 1024])
def test_real_photos_are_identical(ours, theirs, max_num_patches):
    photos = []
    for name in PHOTOS:
        photo = getattr(skimage_data, name)()
        photos.append(Image.fromarray(photo.astype(np.uint8) * (255 if photo.dtype == bool else 1)))
    kwargs = dict(max_num_patches=max_num_patches, return_tensors="pt")
    _assert_identical(ours(photos, **kwargs), theirs(photos, **kwargs))


def test_arrays_and_tensors_are_identical(ours, theirs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # our float-in-[0, 1] warning (tested for SiglipImageProcessor)
        for name, array in _arrays().items():
            for kwargs in ({}, {"do_rescale": False}):
                _assert_identical(
                    ours(array, return_tensors="pt", **kwargs),
                    theirs(array, return_tensors="pt", **kwargs),
                    name,
                )


def test_files_and_exif_orientation_are_identical(ours, theirs, tmp_path):
    photo = Image.fromarray(skimage_data.chelsea())
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg(photo, orientation=6))  # stored sideways: 451 x 300 becomes 300 x 451
    expected = theirs(str(path), return_tensors="pt")
    for source in (str(path), path, path.read_bytes()):
        _assert_identical(ours(source, return_tensors="pt"), expected, type(source).__name__)
    assert expected.spatial_shapes.tolist() == [[19, 13]]  # upright: taller than wide
    opened = Image.open(path)
    _assert_identical(ours(opened, return_tensors="pt"), theirs(opened, return_tensors="pt"), "in-memory")


def test_target_sizes_agree_with_transformers_everywhere():
    from transformers.models.siglip2.image_processing_pil_siglip2 import (
        get_image_size_for_max_num_patches as reference,
    )

    rng = np.random.default_rng(0)
    sizes = [(1, 1), (1, 4000), (4000, 1), (15, 17), (16, 16), (333, 517), (10000, 3)]
    sizes += [tuple(int(v) for v in rng.integers(1, 5000, 2)) for _ in range(300)]
    for height, width in sizes:
        for patch, budget in ((16, 256), (16, 576), (16, 1024), (14, 729), (16, 1), (16, 3)):
            got = get_image_size_for_max_num_patches(height, width, patch, budget)
            assert got == reference(height, width, patch, budget), (height, width, patch, budget)
            assert got[0] % patch == got[1] % patch == 0 and (got[0] // patch) * (got[1] // patch) <= budget


def test_output_types_and_a_single_image_equals_its_batch_row(ours, theirs):
    images = list(_generated_images().values())[:4]
    listed, reference = ours(images), theirs(images)
    assert [type(v) for v in listed.values()] == [list, list, list]
    assert listed.spatial_shapes == reference["spatial_shapes"]
    for a, b in zip(listed.pixel_values + listed.pixel_attention_mask, reference["pixel_values"] + reference["pixel_attention_mask"], strict=True):  # fmt: skip
        assert a.dtype == b.dtype and np.array_equal(a, b)
    stacked = ours(images, return_tensors="np")
    assert [v.dtype for v in stacked.values()] == [np.float32, np.int32, np.int64]
    for i, image in enumerate(images):
        alone = ours(image, return_tensors="np")
        for key in KEYS:
            assert np.array_equal(alone[key][0], stacked[key][i]), (i, key)


def test_do_resize_false_takes_patch_aligned_images_as_they_are(ours, theirs):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    _assert_identical(
        ours(image, do_resize=False, return_tensors="pt"), theirs(image, do_resize=False, return_tensors="pt")
    )


# --- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -3, 2.5, True, "256"])
def test_max_num_patches_must_be_a_positive_int(ours, value):
    with pytest.raises(ValueError, match=r"max_num_patches must be a positive int"):
        Siglip2ImageProcessor(max_num_patches=value)
    with pytest.raises(ValueError, match=r"max_num_patches must be a positive int"):
        ours(Image.new("RGB", (20, 20)), max_num_patches=value)


def test_images_that_cannot_be_patches_are_named(ours):
    tiny = Image.new("RGB", (5, 3))
    # resized (as transformers does): a 5 x 3 image becomes at least one patch
    assert ours(tiny, return_tensors="pt").spatial_shapes.tolist()[0][0] >= 1
    with pytest.raises(ImageInputError, match=r"images\[1\] is 5 x 3 pixels.*multiple of patch_size=16"):
        ours([Image.new("RGB", (16, 16)), tiny], do_resize=False)
    with pytest.raises(ImageInputError, match=r"images\[0\] is 64 x 64 pixels.*max_num_patches=4"):
        ours(Image.new("RGB", (64, 64)), do_resize=False, max_num_patches=4)
    with pytest.raises(ImageInputError, match=r"images\[0\] is empty"):
        ours(np.zeros((0, 5, 3), dtype=np.uint8))
    with pytest.raises(ImageInputError, match="not an image file"):
        ours(b"not an image")


# --- files and the processor ---------------------------------------------------------------------------------
def test_config_files_round_trip_with_transformers(tmp_path):
    ours = Siglip2ImageProcessorPil(max_num_patches=576, resample=Image.Resampling.BICUBIC)
    ours.save_pretrained(tmp_path / "ours")
    theirs = transformers.Siglip2ImageProcessorPil.from_pretrained(tmp_path / "ours")
    assert (theirs.max_num_patches, theirs.resample) == (576, Image.Resampling.BICUBIC)
    theirs.save_pretrained(tmp_path / "theirs")
    again = Siglip2ImageProcessorPil.from_pretrained(tmp_path / "theirs")
    assert again.to_dict() == ours.to_dict()
    image = _generated_images()["RGB"]
    _assert_identical(again(image, return_tensors="pt"), theirs(image, return_tensors="pt"))
    assert json.loads((tmp_path / "ours" / "preprocessor_config.json").read_text())["max_num_patches"] == 576


@pytest.fixture(scope="module")
def processors(spiece_model):
    ours = Siglip2Processor(
        Siglip2ImageProcessorPil(), SiglipTokenizer(spiece_model, model_input_names=["input_ids"])
    )
    theirs = transformers.Siglip2Processor(
        image_processor=transformers.Siglip2ImageProcessorPil(do_convert_rgb=True),
        tokenizer=transformers.SiglipTokenizer(str(spiece_model), model_input_names=["input_ids"]),
    )
    return ours, theirs


def test_processor_matches_transformers_defaults(processors):
    ours, theirs = processors
    texts = ["a photo of a cat", "A PHOTO OF TWO DOGS " * 30, ""]
    images = list(_generated_images().values())[:3]
    got = ours(text=texts, images=images)
    expected = theirs(text=texts, images=images, return_tensors="pt")
    assert set(got) == set(expected) == {"input_ids", *KEYS}
    assert torch.equal(got["input_ids"], expected["input_ids"]) and got["input_ids"].shape == (3, 64)
    _assert_identical(got, expected)
    more = ours(images=images, max_num_patches=576)
    _assert_identical(more, theirs(images=images, max_num_patches=576, return_tensors="pt"))
    assert ours.model_input_names == ["input_ids", *KEYS]


def test_processor_files_round_trip(processors, tmp_path):
    ours, _ = processors
    ours.save_pretrained(tmp_path)
    loaded = Siglip2Processor.from_pretrained(tmp_path)
    assert isinstance(loaded.image_processor, Siglip2ImageProcessor)
    assert loaded.image_processor.to_dict() == ours.image_processor.to_dict()
    assert (
        json.loads((tmp_path / "preprocessor_config.json").read_text())["processor_class"]
        == "Siglip2Processor"
    )
    text = ["a cat"]
    assert torch.equal(loaded(text=text)["input_ids"], ours(text=text)["input_ids"])
    with pytest.raises(TypeError, match=r"Siglip2ImageProcessor and a SiglipTokenizer or GemmaTokenizer"):
        Siglip2Processor(ours.tokenizer, ours.image_processor)


def test_processor_reads_image_bytes(processors):
    ours, theirs = processors
    buffer = io.BytesIO()
    _generated_images()["RGB"].save(buffer, "PNG")
    _assert_identical(
        ours(images=buffer.getvalue()),
        theirs(images=Image.open(io.BytesIO(buffer.getvalue())), return_tensors="pt"),
    )
