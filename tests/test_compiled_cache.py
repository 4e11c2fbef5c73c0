"""The compiled towers' cache stays within its size limit: packages loaded least recently go first, never one
in use, and what killed compiles left goes too (`siglip.tools.embeddings.compiled.prune_cache`)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from siglip.errors import UsageError
from siglip.tools.embeddings import compiled
from siglip.tools.embeddings.compiled import CACHE_GB, CACHE_GB_ENV, cache_limit, prune_cache

HOUR = 3600


def _write(path: Path, size: int, age_s: float) -> Path:
    path.write_bytes(b"x" * size)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def _stem(letter: str) -> str:
    """A package's name as `compiled._package_path` gives it, its digest made of `letter` (a hex digit)."""
    return f"bf16-SiglipVisionTransformer-{letter * 32}"


def _package(folder: Path, letter: str, age_s: float) -> Path:
    """A package of 1,000 bytes with its extracted library of 1,000 and its lock, loaded `age_s` ago."""
    _write(folder / f"{_stem(letter)}-0123abcd.so", 1000, age_s)
    _write(folder / f"{_stem(letter)}.lock", 0, age_s)
    return _write(folder / f"{_stem(letter)}.pt2", 1000, age_s)


class _OtherProcess:
    """A process holding `path` as `code` (Python, `path` in its globals) takes it, until the block ends."""

    def __init__(self, code: str, path: Path) -> None:
        script = f"import time, filelock\nfrom pathlib import Path\npath = {str(path)!r}\n{code}\nprint('held', flush=True)\ntime.sleep(60)"
        self.process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)

    def __enter__(self) -> None:
        assert self.process.stdout.readline() == "held\n"

    def __exit__(self, *_: object) -> None:
        self.process.kill()
        self.process.wait()


def test_the_cache_removes_the_packages_loaded_least_recently_and_not_in_use(tmp_path, caplog):
    # loaded: b (the longest ago), c, f, a, e, d (just compiled); 12,000 bytes of packages and libraries
    b, c, f, a, e, d = (
        _package(tmp_path, n, age) for n, age in zip("bcfaed", (60, 50, 40, 30, 20, 0), strict=True)
    )
    recent_partial = _write(tmp_path / f".{_stem('1')}-k2j4_x9q.pt2", 100, 60)  # a compile running now
    old_partial = _write(
        tmp_path / f".{_stem('2')}-0badf00d-x8a1b2c3.so", 5000, 2 * HOUR
    )  # a killed extraction
    old_library = _write(tmp_path / f"{_stem('3')}-00ff00ff.so", 5000, 2 * HOUR)  # its package deleted
    old_lock = _write(tmp_path / f"{_stem('4')}.lock", 0, 2 * HOUR)  # a compile killed before its package
    held_lock = _write(tmp_path / f"{_stem('5')}.lock", 0, 2 * HOUR)  # a compile running for over an hour
    foreign = [  # not the cache's files (a folder of the user's named as the cache): never counted nor removed
        _write(tmp_path / name, 5000, 2 * HOUR)
        for name in ("notes.txt", "my_export.pt2", "libmine.so", "job.lock", f"{_stem('6')}.pt2.bak")
    ]
    limit = 10_200  # 12,100 bytes of the cache's files, of which a (1,000 + 1,000) must go
    with (
        _OtherProcess(
            "from siglip.tools.embeddings import compiled\ncompiled._hold(Path(path))", b
        ),  # loaded
        _OtherProcess(
            "(lock := filelock.FileLock(path)).acquire()", c.with_suffix(".lock")
        ),  # c being loaded
        _OtherProcess("(lock := filelock.FileLock(path)).acquire()", held_lock),
        caplog.at_level(logging.INFO, logger="siglip"),
    ):
        compiled._hold(f)  # f loaded by this process
        try:
            prune_cache(tmp_path, d, limit)
        finally:
            compiled._held.pop(f).release()
    # b, c and f are in use, so a goes (the next loaded least recently): 10,100 bytes left; e stays
    assert not a.exists() and not a.with_suffix(".lock").exists()
    assert not (tmp_path / f"{a.stem}-0123abcd.so").exists()
    for kept in (b, c, f, e, d):
        assert kept.exists() and (tmp_path / f"{kept.stem}-0123abcd.so").exists()
    assert c.with_suffix(".lock").exists() and held_lock.exists() and recent_partial.exists()
    assert all(path.exists() for path in foreign)
    assert not old_partial.exists() and not old_library.exists() and not old_lock.exists()
    assert f"removed 1 compiled package(s) loaded least recently from {tmp_path}" in caplog.text


def test_the_cache_may_stay_over_its_limit_by_the_packages_in_use(tmp_path):
    kept = _package(tmp_path, "a", 10)
    loaded = _package(tmp_path, "b", 20)
    compiled._hold(loaded)
    try:
        prune_cache(tmp_path, kept, 0)
    finally:
        compiled._held.pop(loaded).release()
    assert kept.exists() and loaded.exists()
    (mark,) = tmp_path.glob(f"{loaded.stem}.*.held")  # released: as a process that is gone leaves its mark
    gone = _write(tmp_path / f"{loaded.stem}.999999999-0badc0de.held", 0, 0)  # another process gone
    compiled._hold(loaded)  # loaded again: the marks of the processes gone are removed, its own stays
    assert list(tmp_path.glob(f"{loaded.stem}.*.held")) == [mark] and not gone.exists()
    compiled._held.pop(loaded).release()
    prune_cache(tmp_path, kept, 0)
    assert kept.exists() and not loaded.exists() and not mark.exists()


def test_a_process_with_the_same_pid_elsewhere_marks_its_package_too(tmp_path):
    """Containers or hosts sharing a cache can run processes of the same pid: each marks a package loaded."""
    package = _package(tmp_path, "a", 0)
    same_pid = f"import os\nos.getpid = lambda: {os.getpid()}\n"  # this pid, in another container
    with _OtherProcess(
        same_pid + "from siglip.tools.embeddings import compiled\ncompiled._hold(Path(path))", package
    ):
        compiled._hold(package)
        try:
            assert package in compiled._held and compiled._live_marks(package) == 2
        finally:
            compiled._held.pop(package).release()


def test_a_package_another_prune_removed_meanwhile_counts_as_removed(tmp_path, monkeypatch):
    """Two prunes at once: a package the other one is removing (its lock held) is not in the total any more,
    so this one does not remove the next package as well."""
    older, newer, kept = (_package(tmp_path, n, age) for n, age in zip("abc", (30, 20, 0), strict=True))

    def removed_by_another_prune(lock, paths, package=None):
        for path in paths:
            path.unlink()
        return False  # its lock was held: by the other prune

    monkeypatch.setattr(compiled, "_remove_unlocked", removed_by_another_prune)
    prune_cache(tmp_path, kept, 4000)  # 6,000 bytes: the oldest package's 2,000 are enough
    assert not older.exists() and newer.exists() and kept.exists()


def _fake_compile(monkeypatch) -> list[Path]:
    """`_load_or_compile` with a compile that writes a file and a load that reads nothing: the (partial) paths
    compiled to."""
    made = []

    def compile_package(tower, x, precision, path, calibration):
        path.write_bytes(b"a package")
        made.append(path)

    monkeypatch.setattr(compiled, "_compile_package", compile_package)
    monkeypatch.setattr(compiled, "_load_package", lambda path: "loaded")
    return made


def test_a_bad_limit_stops_the_job_before_it_compiles(tmp_path, monkeypatch):
    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(tmp_path))
    monkeypatch.setenv(CACHE_GB_ENV, "10GB")
    made = _fake_compile(monkeypatch)
    with pytest.raises(UsageError, match=CACHE_GB_ENV):
        compiled._load_or_compile(torch.nn.Linear(2, 2), torch.ones(1, 2), "bf16")
    assert made == []


def test_a_cache_that_cannot_be_pruned_does_not_fail_the_compile(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(tmp_path))
    made = _fake_compile(monkeypatch)

    def prune(folder, keep, limit):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(compiled, "prune_cache", prune)
    with caplog.at_level(logging.WARNING, logger="siglip"):
        loaded, path = compiled._load_or_compile(torch.nn.Linear(2, 2), torch.ones(1, 2), "bf16")
    assert loaded == "loaded" and path.read_bytes() == b"a package" and len(made) == 1
    assert f"could not prune {tmp_path}" in caplog.text


@pytest.mark.parametrize(
    "value, limit",
    [(None, CACHE_GB * 1e9), ("", CACHE_GB * 1e9), ("2.5", 2.5e9), (" 0 ", 0.0), ("inf", float("inf"))],
)
def test_the_limit_is_read_in_gigabytes(monkeypatch, value, limit):
    if value is None:
        monkeypatch.delenv(CACHE_GB_ENV, raising=False)
    else:
        monkeypatch.setenv(CACHE_GB_ENV, value)
    assert cache_limit() == limit


@pytest.mark.parametrize("value", ["10GB", "-1", "nan", "many"])
def test_a_bad_limit_names_the_variable_and_the_value(monkeypatch, value):
    monkeypatch.setenv(CACHE_GB_ENV, value)
    with pytest.raises(UsageError, match=f"{CACHE_GB_ENV} must be a number of gigabytes .*{value!r}"):
        cache_limit()


def test_a_compile_removes_its_copy_from_inductors_cache_and_nothing_else(tmp_path, monkeypatch):
    """`_drop_inductor_copy`: the files the package holds go from inductor's cache, and the library's own
    folder; another compile's files in the same folder (named by the model's structure) stay."""
    import zipfile

    shared = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(shared))
    ours = ["cabc.wrapper.cpp", "cabc.wrapper.so", "cabc.wrapper_metadata.json", "cdef.kernel.cpp"]
    theirs = ["cxyz.wrapper.cpp", "cxyz.wrapper.o", "cdef2.kernel.cpp"]  # a concurrent compile, half done
    folder = shared / "cstructure"
    (folder / "cabc").mkdir(parents=True)  # the library's objects
    for name in ours + theirs:
        (folder / name).write_bytes(b"x")
    package = tmp_path / "bf16-SiglipVisionTransformer-0.pt2"
    with zipfile.ZipFile(package, "w") as archive:
        for name in ours:
            archive.writestr(f"pkg/data/aotinductor/model/{name}", b"x")
        archive.writestr("pkg/archive_format", b"pt2")
    compiled._drop_inductor_copy(package)
    assert sorted(p.name for p in folder.iterdir()) == sorted(theirs)
