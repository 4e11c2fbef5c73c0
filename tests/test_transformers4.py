"""transformers 4.x and 5.24 load the checkpoints siglip saves (config, weights, tokenizer and image-processor
files), and siglip loads the ones they save, with the same numbers: ids and pixel values identical, embeddings
and logits within 1e-5 in float32.

Families: SigLIP (`SiglipTokenizer`), SigLIP 2 fixed-resolution (model_type "siglip" with a Gemma tokenizer)
and SigLIP 2 NaFlex (`Siglip2*`). Releases: 4.37.0, the first with SigLIP; 4.50.0, the first on PyPI with
SigLIP 2 (4.49.0's wheel has none: SigLIP 2 came as a tag on top of it) and so the oldest for both SigLIP 2
kinds (Gemma's tokenizer exists since 4.38); 4.57.6, the last 4.x; and 5.24.0, the test oracle. The 4.x
releases live in `.venv-tf4` (`scripts/setup-compat-env.sh`; `SIGLIP_TF4_ENV` names another place) and run in
one subprocess each (tests/_transformers_worker.py); 5.24 runs the same worker code in this process.

Each direction: "ours" saves with siglip, transformers loads with its Auto classes and computes, siglip loads
the same folder and computes; "theirs" saves with transformers' own classes and computes, siglip loads.
The NaFlex towers use patches of 16 and a budget of 256 patches, as released: transformers 4.x's
`Siglip2Processor` applies those values whatever `preprocessor_config.json` says. Texts are mixed-case: a
NaFlex tokenizer we save lowercases in 4.x too (see `Siglip2Tokenizer`), and 4.x's own NaFlex tokenizer, which
does not, reloads in siglip as in transformers 5 (lowercasing: the one difference between 4.x and 5.x on
the same files).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import _transformers_worker as worker
from _material import train_gemma_like
from siglip import (
    AutoModel,
    AutoProcessor,
    GemmaTokenizer,
    Siglip2Config,
    Siglip2ImageProcessor,
    Siglip2Model,
    Siglip2Processor,
    Siglip2Tokenizer,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
    SiglipTokenizer,
)
from siglip.core.two_tower.gemma import lowercase
from siglip.core.two_tower.processing import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
ENV = Path(os.environ.get("SIGLIP_TF4_ENV", ROOT / ".venv-tf4"))
FAMILIES = ("siglip", "gemma", "naflex")
RELEASES = {"4.37.0": ("siglip",), "4.50.0": FAMILIES, "4.57.6": FAMILIES, "5.24.0": FAMILIES}
CASES = [(release, family, side) for release, families in RELEASES.items() for family in families
         for side in ("ours", "theirs")]  # fmt: skip
OUTPUTS = ("text_embeds", "image_embeds", "logits_per_image")
TEXTS = ["a photo of a cat", "A Photo of 2 DOGS", "Straße İstanbul ΣΑΣ, ok?"]
_LAYER = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)
CONFIGS = {
    "siglip": dict(text_config=dict(_LAYER, vocab_size=1000, max_position_embeddings=16),
                   vision_config=dict(_LAYER, image_size=32, patch_size=8)),
    "gemma": dict(text_config=dict(_LAYER, vocab_size=2000, max_position_embeddings=64),
                  vision_config=dict(_LAYER, image_size=32, patch_size=8)),
    "naflex": dict(text_config=dict(_LAYER, vocab_size=2000, max_position_embeddings=64),
                   vision_config=dict(_LAYER, patch_size=16, num_patches=16)),
}  # fmt: skip
TOKENIZER_CONFIGS = {
    "siglip": {"model_max_length": 16, "model_input_names": ["input_ids"], "tokenizer_class": "SiglipTokenizer"},
    "gemma": {"add_bos_token": False, "add_eos_token": True, "padding_side": "right", "model_max_length": 64,
              "model_input_names": ["input_ids"], "tokenizer_class": "GemmaTokenizer"},
}  # fmt: skip
TOKENIZER_CONFIGS["naflex"] = TOKENIZER_CONFIGS["gemma"]


def _python(release: str) -> tuple[list[str], dict[str, str]]:
    """Command and environment that run python with transformers `release` of the compatibility env."""
    target = ENV / f"transformers-{release}"
    if not (ENV / "bin" / "python").is_file() or not (target / ".complete").is_file():
        pytest.skip(f"transformers {release} is not installed in {ENV}: run scripts/setup-compat-env.sh")
    return [str(ENV / "bin" / "python")], {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def material(tmp_path_factory, spiece_model) -> dict:
    """Images, texts, and per family the tokenizer source files (`vocab_dir`) both sides build from."""
    root = tmp_path_factory.mktemp("tf4")
    rng = np.random.default_rng(0)
    images = []
    for i, (height, width) in enumerate([(32, 32), (40, 23), (17, 50)]):  # square, tall, wide
        images.append(str(root / f"image{i}.png"))
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(images[-1])
    gemma_model = train_gemma_like()
    for family in FAMILIES:
        vocab_dir = root / "vocab" / family
        vocab_dir.mkdir(parents=True)
        if family == "siglip":
            (vocab_dir / "spiece.model").write_bytes(spiece_model.read_bytes())
        else:
            (vocab_dir / "tokenizer.model").write_bytes(gemma_model)
        (vocab_dir / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIGS[family]))
    return {"root": root, "images": images, "texts": TEXTS}


def _save_ours(family: str, vocab_dir: Path, folder: Path) -> None:
    """A checkpoint saved by siglip: random weights (seed 0) of `CONFIGS[family]`, tokenizer of `vocab_dir`."""
    torch.manual_seed(0)
    if family == "naflex":
        model = Siglip2Model(Siglip2Config(**CONFIGS[family]))
        processor = Siglip2Processor(
            Siglip2ImageProcessor(patch_size=16, max_num_patches=256),
            Siglip2Tokenizer.from_pretrained(vocab_dir),
        )
    else:
        model = SiglipModel(SiglipConfig(**CONFIGS[family]))
        tokenizer_class = SiglipTokenizer if family == "siglip" else GemmaTokenizer
        processor = SiglipProcessor(
            SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer_class.from_pretrained(vocab_dir)
        )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@pytest.fixture(scope="module")
def results(material) -> dict:
    """(release, family, side) -> (folder, what transformers computed), each release run once for all cases."""
    root, found = material["root"], {}
    for family in FAMILIES:
        _save_ours(family, root / "vocab" / family, root / "ours" / family)
    for release, families in RELEASES.items():
        tasks = []
        for family in families:
            ours, theirs = root / "ours" / family, root / release / family
            theirs.parent.mkdir(exist_ok=True)
            common = {"family": family, "config": CONFIGS[family], "vocab_dir": str(root / "vocab" / family)}
            tasks += [{**common, "mode": "load", "folder": str(ours), "out": f"{theirs}-load.pt", "side": "ours"},
                      {**common, "mode": "save", "folder": str(theirs), "out": f"{theirs}-save.pt",
                       "side": "theirs"}]  # fmt: skip
        spec = {"images": material["images"], "texts": material["texts"], "tasks": tasks}
        if release.startswith("5."):
            for task in tasks:
                torch.save(worker.run(task, spec["images"], spec["texts"]), task["out"])
        else:
            try:
                command, env = _python(release)
            except pytest.skip.Exception:
                continue
            (root / f"{release}.json").write_text(json.dumps(spec))
            process = subprocess.run(
                [*command, str(Path(worker.__file__)), str(root / f"{release}.json")],
                env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert process.returncode == 0, process.stderr[-3000:]
        for task in tasks:
            found[release, task["family"], task["side"]] = (Path(task["folder"]), torch.load(task["out"]))
    return found


@pytest.mark.parametrize(("release", "family", "side"), CASES, ids=["-".join(case) for case in CASES])
def test_same_numbers_both_ways(results, material, release, family, side):
    if release.startswith("4."):
        _python(release)  # skips with the reason when the env is absent
    folder, theirs = results[release, family, side]
    assert "error" not in theirs, f"transformers {theirs['version']} failed:\n{theirs['error']}"
    assert theirs["version"] == release
    assert not theirs["classes"][2].endswith("Fast")  # the PIL image backend, as ours (4.x's only one)
    model, processor = (
        AutoModel.from_pretrained(folder),
        AutoProcessor.from_pretrained(folder, use_fast=False),
    )
    if (release.startswith("4."), family, side) == (True, "naflex", "theirs"):
        # The one place where transformers 4.x and 5.x disagree on the same files: 4.x's NaFlex tokenizer
        # keeps case, 5.x reads the folder (config.json: "siglip2") as its lowercasing Siglip2Tokenizer, and
        # siglip follows 5.x. The weights and pixels are still compared with 4.x's, through the tokenizer class
        # the files name.
        oracle = transformers.AutoTokenizer.from_pretrained(folder)
        assert type(processor.tokenizer).__name__ == type(oracle).__name__ == "Siglip2Tokenizer"
        assert processor.tokenizer(TEXTS)["input_ids"] == oracle(TEXTS)["input_ids"]
        processor.tokenizer = GemmaTokenizer.from_pretrained(folder)
    ours = worker.outputs(model, processor, material["images"], material["texts"],
                          CONFIGS[family]["text_config"]["max_position_embeddings"])  # fmt: skip
    assert ours["classes"][0] == theirs["classes"][0]
    inputs = {key for key, value in theirs.items() if isinstance(value, torch.Tensor)} - set(OUTPUTS)
    assert inputs == {key for key, value in ours.items() if isinstance(value, torch.Tensor)} - set(OUTPUTS)
    for key in sorted(inputs):  # input_ids, pixel_values (NaFlex: pixel_attention_mask, spatial_shapes)
        assert torch.equal(ours[key], theirs[key]), f"{key} differs"
    for key in OUTPUTS:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-5, msg=f"{key} differs")


def test_naflex_tokenizer_we_save_lowercases_wherever_it_loads(results):
    """4.x's own Gemma tokenizer keeps case; the NaFlex tokenizer files we save lowercase there too."""
    releases = [release for (release, family, side) in results if family == "naflex" and side == "ours"]
    if not releases:
        pytest.skip("no transformers release to check")
    for release in releases:
        folder, theirs = results[release, "naflex", "ours"]
        config = json.loads((folder / "tokenizer_config.json").read_text())
        assert (config["tokenizer_class"], config["do_lower_case"]) == ("PreTrainedTokenizerFast", True)
        gemma = GemmaTokenizer.from_pretrained(folder)  # the same files, without lowercasing
        kwargs = dict(padding="max_length", max_length=64, return_tensors="pt")
        assert torch.equal(
            theirs["input_ids"], gemma([lowercase(text) for text in TEXTS], **kwargs)["input_ids"]
        )
        assert not torch.equal(theirs["input_ids"], gemma(TEXTS, **kwargs)["input_ids"])
        assert type(AutoProcessor.from_pretrained(folder).tokenizer) is Siglip2Tokenizer
        # 5.x reads the class as its Siglip2Tokenizer where config.json says "siglip2"; 4.x as it is
        assert theirs["classes"][1] == (
            "Siglip2Tokenizer" if release.startswith("5.") else "PreTrainedTokenizerFast"
        )


def test_a_naflex_tokenizer_saved_alone_keeps_lowercasing(material, tmp_path):
    """Without a config.json beside it, transformers reads the class the files name: ours and 5.24 lowercase."""
    tokenizer = Siglip2Tokenizer.from_pretrained(material["root"] / "vocab" / "naflex")
    tokenizer.save_pretrained(tmp_path)
    expected = tokenizer(TEXTS)["input_ids"]
    assert expected != GemmaTokenizer.from_pretrained(tmp_path)(TEXTS)["input_ids"]
    loaded = load_tokenizer(tmp_path)
    assert type(loaded) is Siglip2Tokenizer
    assert (
        loaded(TEXTS)["input_ids"]
        == transformers.AutoTokenizer.from_pretrained(tmp_path)(TEXTS)["input_ids"]
        == expected
    )
