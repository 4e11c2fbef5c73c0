"""The PIL backend's compiled resize (`siglip.core.two_tower.pil_resize`, numba): Pillow's pixels, bit for bit.

The oracle is Pillow's `Image.resize` itself (which transformers' PIL processors call), on random sizes from 1
pixel to larger than the model, down and up, along one axis or both (both orders of Pillow's passes), for the
box, bilinear and bicubic filters (the others stay Pillow's), on noise, on black-and-white patterns (whose
filter overshoots clip) and on real photos; and the processors, which must give the same pixels whether Pillow
or the compiled loops resize (the PIL backend's parity with transformers is tested in test_image_processing*.py).
"""

import os
import random
import time

import numpy as np
import PIL
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data

from siglip import Siglip2ImageProcessorPil, SiglipImageProcessorPil
from siglip.core.two_tower import image_processing, jpeg, pil_resize

pytest.importorskip("numba")


@pytest.fixture(scope="module", autouse=True)
def loops():
    loaded = pil_resize.kernels(wait=True)
    assert loaded is not None  # numba is installed (the test extra): the loops must load
    return loaded


def _pillow(pixels: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize(size[::-1], resample))


def _cases(count: int, seed: int):
    """(pixels, size, filter) at random: noise, 0/255 patterns and crops of real photos."""
    rng, pick = np.random.default_rng(seed), random.Random(seed)
    photos = [getattr(skimage_data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")]
    for i in range(count):
        height, width = pick.randint(1, 600), pick.randint(1, 600)
        if i % 3 == 0:
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        elif i % 3 == 1:
            pixels = np.where(rng.random((height, width, 3)) < 0.5, 0, 255).astype(np.uint8)
        else:
            photo = photos[i % len(photos)]
            top, left = pick.randrange(photo.shape[0]), pick.randrange(photo.shape[1])
            pixels = np.ascontiguousarray(photo[top : top + height, left : left + width])
            height, width = pixels.shape[:2]
        size = (
            pick.choice([pick.randint(1, 700), 224, 384, height, max(1, height // 3)]),
            pick.choice([pick.randint(1, 700), 224, 512, width, max(1, width // 3)]),
        )
        yield pixels, size, pick.choice(list(pil_resize.SUPPORT))


def test_random_sizes_filters_and_contents_are_pillows_pixels():
    differ = []
    for pixels, size, resample in _cases(240, seed=0):
        got = pil_resize.resize(pixels, size, resample)
        if not np.array_equal(got, _pillow(pixels, size, resample)):
            differ.append((pixels.shape, size, resample.name))
    assert differ == []


@pytest.mark.parametrize("resample", list(pil_resize.SUPPORT), ids=lambda r: r.name)
@pytest.mark.parametrize(
    "shape, size",
    [
        ((480, 640), (224, 224)),  # a photo to the model: the horizontal pass first
        ((640, 480), (224, 224)),
        (
            (600, 210),
            (100, 200),
        ),  # the height shrinks more than twice the width: Pillow 13 goes vertical first
        ((252, 167), (224, 512)),  # down and up
        ((28, 28), (224, 224)),  # up both ways
        ((300, 7), (224, 224)),
        ((1, 1), (3, 5)),
        ((224, 300), (224, 224)),  # one axis only
        ((300, 224), (224, 224)),
        ((2000, 3000), (224, 224)),  # a phone photo: long filters (87 taps)
    ],
)
def test_chosen_sizes_are_pillows_pixels_for_every_filter(shape, size, resample):
    pixels = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    assert np.array_equal(pil_resize.resize(pixels, size, resample), _pillow(pixels, size, resample))


def test_pil_images_and_strided_views_give_the_same_pixels():
    photo = skimage_data.astronaut()
    image = Image.fromarray(photo)
    expected = _pillow(photo, (224, 224), Image.Resampling.BICUBIC)
    # Pillow's own memory (4 bytes a pixel), a flipped view, a view with a channel left out
    rgbx = np.concatenate([photo, np.zeros_like(photo[..., :1])], axis=2)[..., :3]
    for pixels in (image, rgbx, np.ascontiguousarray(photo[::-1])[::-1]):
        assert np.array_equal(pil_resize.resize(pixels, (224, 224), Image.Resampling.BICUBIC), expected)


def test_the_order_of_the_passes_follows_the_installed_pillow():
    # the case above where the orders differ: each order's pixels, and Pillow's one of them
    pixels = np.random.default_rng(2).integers(0, 256, (600, 210, 3), dtype=np.uint8)
    resample, size = Image.Resampling.BILINEAR, (100, 200)
    horizontal_first = _pillow(_pillow(pixels, (600, 200), resample), size, resample)
    vertical_first = _pillow(_pillow(pixels, (100, 210), resample), size, resample)
    assert not np.array_equal(horizontal_first, vertical_first)
    pillow_13 = int(PIL.__version__.split(".")[0]) >= 13  # read here, not from the code under test
    expected = vertical_first if pillow_13 else horizontal_first
    assert np.array_equal(_pillow(pixels, size, resample), expected)
    assert np.array_equal(pil_resize.resize(pixels, size, resample), expected)


def test_other_filters_and_images_pillow_cannot_lend_are_left_to_it():
    pixels = np.zeros((10, 10, 3), np.uint8)
    for resample in (Image.Resampling.NEAREST, Image.Resampling.HAMMING, Image.Resampling.LANCZOS):
        assert pil_resize.resize(pixels, (5, 5), resample) is None
    # more than Pillow's 16 MB block: it would be copied first, which costs more than the loops save
    large = Image.new("RGB", (2100, 2100))
    assert pil_resize.resize(large, (224, 224), Image.Resampling.BICUBIC) is None
    assert pil_resize.resize(np.asarray(large), (224, 224), Image.Resampling.BICUBIC) is not None


def test_without_numba_pillow_resizes(monkeypatch):
    monkeypatch.setattr(pil_resize, "_NUMBA", False)
    monkeypatch.setattr(pil_resize, "_loader", None)
    monkeypatch.setattr(pil_resize, "_kernels", None)
    assert pil_resize.kernels(wait=True) is None and pil_resize._loader is None
    assert pil_resize.resize(np.zeros((10, 10, 3), np.uint8), (5, 5), Image.Resampling.BICUBIC) is None


def test_a_fork_while_the_loops_load_waits_for_them(loops, monkeypatch):
    # a child forked mid-load (a DataLoader's workers started right after a first image) gets the loaded
    # loops, not the module its parent's loader thread had half imported
    def slow_load():
        time.sleep(0.5)
        pil_resize._kernels = loops

    monkeypatch.setattr(pil_resize, "_load", slow_load)
    monkeypatch.setattr(pil_resize, "_loader", None)
    monkeypatch.setattr(pil_resize, "_kernels", None)
    assert pil_resize.kernels() is None  # loading
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: does it have the loops, and do they resize?
        try:
            pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
            got = pil_resize.resize(pixels, (20, 30), Image.Resampling.BICUBIC)
            same = got is not None and np.array_equal(
                got, _pillow(pixels, (20, 30), Image.Resampling.BICUBIC)
            )
            os.write(write, b"1" if same else b"0")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(child, 0)
    assert answer == b"1"


def test_without_a_writable_cache_the_loops_compile_in_the_process(monkeypatch):
    import numba

    from siglip.core.two_tower import _resize_kernels

    njit = numba.njit

    def no_cache(*args, **kwargs):
        if kwargs.get("cache"):  # numba's words where it finds no folder to write its cache in
            raise RuntimeError("cannot cache function 'f': no locator available for file 'f.py'")
        return njit(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", no_cache)
    twice = _resize_kernels._compiled([numba.int64(numba.int64)])(lambda x: 2 * x)
    assert twice(21) == 42


def test_the_compiled_table_lookup_is_numpys(monkeypatch):
    rng = np.random.default_rng(3)
    table = rng.standard_normal((3, 256)).astype(np.float32)
    pixels = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    read_only = np.asarray(Image.fromarray(pixels[..., :3]))
    cases = [np.ascontiguousarray(pixels[..., :3]), pixels[..., :3], pixels[::-1, ::2, :3], read_only]
    with_loops = [image_processing._apply_table(image, table) for image in cases]
    monkeypatch.setattr(pil_resize, "kernels", lambda wait=False: None)
    for image, got in zip(cases, with_loops, strict=True):
        assert np.array_equal(got, image_processing._apply_table(image, table))


def _inputs(tmp_path) -> list:
    """Files (JPEG, PNG, an EXIF-rotated JPEG), PIL images and arrays of several sizes."""
    photo = Image.fromarray(skimage_data.chelsea())
    paths = []
    for i, (fmt, options) in enumerate([("JPEG", {}), ("PNG", {}), ("JPEG", {"subsampling": 0})]):
        paths.append(tmp_path / f"{i}.{fmt.lower()}")
        photo.resize((333 + 50 * i, 257)).save(paths[-1], fmt, **options)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(rotated, "JPEG", exif=exif)
    grey = photo.convert("L").resize((97, 301))
    return [*paths, rotated, photo, grey, np.asarray(photo)[:200, :250], np.asarray(photo)[::-1]]


@pytest.mark.parametrize("family", [SiglipImageProcessorPil, Siglip2ImageProcessorPil])
def test_the_pil_processors_give_the_same_pixels_with_or_without_the_loops(family, tmp_path, monkeypatch):
    inputs = _inputs(tmp_path)
    processor = family(num_threads=2)
    compiled = processor(inputs, return_tensors="pt")
    with monkeypatch.context() as patch:
        patch.setattr(pil_resize, "kernels", lambda wait=False: None)
        by_pillow = processor(inputs, return_tensors="pt")
    for key in by_pillow:
        assert torch.equal(compiled[key], by_pillow[key])


def test_with_the_loops_loaded_pillow_neither_resizes_nor_decodes_jpegs(tmp_path, monkeypatch):
    inputs = _inputs(tmp_path)
    expected = SiglipImageProcessorPil()(inputs, return_tensors="pt")["pixel_values"]
    decode, decoded = jpeg.decode, []

    def refuse(*args, **kwargs):
        raise AssertionError("Pillow resized")

    def spy(*args, **kwargs):
        pixels = decode(*args, **kwargs)
        decoded.append(pixels is not None)
        return pixels

    monkeypatch.setattr(Image.Image, "resize", refuse)
    monkeypatch.setattr(jpeg, "decode", spy)
    got = SiglipImageProcessorPil()(inputs, return_tensors="pt")["pixel_values"]
    assert torch.equal(got, expected) and sorted(decoded) == [False, True, True, True]  # the PNG: Pillow
