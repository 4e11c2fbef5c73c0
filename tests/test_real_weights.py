"""The released checkpoints against their published numbers and against transformers (needs real weights).

google/siglip-base-patch16-224, and SigLIP 2's google/siglip2-base-patch16-224 (fixed resolution) and
google/siglip2-base-patch16-naflex. A checkpoint comes from a local copy (`SIGLIP_BASE_CHECKPOINT`,
`SIGLIP2_FIXRES_CHECKPOINT`, `SIGLIP2_NAFLEX_CHECKPOINT`), or from the Hugging Face cache, or from the hub when
`SIGLIP_RUN_NETWORK=1` allows the network. The image is COCO val2017 000000039769 (two cats):
`SIGLIP_COCO_CATS=/path/to/000000039769.jpg`, or downloaded when the network is allowed. Without the opt-in
the suite makes no network attempt at all (as transformers' `RUN_SLOW`); anything missing skips the test
with the reason.

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

from siglip import (
    AutoConfig,
    AutoModel,
    AutoProcessor,
    CheckpointError,
    OfflineError,
    SiglipModel,
    SiglipProcessor,
)

HUB_ID = "google/siglip-base-patch16-224"
COCO_URL = "http://images.cocodataset.org/val2017/000000039769.jpg"


NETWORK = os.environ.get("SIGLIP_RUN_NETWORK") == "1"


def _online(host: str) -> bool:
    """Whether the network is allowed (`SIGLIP_RUN_NETWORK=1`) and `host` answers, looked up quickly so that
    an offline machine skips at once instead of after retries."""
    if not NETWORK:
        return False
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return False
    return True


def _real_checkpoint(hub_id: str, variable: str) -> str:
    """A local copy named by `variable`, else `hub_id` when cached (or reachable with the opt-in), else skip."""
    local = os.environ.get(variable)
    if local:
        return local
    try:
        AutoConfig.from_pretrained(hub_id, local_files_only=not _online("huggingface.co"))
    except CheckpointError as err:
        why = (
            "not cached; SIGLIP_RUN_NETWORK=1 allows a download"
            if isinstance(err, OfflineError)
            else str(err)
        )
        pytest.skip(f"no real checkpoint: set {variable} to a local copy of {hub_id} ({why})")
    return hub_id


@pytest.fixture(scope="module")
def checkpoint() -> str:
    return _real_checkpoint(HUB_ID, "SIGLIP_BASE_CHECKPOINT")


@pytest.fixture(scope="module")
def cats() -> Image.Image:
    local = os.environ.get("SIGLIP_COCO_CATS")
    if local:
        return Image.open(Path(local)).convert("RGB")
    if not _online("images.cocodataset.org"):
        pytest.skip("no COCO image: set SIGLIP_COCO_CATS to 000000039769.jpg (or SIGLIP_RUN_NETWORK=1)")
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


SIGLIP2 = {
    "fixres": ("google/siglip2-base-patch16-224", "SIGLIP2_FIXRES_CHECKPOINT"),
    "naflex": ("google/siglip2-base-patch16-naflex", "SIGLIP2_NAFLEX_CHECKPOINT"),
}


@pytest.mark.parametrize("family", list(SIGLIP2))
def test_siglip2_same_numbers_as_transformers(family, cats):
    """SigLIP 2 on the two cats: our auto-loaded model and processor against transformers' on the same files
    (logits, embeddings), and the right caption wins."""
    transformers = pytest.importorskip("transformers")
    checkpoint = _real_checkpoint(*SIGLIP2[family])
    model, processor = AutoModel.from_pretrained(checkpoint), AutoProcessor.from_pretrained(checkpoint)
    theirs = transformers.AutoModel.from_pretrained(checkpoint).eval()
    their_processor = transformers.AutoProcessor.from_pretrained(checkpoint)  # each one's default backend
    texts = ["a photo of 2 cats", "a photo of 2 dogs"]
    ours_in = processor(text=texts, images=cats, return_tensors="pt")
    theirs_in = their_processor(
        text=texts, images=cats, padding="max_length", max_length=64, return_tensors="pt"
    )
    for name in ours_in:
        torch.testing.assert_close(ours_in[name], theirs_in[name].to(ours_in[name].dtype), atol=0, rtol=0)
    with torch.no_grad():
        ours_out, theirs_out = model(**ours_in), theirs(**theirs_in)
    torch.testing.assert_close(ours_out.logits_per_image, theirs_out.logits_per_image, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours_out.image_embeds, theirs_out.image_embeds, atol=1e-5, rtol=1e-5)
    assert ours_out.logits_per_image[0, 0] > ours_out.logits_per_image[0, 1]
