"""The released google/siglip-base-patch16-224 against its published numbers (needs the real checkpoint).

Runs only where the checkpoint is available: `SIGLIP_BASE_CHECKPOINT=/path/to/local/copy`, or the Hugging Face
cache / hub. The image is COCO val2017 000000039769 (two cats): `SIGLIP_COCO_CATS=/path/to/000000039769.jpg`,
or downloaded. Anything missing skips the test with the reason.

Expected values: transformers' `test_inference` and its docstring example ("31.9% that image 0 is 'a photo of
2 cats'"), and the interpolation check of the reference note (section 8).
"""

from __future__ import annotations

import io
import os
import socket
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

from siglip import CheckpointError, OfflineError, SiglipModel, SiglipProcessor

HUB_ID = "google/siglip-base-patch16-224"
COCO_URL = "http://images.cocodataset.org/val2017/000000039769.jpg"


def _online(host: str) -> bool:
    """A quick look for the network, so that an offline machine skips at once instead of after retries."""
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def checkpoint() -> str:
    local = os.environ.get("SIGLIP_BASE_CHECKPOINT")
    if local:
        return local
    try:
        SiglipModel.config_class.from_pretrained(HUB_ID, local_files_only=not _online("huggingface.co"))
    except CheckpointError as err:
        why = "offline and not cached" if isinstance(err, OfflineError) else str(err)
        pytest.skip(f"no real checkpoint: set SIGLIP_BASE_CHECKPOINT to a local copy of {HUB_ID} ({why})")
    return HUB_ID


@pytest.fixture(scope="module")
def cats() -> Image.Image:
    local = os.environ.get("SIGLIP_COCO_CATS")
    if local:
        return Image.open(Path(local)).convert("RGB")
    if not _online("images.cocodataset.org"):
        pytest.skip("no COCO image: set SIGLIP_COCO_CATS to 000000039769.jpg (no network)")
    try:
        with urllib.request.urlopen(COCO_URL, timeout=10) as response:
            return Image.open(io.BytesIO(response.read())).convert("RGB")
    except OSError as err:
        pytest.skip(f"no COCO image: set SIGLIP_COCO_CATS to 000000039769.jpg ({err})")


def test_published_logits_and_probabilities(checkpoint, cats):
    model = SiglipModel.from_pretrained(checkpoint)
    processor = SiglipProcessor.from_pretrained(checkpoint)
    inputs = processor(text=["a photo of 2 cats", "a photo of 2 dogs"], images=cats, return_tensors="pt")
    assert inputs["input_ids"].shape == (2, 64)
    with torch.no_grad():
        outputs = model(**inputs)
    expected = torch.tensor([[-0.7567, -10.3354]])
    torch.testing.assert_close(outputs.logits_per_image, expected, atol=1e-3, rtol=1e-3)
    probs = torch.sigmoid(outputs.logits_per_image)
    assert f"{probs[0][0]:.1%}" == "31.9%"


def test_interpolated_positions_at_640x480(checkpoint, cats):
    model = SiglipModel.from_pretrained(checkpoint)
    processor = SiglipProcessor.from_pretrained(checkpoint)
    pixels = processor(images=cats, size={"height": 480, "width": 640}, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = model.vision_model(pixels, interpolate_pos_encoding=True).last_hidden_state
    assert hidden.shape == (1, 1200, 768)


def test_same_numbers_as_transformers(checkpoint, cats):
    transformers = pytest.importorskip("transformers")
    ours, theirs = (
        SiglipModel.from_pretrained(checkpoint),
        transformers.SiglipModel.from_pretrained(checkpoint),
    )
    processor = SiglipProcessor.from_pretrained(checkpoint)
    inputs = processor(text=["a photo of 2 cats", "two dogs"], images=cats, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits_per_image, theirs(**inputs).logits_per_image)
