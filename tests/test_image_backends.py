"""The two image backends under transformers 5's names: our default `SiglipImageProcessor` /
`Siglip2ImageProcessor` (torch; `*Fast` their aliases) bit-identical to transformers 5's default torchvision
`SiglipImageProcessor` / `Siglip2ImageProcessor`, the `*Pil` classes the PIL backend, chosen by transformers'
names and arguments (`use_fast=`, `backend=`), and the files of both backends read by either library.

The PIL backend's own parity with transformers' `*Pil` processors is tested in test_image_processing*.py; here
each image is also run through both of ours, to show the backends really differ (by one 8-bit level).
"""

import json
import threading
import warnings

import numpy as np
import PIL
import pytest
import torch
import transformers
from PIL import Image, ImageOps
from skimage import data as skimage_data

from _material import train_gemma_like
from siglip import (
    AutoProcessor,
    Siglip2ImageProcessor,
    Siglip2ImageProcessorFast,
    Siglip2ImageProcessorPil,
    Siglip2Processor,
    SiglipImageProcessor,
    SiglipImageProcessorFast,
    SiglipImageProcessorPil,
    SiglipProcessor,
    SiglipTokenizer,
)
from siglip.core.two_tower import image_processing, torch_resize
from siglip.errors import StoreError, UsageError
from siglip.tools.cli import main
from siglip.tools.embeddings.embedder import Embedder
from siglip.tools.search.index import SearchIndex
from test_image_processing import ARGUMENTS, PHOTOS, RNG, _arrays, _generated_images, _jpeg, _random
from test_image_processing_siglip2 import ARGUMENTS as NAFLEX_ARGUMENTS

pytest_plugins = ["_fixtures"]
NAFLEX_KEYS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")
TORCH_FILTERS = {Image.Resampling.BOX, Image.Resampling.HAMMING}  # filters torch has no kernel for


def _photos() -> dict[str, Image.Image]:
    photos = {}
    for name in PHOTOS:
        photo = getattr(skimage_data, name)()
        photos[name] = Image.fromarray(photo.astype(np.uint8) * (255 if photo.dtype == bool else 1))
    return photos


def _aspect_ratios() -> dict[str, np.ndarray]:
    """Random RGB images from tall and thin to wide and flat, smaller and larger than the model."""
    shapes = [(7, 300), (300, 7), (50, 51), (223, 225), (224, 225), (500, 333), (97, 1001), (640, 480)]
    return {f"{h}x{w}": _random((h, w, 3)) for h, w in shapes}


def _backend_arrays() -> dict[str, np.ndarray | torch.Tensor]:
    """The array matrix of the PIL-backend tests, and what only the torch backend takes as transformers does."""
    return {
        **_arrays(),
        "uint16 HWC": RNG.integers(0, 65536, (30, 40, 3)).astype(np.uint16),
        "float32 0..255": (RNG.random((30, 40, 3)) * 255).astype(np.float32),
        "float64 CHW [0, 1]": RNG.random((3, 30, 40)),
        "torch bfloat16": torch.rand(3, 30, 40, generator=torch.Generator().manual_seed(1)).to(
            torch.bfloat16
        ),
    }


def _equal(ours_out: torch.Tensor, theirs_out: torch.Tensor, name: str = "") -> None:
    assert ours_out.dtype == theirs_out.dtype and ours_out.shape == theirs_out.shape, (
        f"{name}: {ours_out.dtype} {tuple(ours_out.shape)} != {theirs_out.dtype} {tuple(theirs_out.shape)}"
    )
    assert torch.equal(ours_out, theirs_out), (
        f"{name}: max |diff| {(ours_out.double() - theirs_out.double()).abs().max()}"
    )


def _naflex_equal(ours_out, theirs_out, name: str = "") -> None:
    for key in NAFLEX_KEYS:
        _equal(ours_out[key], theirs_out[key], f"{name} {key}")


@pytest.fixture(scope="module")
def fast():
    return SiglipImageProcessor()


@pytest.fixture(scope="module")
def their_fast():
    return transformers.SiglipImageProcessor()


@pytest.fixture(scope="module")
def naflex_fast():
    return Siglip2ImageProcessor()


@pytest.fixture(scope="module")
def their_naflex_fast():
    # transformers leaves do_convert_rgb unset for SigLIP 2; ours always converts (test_image_processing_siglip2.py)
    return transformers.Siglip2ImageProcessor(do_convert_rgb=True)


def test_the_classes_are_transformers_names_and_backends(their_fast, their_naflex_fast):
    assert their_fast.backend == their_naflex_fast.backend == "torchvision"  # the compared ones
    for ours, theirs in (
        (SiglipImageProcessor, transformers.SiglipImageProcessor),
        (Siglip2ImageProcessor, transformers.Siglip2ImageProcessor),
        (SiglipImageProcessorPil, transformers.SiglipImageProcessorPil),
        (Siglip2ImageProcessorPil, transformers.Siglip2ImageProcessorPil),
    ):
        assert ours.__name__ == theirs.__name__ and ours().backend == theirs().backend, ours
    # the *Fast names are the default classes, in both libraries
    assert (
        SiglipImageProcessorFast is SiglipImageProcessor
        and Siglip2ImageProcessorFast is Siglip2ImageProcessor
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' deprecation notice of the *Fast names
        assert transformers.SiglipImageProcessorFast is transformers.SiglipImageProcessor
        assert transformers.Siglip2ImageProcessorFast is transformers.Siglip2ImageProcessor


# --- SigLIP: pixels ---------------------------------------------------------------------------------------------
def test_real_photos_and_aspect_ratios_are_bit_identical_and_differ_from_pil(fast, their_fast):
    pil = SiglipImageProcessorPil()
    images = {**_photos(), **{k: Image.fromarray(v) for k, v in _aspect_ratios().items()}}
    differing = []
    for name, image in images.items():
        got = fast(image, return_tensors="pt").pixel_values
        _equal(got, their_fast(image, return_tensors="pt").pixel_values, name)
        differing.append((got != pil(image, return_tensors="pt").pixel_values).float().mean().item())
    assert np.median(differing) > 0.2  # the backends are not the same pipeline under two names


@pytest.mark.skipif(
    int(PIL.__version__.split(".")[0]) < 13, reason="Pillow < 13 exports no image safely as Arrow data"
)
def test_pil_images_are_resized_from_pillows_memory(fast, their_fast):
    """An RGB image is read in place through Pillow's Arrow export (4 bytes a pixel: the 4th channel resized
    along and dropped), as is a read-only image sharing its memory; one whose rows are in several blocks or
    padded (PILLOW_ALIGNMENT) from a copy; and 4-byte pixels whose 4th bytes are other data or lie outside the
    tensor's storage give the pixels of a contiguous copy."""
    image = Image.fromarray(_random((480, 640, 3)))
    view = torch_resize.from_pil(image)
    assert view.stride() == (1, 4 * 640, 4)
    image.putpixel((5, 7), (1, 2, 3))  # no copy: Pillow's own memory
    assert view[:, 7, 5].tolist() == [1, 2, 3]
    shared = Image.fromarrow(image, "RGB", image.size)
    assert shared.readonly and torch_resize.from_pil(shared).stride() == (1, 4 * 640, 4)
    large = Image.fromarray(_random((2100, 2100, 3)))  # 17.6 MB with the padding: more than Pillow's block
    assert torch_resize.from_pil(large).stride() == (1, 3 * 2100, 3)
    alignment = Image.core.get_alignment()
    Image.core.set_alignment(64)
    try:
        padded = Image.fromarray(_random((50, 61, 3)))  # rows of 244 bytes, each starting on 64
    finally:
        Image.core.set_alignment(alignment)
    assert torch_resize.from_pil(padded).stride() == (1, 3 * 61, 3)
    for each in (image, shared, large, padded):
        _equal(
            fast(each, return_tensors="pt").pixel_values, their_fast(each, return_tensors="pt").pixel_values
        )
    rgba = torch.from_numpy(_random((61, 83, 4)))
    for pixels in (rgba[..., :3], rgba[..., 1:]):  # the 4th bytes: another channel; past the storage's end
        chw = pixels.permute(2, 0, 1)
        assert chw.stride() == (1, 4 * 83, 4)
        for resample in (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR, Image.Resampling.NEAREST):
            expected = torch_resize.resize(chw.contiguous(), (40, 50), resample)
            _equal(torch_resize.resize(chw, (40, 50), resample), expected, resample.name)


@pytest.mark.parametrize("kwargs", ARGUMENTS, ids=lambda kw: ",".join(kw) or "defaults")
def test_every_mode_and_size_is_bit_identical_for_every_argument(fast, their_fast, kwargs):
    if kwargs.get("resample") in TORCH_FILTERS:
        with pytest.raises(ValueError, match=r"torch image backend resamples with .* needs backend='pil'"):
            fast(_generated_images()["RGB"], **kwargs)
        return
    for name, image in _generated_images().items():
        got = fast(image, return_tensors="pt", **kwargs).pixel_values
        _equal(got, their_fast(image, return_tensors="pt", **kwargs).pixel_values, name)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"do_resize": False}, {"do_rescale": False}, {"do_normalize": False}, {"resample": 2}, {"resample": 0},
     {"resample": 1}, {"size": {"height": 17, "width": 300}}],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults",
)  # fmt: skip
def test_arrays_and_tensors_of_every_dtype_and_layout_are_bit_identical(fast, their_fast, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # our float-in-[0, 1] warning (tested for the PIL backend)
        for name, array in _backend_arrays().items():
            expected = their_fast(array, return_tensors="pt", **kwargs).pixel_values
            if expected.dtype == torch.bfloat16:  # unnormalised bfloat16: ours is widened to float32 (numpy)
                expected = expected.float()
            _equal(fast(array, return_tensors="pt", **kwargs).pixel_values, expected, name)


def test_explicit_channel_layouts_are_bit_identical(fast, their_fast):
    square = _random((4, 5, 4))  # 4 rows, 5 columns, 4 channels: ambiguous, channels first unless told
    for layout in ("channels_first", "channels_last"):
        _equal(
            fast(square, input_data_format=layout, return_tensors="pt").pixel_values,
            their_fast(square, input_data_format=layout, return_tensors="pt").pixel_values,
            layout,
        )


def test_grey_2d_arrays_are_accepted_as_grey(fast):  # as by the PIL backend; transformers refuses them
    grey = _random((30, 40))
    _equal(
        fast(grey, return_tensors="pt").pixel_values, fast(grey[..., None], return_tensors="pt").pixel_values
    )


def test_16_bit_files_are_scaled_like_the_pil_backend(fast, tmp_path):
    values = RNG.integers(0, 65536, (30, 40)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    eight_bit = Image.fromarray(np.round(values / 65535 * 255).astype(np.uint8), "L")
    expected = transformers.SiglipImageProcessor()(eight_bit, return_tensors="pt").pixel_values
    _equal(fast(tmp_path / "deep.png", return_tensors="pt").pixel_values, expected)


def test_files_are_decoded_by_pillow_and_turned_upright(fast, their_fast, tmp_path):
    # transformers' torchvision processor decodes paths with torchvision.io / torchcodec (not importable here);
    # ours decodes them with Pillow, as the PIL backend: the reference is transformers given Pillow's image
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg(Image.fromarray(skimage_data.chelsea()), orientation=6))
    upright = ImageOps.exif_transpose(Image.open(path))
    assert upright.size == (300, 451)
    expected = their_fast(upright, return_tensors="pt").pixel_values
    for source in (str(path), path, path.read_bytes()):
        _equal(fast(source, return_tensors="pt").pixel_values, expected, type(source).__name__)


def test_batches_threads_and_return_types(their_fast):
    images = [*_generated_images().values(), *_aspect_ratios().values()]
    expected = their_fast(images, return_tensors="pt").pixel_values
    for threads in (1, 3):
        _equal(SiglipImageProcessor(num_threads=threads)(images, return_tensors="pt").pixel_values, expected)
    listed = SiglipImageProcessor()(images[:3], do_resize=False).pixel_values
    reference = their_fast(images[:3], do_resize=False).pixel_values
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(listed, reference, strict=True))


def test_each_images_torch_operations_run_on_its_own_thread(monkeypatch):
    # The pool's threads (and the caller, for one thread) run their torch operations on one thread each,
    # without touching the count of any other thread: not torch.set_num_threads, which every thread started
    # later would inherit.
    if image_processing._omp_set_num_threads() is None:
        pytest.skip("torch's CPU operations do not run on an OpenMP runtime reachable here")
    seen: list[tuple[bool, int]] = []
    process_image = image_processing._process_image

    def recording(*args, **kwargs):
        seen.append((threading.current_thread() is threading.main_thread(), torch.get_num_threads()))
        return process_image(*args, **kwargs)

    monkeypatch.setattr(image_processing, "_process_image", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        images = list(_aspect_ratios().values())
        for threads in (1, 2):
            SiglipImageProcessor(num_threads=threads)(images, return_tensors="pt")
            assert torch.get_num_threads() == 2  # the caller's count, back after a call on this thread
            assert len(seen) == len(images) and {count for _, count in seen} == {1}
            assert all(on_main == (threads == 1) for on_main, _ in seen)
            seen.clear()
        later: list[int] = []
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert later == [2]
    finally:
        torch.set_num_threads(before)


def test_mean_and_std_kept_between_calls_serve_any_later_call(fast):
    # the torch backend keeps its mean and std tensors per setting: settings given as a list or an array
    # (not a cache key) work, and tensors first made under inference mode or a meta default device serve a
    # later call that needs gradients or the CPU
    image = _photos()["coffee"]
    expected = fast(image, return_tensors="pt").pixel_values
    for mean in ([0.5, 0.5, 0.5], np.full(3, 0.5)):
        listed = SiglipImageProcessor()
        listed.image_mean = mean
        _equal(listed(image, return_tensors="pt").pixel_values, expected, type(mean).__name__)
    settings = (True, 1 / 255, True, (0.25, 0.5, 0.75), (0.5, 0.25, 0.125))  # a setting no other test uses
    with torch.inference_mode():
        torch_resize.rescale_normalize(torch.zeros(3, 2, 2, dtype=torch.uint8), *settings)
    with torch.device("meta"):
        torch_resize.rescale_normalize(torch.zeros(3, 2, 2, dtype=torch.uint8, device="cpu"), *settings)
    pixels = torch.rand(3, 4, 4, requires_grad=True)
    torch_resize.rescale_normalize(pixels, *settings).sum().backward()
    assert pixels.grad is not None and pixels.grad.device.type == "cpu"


def test_bilinear_on_cpus_without_avx2_takes_torchvisions_float_path(fast, their_fast, monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert not torch_resize._native_uint8("bilinear")
    for name, image in list(_photos().items())[:4]:
        _equal(
            fast(image, resample=2, return_tensors="pt").pixel_values,
            their_fast(image, resample=2, return_tensors="pt").pixel_values,
            name,
        )


def test_a_float64_default_dtype_is_followed_as_by_transformers(fast):
    # transformers scales mean and std in the default dtype (then float32); its processor caches them, so a
    # fresh one is compared. Ours keeps them per setting: the same setting is run in float32 first, so a
    # cache that ignored the default dtype would answer with float32's constants.
    image = _photos()["coffee"]
    kwargs = {"image_mean": [0.48145466, 0.4578275, 0.40821073], "return_tensors": "pt"}
    in_float32 = fast(image, **kwargs).pixel_values
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        expected = transformers.SiglipImageProcessor()(image, **kwargs).pixel_values
        _equal(fast(image, **kwargs).pixel_values, expected)
    finally:
        torch.set_default_dtype(before)
    assert not torch.equal(in_float32, expected)  # else this test could not tell the two apart


# --- SigLIP 2 NaFlex: pixels, masks and shapes ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs", NAFLEX_ARGUMENTS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults"
)
def test_naflex_every_mode_size_and_argument_is_bit_identical(naflex_fast, their_naflex_fast, kwargs):
    images = _generated_images()
    for name, image in images.items():
        _naflex_equal(
            naflex_fast(image, return_tensors="pt", **kwargs),
            their_naflex_fast(image, return_tensors="pt", **kwargs),
            name,
        )
    batch = list(images.values())
    _naflex_equal(
        naflex_fast(batch, return_tensors="pt", **kwargs),
        their_naflex_fast(batch, return_tensors="pt", **kwargs),
        "batch",
    )


@pytest.mark.parametrize("max_num_patches", [256, 576, 1024])
def test_naflex_real_photos_are_bit_identical_and_differ_from_pil(
    naflex_fast, their_naflex_fast, max_num_patches
):
    photos = [*_photos().values(), *map(Image.fromarray, _aspect_ratios().values())]
    got = naflex_fast(photos, max_num_patches=max_num_patches, return_tensors="pt")
    _naflex_equal(got, their_naflex_fast(photos, max_num_patches=max_num_patches, return_tensors="pt"))
    pil = Siglip2ImageProcessorPil()(photos, max_num_patches=max_num_patches, return_tensors="pt")
    assert torch.equal(got.spatial_shapes, pil.spatial_shapes)  # the same sizes, other pixels
    assert not torch.equal(got.pixel_values, pil.pixel_values)


def test_naflex_arrays_and_unresized_images_are_bit_identical(naflex_fast, their_naflex_fast):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, array in _backend_arrays().items():
            for kwargs in ({}, {"do_rescale": False}):  # NaFlex pixel_values are float32, as for PIL
                _naflex_equal(
                    naflex_fast(array, return_tensors="pt", **kwargs),
                    their_naflex_fast(array, return_tensors="pt", **kwargs),
                    f"{name} {kwargs}",
                )
    aligned = _random((48, 80, 3))
    _naflex_equal(
        naflex_fast(aligned, do_resize=False, return_tensors="pt"),
        their_naflex_fast(aligned, do_resize=False, return_tensors="pt"),
    )


# --- choosing a backend ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory, spiece_model):
    """One checkpoint folder per family, saved by transformers' processors with the torchvision backend."""
    root = tmp_path_factory.mktemp("saved")
    tokenizer = transformers.SiglipTokenizer(str(spiece_model), model_input_names=["input_ids"])
    transformers.SiglipProcessor(
        transformers.SiglipImageProcessor(size={"height": 64, "width": 48}, resample=2), tokenizer
    ).save_pretrained(root / "siglip")
    # a NaFlex folder has a Gemma tokenizer (tokenizer.model, lowercasing), as the hub's
    (root / "siglip2").mkdir()
    (root / "siglip2" / "tokenizer.model").write_bytes(train_gemma_like())
    (root / "siglip2" / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "Siglip2Tokenizer"})
    )
    transformers.Siglip2ImageProcessor(resample=3, do_convert_rgb=True).save_pretrained(root / "siglip2")
    for family, model_type in (("siglip", "siglip"), ("siglip2", "siglip2")):
        (root / family / "config.json").write_text(json.dumps({"model_type": model_type}))
    return root


CHOICES = [({}, "torch"), ({"use_fast": False}, "pil"), ({"use_fast": True}, "torch"), ({"backend": "pil"}, "pil"),
           ({"backend": "torchvision"}, "torch"), ({"backend": "torch"}, "torch"),
           ({"use_fast": False, "backend": "torchvision"}, "torch")]  # fmt: skip


@pytest.mark.parametrize("kwargs, backend", CHOICES, ids=lambda v: str(v))
def test_from_pretrained_chooses_the_backend_as_transformers_arguments_say(saved, kwargs, backend):
    classes = {
        "siglip": {"pil": SiglipImageProcessorPil, "torch": SiglipImageProcessor},
        "siglip2": {"pil": Siglip2ImageProcessorPil, "torch": Siglip2ImageProcessor},
    }
    for family, image_class, processor_class in (
        ("siglip", SiglipImageProcessor, SiglipProcessor),
        ("siglip2", Siglip2ImageProcessor, Siglip2Processor),
    ):
        expected = classes[family][backend]
        for loaded in (
            image_class.from_pretrained(saved / family, **kwargs),
            processor_class.from_pretrained(saved / family, **kwargs).image_processor,
            AutoProcessor.from_pretrained(saved / family, **kwargs).image_processor,
        ):
            assert type(loaded) is expected, (family, kwargs)
    # an explicit class stays itself without a choice
    assert type(SiglipImageProcessorPil.from_pretrained(saved / "siglip")) is SiglipImageProcessorPil
    assert type(Siglip2ImageProcessorPil.from_pretrained(saved / "siglip2")) is Siglip2ImageProcessorPil
    with pytest.raises(ValueError, match="backend must be 'pil' or 'torch'"):
        SiglipImageProcessor.from_pretrained(saved / "siglip", backend="cv2")


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_transformers_files_load_with_both_backends_and_give_its_pixels(saved, family):
    image = Image.fromarray(skimage_data.coffee())
    for use_fast in (None, True, False):  # None: each library's default
        theirs = transformers.AutoProcessor.from_pretrained(saved / family, use_fast=use_fast)
        ours = AutoProcessor.from_pretrained(saved / family, use_fast=use_fast)
        assert ours.image_processor.backend == theirs.image_processor.backend
        got, expected = ours(images=image, return_tensors="pt"), theirs(images=image, return_tensors="pt")
        for key in expected:
            if key != "input_ids":
                _equal(got[key], expected[key], f"{key} use_fast={use_fast}")


@pytest.mark.parametrize(
    "ours",
    [SiglipImageProcessor(size={"height": 96, "width": 128}, resample=2, image_mean=[0.1, 0.2, 0.3]),
     SiglipImageProcessorPil(size={"height": 96, "width": 128}, resample=2, image_mean=[0.1, 0.2, 0.3]),
     Siglip2ImageProcessor(max_num_patches=100, resample=3),
     Siglip2ImageProcessorPil(max_num_patches=100, resample=3)],
    ids=["siglip", "siglip-pil", "siglip2", "siglip2-pil"],
)  # fmt: skip
def test_what_we_save_transformers_loads_with_either_backend(ours, tmp_path):
    ours.save_pretrained(tmp_path)
    name = json.loads((tmp_path / "preprocessor_config.json").read_text())["image_processor_type"]
    # one name for both backends, the default class's: what transformers' class of the same backend writes
    their_class = type(transformers.AutoImageProcessor.from_pretrained(tmp_path, backend=ours.backend))
    assert their_class.__name__ == type(ours).__name__
    assert name == their_class().to_dict()["image_processor_type"] == type(ours).__name__.removesuffix("Pil")
    reloaded = type(ours).from_pretrained(tmp_path)
    assert type(reloaded) is type(ours) and reloaded.to_dict() == ours.to_dict()
    image = Image.fromarray(skimage_data.rocket())
    for backend, theirs in (
        ("torch", getattr(transformers, name).from_pretrained(tmp_path)),
        ("pil", getattr(transformers, name + "Pil").from_pretrained(tmp_path)),  # the same file
    ):
        got, expected = (
            reloaded.with_backend(backend)(image, return_tensors="pt"),
            theirs(image, return_tensors="pt"),
        )
        for key in expected:
            _equal(got[key], expected[key], f"{backend} {key}")
    assert transformers.AutoImageProcessor.from_pretrained(tmp_path).backend == "torchvision"  # its default


def test_with_backend_keeps_every_setting():
    pil = SiglipImageProcessorPil(size={"height": 32, "width": 48}, num_threads=2, reduced_decode=True,
                                  max_image_pixels=1000, exif_transpose=False)  # fmt: skip
    fast = pil.with_backend("torch")
    assert type(fast) is SiglipImageProcessor and type(pil) is SiglipImageProcessorPil
    assert vars(fast) == vars(pil) and fast.to_dict() == pil.to_dict()
    assert type(fast.with_backend("pil")) is SiglipImageProcessorPil
    assert type(Siglip2ImageProcessorPil().with_backend("torchvision")) is Siglip2ImageProcessor
    assert type(Siglip2ImageProcessor().with_backend("pil")) is Siglip2ImageProcessorPil
    with pytest.raises(ValueError, match="backend must be"):
        pil.with_backend("fast")


def test_processors_take_either_backend_of_their_family(spiece_model):
    tokenizer = SiglipTokenizer(spiece_model, model_input_names=["input_ids"])
    image = Image.fromarray(skimage_data.astronaut())
    size = {"height": 32, "width": 32}
    for ours, theirs in (
        (SiglipImageProcessor(size=size), transformers.SiglipImageProcessor(size=size)),
        (SiglipImageProcessorPil(size=size), transformers.SiglipImageProcessorPil(size=size)),
    ):
        _equal(
            SiglipProcessor(ours, tokenizer)(images=image)["pixel_values"],
            theirs(image, return_tensors="pt").pixel_values,
            type(ours).__name__,
        )
    for other in (SiglipImageProcessor(), SiglipImageProcessorPil()):
        with pytest.raises(TypeError, match="takes a Siglip2ImageProcessor"):
            Siglip2Processor(other, tokenizer)


# --- the tools ---------------------------------------------------------------------------------------------------
def test_every_tool_takes_either_backend(checkpoint, photos, tmp_path, monkeypatch):
    _, files = photos
    paths = [str(f) for f in files]
    default = Embedder.from_pretrained(checkpoint, device="cpu")
    pil = Embedder.from_pretrained(checkpoint, device="cpu", image_backend="pil", max_image_pixels=10**6)
    assert type(default.processor.image_processor) is SiglipImageProcessor  # the default, as transformers 5
    assert type(pil.processor.image_processor) is SiglipImageProcessorPil
    assert pil.processor.image_processor.max_image_pixels == 10**6  # the other options still apply
    expected = pil.embed_images(paths)
    assert np.abs(expected - default.embed_images(paths)).max() > 1e-4  # the backends' embeddings differ

    # the command line: --image-backend reaches the model the command loads (its ModelOptions)
    out = tmp_path / "v.npy"
    argv = ["embed", *paths, "--out", out, "--model", checkpoint, "--workers", "0", "--no-progress"]
    assert main([*map(str, argv), "--image-backend", "pil"]) == 0
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)
    with pytest.raises(UsageError, match=r"image_backend must be one of pil, torch; got 'fast'"):
        Embedder.from_pretrained(checkpoint, image_backend="fast")

    # an index records the backend it was built with, keeps it when reopened and refuses another
    for backend, image_class in (("pil", SiglipImageProcessorPil), (None, SiglipImageProcessor)):
        index_dir = tmp_path / f"index-{backend}"
        with SearchIndex(index_dir, checkpoint, "cpu", image_backend=backend) as index:
            index.update(paths[:1])
        recorded = backend or "torch"  # the default's, recorded by name
        other = "torch" if recorded == "pil" else "pil"
        with SearchIndex(index_dir) as index:
            assert index.embedding_settings["image_backend"] == recorded
            assert type(index.embedder.processor.image_processor) is image_class
        with pytest.raises(StoreError, match=f"built with --image-backend {recorded}, asked for {other}"):
            SearchIndex(index_dir, image_backend=other)

    # an index from before the backend was recorded was embedded with PIL: it stays PIL
    with SearchIndex(tmp_path / "index-pil") as index:
        settings = {k: v for k, v in index.embedding_settings.items() if k != "image_backend"}
        index.store.set_meta("embedding_settings", json.dumps(settings))
    with SearchIndex(tmp_path / "index-pil") as index:
        assert type(index.embedder.processor.image_processor) is SiglipImageProcessorPil
    with pytest.raises(StoreError, match="built with --image-backend pil, asked for torch"):
        SearchIndex(tmp_path / "index-pil", image_backend="torch")
