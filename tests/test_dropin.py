"""The transformers surface of issue 21 on checkpoints saved by transformers 5.24 (the oracle): `device_map`,
`dtype` / `torch_dtype`, the loading keyword arguments on every `from_pretrained`, the Auto classes,
`load_image`, and the zero-shot pipeline's numbers."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import siglip
from _material import save_tiny_naflex, tiny_config, train_gemma_like
from _reference import TINY, quiet_transformers, reference_model
from siglip import CheckpointError, ImageInputError
from siglip.image_utils import load_image

TINY_64 = {**TINY, "text_config": {**TINY["text_config"], "max_position_embeddings": 64, "vocab_size": 1000}}


# --- checkpoints saved by transformers -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory, spiece_model) -> Path:
    """A SigLIP checkpoint as transformers saves one: model, SentencePiece tokenizer, image processor."""
    import transformers

    directory = tmp_path_factory.mktemp("tf-siglip")
    reference_model("SiglipModel", TINY_64).save_pretrained(directory)
    tokenizer = transformers.SiglipTokenizer(str(spiece_model), model_max_length=64)
    image_processor = transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    transformers.SiglipProcessor(image_processor, tokenizer).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory) -> Path:
    """A fixed-resolution SigLIP 2 checkpoint whose Gemma tokenizer returns an attention mask, as the hub's."""
    directory = tmp_path_factory.mktemp("tf-fixres-gemma")
    (directory / "tokenizer.model").write_bytes(train_gemma_like())
    tokenizer_config = {"add_bos_token": False, "add_eos_token": True, "padding_side": "right",
                        "model_max_length": 64, "tokenizer_class": "GemmaTokenizer"}  # fmt: skip
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    tokenizer = siglip.GemmaTokenizer.from_pretrained(directory)
    assert "attention_mask" in tokenizer.model_input_names
    config = tiny_config(text_positions=64, vocab_size=len(tokenizer)).to_dict()
    config = {key: config[key] for key in ("text_config", "vision_config")}
    reference_model("SiglipModel", config).save_pretrained(directory)
    siglip.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def naflex_dir(tmp_path_factory) -> Path:
    return save_tiny_naflex(tmp_path_factory.mktemp("naflex"))


# --- device_map and dtype ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "device_map",
    ["cpu", "auto", "balanced", "sequential", torch.device("cpu"), {"": "cpu"}, {"": torch.device("cpu")}],
)
def test_single_device_maps_place_the_whole_model(siglip_dir, device_map):
    model = siglip.AutoModel.from_pretrained(siglip_dir, device_map=device_map)
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}
    assert model.hf_device_map == {"": torch.device("cpu")}


def test_device_map_errors_are_transformers_one_line_messages(siglip_dir, monkeypatch):
    from siglip.core import pretrained

    monkeypatch.setattr(pretrained, "_has_accelerate", lambda: False)
    with pytest.raises(ValueError, match="needs accelerate: `pip install accelerate`") as err:
        siglip.SiglipModel.from_pretrained(siglip_dir, device_map={"text_model": "cpu", "vision_model": 0})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="can't pass device_map as a negative int"):
        siglip.SiglipModel.from_pretrained(siglip_dir, device_map=-1)
    with pytest.raises(ValueError, match="needs to be a device name"):
        siglip.SiglipModel.from_pretrained(siglip_dir, device_map="gpu-please")
    with pytest.raises(ValueError, match="device or device_map, not both"):
        siglip.SiglipModel.from_pretrained(siglip_dir, device="cpu", device_map="cpu")


def test_device_map_int_and_cuda_name_the_gpu_as_transformers(monkeypatch):
    from siglip.core.pretrained import device_placement

    assert device_placement(None, 1) == torch.device("cuda", 1)
    assert device_placement(None, {"": 0}) == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert device_placement(None, "cuda") == torch.device("cuda", 3)
    assert device_placement(None, "cuda:2") == torch.device("cuda", 2)
    assert device_placement(None, "mps") == torch.device("mps")


def test_multi_device_map_goes_to_accelerate_when_installed(monkeypatch, siglip_dir):
    """With accelerate present, a map over two devices is handed to accelerate's dispatch_model (mocked here:
    accelerate is not installed on the test machine)."""
    import sys
    import types

    from siglip.core import pretrained

    dispatched = {}
    fake = types.ModuleType("accelerate")
    fake.dispatch_model = lambda model, device_map, offload_dir=None: dispatched.update(device_map)
    fake.infer_auto_device_map = None
    utils = types.ModuleType("accelerate.utils")
    utils.get_balanced_memory = utils.get_max_memory = None
    monkeypatch.setitem(sys.modules, "accelerate", fake)
    monkeypatch.setitem(sys.modules, "accelerate.utils", utils)
    monkeypatch.setattr(pretrained, "_has_accelerate", lambda: True)
    device_map = {"text_model": "cpu", "vision_model": "disk", "logit_scale": "cpu", "logit_bias": "cpu"}
    model = siglip.SiglipModel.from_pretrained(siglip_dir, device_map=device_map)
    assert dispatched == device_map and model.hf_device_map == device_map


def test_no_split_modules_are_transformers(siglip_dir):
    import transformers

    ours = siglip.SiglipModel.from_pretrained(siglip_dir)._no_split_modules
    assert sorted(ours) == sorted(transformers.SiglipModel._no_split_modules)


@pytest.mark.parametrize("saved", [torch.bfloat16, torch.float16])
def test_dtype_auto_reads_the_checkpoint_dtype_as_transformers(tmp_path, saved):
    import transformers

    reference_model("SiglipModel", TINY).to(saved).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == str(saved).removeprefix("torch.")
    theirs = transformers.SiglipModel.from_pretrained(tmp_path, dtype="auto")
    for kwargs in ({"dtype": "auto"}, {"torch_dtype": "auto"}):
        assert siglip.SiglipModel.from_pretrained(tmp_path, **kwargs).dtype == theirs.dtype == saved
    del config["dtype"]  # no dtype in the config: the weights' own
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert siglip.SiglipModel.from_pretrained(tmp_path, dtype="auto").dtype == saved
    assert siglip.SiglipModel.from_pretrained(tmp_path, torch_dtype=torch.float32).dtype == torch.float32
    assert siglip.SiglipModel.from_pretrained(tmp_path, dtype="bfloat16").dtype == torch.bfloat16


# --- the loading keyword arguments on every from_pretrained -------------------------------------------------
LOADING = dict(trust_remote_code=True, revision="main", cache_dir=None, local_files_only=True, token=None)
MODEL_LOADING = dict(LOADING, low_cpu_mem_usage=True, dtype=torch.float32, device_map="cpu")


@pytest.mark.parametrize(
    "name",
    ["SiglipConfig", "SiglipTokenizer", "SiglipImageProcessor", "SiglipProcessor", "AutoConfig", "AutoTokenizer",
     "AutoImageProcessor", "AutoProcessor"],
)  # fmt: skip
def test_every_from_pretrained_accepts_the_loading_arguments(siglip_dir, name):
    import transformers

    kwargs = dict(LOADING, low_cpu_mem_usage=True, device_map="auto", torch_dtype=torch.float16)
    ours = getattr(siglip, name).from_pretrained(siglip_dir, **kwargs)
    theirs = getattr(transformers, name).from_pretrained(siglip_dir, **kwargs)
    assert type(ours).__name__.removesuffix("Pil") == type(theirs).__name__.removesuffix("Pil")
    if name.endswith("Config"):  # a config takes the dtype as its value, and ignores the rest
        assert ours.torch_dtype == "float16" and theirs.dtype == torch.float16
        assert not hasattr(ours, "device_map") and "low_cpu_mem_usage" not in ours.to_dict()


@pytest.mark.parametrize(
    "name",
    ["SiglipModel", "SiglipVisionModel", "SiglipTextModel", "SiglipForImageClassification", "AutoModel",
     "AutoModelForZeroShotImageClassification", "AutoModelForImageClassification"],
)  # fmt: skip
def test_every_model_from_pretrained_accepts_the_loading_arguments(siglip_dir, name):
    import transformers

    quiet_transformers()
    ours = getattr(siglip, name).from_pretrained(siglip_dir, torch_dtype=torch.float32, **MODEL_LOADING)
    del MODEL_LOADING["device_map"]  # transformers needs accelerate for any device_map
    try:
        theirs = getattr(transformers, name).from_pretrained(siglip_dir, **MODEL_LOADING)
    finally:
        MODEL_LOADING["device_map"] = "cpu"
    assert type(ours).__name__ == type(theirs).__name__
    # transformers 5.24 names a tower model's tensors without its tower prefix when loaded from a full checkpoint
    ours_state, theirs_state = _unprefixed(ours.state_dict()), _unprefixed(theirs.state_dict())
    assert ours_state.keys() == theirs_state.keys()
    for key, value in theirs_state.items():
        if not key.startswith("classifier."):  # freshly initialised on both sides
            torch.testing.assert_close(ours_state[key], value, rtol=0, atol=0)


def _unprefixed(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key.removeprefix("vision_model.").removeprefix("text_model."): v for key, v in state_dict.items()}


@pytest.mark.parametrize("family", ["Siglip", "Siglip2"])
def test_a_new_classifier_head_starts_as_transformers_from_the_same_seed(siglip_dir, naflex_dir, family):
    """From a two-tower checkpoint, the classifier is initialised with transformers' draws (its layer's rule,
    then the class's), so fine-tuning code seeded as in transformers starts from the same head."""
    import transformers

    quiet_transformers()
    directory = siglip_dir if family == "Siglip" else naflex_dir
    name = f"{family}ForImageClassification"
    torch.manual_seed(0)
    theirs = getattr(transformers, name).from_pretrained(directory, num_labels=3)
    torch.manual_seed(0)
    ours = getattr(siglip, name).from_pretrained(directory, num_labels=3)
    torch.testing.assert_close(ours.classifier.weight, theirs.classifier.weight, rtol=0, atol=0)
    torch.testing.assert_close(ours.classifier.bias, theirs.classifier.bias, rtol=0, atol=0)


@pytest.mark.parametrize(
    "name, fixture", [("Siglip2TextModel", "gemma_dir"), ("SiglipTextModel", "naflex_dir")]
)
def test_a_text_model_loads_the_other_familys_checkpoint_as_transformers(request, name, fixture):
    """Both families share the text tower; transformers loads either text model from the other's checkpoint."""
    import transformers

    quiet_transformers()
    directory = request.getfixturevalue(fixture)
    ours, theirs = (
        getattr(siglip, name).from_pretrained(directory),
        getattr(transformers, name).from_pretrained(directory),
    )
    ids = torch.randint(0, 1000, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).pooler_output, theirs(ids).pooler_output)
    with pytest.raises(CheckpointError, match="SigLIP 2 NaFlex checkpoint"):  # vision towers differ: refused
        siglip.SiglipVisionModel.from_pretrained(request.getfixturevalue("naflex_dir"))


# --- Auto classes --------------------------------------------------------------------------------------------
def test_auto_classes_pick_transformers_classes_for_each_family(siglip_dir, gemma_dir, naflex_dir):
    import transformers

    quiet_transformers()
    names = ["AutoConfig", "AutoModel", "AutoModelForZeroShotImageClassification", "AutoModelForImageClassification",
             "AutoTokenizer", "AutoImageProcessor", "AutoProcessor"]  # fmt: skip
    for directory in (siglip_dir, gemma_dir, naflex_dir):
        for name in names:
            ours = getattr(siglip, name).from_pretrained(directory)
            theirs = getattr(transformers, name).from_pretrained(directory)
            expected = (
                type(theirs).__name__.removesuffix("Pil").replace("TokenizersBackend", "GemmaTokenizer")
            )
            assert type(ours).__name__ == expected, (directory.name, name)


def test_auto_model_loads_a_vision_tower_checkpoint_as_the_vision_model(tmp_path):
    import transformers

    reference_model("SiglipVisionModel", TINY).save_pretrained(tmp_path)
    assert type(transformers.AutoModel.from_pretrained(tmp_path)).__name__ == "SiglipVisionModel"
    assert type(siglip.AutoModel.from_pretrained(tmp_path)) is siglip.SiglipVisionModel
    assert type(siglip.AutoConfig.from_pretrained(tmp_path)) is siglip.SiglipVisionConfig
    with pytest.raises(CheckpointError, match="one tower"):
        siglip.AutoModelForZeroShotImageClassification.from_pretrained(tmp_path)


def test_auto_from_config(siglip_dir):
    config = siglip.AutoConfig.from_pretrained(siglip_dir)
    assert (
        type(siglip.AutoModelForImageClassification.from_config(config))
        is siglip.SiglipForImageClassification
    )
    assert type(siglip.AutoModelForZeroShotImageClassification.from_config(config)) is siglip.SiglipModel


def test_auto_image_processor_forwards_the_file_settings_and_overrides(siglip_dir):
    processor = siglip.AutoImageProcessor.from_pretrained(siglip_dir, size={"height": 48, "width": 48})
    assert processor.size == {"height": 48, "width": 48}


def test_processor_from_pretrained_forwards_settings_as_transformers(siglip_dir, naflex_dir):
    import transformers

    settings = {"do_resize": False, "size": {"height": 48, "width": 48}, "model_max_length": 12}
    ours = siglip.AutoProcessor.from_pretrained(siglip_dir, **settings)
    theirs = transformers.SiglipProcessor.from_pretrained(siglip_dir, **settings)
    assert ours.image_processor.size == theirs.image_processor.size == settings["size"]
    assert ours.image_processor.do_resize is theirs.image_processor.do_resize is False
    assert ours.tokenizer.model_max_length == theirs.tokenizer.model_max_length == 12
    assert (
        siglip.AutoProcessor.from_pretrained(naflex_dir, max_num_patches=32).image_processor.max_num_patches
        == 32
    )
    with pytest.raises(TypeError, match="model_max_lenght"):
        siglip.SiglipProcessor.from_pretrained(siglip_dir, model_max_lenght=12)


# --- load_image -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo_file(tmp_path_factory) -> Path:
    """A JPEG with an EXIF orientation (rotate 90°), so that the upright image differs from the stored one."""
    path = tmp_path_factory.mktemp("photo") / "rotated.jpg"
    pixels = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype("uint8")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


@pytest.fixture(scope="module")
def http_root(photo_file):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(photo_file.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_load_image_takes_what_transformers_takes(photo_file, http_root):
    from transformers.image_utils import load_image as reference

    encoded = base64.b64encode(photo_file.read_bytes()).decode()
    sources = [
        str(photo_file),
        f"{http_root}/{photo_file.name}",
        encoded,
        f"data:image/jpeg;base64,{encoded}",
        Image.open(photo_file),
        Image.open(photo_file).convert("L"),
    ]
    for source in sources:
        ours, theirs = load_image(source, timeout=5), reference(source, timeout=5)
        assert ours.mode == theirs.mode == "RGB" and ours.size == theirs.size == (20, 30)
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_load_image_errors(http_root):
    with pytest.raises(TypeError, match="Incorrect format used for image"):
        load_image(np.zeros((4, 4, 3)))
    with pytest.raises(ImageInputError, match="Incorrect image source") as err:
        load_image("no-such-file.png")
    assert isinstance(err.value, ValueError)
    with pytest.raises(ImageInputError, match=r"cannot fetch image .*missing\.jpg"):
        load_image(f"{http_root}/missing.jpg", timeout=5)
    with pytest.raises(ImageInputError, match="not a readable image"):
        load_image(base64.b64encode(b"not an image at all").decode())


# --- the zero-shot pipeline ----------------------------------------------------------------------------------
LABELS = ["A Cat", "a dog", "Car on a ROAD"]


def _image() -> Image.Image:
    return Image.fromarray((np.random.default_rng(1).random((40, 50, 3)) * 255).astype("uint8"))


def _scores(results: list[dict]) -> dict[str, float]:
    return {r["label"]: r["score"] for r in results}


@pytest.mark.parametrize("fixture", ["siglip_dir", "gemma_dir", "naflex_dir"])
def test_pipeline_gives_transformers_scores(request, fixture):
    """The same numbers as transformers' pipeline, each with its default image backend (torchvision's pixels):
    labels not lowercased, the Gemma tokenizer's attention mask given to the model."""
    import transformers

    quiet_transformers()
    directory = request.getfixturevalue(fixture)
    image_processor = transformers.AutoImageProcessor.from_pretrained(directory)  # its default: torchvision
    assert image_processor.backend == "torchvision"
    theirs = transformers.pipeline(
        "zero-shot-image-classification", model=str(directory), image_processor=image_processor
    )
    expected = theirs(_image(), candidate_labels=LABELS)
    ours = siglip.pipeline(
        "zero-shot-image-classification", model=str(directory), device="cpu", dtype=torch.float32
    )
    got = ours(_image(), candidate_labels=LABELS)
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    for label, score in _scores(expected).items():
        assert _scores(got)[label] == pytest.approx(score, rel=1e-5, abs=1e-7)


def test_pipeline_lowercase_is_an_explicit_option(gemma_dir):
    plain = siglip.pipeline(model=str(gemma_dir), device="cpu")(_image(), candidate_labels=LABELS)
    lowered = siglip.pipeline(model=str(gemma_dir), device="cpu", lowercase=True)(
        _image(), candidate_labels=LABELS
    )
    as_lowercase_labels = siglip.pipeline(model=str(gemma_dir), device="cpu")(
        _image(),
        candidate_labels=[label.lower() for label in LABELS],
        hypothesis_template="this is a photo of {}.",
    )
    assert _scores(plain) != pytest.approx(_scores(lowered))
    assert [r["score"] for r in lowered] == pytest.approx([r["score"] for r in as_lowercase_labels], rel=1e-6)


def test_pipeline_dtype_device_map_and_inputs(siglip_dir, photo_file):
    for kwargs in ({"dtype": torch.bfloat16}, {"torch_dtype": "bfloat16"}, {"dtype": "auto"}, {"device_map": "cpu"},
                   {"device_map": "auto"}, {"trust_remote_code": True}):  # fmt: skip
        classifier = siglip.pipeline("zero-shot-image-classification", model=str(siglip_dir), **kwargs)
        expected = torch.bfloat16 if "bfloat16" in str(kwargs) else torch.float32
        assert classifier.model.dtype == expected and classifier.model.device.type == "cpu"
    classifier = siglip.pipeline(model=str(siglip_dir), device="cpu")
    encoded = base64.b64encode(photo_file.read_bytes()).decode()
    by_path = classifier(str(photo_file), candidate_labels=LABELS)
    assert classifier(images=encoded, candidate_labels=LABELS) == by_path  # transformers' older `images=`
    assert classifier(load_image(str(photo_file)), candidate_labels=LABELS) == by_path
    with pytest.raises(ValueError, match="disagree"):
        siglip.pipeline(model=str(siglip_dir), dtype=torch.float16, torch_dtype=torch.bfloat16)


def test_pipeline_takes_a_loaded_model(siglip_dir):
    model = siglip.AutoModelForZeroShotImageClassification.from_pretrained(siglip_dir)
    from_model = siglip.pipeline("zero-shot-image-classification", model=model)
    from_name = siglip.pipeline("zero-shot-image-classification", model=str(siglip_dir), device="cpu")
    assert from_model(_image(), candidate_labels=LABELS) == from_name(_image(), candidate_labels=LABELS)


def test_image_input_of_the_pipeline_is_read_upright(siglip_dir, photo_file):
    classifier = siglip.pipeline(model=str(siglip_dir), device="cpu")
    upright = Image.open(io.BytesIO(photo_file.read_bytes())).transpose(Image.Transpose.ROTATE_270)
    np.testing.assert_allclose(
        [r["score"] for r in classifier(str(photo_file), candidate_labels=LABELS)],
        [r["score"] for r in classifier(upright, candidate_labels=LABELS)],
        rtol=1e-6,
    )


def test_multi_device_map_is_dispatched_by_accelerate_as_transformers(siglip_dir, tmp_path):
    """A map over the CPU and the disk (the multi-device case a CPU machine has), with accelerate installed.
    (The vision tower is kept off the disk: its attention-pooling head reads `out_proj.weight` inside
    `nn.MultiheadAttention`, which accelerate's per-module offloading cannot load, in transformers as here.)"""
    pytest.importorskip(
        "accelerate", reason="device maps over several devices need accelerate (in the test extra)"
    )
    import transformers

    device_map = {"text_model": "disk", "vision_model": "cpu", "logit_scale": "cpu", "logit_bias": "cpu"}
    ours = siglip.SiglipModel.from_pretrained(
        siglip_dir, device_map=device_map, offload_folder=tmp_path / "ours"
    )
    theirs = transformers.SiglipModel.from_pretrained(
        siglip_dir, device_map=device_map, offload_folder=tmp_path / "theirs"
    )
    assert ours.hf_device_map == theirs.hf_device_map == device_map
    inputs = {"input_ids": torch.randint(0, 1000, (2, 64)), "pixel_values": torch.rand(2, 3, 32, 32)}
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits_per_image, theirs(**inputs).logits_per_image)
    planned = siglip.SiglipModel.from_pretrained(siglip_dir, device_map="auto", max_memory={"cpu": "1GB"})
    assert planned.hf_device_map == {"": "cpu"}
