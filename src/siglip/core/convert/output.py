"""The output folder of a conversion, either way: refused unless new or empty, written through a staging
folder so that a failure leaves none behind, and the source's tokenizer files copied along."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

from safetensors import SafetensorError

from ..staging import remove_abandoned_staging, staged_new_directory
from ._rules import ConversionError

TOKENIZER_FILES = ("spiece.model", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")  # fmt: skip


def tokenizer_files(folder: Path | None) -> list[Path]:
    """The tokenizer files in `folder` (none without a folder)."""
    return [folder / n for n in TOKENIZER_FILES if folder and (folder / n).is_file()]


def check_new(target: Path) -> None:
    """Refuse an output folder that exists and holds anything but what killed conversions left."""
    if target.is_dir():
        remove_abandoned_staging(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConversionError(f"'{target}' already exists and is not an empty folder; choose a new one.")


@contextlib.contextmanager
def staged_output(target: Path) -> Iterator[Path]:
    """A staging folder that becomes `target` when all its files are written: a failure, a full disk or a
    `kill -9` leaves no `target` (nor, by the next run, any staging); writing errors name `target`."""
    try:
        with staged_new_directory(target) as staging:
            yield staging
    except (OSError, SafetensorError) as err:
        raise ConversionError(f"cannot write '{target}': {_reason(err)}") from err


def _reason(err: Exception) -> str:
    """An error while writing, in a few words: its errno's message, whether the OS or safetensors raised it
    ("... (os error 28)"), and for a full disk what to do."""
    found = re.search(r"\(os error (\d+)\)", str(err))
    code = err.errno if isinstance(err, OSError) else int(found.group(1)) if found else None
    reason = os.strerror(code) if code else str(err)
    if code in (errno.ENOSPC, errno.EDQUOT):
        reason += "; free some space and run the command again"
    return reason
