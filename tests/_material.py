"""Test material for the user-facing tools: a tiny checkpoint with the file layout of a real one, and real photos."""

from __future__ import annotations

from pathlib import Path

import torch

from siglip import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

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
