"""Test material for the user-facing tools: a tiny checkpoint with the file layout of a real one, and real photos."""

from __future__ import annotations

import functools
import gzip
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

from siglip import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

GEMMA_USER_DEFINED = ["<mask>", "<start_of_turn>", "<end_of_turn>", "\n\n", "<table>", "▁▁"]
BUNDLED = "siglip-tiny-fashion"  # the model shipped in the package (Fashion-MNIST)
FASHION_CLASSES = ["t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot"]  # fmt: skip


def tiny_config(text_positions: int = 16, vocab_size: int = 1000) -> SiglipConfig:
    """Two layers per tower, 32 x 32 images; `text_positions` as so400m-224 (16) or the others (64)."""
    layer = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)
    return SiglipConfig(
        text_config=dict(layer, vocab_size=vocab_size, max_position_embeddings=text_positions),
        vision_config=dict(layer, image_size=32, patch_size=8),
    )


def save_tiny_checkpoint(
    directory: Path, spiece_model: Path, text_positions: int = 16, seed: int = 0
) -> Path:
    """Write config.json, model.safetensors, tokenizer and preprocessor files into `directory`."""
    torch.manual_seed(seed)
    SiglipModel(tiny_config(text_positions)).save_pretrained(directory)
    tokenizer = SiglipTokenizer(
        spiece_model, model_max_length=text_positions, model_input_names=["input_ids"]
    )
    SiglipProcessor(SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(
        directory
    )
    return directory


CORRUPT_REASON = "cannot be read (truncated or corrupt file?)"  # how the processor words a broken JPEG
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
)  # colour photos in scikit-image's wheel (public domain / CC0)


# Debian's dataset-fashion-mnist (`.ci/run` installs it); its tests skip without it
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST.is_dir(), reason="Fashion-MNIST missing: apt-get install dataset-fashion-mnist"
)


@functools.cache
def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's `split` ("train" or "t10k"), read once a process: its images (n, 28, 28) and labels
    (n,), uint8, read-only."""

    def read(kind: str, header: int) -> np.ndarray:
        with gzip.open(FASHION_MNIST / f"{split}-{kind}-ubyte.gz") as f:
            return np.frombuffer(f.read(), np.uint8, offset=header)

    return read("images-idx3", 16).reshape(-1, 28, 28), read("labels-idx1", 8)


def fresh_kernel_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lookup: Callable) -> Iterator[Path]:
    """For a fixture: a compiled cache of the test's own, a native kernel's cached `lookup` (a
    `functools.cache`) cleared before and after the test; yields the cache's `kernels` folder."""
    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(tmp_path / "cache"))
    lookup.cache_clear()
    yield tmp_path / "cache" / "kernels"
    lookup.cache_clear()


def use_broken_compiler(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make `$CXX` a compiler (a script in `folder`) that fails, saying "cc1plus: error: unrecognized
    option" as a compiler without a kernel's instruction flags does."""
    compiler = folder / "broken-c++"
    compiler.write_text("#!/bin/sh\necho 'cc1plus: error: unrecognized option' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))


def old_builds(folder: Path, *names: str) -> list[Path]:
    """Files `names` in `folder` (made with it) posing as native kernel builds last loaded two hours ago:
    `siglip.tools.embeddings.native` removes a kernel's builds of other sources unused for an hour."""
    folder.mkdir(parents=True, exist_ok=True)
    two_hours_ago = time.time() - 7200
    paths = [folder / name for name in names]
    for path in paths:
        path.write_bytes(b"an old build")
        os.utime(path, (two_hours_ago, two_hours_ago))
    return paths


def write_photos(directory: Path, corrupt: bool = True) -> list[Path]:
    """scikit-image's photos as JPEG, its grey `camera` as PNG in a sub-folder, and optionally a corrupt JPEG.

    Returns the readable files, sorted as `find_images` lists them.
    """
    import skimage.data
    from PIL import Image

    (directory / "grey").mkdir(parents=True, exist_ok=True)
    files = []
    for name in PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()).save(directory / f"{name}.jpg", quality=90)
        files.append(directory / f"{name}.jpg")
    Image.fromarray(skimage.data.camera()).save(directory / "grey" / "camera.png")
    files.append(directory / "grey" / "camera.png")
    if corrupt:
        (directory / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return sorted(files, key=str)


def train_gemma_like() -> bytes:
    """A SentencePiece BPE with byte fallback and Gemma's special-token layout (pad 0, eos 1, bos 2, unk 3,
    user-defined `<mask>`, ...), trained in well under a second on `pydoc_data.topics`: `tokenizer.model`."""
    from pydoc_data.topics import topics

    lines = [line for text in topics.values() for line in text.splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=2000, model_type="bpe",
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=GEMMA_USER_DEFINED, num_threads=2, minloglevel=2,
    )  # fmt: skip
    return model.getvalue()


def save_tiny_fixres_siglip2(directory: Path, seed: int = 0) -> Path:
    """A fixed-resolution SigLIP 2 checkpoint as the hub has them (model_type "siglip", a Gemma tokenizer that
    does not lowercase, 64 text positions), with tiny towers and random weights."""
    import json

    from siglip import GemmaTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(train_gemma_like())
    tokenizer_config = {"add_bos_token": False, "add_eos_token": True, "padding_side": "right",
                        "model_max_length": 64, "model_input_names": ["input_ids"],
                        "tokenizer_class": "GemmaTokenizer"}  # fmt: skip
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    tokenizer = GemmaTokenizer.from_pretrained(directory)
    torch.manual_seed(seed)
    SiglipModel(tiny_config(text_positions=64, vocab_size=len(tokenizer))).save_pretrained(directory)
    SiglipProcessor(SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(
        directory
    )
    return directory


def save_tiny_naflex(directory: Path, seed: int = 0) -> Path:
    """A SigLIP 2 NaFlex checkpoint as the hub has them (model_type "siglip2", a lowercasing Siglip2Tokenizer,
    64 text positions), with tiny towers (patches of 8 pixels, a 4 x 4 position grid, at most 64 patches per
    image) and random weights."""
    import json

    from siglip import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor, Siglip2Tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(train_gemma_like())
    tokenizer_config = {"add_bos_token": False, "add_eos_token": True, "padding_side": "right",
                        "model_input_names": ["input_ids"], "tokenizer_class": "Siglip2Tokenizer"}  # fmt: skip
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    tokenizer = Siglip2Tokenizer.from_pretrained(directory)
    layer = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)
    config = Siglip2Config(
        text_config=dict(layer, vocab_size=len(tokenizer), max_position_embeddings=64),
        vision_config=dict(layer, patch_size=8, num_patches=16),
    )
    torch.manual_seed(seed)
    Siglip2Model(config).save_pretrained(directory)
    Siglip2Processor(Siglip2ImageProcessor(patch_size=8, max_num_patches=64), tokenizer).save_pretrained(
        directory
    )
    return directory


_FAULT_ROUNDS = """
import ctypes, resource

import torch

ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KiB pages, whatever the system's huge pages
{setup}
faults = []
for _ in range(8):  # a batch's activations: allocated, used, freed, and again for the next batch
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    hidden = torch.ones(2**24)  # 64 MiB: over glibc's largest threshold for blocks of their own
    scores = torch.ones(2**23)  # and 32 MiB twice, with the sum
    (hidden[: 2**23] + scores).sum()
    del hidden, scores
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


def assert_freed_memory_kept(setup: str, *args: str, kept: bool) -> None:
    """In a fresh interpreter (glibc's malloc as the environment leaves it, no huge pages), run `setup` (with
    `args` as `sys.argv[1:]`), then allocate, use and free a batch's worth of activations (128 MiB: 32,768
    pages of 4 KiB) 8 times: with `kept`, the last rounds fault (almost) no page in; without, every page
    again. `SIGLIP_KEEP_FREED_MEMORY` is `kept`."""
    import resource

    env = {
        name: value
        for name, value in os.environ.items()
        if not (name.startswith("MALLOC_") or name in ("GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE"))
    }
    env["SIGLIP_KEEP_FREED_MEMORY"] = "1" if kept else "0"
    code = _FAULT_ROUNDS.format(setup=setup)
    run = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr
    last = [int(n) for n in run.stdout.split()][-3:]
    pages = (2**24 + 2 * 2**23) * 4 // resource.getpagesize()
    if kept:
        assert max(last) < pages // 100, run.stdout
    else:
        assert min(last) >= pages * 0.9, run.stdout
