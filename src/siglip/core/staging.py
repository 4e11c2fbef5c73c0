"""Writing a folder all or nothing: files are written into a temporary folder beside the target and moved
into it only when every one was written, with the permissions the user's umask gives. A staging folder is
named for its process (`.saving-HOST-PID-...`): one a killed process left is removed by the next staging
there."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import CheckpointError

STAGING_PREFIX = ".saving-"  # + host-pid-random: the process that writes it, so that a dead one's is known
_OPEN_STAGING: set[Path] = set()  # this process's staging folders being written


@contextlib.contextmanager
def staged_directory(directory: str | os.PathLike, replaces: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write files into a temporary folder, then move them into `directory` only if all were written.

    An error while saving leaves `directory` as it was: never a half-written file. Files of `directory`
    matching a `replaces` glob pattern that the new save does not contain (say, the `model.safetensors` of
    an earlier save now written as shards) are removed, so that no stale file shadows the new ones. A save
    into a staging folder (a model saving its config) writes there directly: one level of staging. Staging
    folders left in `directory` by a killed process are removed.
    """
    target = Path(directory)
    if target.resolve() in _OPEN_STAGING:
        yield target
        return
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"Cannot save into '{target}': it is a file.")
    target.mkdir(parents=True, exist_ok=True)
    with _staging_folder(target) as staging:
        yield staging
        written = {item.name for item in staging.iterdir()}
        stale = [p for pattern in replaces for p in target.glob(pattern) if p.name not in written]
        for item in staging.iterdir():
            if item.is_file():
                item.chmod(FILE_MODE)  # some writers (safetensors) create files only their owner can read
            os.replace(item, target / item.name)
        for item in stale:
            item.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_new_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Write a new folder all or nothing: into a staging folder beside `directory`, renamed to `directory`
    once every file was written. Killed at any point, the process leaves no `directory`, and the next staging
    beside it removes what the dead one left. An existing (empty) `directory`, a mount point perhaps, is kept:
    its files are staged in it (see `staged_directory`)."""
    target = Path(directory)
    if target.is_dir():
        with staged_directory(target) as staging:
            yield staging
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with _staging_folder(target.parent) as staging:
        yield staging
        for item in staging.iterdir():
            if item.is_file():
                item.chmod(FILE_MODE)
        staging.chmod(_FOLDER_MODE)  # mkdtemp's folders are the owner's only
        os.rename(staging, target)


@contextlib.contextmanager
def _staging_folder(parent: Path) -> Iterator[Path]:
    remove_abandoned_staging(parent)
    staging = Path(
        tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-", dir=parent)
    )
    _OPEN_STAGING.add(staging.resolve())
    try:
        yield staging
    finally:
        _OPEN_STAGING.discard(staging.resolve())
        shutil.rmtree(staging, ignore_errors=True)


def remove_abandoned_staging(folder: str | os.PathLike) -> None:
    """Remove the staging folders in `folder` whose process is gone (killed while saving): those of a process
    of this host that no longer runs, and those named without their process (written by earlier versions)."""
    for item in Path(folder).glob(f"{STAGING_PREFIX}*"):
        owner = item.name[len(STAGING_PREFIX) :].rsplit("-", 2)  # host, pid, random; or random alone
        if len(owner) < 3 or (
            owner[0] == socket.gethostname() and owner[1].isdigit() and not _is_running(int(owner[1]))
        ):
            shutil.rmtree(item, ignore_errors=True)


def _is_running(pid: int) -> bool:
    if os.name == "nt":  # no signal 0 there (os.kill would end the process): never call a folder abandoned
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _umask() -> int:
    umask = os.umask(0)  # reading the umask means setting it: once, at import
    os.umask(umask)
    return umask


_UMASK = _umask()
FILE_MODE = 0o666 & ~_UMASK  # what a plain file this process creates gets (mkstemp's are the owner's only)
_FOLDER_MODE = 0o777 & ~_UMASK


@contextlib.contextmanager
def staged_file(target: Path) -> Iterator[Path]:
    """A temporary file beside `target`, renamed to it once the block has written it (so that no reader, in
    this process or another, sees half a file), removed if the block fails. The file gets the permissions of
    a plain file of this process (`FILE_MODE`): readable by the other users the umask lets read, so that a
    cache written by one user (or at a container image's build) serves the others."""
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=target.suffix)
    os.close(handle)
    try:
        yield Path(partial)
        os.chmod(partial, FILE_MODE)
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
