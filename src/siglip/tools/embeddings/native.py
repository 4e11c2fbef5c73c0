"""siglip's native kernels (`kernels/<name>.cpp`): built on first use with the machine's C++ compiler
(`$CXX`, else g++; a second or two) into `compiled_cache()/kernels`, each named by a hash of its source, its
compiler flags and torch's version, so that a cache built ahead (a container image's layer) serves without a
compiler, and loaded with its symbols global (AOTInductor packages that call a kernel find it there).

Each kernel's module says which CPU its code needs and what runs where it cannot be built:
`siglip.tools.embeddings.fused_attention` (the attention of the fast CPU modes) and
`siglip.tools.embeddings.int8` (the per-call quantisation of eager int8's activations).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ...core.staging import staged_file
from .cache_folder import compiled_cache, process_folder, write_error

logger = logging.getLogger("siglip")

FOLDER = Path(__file__).with_name("kernels")  # the kernels' C++ sources
# every kernel's flags begin with these: a shared library with libgomp's OpenMP (torch's own copy, already
# loaded under the same name, runs its threads)
COMMON_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fno-strict-aliasing", "-fopenmp")
_BUILD_SECONDS = 120


def compiler_command() -> list[str]:
    """The C++ compiler's command: `$CXX` (a path, or a command with arguments such as `ccache g++`), else
    g++ or c++ on the PATH; an `OSError` where there is none or `$CXX` cannot be read as a command."""
    cxx = os.environ.get("CXX", "").strip()
    if cxx and not Path(cxx).exists():  # an existing path is one word, spaces and backslashes included
        try:
            return shlex.split(cxx)
        except ValueError as error:
            raise OSError(f"CXX={cxx!r} cannot be read as a command: {error}") from error
    compiler = cxx or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise OSError("no C++ compiler was found (set CXX, or install g++)")
    return [compiler]


@dataclass(frozen=True)
class NativeKernel:
    """The kernel of `kernels/<name>.cpp`, compiled with `COMMON_FLAGS` and `flags` (its instruction sets),
    linked to torch's CPU library; `title` names it in messages."""

    name: str
    flags: tuple[str, ...]
    title: str

    @property
    def source(self) -> Path:
        return FOLDER / f"{self.name}.cpp"

    def load(self) -> tuple[ctypes.CDLL | None, str | None]:
        """The kernel's library (`built`), loaded with its symbols global, or None and why it could not be
        built or loaded (no compiler, a failed build, no home folder for the cache). The caller checks first
        that the CPU runs the code of `flags`."""
        try:
            path = self.built()
            library = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:  # RuntimeError: no home folder
            return None, f"the {self.title} kernel could not be built ({error})"
        with contextlib.suppress(OSError):
            os.utime(path)  # used now: `_remove_stale_builds` goes by the time of last use
        return library, None

    def built(self) -> Path:
        """The kernel's library: in `compiled_cache()/kernels` if a build of the same source, flags and torch
        is there (also in a cache this process may only read), else built there (in a folder of this
        process's own where that folder cannot be written)."""
        flags = (*COMMON_FLAGS, *self.flags)
        digest = hashlib.sha256(self.source.read_bytes() + repr((flags, torch.__version__)).encode())
        folder = compiled_cache() / "kernels"
        path = folder / f"{self.name}-{digest.hexdigest()[:16]}.so"
        if path.is_file():
            return path
        if write_error(folder) is not None:  # a read-only cache, or another user's folder inside ours
            folder = process_folder() / "kernels"
            path = folder / path.name
        if not path.exists():
            compiler = compiler_command()
            torch_lib = Path(torch.__file__).parent / "lib"
            link = [f"-L{torch_lib}", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}"]
            logger.info("building siglip's %s kernel for this machine: %s", self.name, path)
            folder.mkdir(parents=True, exist_ok=True)
            with staged_file(path) as partial:
                done = subprocess.run(
                    [*compiler, *flags, str(self.source), *link, "-o", str(partial)],
                    capture_output=True,
                    text=True,
                    errors="replace",  # a compiler's messages in another encoding than the locale's
                    timeout=_BUILD_SECONDS,
                )
                if done.returncode:
                    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
                    raise subprocess.SubprocessError(f"{compiler[0]} exited with {done.returncode}: {last}")
            self._remove_stale_builds(folder, path)
        return path

    def _remove_stale_builds(self, folder: Path, keep: Path) -> None:
        """Remove from `folder` this kernel's builds of other sources or flags not loaded for an hour (each
        siglip version that changed it left one; loading touches the file), and partial files killed builds
        left. A process that loaded one keeps it mapped; a newer process of that version builds it again."""
        hour_ago = time.time() - 3600
        for stale in [*folder.glob(f"{self.name}-*.so"), *folder.glob(f".{self.name}-*.so")]:
            with contextlib.suppress(OSError):
                if stale != keep and stale.stat().st_mtime < hour_ago:
                    stale.unlink()
