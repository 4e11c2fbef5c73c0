"""Shared fixtures: SentencePiece models trained at test time (no download, no vendored binary).

The models use SigLIP's id layout (pad 0, eos `</s>` 1, unk `<unk>` 2, no bos) and are trained on the CPython
documentation text that ships with every Python (`pydoc_data.topics`), in well under a second each.
"""

import atexit
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import sentencepiece as spm

# `--precision auto` (every tool's default) means bf16 on CPUs with AVX-512 BF16 or AMX; the tool tests compare
# against float32 computations, so they run with `auto` resolved as on a CPU without bf16 units, here and in
# the commands they start. The resolution itself is tested with the probe mocked (test_inference.py).
os.environ["SIGLIP_BF16_UNITS"] = "0"

# README's test command runs two pytest-xdist workers: each takes its share of the cores for torch and for the
# commands its tests start (two workers of two threads each on two cores would oversubscribe them). Set before
# torch is imported.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))

import _torchvision  # noqa: F401  (before any transformers / open_clip / timm import; see the module)

# The compiled towers' cache (`cache_folder.compiled_cache`) of this process alone, removed when it exits: a
# package left there by an earlier run or by the user's own jobs would change what `siglip embed` runs (it
# loads a package compiled earlier), and the packages tests compile must not fill the user's cache.
os.environ["SIGLIP_COMPILED_CACHE"] = tempfile.mkdtemp(prefix="siglip-test-compiled-")
atexit.register(shutil.rmtree, os.environ["SIGLIP_COMPILED_CACHE"], ignore_errors=True)
# Inductor's own cache likewise (~600 MB a run, under /tmp by default, never pruned by torch): kept there, runs
# on one machine filled its disk. A cold cache costs the suite no measurable time.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="siglip-test-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

# nmt_nfkc is SentencePiece's default and what the released SigLIP vocabularies use; "identity" keeps the input
# as it is, which exposes whitespace corner cases the NFKC normaliser would hide.
NORMALIZATIONS = ("nmt_nfkc", "identity")


def _train(normalization: str, vocab_size: int = 1000) -> bytes:
    from pydoc_data.topics import topics

    lines = [line for text in topics.values() for line in text.splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        normalization_rule_name=normalization,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=2,
        minloglevel=2,
    )
    return model.getvalue()


@pytest.fixture(scope="session")
def spiece_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """normalization -> path of a trained `spiece.model`."""
    directory = tmp_path_factory.mktemp("spiece")
    paths = {}
    for normalization in NORMALIZATIONS:
        paths[normalization] = directory / f"{normalization}.model"
        paths[normalization].write_bytes(_train(normalization))
    return paths


@pytest.fixture(scope="session", params=NORMALIZATIONS)
def any_spiece_model(request: pytest.FixtureRequest, spiece_models: dict[str, Path]) -> Path:
    """Each trained model in turn (the test runs once per normalisation)."""
    return spiece_models[request.param]


@pytest.fixture(scope="session")
def spiece_model(spiece_models: dict[str, Path]) -> Path:
    """The NFKC model, for tests that need one realistic vocabulary."""
    return spiece_models["nmt_nfkc"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup`, a test file runs on one worker (its module fixtures are built once) and the Ray
    files share one (one local Ray cluster at a time)."""
    for item in items:
        module = item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group("ray" if "/test_ray" in module else module))
