"""Which files are images: the one discovery rule of every command that reads a collection.

A file named on the command line is taken as it is (whatever its extension); a folder is searched recursively
for files with an image extension, hidden files and folders left out, in sorted order; a glob pattern gives the
image files it matches. Symbolic links are followed, to files and to folders alike; a folder reached twice (a
link loop, or two links to one folder) is searched once.

One bad entry never stops a scan: a broken or looping symbolic link, a name that is not valid UTF-8, a path
too long for the file system or a folder that cannot be listed is left out and reported in `ImageScan.skipped`
with the reason, which every command lists in its summary.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...errors import InputNotFoundError, NoImagesError

# HEIC/HEIF decode with the `heif` extra (pillow-heif), AVIF natively (Pillow >= 11.2 wheels)
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".heic",
    ".heif",
    ".avif",
)


# found in folders and patterns when video input is on (`siglip.tools.inputs.video`)
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


def is_image_file(path: str | os.PathLike) -> bool:
    """An image by its extension, and not hidden (`._photo.jpg` is macOS metadata, not a photo)."""
    name = os.path.basename(path)
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def is_video_file(path: str | os.PathLike) -> bool:
    """A video by its extension, and not hidden."""
    name = os.path.basename(path)
    return name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith(".")


@dataclass
class ImageScan:
    """The image files a scan found, in order and without duplicates, and the entries it had to leave out."""

    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def os_error_reason(err: OSError) -> str:
    """What a failed file-system call means, in words a user acts on ("permission denied", ...)."""
    reasons = {
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOENT: "no such file (deleted, or a broken symbolic link)",
        errno.ELOOP: "symbolic link loop",
        errno.ENAMETOOLONG: "path too long for the file system",
        errno.EIO: "input/output error (a failing disk or network share?)",
    }
    return reasons.get(err.errno, (err.strerror or str(err)).lower())


def _name_problem(path: str) -> str | None:
    """Why `path` cannot be stored or printed as text: a name that is not valid UTF-8 (None when fine)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not valid UTF-8: rename the file (e.g. with `convmv -f latin1 -t utf8`)"
    return None


class _Scanner:
    """One scan: found files, skipped entries and the folders already searched (by device and inode)."""

    def __init__(self, videos: bool = False) -> None:
        self.videos = videos
        self.found: dict[str, None] = {}
        self.skipped: list[tuple[str, str]] = []
        self._searched: set[tuple[int, int]] = set()

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append((path, reason))

    def wanted(self, name: str) -> bool:
        """Whether a file found in a folder or by a pattern is taken, by its name."""
        return is_image_file(name) or (self.videos and is_video_file(name))

    def file(self, path: str) -> bool:
        """Take `path` if it is a readable regular file (following links); else record why not."""
        problem = _name_problem(path)
        if problem is None:
            try:
                mode = os.stat(path).st_mode
            except OSError as err:
                problem = os_error_reason(err)
            else:
                if stat.S_ISDIR(mode):
                    problem = "a folder, not a file"
                elif not stat.S_ISREG(mode):
                    problem = "not a regular file (a device, pipe or socket)"
        if problem is not None:
            self.skip(path, problem)
            return False
        self.found[path] = None
        return True

    def folder(self, path: str) -> list[str]:
        """The image files below `path` (sorted), recording what had to be left out."""
        images: list[str] = []
        self._walk(path, images)
        return sorted(images)

    def _walk(self, path: str, images: list[str]) -> None:
        try:
            st = os.stat(path)
            key = (st.st_dev, st.st_ino)
            if key in self._searched:  # a link loop, or a second way to a folder already searched
                return
            self._searched.add(key)
            with os.scandir(path) as entries:
                entries = sorted(entries, key=lambda e: e.name)
        except OSError as err:
            self.skip(path, f"folder cannot be searched: {os_error_reason(err)}")
            return
        for entry in entries:
            if entry.name.startswith("."):  # .thumbnails, .git, .ipynb_checkpoints, ._photo.jpg ...
                continue
            problem = _name_problem(entry.path)
            if _is_dir(entry):
                if problem is None:
                    self._walk(entry.path, images)
                else:
                    self.skip(entry.path, problem.replace("file", "folder"))
            elif self.wanted(entry.name) and self.file(entry.path):
                images.append(entry.path)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links; False for a broken or looping one
    except OSError:
        return False


def scan_images(
    paths: Sequence[str | os.PathLike], allow_empty: bool = False, videos: bool = False
) -> ImageScan:
    """The image files named by `paths`, in order and without duplicates, and the entries left out (see the
    module doc); with `videos`, video files too (`VIDEO_EXTENSIONS`).

    A file is taken as it is (whatever its extension); a folder is searched recursively for files with an
    image extension (hidden files and folders left out), sorted; a glob pattern (`photos/*.jpg`, `**/*.png`)
    gives the image files it matches. A path that does not exist raises `InputNotFoundError`, and a folder or
    pattern without images raises `NoImagesError` (unless `allow_empty`), both naming it.
    """
    if not paths:
        raise NoImagesError("no images given: pass image files, folders or glob patterns")
    scanner = _Scanner(videos)
    for arg in map(os.fspath, paths):
        skipped_before = len(scanner.skipped)
        if os.path.isdir(arg):
            images = scanner.folder(arg)
            if not images and not allow_empty and len(scanner.skipped) == skipped_before:
                raise NoImagesError(f"folder '{arg}' contains no image files ({' '.join(IMAGE_EXTENSIONS)})")
            scanner.found.update(dict.fromkeys(images))
        elif os.path.lexists(arg) or _too_long(arg):  # a file, or a link or path that cannot be followed
            scanner.file(arg)
        elif glob.has_magic(arg):
            images = []
            for match in sorted(glob.glob(arg, recursive=True)):
                if os.path.isdir(match):
                    images += scanner.folder(match)
                elif scanner.wanted(match) and scanner.file(match):
                    images.append(match)
            if not images and not allow_empty and len(scanner.skipped) == skipped_before:
                raise NoImagesError(f"pattern '{arg}' matches no image files")
            scanner.found.update(dict.fromkeys(images))
        else:
            raise InputNotFoundError(f"no such file or folder: '{arg}'")
    if not scanner.found and not allow_empty:
        raise nothing_usable(scanner.skipped)
    return ImageScan(list(scanner.found), scanner.skipped)


def nothing_usable(skipped: Sequence[tuple[str, str]]) -> NoImagesError:
    """The error of a scan that found files but can use none of them, naming the first left out."""
    path, reason = skipped[0]
    return NoImagesError(
        f"none of the images given can be used: {len(skipped)} left out, e.g. '{display_path(path)}': {reason}"
    )


def _too_long(path: str) -> bool:
    try:
        os.lstat(path)
    except OSError as err:
        return err.errno == errno.ENAMETOOLONG
    return False


def find_images(paths: Sequence[str | os.PathLike], allow_empty: bool = False) -> list[str]:
    """The image files of `scan_images(paths, allow_empty)`, leaving out silently what it cannot use."""
    return scan_images(paths, allow_empty).files


def images_in(folder: str | os.PathLike) -> ImageScan:
    """The image files below `folder` (recursively, sorted, as `scan_images` searches a folder)."""
    scanner = _Scanner()
    return ImageScan(scanner.folder(os.fspath(folder)), scanner.skipped)


def check_inputs(paths: Sequence[str | os.PathLike]) -> None:
    """Raise `InputNotFoundError` for an argument that is neither a path nor a glob pattern (a typo), without
    searching any folder: commands check this before loading a model."""
    for arg in map(os.fspath, paths):
        if not (os.path.lexists(arg) or glob.has_magic(arg) or _too_long(arg)):
            raise InputNotFoundError(f"no such file or folder: '{arg}'")


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def display_path(path: str) -> str:
    """`path` safe to print on a terminal: control characters (newlines, escape codes) and the bytes of a
    name that is not valid UTF-8 shown as backslash escapes; a plain name is unchanged."""

    def escape(match: re.Match) -> str:
        char = match[0]
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogate escape)
            return f"\\x{code - 0xDC00:02x}"
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(
            char, f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"
        )

    return _UNPRINTABLE.sub(escape, path)


def skipped_as_json(skipped: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """Unreadable files as JSON output lists them."""
    return [{"path": path, "reason": reason} for path, reason in skipped]
