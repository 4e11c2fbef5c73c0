"""Writing a folder all or nothing: files are written into a temporary folder beside the target and moved
into it only when every one was written, with the permissions the user's umask gives."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import CheckpointError


@contextlib.contextmanager
def staged_directory(directory: str | os.PathLike, replaces: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write files into a temporary folder, then move them into `directory` only if all were written.

    An error while saving leaves `directory` as it was: never a half-written file. Files of `directory`
    matching a `replaces` glob pattern that the new save does not contain (say, the `model.safetensors` of
    an earlier save now written as shards) are removed, so that no stale file shadows the new ones.
    """
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"Cannot save into '{target}': it is a file.")
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=target))
    try:
        yield staging
        written = {item.name for item in staging.iterdir()}
        stale = [p for pattern in replaces for p in target.glob(pattern) if p.name not in written]
        for item in staging.iterdir():
            if item.is_file():
                item.chmod(_FILE_MODE)  # some writers (safetensors) create files only their owner can read
            os.replace(item, target / item.name)
        for item in stale:
            item.unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _file_mode() -> int:
    umask = os.umask(0)  # reading the umask means setting it: once, at import
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()
