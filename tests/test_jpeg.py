"""JPEG files decoded by libjpeg-turbo directly (`siglip.core.two_tower.jpeg`: the torch backend's decoder, and
the PIL backend's once its compiled resize is loaded): Pillow's pixels bit for bit, or Pillow decodes the file as
before.

The oracle is Pillow itself (which transformers decodes with): each file decoded, converted to RGB and turned
upright by Pillow, against the same file through `jpeg.decode`; and the processor from files against the
processor given Pillow's decoded images (that path is held to transformers in test_image_backends.py).
"""

import functools
import io
import mmap

import numpy as np
import pytest
import simplejpeg
import torch
from PIL import Image, ImageFile, ImageOps
from skimage import data as skimage_data

from siglip import Siglip2ImageProcessor, SiglipImageProcessor, SiglipImageProcessorPil
from siglip.core.two_tower import jpeg, pil_resize, torch_resize
from siglip.errors import ImageInputError
from test_image_processing import _jpeg


def _encoded(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@functools.cache
def _corpus() -> dict[str, bytes]:
    """JPEGs as cameras, phones and editors write them: 4:4:4, 4:2:2, 4:2:0, 4:4:0 and 4:1:1 chroma, baseline
    and progressive, low and high quality, optimised Huffman tables, restart markers, grey, odd and tiny
    sizes, bytes after the data, MPO (made once: the tests copy before adding to it)."""
    astronaut = Image.fromarray(skimage_data.astronaut())
    chelsea = Image.fromarray(skimage_data.chelsea())
    files = {
        f"sub{sub}-{'prog' if prog else 'base'}-q{q}": _encoded(
            astronaut, subsampling=sub, progressive=prog, quality=q
        )
        for sub in (0, 1, 2)
        for prog in (False, True)
        for q in (40, 95)
    }
    for sub in ("440", "411"):  # subsamplings Pillow does not write
        files[f"sub{sub}"] = simplejpeg.encode_jpeg(np.asarray(astronaut), colorsubsampling=sub)
    files["optimized"] = _encoded(chelsea, optimize=True, quality=85)
    files["restart markers"] = _encoded(chelsea, restart_marker_blocks=3)
    files["grey"] = _encoded(chelsea.convert("L"))
    files["grey progressive"] = _encoded(chelsea.convert("L"), progressive=True)
    for w, h in ((333, 257), (17, 9), (1, 1), (15, 16)):
        files[f"{w}x{h}"] = _encoded(astronaut.resize((w, h)), subsampling=2)
    files["bytes before the end"] = (jpeg_ := _encoded(chelsea))[:-2] + b"\x00\x01\x02" + jpeg_[-2:]
    files["mpo"] = _encoded(chelsea, "MPO", save_all=True, append_images=[chelsea.rotate(90)])
    return files


def _pillows(data: bytes, exif_transpose: bool = True) -> torch.Tensor:
    """The file's RGB pixels as Pillow decodes them (and turns them upright), laid out as `jpeg.decode`'s."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if exif_transpose:
            ImageOps.exif_transpose(image, in_place=True)
        return torch_resize.from_pil(image.convert("RGB"))


def _decoded(data: bytes, exif_transpose: bool = True, padded: bool = True) -> torch.Tensor | None:
    with Image.open(io.BytesIO(data)) as image:
        return jpeg.decode(image, exif_transpose, padded)


def test_the_decoder_is_available_here():
    # the test extra installs simplejpeg, and Pillow's wheels are built on libjpeg-turbo: the tests below
    # must run the decoder, not the fallback
    assert jpeg._decoder() is not None


@pytest.mark.parametrize("name", list(_corpus()))
def test_pixels_are_pillows_bit_for_bit(name):
    data = _corpus()[name]
    pixels = _decoded(data)
    assert pixels is not None, f"{name}: fell back to Pillow"
    expected = _pillows(data)
    assert pixels.shape == expected.shape and pixels.dtype == torch.uint8
    assert torch.equal(pixels, expected), (
        f"{name}: {(pixels.int() - expected.int()).abs().max()} levels apart"
    )
    assert pixels.stride() == (1, 4 * pixels.shape[2], 4)  # the layout torch_resize reads in place
    unpadded = _decoded(data, padded=False)  # the PIL backend's: 3 bytes a pixel
    assert torch.equal(unpadded, expected) and unpadded.stride() == (1, 3 * pixels.shape[2], 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_turns_as_pillow_turns(orientation):
    data = _jpeg(Image.fromarray(skimage_data.chelsea()).crop((0, 0, 61, 40)), orientation=orientation)
    assert torch.equal(_decoded(data), _pillows(data))
    assert torch.equal(_decoded(data, exif_transpose=False), _pillows(data, exif_transpose=False))
    if orientation in (5, 6, 7, 8):
        assert _decoded(data).shape[1:] == (61, 40)


def test_files_libjpeg_turbo_does_not_decode_as_pillow_are_left_to_pillow():
    photo = Image.fromarray(skimage_data.astronaut())
    good = _encoded(photo)
    cmyk = _encoded(photo.convert("CMYK"))
    # a stray restart marker inside the scan: libjpeg-turbo warns (corrupt data), Pillow decodes anyway
    junk = good[:20000] + b"\xff\xd3" + good[20000:]
    for data in (cmyk, junk, good[:5000]):
        assert _decoded(data) is None
    with Image.open(io.BytesIO(good)) as image:
        image.draft("RGB", (128, 128))
        assert image.size == (128, 128) and jpeg.decode(image, True) is None  # a drafted file


def test_without_the_decoder_every_jpeg_goes_to_pillow(monkeypatch):
    monkeypatch.setattr(jpeg, "_decoder", lambda: None)
    assert _decoded(_corpus()["sub2-base-q95"]) is None


def _fast_path_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """A record of `jpeg.decode`'s calls in the processors: whether each gave the pixels."""
    calls: list[bool] = []
    decode = jpeg.decode

    def spy(image: Image.Image, exif_transpose: bool, padded: bool = True) -> torch.Tensor | None:
        pixels = decode(image, exif_transpose, padded)
        calls.append(pixels is not None)
        return pixels

    monkeypatch.setattr(jpeg, "decode", spy)
    return calls


@pytest.mark.parametrize("family", [SiglipImageProcessor, Siglip2ImageProcessor])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_processor_gives_from_files_what_it_gives_from_pillows_images(
    family, threads, tmp_path, monkeypatch
):
    corpus = dict(_corpus())
    photo = Image.fromarray(skimage_data.astronaut())
    corpus["junk"] = (good := _encoded(photo))[:20000] + b"\xff\xd3" + good[20000:]  # Pillow decodes it
    corpus["cmyk"] = _encoded(photo.convert("CMYK"))
    corpus["png"] = _encoded(photo, "PNG")
    corpus["rotated"] = _jpeg(photo.crop((0, 0, 300, 200)), orientation=6)
    paths = []
    for i, data in enumerate(corpus.values()):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(data)
    images = []
    for path in paths:
        with Image.open(path) as image:
            image.load()
            images.append(ImageOps.exif_transpose(image))
    processor = family(num_threads=threads)
    expected = processor(images, return_tensors="pt")
    calls = _fast_path_calls(monkeypatch)
    from_files = processor(paths, return_tensors="pt")
    assert len(calls) == len(corpus) and sum(calls) == len(corpus) - 3  # Pillow: the junk, CMYK and PNG files
    from_bytes = processor([p.read_bytes() for p in paths], return_tensors="pt")
    for key in expected:  # SigLIP 2 adds the patch mask and each image's patch grid
        assert torch.equal(from_files[key], expected[key]) and torch.equal(from_bytes[key], expected[key])


def test_reduced_decoding_and_the_pil_backend_resizing_with_pillow_keep_pillows_decoder(
    tmp_path, monkeypatch
):
    path = tmp_path / "photo.jpg"
    path.write_bytes(_encoded(Image.fromarray(skimage_data.astronaut())))
    calls = _fast_path_calls(monkeypatch)
    with monkeypatch.context() as patch:  # the compiled resize not loaded (yet), or numba missing
        patch.setattr(pil_resize, "kernels", lambda wait=False: None)
        SiglipImageProcessorPil()(path)
    SiglipImageProcessor(reduced_decode=True)(path)
    assert calls == []
    SiglipImageProcessor()(path)
    assert pil_resize.kernels(wait=True) is not None
    SiglipImageProcessorPil()(path)  # it reads the decoded pixels in place (test_pil_resize.py)
    assert calls == [True, True]


def test_a_truncated_jpeg_still_fails_naming_it(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(_encoded(Image.fromarray(skimage_data.astronaut()))[:5000])
    with pytest.raises(ImageInputError, match=r"images\[0\] \('.*cut.jpg'\) cannot be read \(truncated"):
        SiglipImageProcessor()(path)


def test_a_truncated_jpeg_decodes_as_pillow_does_when_the_user_allows_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = _encoded(Image.fromarray(skimage_data.astronaut()))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as image:
        image.load()
        expected = SiglipImageProcessor()(image.convert("RGB"), return_tensors="pt").pixel_values
    assert torch.equal(SiglipImageProcessor()(path, return_tensors="pt").pixel_values, expected)


class _Unmappable(io.RawIOBase):
    """A file object without a file descriptor (a stream from an archive or a network file system)."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:
        return self._inner.readinto(buffer)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._inner.seek(offset, whence)


def test_files_are_mapped_not_read(tmp_path):
    # a photo followed by a phone's motion-photo video costs what its JPEG costs: the file is mapped
    data = _encoded(Image.fromarray(skimage_data.chelsea()))
    path = tmp_path / "motion.jpg"
    path.write_bytes(data + bytes(1 << 20))
    with open(path, "rb") as file, jpeg._contents(file) as contents:
        assert isinstance(contents, mmap.mmap) and len(contents) == len(data) + (1 << 20)
    with jpeg._contents(io.BytesIO(data)) as contents:
        assert isinstance(contents, memoryview)
    with jpeg._contents(_Unmappable(data)) as contents:
        assert contents == data
    with Image.open(path) as image:
        assert torch.equal(jpeg.decode(image, True), _pillows(data))


def test_the_servers_uploads_take_the_decoder(monkeypatch):
    from siglip.tools.serve.errors import ApiError
    from siglip.tools.serve.images import model_inputs
    from siglip.tools.serve.inputs import Upload

    photo = Image.fromarray(skimage_data.chelsea()).crop((0, 0, 300, 200))
    data = _jpeg(photo, orientation=6)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert pil_resize.kernels(wait=True) is not None
    for processor, taken in ((SiglipImageProcessor(), [True]), (SiglipImageProcessorPil(), [True])):
        calls = _fast_path_calls(monkeypatch)
        inputs = model_inputs([Upload("photo", data)], processor, 10**8, 10**9)
        assert np.array_equal(
            inputs[0]["pixel_values"], processor(upright, return_tensors="np").pixel_values[0]
        )
        assert calls == taken
        # the request's pixel budget counts the decoded pixels: the second photo is refused
        with pytest.raises(ApiError, match="left of the 90000 pixels"):
            model_inputs([Upload("a", data), Upload("b", data)], processor, 10**8, 300 * 200 + 30000)
