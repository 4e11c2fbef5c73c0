"""Which files are images: the one discovery rule of every command that reads a collection.

A file named on the command line is taken as it is (whatever its extension); a folder is searched recursively
for files with an image extension, hidden files and folders left out, in sorted order; a glob pattern gives the
image files it matches.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from ..errors import InputNotFoundError, NoImagesError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def is_image_file(path: str | os.PathLike) -> bool:
    """An image by its extension, and not hidden (`._photo.jpg` is macOS metadata, not a photo)."""
    name = os.path.basename(path)
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def images_in(folder: str | os.PathLike) -> list[str]:
    """The image files below `folder`, recursively and sorted, leaving out hidden files and folders."""
    images = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .thumbnails, .git, .ipynb_checkpoints, ...
        images += [os.path.join(root, f) for f in files if is_image_file(f)]
    return sorted(images)


def find_images(paths: Sequence[str | os.PathLike], allow_empty: bool = False) -> list[str]:
    """The image files named by `paths`, in order and without duplicates.

    A file is taken as it is (whatever its extension); a folder is searched recursively for files with an
    image extension (hidden files and folders left out), sorted; a glob pattern (`photos/*.jpg`, `**/*.png`)
    gives the image files it matches. A path that does not exist raises `FileNotFoundError`, and a folder or
    pattern without images raises `NoImagesError` (unless `allow_empty`), both naming it.
    """
    if not paths:
        raise NoImagesError("no images given: pass image files, folders or glob patterns")
    found: dict[str, None] = {}
    for arg in map(os.fspath, paths):
        if os.path.isfile(arg):
            found[arg] = None
        elif os.path.isdir(arg):
            images = images_in(arg)
            if not images and not allow_empty:
                raise NoImagesError(f"folder '{arg}' contains no image files ({' '.join(IMAGE_EXTENSIONS)})")
            found.update(dict.fromkeys(images))
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            images = [
                p for m in matches for p in (images_in(m) if os.path.isdir(m) else [m]) if is_image_file(p)
            ]
            if not images and not allow_empty:
                raise NoImagesError(f"pattern '{arg}' matches no image files")
            found.update(dict.fromkeys(images))
        else:
            raise InputNotFoundError(f"no such file or folder: '{arg}'")
    return list(found)


def skipped_as_json(skipped: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """Unreadable files as JSON output lists them."""
    return [{"path": path, "reason": reason} for path, reason in skipped]
