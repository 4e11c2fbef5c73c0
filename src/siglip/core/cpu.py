"""The CPU cores this process may use: what every pool of threads or processes here is sized by.

Two limits make a process's share of a machine smaller than its core count, and both are common where
SigLIP runs on CPUs: an affinity (a container's cpuset, `taskset`) and a CPU quota (a Kubernetes pod's CPU
limit, `docker run --cpus 2`, systemd's `CPUQuota=`: the cgroup's CPU bandwidth). torch and OpenMP see the
first only: in a pod limited to 2 CPUs on a 64-core node they start 64 threads, which the quota then stops
for most of every scheduling period. `usable_cores` sees both; `fit_torch_threads` lowers torch's thread
count to it where a quota is what limits.

The quota is read where the process's cgroup is, not only at the cgroup filesystem's root (as joblib/loky
reads it, which misses a quota set on a systemd slice or on a parent cgroup): the process's own cgroup, found
through `/proc/self/cgroup` and the cgroup mounts of `/proc/self/mountinfo` (a mount of another part of the
tree is not read), and every cgroup above it up to the mount, the tightest limit winning; cgroup v2
(`cpu.max`) and v1 (`cpu.cfs_quota_us` over `cpu.cfs_period_us`). A quota of 1.5 cores counts as 2, as loky
counts it. It is read once per process: a pod resized in place is seen by the next process.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from pathlib import Path

logger = logging.getLogger("siglip")


def usable_cores() -> int:
    """The CPU cores this process may use: its affinity where the system keeps one (a container's cpuset's
    or `taskset`'s cores, not the host's), else every core, and no more than its cgroup's CPU quota
    (`cpu_quota`, rounded up; read once per process: 0.1 ms, where a server asks per request)."""
    cores = _affinity_cores()
    quota = _process_quota()
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def _affinity_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity on macOS and Windows
        return os.cpu_count() or 1


@functools.cache
def _process_quota() -> float | None:
    return cpu_quota()


def cpu_quota(proc: Path = Path("/proc/self")) -> float | None:
    """The CPU bandwidth the cgroups of the process `proc` allow it, in cores (a quota of 150 ms per 100 ms
    period: 1.5), the tightest along its cgroup's path up to the cgroup filesystem's mount; None where
    there is none (no limit set, not Linux, the files unreadable or not as the kernel writes them)."""
    try:  # mount points are bytes: a name that is not UTF-8 is kept as the file system's own
        mounts = os.fsdecode((proc / "mountinfo").read_bytes()).splitlines()
        memberships = os.fsdecode((proc / "cgroup").read_bytes()).splitlines()
    except OSError:
        return None
    hierarchies = [_hierarchy(line) for line in mounts]
    # "0::/path" (v2), "4:cpu,cpuacct:/path" (v1)
    paths = [parts for parts in (line.split(":", 2) for line in memberships) if len(parts) == 3]
    quotas = []
    for v2 in (True, False):
        ours = [(root, point) for kind, root, point in filter(None, hierarchies) if kind == v2]
        for _, controllers, path in paths:
            if (controllers == "") if v2 else ("cpu" in controllers.split(",")):
                for root, point in ours:
                    quotas.extend(_path_quotas(Path(point), root, path, v2, alone=len(ours) == 1))
    return min(quotas, default=None)


def _hierarchy(line: str) -> tuple[bool, str, str] | None:
    """(cgroup v2, the mount's root, its mount point) of a /proc/self/mountinfo line of a cgroup v2 mount or
    of a v1 mount holding the cpu controller, else None. Its fields: id, parent, device, root, mount point,
    options, optional fields, "-", file system type, source, super options."""
    fields = line.split(" ")
    dash = fields.index("-") if "-" in fields else len(fields)
    if dash < 5 or len(fields) < dash + 4:  # not a line as the kernel writes it
        return None
    fstype, options = fields[dash + 1], fields[dash + 3]
    if fstype == "cgroup2" or (fstype == "cgroup" and "cpu" in options.split(",")):
        return fstype == "cgroup2", _unescape(fields[3]), _unescape(fields[4])
    return None


def _unescape(field: str) -> str:
    """A mountinfo path with the kernel's octal escapes (space, tab, newline, backslash) undone."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _path_quotas(point: Path, root: str, path: str, v2: bool, alone: bool) -> list[float]:
    """The quotas (cores) set on the cgroup `path` and its parents, below the mount `point` of the cgroup
    filesystem's `root`. A path outside the mount's root is another part of the tree, not read; except the
    path `/` of a container's own cgroup namespace where this hierarchy has one mount (its root then shows
    the host's path): that mount is the container's cgroup."""
    if not (path.startswith("/") and root.startswith("/")):
        return []
    relative = os.path.relpath(path, root)
    if relative == ".." or relative.startswith("../"):
        if path != "/" or not alone:
            return []
        relative = "."
    folder = point / relative
    quotas = []
    while True:
        quota = _quota(folder, v2)
        if quota is not None:
            quotas.append(quota)
        if folder == point or point not in folder.parents:
            return quotas
        folder = folder.parent


def _quota(folder: Path, v2: bool) -> float | None:
    """The CPU quota (cores) one cgroup's folder sets, or None (none set, or unreadable)."""
    try:
        if v2:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        if quota == "max" or int(quota) <= 0 or int(period) <= 0:  # v1 writes -1 for no limit
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        return None


def fit_torch_threads() -> int:
    """Where a CPU quota leaves this process fewer cores than torch runs threads (torch counts the
    affinity's cores, not the quota's), lower torch's intra-op thread count to `usable_cores()`, and return
    the count. Left as it is without a quota (a count set on purpose stays), and where the environment sets
    it (`OMP_NUM_THREADS`, `MKL_NUM_THREADS`). Lowering it again is a no-op."""
    import torch

    threads, cores = torch.get_num_threads(), usable_cores()
    if _process_quota() is None or threads <= cores:
        return threads
    if any(os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        return threads
    logger.info(
        "torch threads: %d, the cores this process's CPU quota allows (of %d it counted)", cores, threads
    )
    torch.set_num_threads(cores)
    return cores


def prepare_cpu_compute() -> None:
    """Set this process up to run a model on the CPU, from the point where its loading peaks are freed: keep
    freed memory in the heap for the next batch or step (`heap.keep_freed_memory`) and run no more torch
    threads than a CPU quota lets run (`fit_torch_threads`). Called by `InferenceMode.apply` and training."""
    from .heap import keep_freed_memory

    keep_freed_memory()
    fit_torch_threads()
