"""transformers' module paths (`transformers.models.siglip.modeling_siglip`, ...) exist under `siglip.models`:
code that imports from them ports by changing the import's first word, and gets our classes."""

from __future__ import annotations

import importlib

import pytest

import siglip

MODULES = [
    "models.siglip",
    "models.siglip.configuration_siglip",
    "models.siglip.image_processing_pil_siglip",
    "models.siglip.image_processing_siglip",
    "models.siglip.modeling_siglip",
    "models.siglip.processing_siglip",
    "models.siglip.tokenization_siglip",
    "models.siglip2",
    "models.siglip2.configuration_siglip2",
    "models.siglip2.image_processing_pil_siglip2",
    "models.siglip2.image_processing_siglip2",
    "models.siglip2.modeling_siglip2",
    "models.siglip2.processing_siglip2",
]


@pytest.mark.parametrize("path", MODULES)
def test_each_name_is_transformers_name_at_the_same_path(path):
    ours = importlib.import_module(f"siglip.{path}")
    theirs = importlib.import_module(f"transformers.{path}")
    assert ours.__all__
    for name in ours.__all__:
        assert hasattr(theirs, name), f"transformers.{path} has no {name}"
        public = getattr(siglip, name, None)
        if public is not None:  # a name the package exports is the same class here
            assert getattr(ours, name) is public, name


def test_the_bundled_models_are_still_the_only_models_listed():
    from siglip.core.hub import bundled_models

    assert bundled_models() == ["siglip-tiny-fashion"]


def test_transformers_training_loop_is_named_beside_the_models():
    import subprocess
    import sys

    import transformers

    assert (
        siglip.Trainer is transformers.Trainer and siglip.TrainingArguments is transformers.TrainingArguments
    )
    code = "import sys; sys.modules['transformers'] = None; import siglip; siglip.Trainer"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 1 and "siglip.Trainer is transformers' Trainer" in run.stderr
    assert "pip install transformers" in run.stderr
