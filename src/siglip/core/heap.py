"""Freed activations kept in the process's heap for the next batch, where the C library is glibc.

glibc's malloc gives each block of 32 MiB or more (and smaller ones, until its threshold has adapted) a
mapping of its own, unmaps it when it is freed, and trims the free top of its heap back to the system;
torch's CPU allocator keeps nothing either. A tower's activations are freed after each batch and allocated
again for the next, so every batch faulted their pages in afresh, each one zero-filled by the kernel: on
the base image tower at batch 32 (a 39 MB MLP activation, 30-60 MB of attention scores) 7% of the samples
were in the kernel, and the compiled bf16 tower ran 0.87x OpenVINO's bf16 (which keeps its buffers) against
0.96-0.97x with the blocks kept (2 threads, Zen 5; BENCHMARKS.md).

`keep_freed_memory` turns both off, once per process: blocks come from the heap, and freed ones stay there
for the next batch. The process's resident memory then stays at its peak until it exits, as an inference
runtime's own buffers do, also after the model is gone. What the main thread allocates gains most: a thread
other than the main one (`siglip serve` runs its model on one) allocates from heaps of 64 MiB at most, which
glibc unmaps once they are wholly free, and gives blocks over 64 MiB mappings of their own. Where the
environment sets any of these (`MALLOC_MMAP_MAX_`, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`,
`MALLOC_TOP_PAD_`, or the same in `GLIBC_TUNABLES`), its settings win; `SIGLIP_KEEP_FREED_MEMORY=0` leaves
glibc's settings as they are.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading

logger = logging.getLogger("siglip")

ENV = "SIGLIP_KEEP_FREED_MEMORY"
# mallopt's parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # bytes of free heap top before a trim: the largest value mallopt takes
# glibc's names of what decides when a block gets a mapping of its own and when the heap is trimmed
_SETTINGS = ("mmap_max", "mmap_threshold", "trim_threshold", "top_pad")

_lock = threading.Lock()
_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Keep freed blocks in the heap from now on (see the module doc); whether they are kept: False where the
    C library is not glibc, the environment tunes its malloc, or `SIGLIP_KEEP_FREED_MEMORY=0`. Called for a
    model on the CPU by `cpu.prepare_cpu_compute`; later calls return the first one's answer."""
    global _kept
    with _lock:
        if _kept is None:
            _kept = _tune_glibc()
        return _kept


def _tune_glibc() -> bool:
    if os.environ.get(ENV, "1") == "0" or not _is_glibc() or _malloc_set_by_user():
        return False
    libc = ctypes.CDLL(None)  # the C library this process runs on
    kept = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
    logger.debug("freed memory kept in the heap for the next batch: %s", kept)
    return kept


def _malloc_set_by_user() -> bool:
    """Whether the environment sets what `keep_freed_memory` would (those settings win)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(
        f"MALLOC_{name.upper()}_" in os.environ or f"glibc.malloc.{name}" in tunables for name in _SETTINGS
    )


def _is_glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr, or no such name: another C library
        return False
