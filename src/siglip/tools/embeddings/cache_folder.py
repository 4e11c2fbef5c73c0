"""The folders siglip's compiled code lives in: packages of compiled towers
(`siglip.tools.embeddings.compiled`) and the native kernels built on this machine
(`siglip.tools.embeddings.native`, in `kernels/`)."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger("siglip")

# where a child compiling for its parent (`background_compile`) writes packages the cache cannot take: the
# parent's own folder, which outlives the child (the child's would go with it)
PARENT_FOLDER = "SIGLIP_COMPILED_PARENT_FOLDER"


def compiled_cache() -> Path:
    """The folder of compiled towers: `$SIGLIP_COMPILED_CACHE`, else `siglip/compiled` in `$XDG_CACHE_HOME`
    (default `~/.cache`). A package is about the size of the tower's weights in its precision (100 MB for a
    base image tower in int8, 200 MB in bf16), and its library, extracted beside it when first loaded, as much
    again. Each compile keeps the folder within `cache_limit()` (`prune_cache`); deleting it is safe."""
    if os.environ.get("SIGLIP_COMPILED_CACHE"):
        return Path(os.environ["SIGLIP_COMPILED_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "siglip" / "compiled"


def writable_cache(warn: bool = True) -> Path:
    """`compiled_cache()` where this process can write a file in it, else a folder of this process only
    (removed when it exits; a warning says so, unless not `warn`), or of its parent (`PARENT_FOLDER`)."""
    cache = compiled_cache()
    error = write_error(cache)
    if error is None:
        return cache
    if warn:
        whose = "the parent process" if os.environ.get(PARENT_FOLDER) else "this process only"
        logger.warning("%s is not writable (%s): compiling for %s", cache, error, whose)
    return process_folder()


@functools.cache
def process_folder() -> Path:
    """A folder for this process's compiled files, removed when it exits; in a child compiling for its parent
    (`PARENT_FOLDER` set), the parent's, which outlives the child."""
    inherited = os.environ.get(PARENT_FOLDER)
    if inherited:
        return Path(inherited)
    folder = Path(tempfile.mkdtemp(prefix="siglip-compiled-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def write_error(folder: Path) -> OSError | None:
    """Why this process cannot write a file in `folder` (made first if missing), or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        return error
    return None
