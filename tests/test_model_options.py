"""`ModelOptions`: how the tools load a model, checked once, the same object from every command line."""

from __future__ import annotations

import dataclasses

import pytest

from _material import BUNDLED
from siglip import Embedder, ModelOptions, Siglip2ImageProcessor
from siglip.errors import UsageError
from siglip.tools.cli import build_parser


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(precision="fp64"), "precision must be one of"),
        (dict(max_num_patches=0), "max_num_patches must be at least 1"),
        (dict(max_num_patches=Siglip2ImageProcessor.MAX_NUM_PATCHES + 1), "at most 4096"),
        (dict(max_image_pixels=2.5), "max_image_pixels must be a whole number"),
    ],
)
def test_a_value_outside_its_meaning_is_refused_when_made(values, message):
    with pytest.raises(UsageError, match=message):
        ModelOptions(**values)
    with pytest.raises(UsageError, match=message):  # changed later: checked again
        ModelOptions().replace(**values)


def test_the_options_are_frozen_and_hashable():
    options = ModelOptions(precision="fp32", max_image_pixels=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.precision = "bf16"
    assert hash(options) == hash(ModelOptions(precision="fp32", max_image_pixels=10))
    assert ModelOptions.of(options, compile=True) == ModelOptions("fp32", True, max_image_pixels=10)
    assert ModelOptions.of(None, compile=True) == ModelOptions(compile=True)
    assert ModelOptions(compile="cached").compile == "cached"  # what `siglip embed` runs small jobs with
    with pytest.raises(TypeError, match="compile must be True, False or 'cached', got 'yes'"):
        ModelOptions(compile="yes")
    with pytest.raises(TypeError, match="reduced_decode must be True or False, got 1"):
        ModelOptions(reduced_decode=1)


@pytest.mark.parametrize(
    "argv",
    [
        ["embed", "x", "--out", "e.npy", "--no-compile"],  # without it the job decides (test_inference)
        ["index", "x", "--index", "i"],  # without --compile: packages compiled earlier ("cached")
        ["index", "x", "--index", "i", "--compile"],
        ["dedup", "x", "--no-compile"],  # without it the job decides, as `siglip embed`
        ["search", "a dog", "--index", "i"],
        ["classify", "x", "--labels", "a", "b"],
        ["serve", "--no-compile"],  # without it: in the background (test_background_compile)
    ],
)
def test_every_command_line_gives_its_options(argv):
    args = build_parser().parse_args([*argv, "--max-image-pixels", "1234"])
    options = ModelOptions.from_args(args)
    assert options.max_image_pixels == 1234
    for field in dataclasses.fields(ModelOptions):
        if hasattr(args, field.name):
            assert getattr(options, field.name) == getattr(args, field.name), field.name


def test_an_index_loads_the_packages_compiled_earlier_unless_told():
    parse = build_parser().parse_args
    assert ModelOptions.from_args(parse(["index", "x", "--index", "i"])).compile == "cached"
    assert ModelOptions.from_args(parse(["index", "x", "--index", "i", "--no-compile"])).compile is False
    assert parse(["dedup", "x"]).compile is None  # decided by the job's size (`compile_by_job`)


def test_an_embedder_runs_as_its_options_say():
    embedder = Embedder.from_pretrained(BUNDLED, "cpu", ModelOptions(precision="int8"))
    assert embedder.mode.precision == "int8"
    again = Embedder.from_pretrained(BUNDLED, "cpu", ModelOptions(precision="int8"), precision="fp32")
    assert again.mode.precision == "fp32"  # a keyword changes the options it is given
    assert embedder.processor.image_processor.max_image_pixels != 99
    small = Embedder.from_pretrained(BUNDLED, "cpu", max_image_pixels=99)
    assert small.processor.image_processor.max_image_pixels == 99
