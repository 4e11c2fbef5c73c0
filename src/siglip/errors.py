"""Every error siglip raises on purpose, under one base class.

`SiglipError` marks a problem with the user's input, files or environment, described by a message that names
the culprit (a file, an argument, a tensor) and, where there is one, the fix. The command line prints such an
error as one line and exits with code 2; any other exception is a bug and keeps its traceback. Each class also
derives from the built-in exception a caller would catch without knowing siglip (`OSError` for files,
`ValueError` for values, `ImportError` for packages), so code written for transformers keeps working.
"""

from __future__ import annotations


class SiglipError(Exception):
    """Base of siglip's errors: a problem with input, files or environment, not a bug."""


class CheckpointError(SiglipError, OSError):
    """A checkpoint could not be found, read or matched to the model. The message says which and why."""


class OfflineError(CheckpointError):
    """A hub file is needed that is not cached while the hub cannot be reached."""


class ImageInputError(SiglipError, ValueError):
    """An image cannot be read or used; the message names it (its index, and its path when it has one).

    `subject` is that name as the message says it (`images[2] ('cat.jpg')`), `path` the image's file (None
    for an image in memory); both are None when the error is about no one image.
    """

    subject: str | None = None
    path: str | None = None

    def renamed(self, name: str) -> str:
        """The message with the image called `name` (a file name, an upload's name) instead of `subject`."""
        text = str(self)
        return (
            name + text.removeprefix(self.subject) if self.subject and text.startswith(self.subject) else text
        )

    @property
    def reason(self) -> str:
        """What is wrong with the image, without its name: for lists that name each image themselves."""
        return self.renamed("").lstrip(": ")


class NoImagesError(SiglipError, ValueError):
    """A path or pattern names no image file, or none of the images named could be read."""


class InputNotFoundError(SiglipError, FileNotFoundError):
    """A file or folder given as input does not exist."""


class DataError(SiglipError, ValueError):
    """Training or evaluation data cannot be used; the message names the file, row or column."""


class StoreError(SiglipError, ValueError):
    """A vector store or index cannot be used as asked (another model, a damaged file)."""


class UsageError(SiglipError, ValueError):
    """An argument or option is outside its meaning; the message names it and what it accepts."""


class MissingDependencyError(SiglipError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""
