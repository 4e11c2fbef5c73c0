"""Fuzzing (Hypothesis) of everything that reads user input: the image processor, the tokenizer, the pairs-file
readers and the command line. Random bytes, image modes and sizes, Unicode and option values must give a
result or one of siglip's documented errors (`SiglipError`) naming the input, never anything else.

Bounded for CI: few examples per property, no deadline, derandomized (the same examples on every run).
"""

from __future__ import annotations

import io
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from _material import BUNDLED
from siglip import SiglipImageProcessor, SiglipTokenizer
from siglip.core.hub import locate
from siglip.errors import DataError, ImageInputError, SiglipError
from siglip.tools.cli import build_parser
from siglip.tools.inputs.data import PairsFile

FUZZ = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F", "HSV", "LAB")


@pytest.fixture(scope="module")
def processor() -> SiglipImageProcessor:
    return SiglipImageProcessor.from_pretrained(BUNDLED)


@pytest.fixture(scope="module")
def tokenizer() -> SiglipTokenizer:
    return SiglipTokenizer.from_pretrained(locate(BUNDLED))


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@FUZZ
@given(data=st.binary(max_size=2048), header=st.sampled_from([b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP", b"BM"]))  # fmt: skip
def test_random_bytes_are_an_image_or_an_image_input_error(processor, data, header):
    try:
        pixels = processor(header + data, return_tensors="np")["pixel_values"]
    except ImageInputError as err:
        assert "images[0] (bytes)" in str(err)  # the message names the input
    else:
        assert pixels.shape[0] == 1 and np.isfinite(pixels).all()


@FUZZ
@given(mode=st.sampled_from(MODES), width=st.integers(1, 48), height=st.integers(1, 48), fmt=st.sampled_from(["PNG", "TIFF", "BMP", "GIF", "WEBP", "JPEG"]), seed=st.integers(0, 2**16))  # fmt: skip
def test_random_modes_and_sizes_give_model_pixels_or_a_clear_error(processor, mode, width, height, fmt, seed):
    rng = np.random.default_rng(seed)
    image = Image.frombytes(
        "L", (width, height), rng.integers(0, 256, width * height, dtype=np.uint8).tobytes()
    )
    try:
        image = image.convert(mode)
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # Pillow cannot write this mode in this format: nothing for siglip to read
    for source in (image, buffer.getvalue()):
        try:
            pixels = processor(source, return_tensors="np")["pixel_values"]
        except ImageInputError as err:
            assert "images[0]" in str(err)
        else:
            size = processor.size["height"], processor.size["width"]
            assert pixels.shape == (1, 3, *size) and np.isfinite(pixels).all()


@FUZZ
@given(text=st.text(max_size=200))
def test_any_unicode_tokenizes_into_the_vocabulary(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids and ids[-1] == tokenizer.eos_token_id
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert isinstance(tokenizer.decode(ids, skip_special_tokens=True), str)


_CELLS = st.text(
    alphabet=st.sampled_from([*string.ascii_letters, *',"\t\r\n{}[]: ', "\ufeff", "é", "\x00"]), max_size=60
)


@FUZZ
@given(body=st.one_of(_CELLS.map(str.encode), st.binary(max_size=200)), suffix=st.sampled_from([".csv", ".tsv", ".jsonl"]), bom=st.booleans())  # fmt: skip
def test_random_pairs_files_give_rows_or_a_data_error_naming_the_file(tmp_path_factory, body, suffix, bom):
    path = tmp_path_factory.mktemp("pairs") / f"pairs{suffix}"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + b"image,caption\n" + body)
    try:
        pairs = PairsFile(path)
    except DataError as err:
        assert str(path) in str(err)
    else:
        assert len(pairs.images) == len(pairs.captions)


_OPTIONS = {
    "classify": ["--top-k", "--batch-size", "--workers", "--device", "--precision"],
    "search": ["-k", "--device", "--html", "--where"],
    "serve": ["--port", "--max-batch-size", "--max-wait-ms", "--timeout", "--max-image-pixels"],
    "train": [
        "--lr",
        "--epochs",
        "--beta2",
        "--max-bad-fraction",
        "--batch-size",
        "--warmup-steps",
        "--precision",
    ],
    "export": ["--opset"],
}
_REQUIRED = {
    "classify": ["x.jpg", "--labels", "cat"],
    "search": ["x", "--index", "i"],
    "serve": [],
    "train": ["--data", "d", "--output-dir", "o", "--model", "m"],
    "export": ["--out", "o"],
}
_VALUES = st.one_of(
    st.integers(-(2**40), 2**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-0", "1e999", "0x10", "", " ", "cpu", "cuda:99", "meta", "fp8", "bf16"]),
    st.text(max_size=12),
)


@settings(FUZZ, suppress_health_check=[HealthCheck.function_scoped_fixture])  # capsys: read on every example
@given(command=st.sampled_from(sorted(_OPTIONS)), data=st.data())
def test_random_option_values_parse_or_exit_2_with_one_line(parser, command, data, capsys):
    option = data.draw(st.sampled_from(_OPTIONS[command]))
    value = data.draw(_VALUES)
    try:
        args = parser.parse_args([command, *_REQUIRED[command], f"{option}={value}"])
    except SystemExit as exit_:
        assert exit_.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"argument {option}" in err, err
    else:
        parsed = getattr(args, option.lstrip("-").replace("-", "_"))
        if isinstance(parsed, float):
            assert np.isfinite(parsed)
        if isinstance(parsed, int) and option not in ("--seed",):
            assert parsed >= 0


def test_errors_raised_by_the_fuzzed_code_are_siglip_errors():
    """The properties above accept exactly these types: each one is a documented `SiglipError`."""
    assert issubclass(ImageInputError, SiglipError) and issubclass(DataError, SiglipError)
