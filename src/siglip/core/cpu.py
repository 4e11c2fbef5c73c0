"""The CPU cores this process may use: what every pool of threads or processes here is sized by.

Two limits make a process's share of a machine smaller than its core count, and both are common where
SigLIP runs on CPUs: an affinity (a container's cpuset, `taskset`) and a CPU quota (a Kubernetes pod's CPU
limit, `docker run --cpus 2`, systemd's `CPUQuota=`: the cgroup's CPU bandwidth). torch and OpenMP see the
first only: in a pod limited to 2 CPUs on a 64-core node they start 64 threads, which the quota then stops
for most of every scheduling period. `usable_cores` sees both; `fit_torch_threads` lowers torch's thread
count to it.

The quota is read as the JVM and Go's automaxprocs read it, not as joblib/loky does (the cgroup filesystem's
root only, which misses a quota set on a systemd slice or on a parent cgroup): the process's own cgroup,
found through `/proc/self/cgroup` and the cgroup mounts of `/proc/self/mountinfo`, and every cgroup above it
up to the mount, the tightest limit winning; cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us` over
`cpu.cfs_period_us`). A quota of 1.5 cores counts as 2, as the JVM and loky count it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path

logger = logging.getLogger("siglip")


def usable_cores() -> int:
    """The CPU cores this process may use: its affinity where the system keeps one (a container's cpuset's
    or `taskset`'s cores, not the host's), else every core, and no more than its cgroup's CPU quota
    (`cpu_quota`, rounded up; read once per process: 0.1 ms, where a server asks per request)."""
    try:
        cores = len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity on macOS and Windows
        cores = os.cpu_count() or 1
    quota = _process_quota()
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


@functools.cache
def _process_quota() -> float | None:
    return cpu_quota()


def cpu_quota(proc: Path = Path("/proc/self")) -> float | None:
    """The CPU bandwidth the cgroups of the process `proc` allow it, in cores (a quota of 150 ms per 100 ms
    period: 1.5), the tightest along its cgroup's path up to the cgroup filesystem's mount; None where
    there is none (no limit set, not Linux, the files unreadable)."""
    try:
        mounts = (proc / "mountinfo").read_text().splitlines()
        memberships = (proc / "cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in mounts:
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        root, point, fstype, options = fields[3], fields[4], fields[dash + 1], fields[dash + 3]
        v2 = fstype == "cgroup2"
        if not v2 and not (fstype == "cgroup" and "cpu" in options.split(",")):
            continue
        for membership in memberships:  # "0::/path" (v2), "4:cpu,cpuacct:/path" (v1)
            _, controllers, path = membership.split(":", 2)
            if (v2 and controllers == "") or (not v2 and "cpu" in controllers.split(",")):
                quotas.extend(_path_quotas(Path(point), root, path, v2))
    return min(quotas, default=None)


def _path_quotas(point: Path, root: str, path: str, v2: bool) -> list[float]:
    """The quotas (cores) set on the cgroup `path` and its parents, below the mount `point` of the cgroup
    filesystem's `root`. A path outside the mount's root (a container's own cgroup namespace shows `/`, or
    the host's path) starts at the mount point."""
    relative = os.path.relpath(path, root)
    folder = point if relative.startswith("..") else point / relative
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
    """Lower torch's intra-op thread count to `usable_cores()` where it is higher (torch counts the
    affinity's cores, not a CPU quota's), and return it; left as it is where the environment sets it
    (`OMP_NUM_THREADS`, `MKL_NUM_THREADS`). Lowering it again is a no-op."""
    import torch

    threads, cores = torch.get_num_threads(), usable_cores()
    if threads > cores and not any(os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        logger.info("torch threads: %d, the cores this process may use (of %d it counted)", cores, threads)
        torch.set_num_threads(cores)
        return cores
    return threads
