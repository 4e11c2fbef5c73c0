"""Phone formats: HEIC/HEIF through the `heif` extra (pillow-heif), AVIF through Pillow itself."""

from __future__ import annotations

import io
import re
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

from siglip import find_images
from siglip.core import image_utils
from siglip.core.image_utils import load_image
from siglip.errors import ImageInputError
from siglip.tools.cli import main
from siglip.tools.search.thumbnails import thumbnail_jpeg

pillow_heif = pytest.importorskip("pillow_heif")
pytest_plugins = ["_fixtures"]


@pytest.fixture(scope="module")
def phone(tmp_path_factory):
    """A folder with the astronaut as HEIC and AVIF (encoded here), and a truncated HEIC."""
    folder = tmp_path_factory.mktemp("phone")
    pixels = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((160, 120)))
    pillow_heif.from_bytes("RGB", (160, 120), pixels.tobytes()).save(folder / "astronaut.heic", quality=90)
    Image.fromarray(pixels).save(folder / "astronaut.avif", quality=90)
    heic = (folder / "astronaut.heic").read_bytes()
    (folder / "broken.heic").write_bytes(heic[: len(heic) // 2])
    return folder, pixels


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_heic_and_avif_embed_as_their_pixels(embedder, phone, tmp_path):
    folder, original = phone
    assert find_images([folder]) == [
        str(folder / n) for n in ("astronaut.avif", "astronaut.heic", "broken.heic")
    ]

    # the oracle: libheif's pixels read by pillow-heif's own API, as a PNG
    decoded = np.asarray(pillow_heif.open_heif(folder / "astronaut.heic", convert_hdr_to_8bit=True))
    assert (
        decoded.shape == original.shape and np.abs(decoded.astype(int) - original).mean() < 8
    )  # lossy, close
    Image.fromarray(decoded).save(tmp_path / "heic.png")
    Image.fromarray(original).save(tmp_path / "original.png")
    heic, avif, png, reference = embedder.embed_images(
        [
            folder / "astronaut.heic",
            folder / "astronaut.avif",
            tmp_path / "heic.png",
            tmp_path / "original.png",
        ]
    )
    np.testing.assert_allclose(heic, png, atol=1e-5)
    assert _cosine(avif, reference) > 0.98  # AVIF (Pillow's own decoder) is the photo, give or take its loss
    np.testing.assert_array_equal(np.asarray(load_image(str(folder / "astronaut.heic"))), decoded)
    assert Image.open(io.BytesIO(thumbnail_jpeg(str(folder / "astronaut.heic"), 64))).size == (64, 48)


def test_a_corrupt_heic_is_one_line_naming_it(checkpoint, embedder, phone, tmp_path, capsys):
    folder, _ = phone
    with pytest.raises(
        ImageInputError, match=r"broken\.heic'\) cannot be read \(truncated or corrupt file\?\)"
    ):
        embedder.embed_images([folder / "broken.heic"])

    out = tmp_path / "out.npy"
    assert (
        main(
            [
                "embed",
                str(folder),
                "--out",
                str(out),
                "--model",
                checkpoint,
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "skipped 1 unreadable file(s)" in err
    line = next(line for line in err.splitlines() if "broken.heic" in line)
    assert f"{folder / 'broken.heic'}: cannot be read (truncated or corrupt file?)" in line
    assert len(np.load(out)) == 2


def test_without_the_extra_a_heic_names_it(embedder, phone, monkeypatch):
    folder, _ = phone
    # pillow-heif not installed: its import fails, and Pillow has no HEIF opener (this process registered one)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)
    monkeypatch.setattr(image_utils, "_heif_registered", None)
    monkeypatch.setattr(Image, "ID", [name for name in Image.ID if name != "HEIF"])
    monkeypatch.setattr(Image, "OPEN", {k: v for k, v in Image.OPEN.items() if k != "HEIF"})
    message = "is a HEIC/HEIF image, which needs the heif extra: pip install 'siglip[heif]'"

    with pytest.raises(ImageInputError, match=re.escape(f"astronaut.heic') {message}")):
        embedder.embed_images([folder / "astronaut.heic"])
    with pytest.raises(ImageInputError, match=re.escape(f"astronaut.heic {message}")):
        load_image(str(folder / "astronaut.heic"))
    assert len(embedder.embed_images([folder / "astronaut.avif"])) == 1  # AVIF needs no extra
    with pytest.raises(
        ImageInputError, match="not an image file Pillow can read"
    ):  # judged by bytes, not name
        embedder.embed_images([__file__])
