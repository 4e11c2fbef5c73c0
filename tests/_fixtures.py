"""Session fixtures of the user-facing tool tests; a test module loads them with `pytest_plugins = ["_fixtures"]`."""

from __future__ import annotations

from pathlib import Path

import pytest

from _material import BUNDLED, write_photos
from siglip import Embedder


@pytest.fixture(scope="session")
def checkpoint() -> str:
    """The model the tool tests run: the one shipped in the package, loaded by its short name."""
    return BUNDLED


@pytest.fixture(scope="session")
def embedder(checkpoint) -> Embedder:
    return Embedder.from_pretrained(checkpoint, device="cpu")


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> tuple[Path, list[Path]]:
    """(folder, readable files) of `write_photos`, with a corrupt JPEG beside them. Tests must not change it."""
    directory = tmp_path_factory.mktemp("photos")
    return directory, write_photos(directory)
