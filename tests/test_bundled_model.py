"""The bundled `siglip-tiny-fashion` model: loads offline by its short name and classifies Fashion-MNIST."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from _material import FASHION_CLASSES as CLASSES
from _material import fashion_mnist, needs_fashion_mnist
from siglip import SiglipModel, SiglipProcessor
from siglip.core import hub
from siglip.tools.zeroshot import class_embeddings, scores

NAME = "siglip-tiny-fashion"


def test_bundled_files_are_small_and_complete():
    directory = hub.BUNDLED_DIR / NAME
    assert NAME in hub.bundled_models()
    names = {p.name for p in directory.iterdir()}
    assert {"config.json", "model.safetensors", "spiece.model", "tokenizer_config.json",
            "preprocessor_config.json"} <= names  # fmt: skip
    assert all(p.stat().st_size <= 5 * 2**20 for p in directory.iterdir())


def test_loads_offline_by_short_name(tmp_path):
    code = (
        "from siglip import SiglipModel, SiglipProcessor; "
        f"m = SiglipModel.from_pretrained('{NAME}'); p = SiglipProcessor.from_pretrained('{NAME}'); "
        "print(m.num_parameters(), p.tokenizer.model_max_length, p.image_processor.size['height'])"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    params, length, size = map(int, done.stdout.split())
    assert params < 1_250_000 and length == 32 and size == 28


@needs_fashion_mnist
def test_zero_shot_accuracy_on_fashion_mnist():
    images, labels = (array[:1000] for array in fashion_mnist("t10k"))
    model, processor = SiglipModel.from_pretrained(NAME), SiglipProcessor.from_pretrained(NAME)
    # Prompts the training never saw (scripts/train_tiny_model.py holds out these templates).
    classes = class_embeddings(model, processor.tokenizer, CLASSES, ["a product shot of a {}.", "the {}."])
    pixels = processor(images=[Image.fromarray(x, mode="L") for x in images])["pixel_values"]
    with torch.inference_mode():
        probabilities = scores(model, model.encode_images(pixels), classes).numpy()
    accuracy = float((probabilities.argmax(-1) == labels).mean())
    assert accuracy >= 0.80, accuracy
    # Trained with class labels (every caption of the image's class a positive), the true class gets a
    # probability a person can believe; trained without them, it was about 0.05.
    median_true_class = float(np.median(probabilities[np.arange(len(labels)), labels]))
    assert median_true_class >= 0.4, median_true_class
