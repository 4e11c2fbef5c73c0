"""The CPU cores this process may use: what every pool of threads or processes here is sized by."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity where the system keeps one (a container's cpuset's
    or `taskset`'s cores, not the host's), else every core. (A CPU quota without a cpuset is not seen.)"""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity on macOS and Windows
        return os.cpu_count() or 1
