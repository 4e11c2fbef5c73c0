"""The cores a process may use (`siglip.core.cpu`): its affinity and its cgroups' CPU quota, read from real
cgroups where this machine lets a test make one, and from cgroup trees laid out as the kernel lays them out."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from _material import BUNDLED
from siglip.core import cpu
from siglip.core.cpu import cpu_quota, fit_torch_threads, usable_cores


def test_usable_cores_are_the_process_affinity():
    """A container or `taskset` gives the process fewer cores than the host has: those are what count."""
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this system")
    if cpu_quota() is None:
        assert usable_cores() == len(os.sched_getaffinity(0))
    run = subprocess.run(
        [sys.executable, "-c", "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
         "from siglip.core.cpu import usable_cores; print(usable_cores())"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.stdout.split() == ["1"], run.stderr


@contextlib.contextmanager
def _cgroup_with_one_core_quota():
    """A cgroup limited to one core's bandwidth (100 ms a 100 ms period) with an unlimited cgroup inside it,
    made in this machine's cgroup filesystem (v1's cpu controller, or v2 with the cpu controller enabled);
    yields the inner cgroup's `cgroup.procs`. Skips where no cgroup can be made (not root, read-only)."""
    name = f"siglip-test-{uuid.uuid4().hex[:8]}"
    v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
    made: list[Path] = []
    try:
        if (v1 / "cpu.cfs_quota_us").exists():
            outer = v1 / name
            outer.mkdir()
            made.append(outer)
            (outer / "cpu.cfs_period_us").write_text("100000")
            (outer / "cpu.cfs_quota_us").write_text("100000")
        elif "cpu" in (v2 / "cgroup.subtree_control").read_text().split():
            outer = v2 / name
            outer.mkdir()
            made.append(outer)
            (outer / "cpu.max").write_text("100000 100000")
            (outer / "cgroup.subtree_control").write_text("+cpu")
        else:
            pytest.skip("no cgroup cpu controller to limit a process with")
        inner = outer / "inner"
        inner.mkdir()
        made.append(inner)
    except OSError as error:
        for folder in reversed(made):
            folder.rmdir()
        pytest.skip(f"no cgroup can be made here: {error}")
    try:
        yield inner / "cgroup.procs"
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):  # not hiding the test's own failure
                folder.rmdir()


def test_a_cpu_quota_on_a_parent_cgroup_limits_the_cores_and_the_model_s_threads(tmp_path):
    """A process in an unlimited cgroup under one with a quota of one core (a pod's limit, a systemd
    slice's `CPUQuota=`) may use one core, whatever its affinity says: it counts 1, and a model put into an
    inference mode runs torch on 1 thread (torch counted the affinity's cores), unless OMP_NUM_THREADS says
    how many."""
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores in the affinity to tell a quota of one from it")
    script = (
        "import sys, torch; from siglip import AutoModel; from siglip.core.cpu import usable_cores; "
        "from siglip.tools.embeddings.inference import InferenceMode; "
        "before = torch.get_num_threads(); InferenceMode('fp32').apply(AutoModel.from_pretrained(sys.argv[1])); "
        "print(usable_cores(), before, torch.get_num_threads())"
    )
    with _cgroup_with_one_core_quota() as procs:
        results = {}
        for omp in (None, "2"):
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
            if omp:
                env["OMP_NUM_THREADS"] = omp
            shell = f'echo $$ > {procs} && exec "$0" -c "$1" "$2"'
            run = subprocess.run(
                ["sh", "-c", shell, sys.executable, script, BUNDLED],
                capture_output=True, text=True, timeout=120, env=env,
            )  # fmt: skip
            assert run.returncode == 0, run.stderr
            results[omp] = [int(n) for n in run.stdout.split()]
    cores, before, after = results[None]
    assert cores == 1 and before == len(os.sched_getaffinity(0)) and after == 1
    assert results["2"] == [1, before, 2]


def _tree(tmp_path: Path, mounts: list[str], memberships: list[str], files: dict[str, str]) -> Path:
    """A /proc/self (mountinfo, cgroup) and cgroup files under `tmp_path`, mount points relative to it."""
    proc = tmp_path / "proc"
    proc.mkdir()
    lines = []
    for n, mount in enumerate(mounts):
        root, point, fstype, options = mount.split()
        lines.append(
            f"{30 + n} 1 0:{n} {root} {tmp_path / point} rw,relatime shared:{n} - {fstype} x {options}"
        )
    (proc / "mountinfo").write_text("\n".join(["22 1 8:1 / / rw - ext4 /dev/sda1 rw", *lines]) + "\n")
    (proc / "cgroup").write_text("\n".join(memberships) + "\n")
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return proc


def test_cgroup_v2_quota_is_the_tightest_on_the_process_s_path(tmp_path):
    """cgroup v2 on a host: the process's own cgroup (`0::/kubepods/pod/ctr`) and each cgroup above it up to
    the mount; the tightest `cpu.max` wins ("max": none)."""
    proc = _tree(
        tmp_path,
        ["/ cg cgroup2 rw,nsdelegate"],
        ["0::/kubepods/pod/ctr"],
        {
            "cg/cpu.max": "max 100000\n",
            "cg/kubepods/cpu.max": "400000 100000\n",
            "cg/kubepods/pod/cpu.max": "150000 100000\n",
            "cg/kubepods/pod/ctr/cpu.max": "max 100000\n",
        },
    )
    assert cpu_quota(proc) == 1.5
    (tmp_path / "cg/kubepods/pod/cpu.max").write_text("max 100000\n")
    assert cpu_quota(proc) == 4.0
    (tmp_path / "cg/kubepods/cpu.max").write_text("max 50000\n")
    assert cpu_quota(proc) is None


def test_cgroup_v2_in_a_container_s_own_namespace(tmp_path):
    """Inside a container with its own cgroup namespace the process is at `/` and the container's cgroup is
    the mount itself (`docker run --cpus 2`)."""
    proc = _tree(
        tmp_path, ["/ sys/fs/cgroup cgroup2 rw"], ["0::/"], {"sys/fs/cgroup/cpu.max": "200000 100000"}
    )
    assert cpu_quota(proc) == 2.0


def test_cgroup_v1_cpu_controller_mounted_with_others(tmp_path):
    """cgroup v1: the cpu controller's hierarchy (mounted with cpuacct; the memory hierarchy's files are not
    read), the mount's root a container's path (Docker on v1 mounts the container's cgroup at its cpu mount
    point: the process's path `/docker/abc` is the mount itself); -1 means no limit."""
    proc = _tree(
        tmp_path,
        ["/docker/abc cpu cgroup rw,cpu,cpuacct", "/docker/abc memory cgroup rw,memory"],
        ["5:memory:/docker/abc", "4:cpu,cpuacct:/docker/abc", "0::/"],
        {
            "cpu/cpu.cfs_quota_us": "250000\n",
            "cpu/cpu.cfs_period_us": "100000\n",
            "memory/cpu.cfs_quota_us": "50000\n",
            "memory/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cpu_quota(proc) == 2.5
    (tmp_path / "cpu/cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(proc) is None


def test_no_cgroup_files_means_no_quota(tmp_path):
    """Not Linux, or no cgroup mounted, or files that do not parse: no quota, and the affinity alone counts."""
    assert cpu_quota(tmp_path / "missing") is None
    proc = _tree(tmp_path, ["/ cg cgroup2 rw"], ["0::/a"], {"cg/a/cpu.max": "garbage\n"})
    assert cpu_quota(proc) is None


def test_torch_threads_are_lowered_to_a_quota_only(monkeypatch):
    """`fit_torch_threads` lowers torch's count to a quota's cores and never raises it; without a quota a
    count set on purpose (more threads than cores) stays."""
    threads = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu, "_affinity_cores", lambda: 2)
    try:
        monkeypatch.setattr(cpu, "_process_quota", lambda: None)
        torch.set_num_threads(3)
        assert fit_torch_threads() == 3 and torch.get_num_threads() == 3
        monkeypatch.setattr(cpu, "_process_quota", lambda: 0.5)
        assert fit_torch_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(cpu, "_process_quota", lambda: 4.0)
        assert fit_torch_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_a_mount_of_another_cgroup_is_not_read(tmp_path):
    """A bind mount of some other, limited cgroup (here `/limited`, while the process sits at `/`) says
    nothing about this process; the process's own hierarchy does."""
    proc = _tree(
        tmp_path,
        ["/limited bind cgroup rw,cpu", "/ cpu cgroup rw,cpu,cpuacct"],
        ["1:cpu,cpuacct:/"],
        {
            "bind/cpu.cfs_quota_us": "100000",
            "bind/cpu.cfs_period_us": "100000",
            "cpu/cpu.cfs_quota_us": "-1",
            "cpu/cpu.cfs_period_us": "100000",
        },
    )
    assert cpu_quota(proc) is None


def test_a_container_s_namespace_over_a_mount_of_its_host_path(tmp_path):
    """In a cgroup namespace (`0::/`) whose one cgroup2 mount shows the host's path as its root, that mount is
    the container's cgroup."""
    proc = _tree(tmp_path, ["/kubepods/pod/ctr cg cgroup2 rw"], ["0::/"], {"cg/cpu.max": "300000 100000"})
    assert cpu_quota(proc) == 3.0


def test_mount_points_with_escaped_and_undecodable_names(tmp_path):
    """mountinfo escapes a space in a mount point as `\\040` (undone here), and writes other bytes as they are,
    UTF-8 or not (kept as the file system's own name); a cgroup named `..app.slice` is inside the mount."""
    point = tmp_path / "cgroup v1"
    (point / "..app.slice").mkdir(parents=True)
    (point / "..app.slice" / "cpu.cfs_quota_us").write_text("100000")
    (point / "..app.slice" / "cpu.cfs_period_us").write_text("100000")
    odd = os.fsencode(tmp_path) + b"/odd-\xff"
    os.makedirs(odd)
    proc = tmp_path / "proc"
    proc.mkdir()
    escaped = str(point).replace(" ", "\\040")
    (proc / "mountinfo").write_bytes(
        b"30 1 0:1 / " + odd + b" rw - tmpfs x rw\n" + f"31 1 0:2 / {escaped} rw - cgroup x rw,cpu\n".encode()
    )
    (proc / "cgroup").write_text("2:cpu:/..app.slice\n")
    assert cpu_quota(proc) == 1.0


def test_lines_not_as_the_kernel_writes_them_are_passed_over(tmp_path):
    """A mountinfo line without its separator, a cgroup line without its fields: skipped, not an error."""
    proc = _tree(
        tmp_path,
        ["/ cg cgroup2 rw"],
        ["garbage", "0::/a"],
        {"cg/a/cpu.max": "200000 100000"},
    )
    with (proc / "mountinfo").open("a") as mountinfo:
        mountinfo.write("truncated line\n")
    assert cpu_quota(proc) == 2.0
