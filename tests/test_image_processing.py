"""SiglipImageProcessorPil: bit-identical to transformers' PIL backend, robust to real files, clear on bad input
(the torch backend, `SiglipImageProcessor`, against transformers' default in test_image_backends.py)."""

import io
import json
import warnings

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from skimage import data as skimage_data

from siglip import CheckpointError, SiglipImageProcessorPil
from siglip.core.features import BatchFeature
from siglip.errors import ImageInputError

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "logo",
    "immunohistochemistry",
    "retina",
    "horse",
)
RNG = np.random.default_rng(0)


def _random(shape, dtype=np.uint8):
    return RNG.integers(0, 256, shape).astype(dtype)


def _with_transparency(image: Image.Image, value) -> Image.Image:
    image.info["transparency"] = value
    return image


def _generated_images() -> dict[str, Image.Image]:
    """Every PIL mode users meet, and odd sizes."""
    rgb = Image.fromarray(_random((37, 53, 3)))
    return {
        "RGB": rgb,
        "L": rgb.convert("L"),
        "LA": Image.fromarray(_random((37, 53, 2)), "LA"),
        "RGBA": Image.fromarray(_random((37, 53, 4)), "RGBA"),
        "P": rgb.convert("P"),
        "P+transparency": _with_transparency(rgb.convert("P"), 5),
        "PA": Image.fromarray(_random((37, 53, 4)), "RGBA").convert("PA"),
        "L+transparency": _with_transparency(rgb.convert("L"), 100),
        "RGB+transparency": _with_transparency(rgb.copy(), (10, 20, 30)),
        "CMYK": rgb.convert("CMYK"),
        "YCbCr": rgb.convert("YCbCr"),
        "1": rgb.convert("1"),
        "I (32-bit grey)": Image.fromarray(_random((37, 53), np.int32)),
        "F (32-bit float grey)": Image.fromarray(_random((37, 53), np.float32)),
        "1x1": Image.fromarray(_random((1, 1, 3))),
        "1x4000": Image.fromarray(_random((1, 4000, 3))),
        "4000x1": Image.fromarray(_random((4000, 1, 3))),
        "224x224": Image.fromarray(_random((224, 224, 3))),
    }


ARGUMENTS = [
    {},
    {"do_resize": False},
    {"do_rescale": False},
    {"do_normalize": False},
    {"do_rescale": False, "do_normalize": False},
    {"resample": Image.Resampling.BILINEAR},
    {"resample": Image.Resampling.NEAREST},
    {"resample": Image.Resampling.LANCZOS},
    {"resample": Image.Resampling.BOX},
    {"resample": Image.Resampling.HAMMING},
    {"size": {"height": 384, "width": 300}},
    {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]},
    {"rescale_factor": 0.5, "image_mean": 0.1, "image_std": 3.0},
]


@pytest.fixture(scope="module")
def ours():
    return SiglipImageProcessorPil()


@pytest.fixture(scope="module")
def theirs():
    return transformers.SiglipImageProcessorPil()


def _assert_bit_identical(ours_out, theirs_out):
    assert ours_out.dtype == theirs_out.dtype and ours_out.shape == theirs_out.shape
    assert torch.equal(ours_out, theirs_out), (
        f"max |diff| {(ours_out.double() - theirs_out.double()).abs().max()}"
    )


# --- parity with transformers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PHOTOS)
def test_real_photos_are_bit_identical(ours, theirs, name):
    photo = getattr(skimage_data, name)()
    image = Image.fromarray(photo.astype(np.uint8) * (255 if photo.dtype == bool else 1))
    _assert_bit_identical(
        ours(image, return_tensors="pt").pixel_values, theirs(image, return_tensors="pt").pixel_values
    )


@pytest.mark.parametrize("kwargs", ARGUMENTS, ids=lambda kw: ",".join(kw) or "defaults")
def test_every_mode_and_size_is_bit_identical_for_every_argument(ours, theirs, kwargs):
    for name, image in _generated_images().items():
        reference = theirs(image, return_tensors="pt", **kwargs).pixel_values
        assert torch.equal(ours(image, return_tensors="pt", **kwargs).pixel_values, reference), name


def _arrays():
    return {
        "uint8 HWC": _random((30, 40, 3)),
        "uint8 CHW": _random((3, 30, 40)),
        "uint8 HW1": _random((30, 40, 1)),
        "uint8 1HW": _random((1, 30, 40)),
        "uint8 RGBA": _random((30, 40, 4)),
        "float32 [0, 1]": RNG.random((30, 40, 3), dtype=np.float32),
        "float64 RGBA [0, 1]": RNG.random((30, 40, 4)),
        "float16 [0, 1]": RNG.random((30, 40, 3)).astype(np.float16),
        "float64 0..255 whole": _random((30, 40, 3), np.float64),
        "int32": _random((30, 40, 3), np.int32),
        "bool": RNG.random((30, 40, 3)) > 0.5,
        "torch uint8 CHW": torch.from_numpy(_random((3, 30, 40))),
        "torch float CHW": torch.rand(3, 30, 40, generator=torch.Generator().manual_seed(0)),
        "batch NHWC": _random((2, 30, 40, 3)),
        "torch batch NCHW": torch.from_numpy(_random((2, 3, 30, 40))),
    }


@pytest.mark.parametrize("kwargs", [{}, {"do_resize": False}, {"do_rescale": False}, {"do_normalize": False}],
                         ids=lambda kw: ",".join(kw) or "defaults")  # fmt: skip
def test_arrays_and_tensors_are_bit_identical(ours, theirs, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # our float-in-[0, 1] warning; checked below
        for name, array in _arrays().items():
            reference = theirs(array, return_tensors="pt", **kwargs).pixel_values
            assert torch.equal(ours(array, return_tensors="pt", **kwargs).pixel_values, reference), name


def test_batches_and_threads_give_the_same_pixels(theirs):
    images = [*_generated_images().values(), *(_arrays()[k] for k in ("uint8 CHW", "float32 [0, 1]"))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = theirs(images, return_tensors="pt").pixel_values
        for threads in (1, 3):
            _assert_bit_identical(
                SiglipImageProcessorPil(num_threads=threads)(images, return_tensors="pt").pixel_values,
                reference,
            )


def test_return_types_and_layouts(ours, theirs):
    images = [Image.fromarray(_random((20, 30, 3))), Image.fromarray(_random((40, 10, 3)))]
    as_list = ours(images, do_resize=False).pixel_values
    reference = theirs(images, do_resize=False).pixel_values
    assert isinstance(as_list, list) and all(
        np.array_equal(a, b) for a, b in zip(as_list, reference, strict=True)
    )
    batch = ours(images, return_tensors="np").pixel_values
    assert isinstance(batch, np.ndarray) and batch.shape == (2, 3, 224, 224) and batch.dtype == np.float32
    last = ours(images, return_tensors="np", data_format="channels_last").pixel_values
    assert np.array_equal(last, batch.transpose(0, 2, 3, 1))
    assert [a.shape for a in ours(images, do_resize=False, data_format="channels_last").pixel_values] == [
        (20, 30, 3),
        (40, 10, 3),
    ]
    # the same array read with an explicit layout
    chw = _random((4, 4, 3))
    assert not np.array_equal(
        ours(chw, return_tensors="np").pixel_values,
        ours(chw, return_tensors="np", input_data_format="channels_last").pixel_values,
    )
    assert np.array_equal(
        ours(chw, return_tensors="np", input_data_format="channels_last").pixel_values,
        ours(Image.fromarray(chw), return_tensors="np").pixel_values,
    )


def test_grey_2d_arrays_are_accepted_as_grey(ours):
    grey = _random((30, 40))
    assert np.array_equal(
        ours(grey, return_tensors="np").pixel_values, ours(grey[..., None], return_tensors="np").pixel_values
    )


# --- files ----------------------------------------------------------------------------------------------------
def _jpeg(image: Image.Image, orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def test_paths_and_bytes_match_transformers_including_exif_orientation(ours, theirs, tmp_path):
    photo = Image.fromarray(skimage_data.chelsea())
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg(photo, orientation=6))  # a phone photo held upright: stored sideways
    expected = theirs(str(path), return_tensors="pt").pixel_values  # transformers turns files upright
    _assert_bit_identical(ours(str(path), return_tensors="pt").pixel_values, expected)
    _assert_bit_identical(ours(path, return_tensors="pt").pixel_values, expected)
    _assert_bit_identical(ours(path.read_bytes(), return_tensors="pt").pixel_values, expected)

    opened = Image.open(path)  # an in-memory image is used as given by default, as transformers does
    _assert_bit_identical(
        ours(opened, return_tensors="pt").pixel_values, theirs(opened, return_tensors="pt").pixel_values
    )
    _assert_bit_identical(ours(opened, return_tensors="pt", exif_transpose=True).pixel_values, expected)
    never = SiglipImageProcessorPil(exif_transpose=False)(path, return_tensors="pt").pixel_values
    _assert_bit_identical(never, theirs(opened, return_tensors="pt").pixel_values)


def test_a_lazily_opened_image_listed_many_times(ours, tmp_path):
    (tmp_path / "cat.jpg").write_bytes(_jpeg(Image.fromarray(skimage_data.chelsea())))
    lazy = Image.open(tmp_path / "cat.jpg")  # not decoded yet: must not be decoded by two threads at once
    batch = ours([lazy] * 6, return_tensors="np").pixel_values
    single = ours(Image.open(tmp_path / "cat.jpg"), return_tensors="np").pixel_values
    assert all(np.array_equal(row, single[0]) for row in batch)


def test_files_with_transparency_are_composited_over_white(ours, tmp_path):
    rgba = Image.fromarray(_random((20, 30, 4)), "RGBA")
    rgba.save(tmp_path / "logo.png")
    assert np.array_equal(
        ours(tmp_path / "logo.png", return_tensors="np").pixel_values,
        ours(rgba, return_tensors="np").pixel_values,
    )


def test_16_bit_grey_is_scaled_not_clipped(ours, tmp_path):
    values = RNG.integers(0, 65536, (30, 40)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    eight_bit = np.round(values / 65535 * 255).astype(np.uint8)  # hand-computed 16 -> 8 bit mapping
    expected = ours(Image.fromarray(eight_bit, "L"), return_tensors="np").pixel_values
    assert np.array_equal(ours(tmp_path / "deep.png", return_tensors="np").pixel_values, expected)


# --- warnings -------------------------------------------------------------------------------------------------
def test_float_images_already_in_unit_range_warn_with_their_index(ours):
    unit = RNG.random((30, 40, 3), dtype=np.float32)
    with pytest.warns(UserWarning, match=r"images \[1\]: float pixel values already in \[0, 1\]"):
        ours([_random((30, 40, 3)), unit])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours(unit, do_rescale=False)
        ours(np.round(unit * 255))


def test_32_bit_grey_outside_8_bits_warns(ours):
    with pytest.warns(UserWarning, match=r"images \[0\]: 32-bit grey pixels"):
        ours(Image.fromarray(_random((10, 10), np.int32) * 200))
    with pytest.warns(UserWarning, match="32-bit grey"):
        ours(Image.fromarray(RNG.random((10, 10), dtype=np.float32)))


# --- bad input ------------------------------------------------------------------------------------------------
def test_bad_files_raise_naming_the_path(ours, tmp_path):
    files = {
        "random.jpg": RNG.bytes(1000),
        "notes.txt": b"just some text, not an image\n",
        "truncated.jpg": _jpeg(Image.fromarray(skimage_data.astronaut()))[:5000],
        "empty.png": b"",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageInputError, match=rf"images\[0\] \('.*{name}'\)"):
            ours(tmp_path / name)
    with pytest.raises(ImageInputError, match=r"truncated or corrupt"):
        ours(str(tmp_path / "truncated.jpg"))
    (tmp_path / "good.jpg").write_bytes(_jpeg(Image.fromarray(skimage_data.astronaut())))
    with pytest.raises(ImageInputError, match=r"images\[1\] \('.*missing.png'\): no such file"):
        ours([tmp_path / "good.jpg", tmp_path / "missing.png", tmp_path / "notes.txt"])  # the first bad one
    with pytest.raises(ImageInputError, match=r"images\[0\] \(bytes\) is not an image file"):
        ours(b"\x00" * 100)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, before our error
def test_decompression_bombs_are_refused(ours, tmp_path, monkeypatch):
    Image.new("RGB", (300, 200)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 200 - 1)  # just over the limit: our own check
    with pytest.raises(
        ImageInputError,
        match=r"images\[0\] \('.*bomb.png'\) has 300 x 200 = 60000 pixels, more than the limit of 59999:",
    ) as caught:
        ours(tmp_path / "bomb.png")
    assert caught.value.path == str(tmp_path / "bomb.png") and caught.value.subject.startswith("images[0] (")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # far over: Pillow's own error, given our limit
    with pytest.raises(
        ImageInputError, match=r"has 60000 pixels, more than the limit of 1000: .*decompression bomb"
    ):
        ours(tmp_path / "bomb.png")
    monkeypatch.setattr(ours, "max_image_pixels", 60_000)  # the processor's own limit: Pillow's is raised
    assert ours(tmp_path / "bomb.png", return_tensors="np")["pixel_values"].shape[0] == 1


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_processor_raising_its_limit_leaves_other_processors_at_pillows(tmp_path, monkeypatch):
    Image.new("RGB", (300, 200)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    trusting = SiglipImageProcessorPil(max_image_pixels=60_000)
    assert trusting(tmp_path / "bomb.png", return_tensors="np")["pixel_values"].shape[0] == 1
    assert Image.MAX_IMAGE_PIXELS == 60_000  # raised, as Pillow refuses at twice its own limit
    with pytest.raises(ImageInputError, match="60000 pixels, more than the limit of 50000"):
        SiglipImageProcessorPil()(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 70_000)  # set by the user afterwards: it is the default
    assert SiglipImageProcessorPil()(tmp_path / "bomb.png", return_tensors="np")["pixel_values"].shape[0] == 1


@pytest.mark.parametrize(
    "images, error, message",
    [
        ([], ImageInputError, "empty batch"),
        (np.zeros((0, 8, 8, 3), np.uint8), ImageInputError, "empty batch"),
        ([_random((5, 6, 3)), Image.new("RGB", (0, 5))], ImageInputError, r"images\[1\] is empty: 0 x 5"),
        (np.zeros((5, 0, 3), np.uint8), ImageInputError, r"images\[0\] is empty"),
        ([_random((5, 6, 3)), 3.5], TypeError, r"images\[1\] is a float"),
        ([{"pixels": 1}], TypeError, r"images\[0\] is a dict"),
        (_random((5, 6, 2)), ImageInputError, "2 channels, expected 1, 3 or 4"),
        (_random((2, 3, 4, 4, 3)), ImageInputError, r"has shape \(2, 3, 4, 4, 3\)"),
        (RNG.random((5, 6, 3)) * 300, ImageInputError, "values from .* expected uint8"),
        (_random((5, 6, 3), np.int32) * 1000, ImageInputError, "values from"),
        (RNG.random((5, 6, 4)) * 2, ImageInputError, "float RGBA image with values outside"),
        ([Image.new("RGB", (4, 4)), Image.new("La", (4, 4))], ImageInputError, r"images\[1\] has mode 'La'"),
    ],
)
def test_bad_images_raise_naming_the_image(ours, images, error, message):
    with pytest.raises(error, match=message):
        ours(images)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 224}, "size must be"),
        ({"size": {"shortest_edge": 224}}, "size must be"),
        ({"size": {"height": 0, "width": 5}}, "positive integers"),
        ({"resample": 17}, "resample must be a PIL filter"),
        ({"image_mean": [0.5, 0.5]}, "image_mean must be a number or 3 numbers"),
        ({"image_std": 0}, "must not contain 0"),
        ({"return_tensors": "tf"}, "return_tensors"),
        ({"data_format": "NCHW"}, "data_format must be one of"),
        ({"input_data_format": "hwc"}, "input_data_format must be None or one of"),
    ],
)
def test_bad_arguments_raise(ours, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ours(Image.new("RGB", (4, 4)), **kwargs)


def test_different_sizes_cannot_be_stacked(ours):
    with pytest.raises(ValueError, match="Cannot stack images of different sizes"):
        ours([_random((5, 6, 3)), _random((6, 5, 3))], do_resize=False, return_tensors="pt")


# --- files ----------------------------------------------------------------------------------------------------
def test_save_load_round_trip_and_transformers_reads_ours(tmp_path):
    ours = SiglipImageProcessorPil(size={"height": 96, "width": 128}, resample=2, image_mean=[0.1, 0.2, 0.3])
    ours.save_pretrained(tmp_path)
    reloaded = SiglipImageProcessorPil.from_pretrained(tmp_path)
    assert reloaded.to_dict() == ours.to_dict()
    theirs = transformers.SiglipImageProcessorPil.from_pretrained(tmp_path)
    image = Image.fromarray(skimage_data.coffee())
    _assert_bit_identical(
        reloaded(image, return_tensors="pt").pixel_values, theirs(image, return_tensors="pt").pixel_values
    )


@pytest.mark.parametrize("saved_by", ["image processor", "processor"])
def test_loads_what_transformers_saves(tmp_path, spiece_model, saved_by):
    theirs = transformers.SiglipImageProcessorPil(size={"height": 64, "width": 48}, resample=2)
    if saved_by == "processor":  # transformers 5 writes processor_config.json only
        transformers.SiglipProcessor(theirs, transformers.SiglipTokenizer(str(spiece_model))).save_pretrained(
            tmp_path
        )
        assert not (tmp_path / "preprocessor_config.json").exists()
    else:
        theirs.save_pretrained(tmp_path)
    ours = SiglipImageProcessorPil.from_pretrained(tmp_path)
    assert ours.size == {"height": 64, "width": 48} and ours.resample == Image.Resampling.BILINEAR
    image = Image.fromarray(skimage_data.rocket())
    _assert_bit_identical(
        ours(image, return_tensors="pt").pixel_values, theirs(image, return_tensors="pt").pixel_values
    )


def test_unsupported_or_broken_configs_raise(tmp_path):
    with pytest.raises(CheckpointError, match=r"has no preprocessor_config\.json"):
        SiglipImageProcessorPil.from_pretrained(tmp_path)
    SiglipImageProcessorPil().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    for change, message in (
        ({"do_center_crop": True}, "do_center_crop is not part"),
        ({"size": 224}, "size must be"),
    ):
        (tmp_path / "preprocessor_config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=message):
            SiglipImageProcessorPil.from_pretrained(tmp_path)


def test_batch_feature_behaves_like_transformers(ours):
    out = ours([Image.new("RGB", (4, 4))], return_tensors="pt")
    assert isinstance(out, BatchFeature) and list(out.keys()) == ["pixel_values"]
    assert out.to(torch.float16) is out and out.pixel_values.dtype == torch.float16
    assert out.to("cpu").pixel_values.device.type == "cpu"
