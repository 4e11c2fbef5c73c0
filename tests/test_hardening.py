"""Issue 16's classes of failure, one test (or a few) each: what a real collection, a real disk and a real user
throw at the tools. Commands run in process through `siglip.tools.cli.main` (workers 0, no progress), except
where a separate process is the point (a read-only mount, two concurrent runs, the hub look-up).
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from _material import BUNDLED, write_photos
from _ray_material import write_shards
from siglip import SearchIndex
from siglip.core.hub import locate
from siglip.errors import StoreError, UsageError
from siglip.tools.cli import main
from siglip.tools.inputs.files import scan_images
from siglip.tools.inputs.tar_shards import is_shards, scan_inputs, tar_samples
from siglip.tools.search import index as index_module
from siglip.tools.search import store as store_module
from siglip.tools.search.index import RECORDS_FILE

pytest_plugins = ["_fixtures"]
QUIET = ("--workers", "0", "--no-progress")
BAD_NAME = os.fsdecode(b"caf\xe9-latin1.jpg")  # a Latin-1 name: not valid UTF-8


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _one_line_error(capsys, *argv) -> str:
    """The command fails with exit code 2 and one line on stderr; returns that line."""
    code, _out, err = _run(capsys, *argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def _parse_error(capsys, *argv) -> str:
    """The command is refused while parsing: exit code 2, one line naming the argument."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def collection(tmp_path) -> tuple[Path, list[str], dict[str, str]]:
    """Photos with every odd entry a real collection has: (folder, readable files as the scan lists them,
    left-out path -> the words its reason must contain)."""
    root = tmp_path / "photos"
    readable = [str(p) for p in write_photos(root, corrupt=False)]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (40, 30), "red").save(elsewhere / "red.png")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)  # a linked folder: followed
    (root / "grey" / "loop").symlink_to(root, target_is_directory=True)  # a folder loop: searched once
    shutil.copy(readable[0], os.fsencode(root) + b"/caf\xe9-latin1.jpg")
    (root / "dangling.jpg").symlink_to(root / "deleted-long-ago.jpg")
    (root / "looping.jpg").symlink_to(root / "looping.jpg")
    readable = sorted([*readable, str(root / "linked" / "red.png")])
    left_out = {
        str(root / BAD_NAME): "not valid UTF-8",
        str(root / "dangling.jpg"): "no such file",
        str(root / "looping.jpg"): "symbolic link loop",
    }
    return root, readable, left_out


def _assert_listed(stderr: str, left_out: dict[str, str]) -> None:
    from siglip.tools.inputs.files import display_path

    for path, words in left_out.items():
        line = next(line for line in stderr.splitlines() if line.strip().startswith(display_path(path) + ":"))
        assert words in line


# --- 1. one bad name must not abort a job ---------------------------------------------------------------
def test_bad_names_and_links_are_skipped_listed_and_the_rest_done(collection, tmp_path, capsys):
    root, readable, left_out = collection

    code, out, err = _run(capsys, "embed", root, "--out", tmp_path / "v.npy", "--model", BUNDLED, *QUIET)
    assert code == 0, err
    manifest = json.loads((tmp_path / "v.npy.json").read_text())
    assert manifest["paths"] == readable
    assert {s["path"] for s in manifest["skipped"]} == set(left_out)
    _assert_listed(err, left_out)

    code, out, err = _run(capsys, "index", root, "--index", tmp_path / "index", "--model", BUNDLED, *QUIET)
    assert code == 0, err
    assert f"{len(readable)} added, 0 updated, 0 removed, 0 unchanged, {len(left_out)} unreadable" in out
    _assert_listed(err, left_out)
    with SearchIndex(tmp_path / "index") as index:
        assert sorted(index.store.paths_of(index.store.ids()).values()) == readable

    code, out, err = _run(
        capsys, "classify", root, "--labels", "cat", "dog", "--json", "--model", BUNDLED, *QUIET
    )
    assert code == 0, err
    result = json.loads(out)  # valid JSON, whatever the names
    assert [r["path"] for r in result["results"]] == readable
    assert {s["path"] for s in result["skipped"]} == set(left_out)  # the non-UTF-8 name round-trips


def test_eval_follows_the_same_rule_as_the_other_commands(collection, tmp_path, capsys):
    root, readable, left_out = collection
    data = tmp_path / "classes"
    data.mkdir()
    (data / "photo").symlink_to(root, target_is_directory=True)
    code, out, err = _run(capsys, "eval", "zeroshot", "--data", data, "--json", "--plot", tmp_path / "cm.png",
                          "--model", BUNDLED, *QUIET)  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["count"] == len(readable)
    linked = {p.replace(str(root), str(data / "photo"), 1) for p in left_out}
    assert {s["path"] for s in report["skipped"]} == linked


def test_names_with_newlines_and_escape_codes_print_safely(tmp_path, capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.new("RGB", (32, 32), "blue").save(folder / "two\nlines \x1b[31mred.png")
    code, out, err = _run(capsys, "classify", folder, "--labels", "cat", "--model", BUNDLED, *QUIET)
    assert code == 0, err
    assert "\x1b" not in out and "two\\nlines \\x1b[31mred.png" in out
    code, out, err = _run(capsys, "classify", folder, "--labels", "cat", "--json", "--model", BUNDLED, *QUIET)
    assert json.loads(out)["results"][0]["path"] == str(folder / "two\nlines \x1b[31mred.png")


# --- 2. nothing is silently skipped -------------------------------------------------------------------------
def test_compressed_shards_are_one_line_naming_the_shard_not_a_list_of_unreadable_samples(
    photos, tmp_path, capsys
):
    write_shards(photos[1], tmp_path / "shards", shards=1)
    for name in ("photos.tar.gz", "gzipped.tar"):
        (tmp_path / name).write_bytes(gzip.compress((tmp_path / "shards" / "000000.tar").read_bytes()))
        line = _one_line_error(capsys, "embed", tmp_path / name, "--out", tmp_path / "v.npy", "--model", BUNDLED,
                               *QUIET)  # fmt: skip
        assert f"WebDataset shard {tmp_path / name}: not an uncompressed tar file" in line
        assert "must be decompressed first" in line and not (tmp_path / "v.npy").exists()


def test_a_shard_or_folder_named_twice_is_scanned_once(photos, tmp_path):
    directory, _ = photos
    write_shards(photos[1], tmp_path / "shards", shards=2)
    first, second = (str(tmp_path / "shards" / f"00000{i}.tar") for i in (0, 1))
    scan = scan_inputs([first, tmp_path / "shards" / "*.tar", directory, first, directory])
    names = [getattr(f, "path", f) for f in scan.files]
    expected = [m.path for m in tar_samples(first) + tar_samples(second)] + scan_images([directory]).files
    assert names == expected and len(set(names)) == len(names)


def test_shards_without_webdataset_name_an_extra_that_brings_it_and_ray_brings_it(
    photos, tmp_path, capsys, monkeypatch
):
    write_shards(photos[1], tmp_path / "shards", shards=1)
    for module in ("webdataset", "webdataset.tariterators", "braceexpand"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    line = _one_line_error(capsys, "embed", tmp_path / "shards" / "000000.tar", "--out", tmp_path / "v.npy",
                           "--model", BUNDLED, *QUIET)  # fmt: skip
    assert "reading WebDataset shards needs the" in line and line.endswith("pip install 'siglip[shards]'")
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    extras = tomllib.loads(pyproject)["project"]["optional-dependencies"]
    assert [r for r in extras["shards"] if r.startswith("webdataset")]  # what the error installs reads shards
    assert "siglip[shards]" in extras["ray"] and "siglip[shards]" in extras["train"]  # README's installs


def test_only_names_ending_in_tar_are_shards(photos, tmp_path):
    folder = tmp_path / "x.tarball"  # a folder of images, not a shard
    shutil.copytree(photos[0], folder)
    assert scan_inputs([folder]).files == scan_images([folder]).files != []
    shards = ("s/{000000..000009}.tar", "s/*.tar", "{a.tar,b.tar}", "s/a.tar.gz")
    assert all(map(is_shards, shards)) and not any(map(is_shards, (folder, "notes.tar.d/", "x.tart")))


def test_unreadable_folders_and_files_are_reported_as_permission_denied(tmp_path, capsys, monkeypatch):
    root = tmp_path / "photos"
    readable = [str(p) for p in write_photos(root, corrupt=False)]
    locked_folder, locked_file = root / "grey", readable[0]
    real_scandir, real_open = os.scandir, Image.open

    def scandir(path="."):  # what a folder without read permission does, for any user (root included)
        if os.fspath(path) == str(locked_folder):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    def open_image(fp, *args, **kwargs):
        if os.fspath(fp) == locked_file if isinstance(fp, str | os.PathLike) else False:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(Image, "open", open_image)
    code, _out, err = _run(capsys, "embed", root, "--out", tmp_path / "v.npy", "--model", BUNDLED, *QUIET)
    assert code == 0, err
    assert "skipped 2 unreadable file(s)" in err
    assert f"  {locked_folder}: folder cannot be searched: permission denied" in err
    assert f"  {locked_file}: cannot be opened: permission denied" in err
    assert "truncated or corrupt" not in err


# --- 3. the index tracks the truth --------------------------------------------------------------------------
def test_files_deleted_from_a_glob_built_index_are_removed(embedder, tmp_path):
    root = tmp_path / "photos"
    files = write_photos(root, corrupt=False)
    with SearchIndex(tmp_path / "index", embedder) as index:
        index.update([str(root / "*.jpg")])
        files[0].unlink()
        report = index.update([str(root / "*.jpg")])
        assert report.removed == 1
        kept = sorted(index.store.paths_of(index.store.ids()).values())
        assert kept == sorted(str(f) for f in files[1:] if f.suffix == ".jpg")


def test_a_file_skipped_as_unreadable_is_retried_once_readable(embedder, tmp_path, monkeypatch):
    root = tmp_path / "photos"
    files = write_photos(root, corrupt=False)
    locked = str(files[0])
    real_open = Image.open

    def open_image(fp, *args, **kwargs):
        if fp == locked and not os.stat(locked).st_mode & 0o444:
            raise PermissionError(errno.EACCES, "Permission denied", fp)
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_image)  # what a chmod 000 file does to a non-root user
    os.chmod(locked, 0o000)
    with SearchIndex(tmp_path / "index", embedder) as index:
        first = index.update([root], workers=0, progress=False)
        assert [p for p, _ in first.skipped] == [locked]
        os.chmod(locked, 0o644)  # same size, same modification time: only the status-change time moves
        again = index.update([root], workers=0, progress=False)
        assert (again.added, again.skipped) == (1, [])
        assert locked in index.store.paths_of(index.store.ids()).values()


def test_moved_model_folder_is_accepted_and_changed_weights_are_refused(tmp_path):
    model = tmp_path / "model-a"
    shutil.copytree(locate(BUNDLED).directory, model)
    photos = tmp_path / "photos"
    write_photos(photos, corrupt=False)
    with SearchIndex(tmp_path / "index", str(model)) as index:
        index.update([photos], workers=0, progress=False)
        before = index.search_text("a cat", k=3)
    moved = tmp_path / "model-b"
    model.rename(moved)
    with SearchIndex(tmp_path / "index", str(moved)) as index:
        assert index.model == str(moved)
        assert index.search_text("a cat", k=3) == before
    with SearchIndex(tmp_path / "index") as index:  # the new place is now the recorded one
        assert index.search_text("a cat", k=3) == before

    weights = load_file(moved / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01  # other weights behind the same name
    save_file(weights, moved / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(StoreError, match=r"weights of model .* changed"):
        SearchIndex(tmp_path / "index", str(moved))
    with SearchIndex(tmp_path / "index") as index, pytest.raises(StoreError, match="changed"):
        index.search_text("a cat")


def _read_only_command(directory: Path) -> list[str] | None:
    """A prefix under which `directory` is on a read-only mount (root), or None after making it read-only by
    permissions (another user)."""
    if os.geteuid() != 0:
        for path in [directory, *directory.iterdir()]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        return None
    remount = (
        f"mount --bind '{directory}' '{directory}' && mount -o remount,ro,bind '{directory}' '{directory}'"
    )
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"{remount} && touch '{directory}/x'"], capture_output=True
    )
    if probe.returncode == 0 or b"Read-only" not in probe.stderr:
        pytest.skip("cannot make a read-only mount here (unshare -m)")
    return ["unshare", "-m", "sh", "-c", f'{remount} && exec "$@"', "sh"]


def test_an_index_on_read_only_media_answers_searches(embedder, tmp_path):
    photos = tmp_path / "photos"
    write_photos(photos, corrupt=False)
    with SearchIndex(tmp_path / "index", embedder) as index:
        index.update([photos], workers=0, progress=False)
        expected = [h.path for h in index.search_text("a cup of coffee", k=4)]
        index.store.set_meta("vectors_generation", "-1")  # the vector file is stale: caught up in memory
    prefix = _read_only_command(tmp_path / "index")
    command = [sys.executable, "-m", "siglip", "search", "a cup of coffee", "--index", str(tmp_path / "index"),
               "-k", "4", "--json"]  # fmt: skip
    done = subprocess.run([*(prefix or []), *command], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [r["path"] for r in json.loads(done.stdout)["results"]] == expected


def test_two_concurrent_index_runs_do_the_work_once(tmp_path):
    photos = tmp_path / "photos"
    files = write_photos(photos, corrupt=False)
    command = [sys.executable, "-m", "siglip", "index", str(photos), "--index", str(tmp_path / "index"),
               "--model", BUNDLED, "--batch-size", "1", *QUIET]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    SearchIndex(tmp_path / "index", BUNDLED).close()  # exists: both runs open it, neither creates it
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]  # fmt: skip
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    added = [int(out.split(" added")[0].split()[-1]) for out, _ in outputs]
    assert sorted(added) == [0, len(files)]
    assert any("waiting for it to finish" in err for _, err in outputs) or min(added) == 0


# --- 4. one line and exit code 2 -----------------------------------------------------------------------------
def test_full_disk_during_an_update_is_one_line_and_the_rerun_completes(
    embedder, tmp_path, capsys, monkeypatch
):
    photos = tmp_path / "photos"
    count = len(write_photos(photos, corrupt=False))
    for i in range(60):  # enough rows to outgrow the pages a new store has
        Image.new("RGB", (24, 24), (4 * i, 100, 200)).save(photos / f"swatch-{i:02d}.png")
        count += 1
    real_init = store_module.VectorStore.__init__

    def small_disk(self, *args, **kwargs):  # SQLite's own "database or disk is full", after a few pages
        real_init(self, *args, **kwargs)
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        self._db.execute(f"PRAGMA max_page_count = {pages}")

    monkeypatch.setattr(store_module.VectorStore, "__init__", small_disk)
    argv = ["index", photos, "--index", tmp_path / "index", "--model", BUNDLED, "--batch-size", "1", *QUIET]
    line = _one_line_error(capsys, *argv)
    assert "free some disk space" in line and str(tmp_path / "index" / RECORDS_FILE) in line
    monkeypatch.setattr(store_module.VectorStore, "__init__", real_init)
    # then the vector file cannot be written: the disk fills while faiss streams it out
    monkeypatch.setattr(index_module, "open", _full_after_a_page, raising=False)
    line = _one_line_error(capsys, *argv)
    assert "No space left on device" in line and "vectors.faiss" in line
    monkeypatch.undo()
    code, _out, err = _run(capsys, *argv)
    assert code == 0, err
    with SearchIndex(tmp_path / "index") as index:
        assert len(index) == len(index.store.ids()) == count


def _full_after_a_page(file, mode="r", *args, **kwargs):
    """`open` for search/index.py whose files opened for writing take 4 KiB, then report a full disk."""
    f = open(file, mode, *args, **kwargs)  # noqa: SIM115 (the caller closes it)
    if "w" not in mode:
        return f
    real_write, written = f.write, [0]

    def write(data):
        written[0] += len(data)
        if written[0] > 4096:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(data)

    f.write = write
    return f


def _full_disk_at(monkeypatch, name: str) -> None:
    """The disk fills while the output file `name` is written: its bytes are written, then the last flush
    fails with ENOSPC and no file name, as pyarrow's writer and a closing file report it. Injected in
    `replace_together`, through which every output file of embed, index and the Ray engine is written."""
    from siglip.tools.embeddings import writers as embedding_files

    real = store_module.replace_together

    def filling(writes):
        def fail_after(write):
            def run(tmp):
                write(tmp)
                raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left")

            return run

        real({path: fail_after(write) if path.name == name else write for path, write in writes.items()})

    for module in (store_module, embedding_files):
        monkeypatch.setattr(module, "replace_together", filling)


@pytest.fixture
def swatches(tmp_path) -> Path:
    (tmp_path / "swatches").mkdir()
    for i in range(5):
        Image.new("RGB", (32, 24), (50 * i, 90, 200 - 40 * i)).save(tmp_path / "swatches" / f"{i}.png")
    return tmp_path / "swatches"


@pytest.mark.parametrize("site", ["v.npy", "v.npy.json", "v.parquet", "v.parquet.json"])
def test_a_full_disk_at_each_embedding_output_is_one_line_and_the_rerun_completes(
    site, swatches, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out" / site.removesuffix(".json")
    argv = ["embed", swatches, "--out", out, "--model", BUNDLED, *QUIET]
    _full_disk_at(monkeypatch, site)
    line = _one_line_error(capsys, *argv)
    assert f"No space left on device ('{out.parent / site}'); free some space" in line
    # nothing half-written: neither the output nor its manifest, only the journal of the finished work
    assert [p.name for p in out.parent.iterdir()] == [out.name + ".partial"]
    monkeypatch.undo()  # space is back
    code, _out, err = _run(capsys, *argv)
    assert code == 0, err
    assert [p.name for p in out.parent.iterdir()] == sorted([out.name, out.name + ".json"])
    code, _out, err = _run(
        capsys, "embed", swatches, "--out", tmp_path / out.name, "--model", BUNDLED, *QUIET
    )
    assert code == 0, err  # a clean run to compare with
    assert out.read_bytes() == (tmp_path / out.name).read_bytes()
    manifest = json.loads((out.parent / f"{out.name}.json").read_text())
    assert manifest == json.loads((tmp_path / f"{out.name}.json").read_text())


def test_a_full_disk_at_each_ray_engine_output_leaves_nothing_half_written(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    from siglip.tools.embeddings import ray_engine
    from siglip.tools.embeddings.writers import parquet_schema

    schema = parquet_schema(pa, 4)
    part = {"paths": json.dumps(["a.jpg", "b.jpg"]), "failed": "[]", "vectors": np.eye(2, 4, dtype=np.float32),
            "node": "n1", "precision": "fp32"}  # fmt: skip
    steps = {
        ray_engine.PLAN_FILE: lambda: ray_engine._plan(
            tmp_path, ["a.jpg", "b.jpg"], 2, 2, None, {"precision": "fp32"}
        ),
        "part-00000.parquet": lambda: ray_engine._commit_shard(pa, schema, tmp_path, 0, "m", "f", {}, [part]),
        ray_engine.MANIFEST_FILE: lambda: ray_engine._finish(
            tmp_path, {"shards": 1}, "m", 4, "f", 2, 0, 0, set()
        ),
    }
    for name, step in steps.items():  # in the order a run writes them, each first on a full disk
        _full_disk_at(monkeypatch, name)
        with pytest.raises(OSError, match=rf"No space left on device: '{tmp_path / name}'") as caught:
            step()
        assert caught.value.errno == errno.ENOSPC
        assert not (tmp_path / name).exists() and not (tmp_path / f".{name}.tmp").exists()
        monkeypatch.undo()  # space is back
        step()
        assert (tmp_path / name).is_file()
    assert json.loads((tmp_path / ray_engine.MANIFEST_FILE).read_text())["count"] == 2


def test_output_paths_of_the_wrong_kind_are_refused_before_the_work(photos, tmp_path, capsys):
    directory, _ = photos
    (tmp_path / "out.npy").mkdir()
    (tmp_path / "a-file").write_text("x")
    line = _one_line_error(
        capsys, "embed", directory, "--out", tmp_path / "out.npy", "--model", "no-such-model"
    )
    assert "is an existing folder" in line  # refused before the (unknown) model is even looked up
    assert "is an existing file" in _parse_error(capsys, "index", directory, "--index", tmp_path / "a-file")
    assert "is an existing file" in _parse_error(capsys, "export", "--out", tmp_path / "a-file")
    assert "is an existing folder" in _parse_error(
        capsys, "search", "x", "--index", tmp_path, "--html", tmp_path
    )
    with pytest.raises(UsageError, match="is a file"):
        SearchIndex(tmp_path / "a-file", BUNDLED)


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "tpu", "nonsense"])
def test_devices_this_machine_lacks_are_refused_in_one_line(device, photos, capsys):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that device")
    directory, _ = photos
    line = _parse_error(capsys, "classify", directory, "--labels", "cat", "--device", device)
    assert line.startswith("siglip classify: error: argument --device:") and device in line


def test_a_damaged_index_is_one_line_for_index_and_search(embedder, tmp_path, capsys):
    photos = tmp_path / "photos"
    write_photos(photos, corrupt=False)
    for i in range(40):  # rows over several pages
        Image.new("RGB", (24, 24), (6 * i, 90, 30)).save(photos / f"swatch-{i:02d}.png")
    with SearchIndex(tmp_path / "index", embedder) as index:
        index.update([photos], workers=0, progress=False)
    records = tmp_path / "index" / RECORDS_FILE
    with sqlite3.connect(records) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size, pages = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "page_count"))
    data = bytearray(records.read_bytes())
    start = (pages - 2) * page_size  # the last two pages (embeddings): the store still opens
    data[start:] = np.random.default_rng(0).integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()
    records.write_bytes(bytes(data))
    (tmp_path / "index" / "vectors.faiss").unlink()  # search must read every embedding
    line = _one_line_error(capsys, "search", "a cat", "--index", tmp_path / "index")
    assert "damaged" in line and str(records) in line
    line = _one_line_error(capsys, "index", photos, "--index", tmp_path / "index", *QUIET)
    assert "damaged" in line and str(records) in line


# --- 5. every option validated at parse time ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["classify", "x.jpg", "--labels", "cat", "--top-k", "0"], "--top-k"),
        (["classify", "x.jpg", "--labels", "cat", "--workers", "-1"], "--workers"),
        (["embed", "x.jpg", "--out", "v.npy", "--batch-size", "0"], "--batch-size"),
        (["search", "x", "--index", "i", "-k", "0"], "-k"),
        (["search", "x", "--index", "i", "-k", "many"], "-k"),
        (["export", "--out", "o", "--opset", "9"], "--opset"),
        (["serve", "--port", "70000"], "--port"),
        (["serve", "--max-wait-ms", "-5"], "--max-wait-ms"),
        (["serve", "--timeout", "0"], "--timeout"),
        (
            ["train", "--data", "d", "--output-dir", "o", "--model", "m", "--max-bad-fraction", "1.5"],
            "--max-bad-fraction",
        ),
        (["train", "--data", "d", "--output-dir", "o", "--model", "m", "--lr", "nan"], "--lr"),
        (["train", "--data", "d", "--output-dir", "o", "--model", "m", "--epochs", "0"], "--epochs"),
        (
            ["train", "--data", "d", "--output-dir", "o", "--model", "m", "--warmup-steps", "-1"],
            "--warmup-steps",
        ),
        (["train", "--data", "d", "--output-dir", "o", "--model", "m", "--beta2", "1.5"], "--beta2"),
        (["train", "--data", "d", "--output-dir", "o", "--model", "m", "--precision", "fp8"], "--precision"),
        (
            ["train", "--data", "d", "--output-dir", "o", "--model", "m", "--keep-checkpoints", "0"],
            "--keep-checkpoints",
        ),
    ],
)
def test_options_outside_their_meaning_are_refused_while_parsing(argv, option, capsys):
    line = _parse_error(capsys, *argv)
    assert line.startswith(f"siglip {argv[0]}: error: argument {option}")


# --- 8. quiet, fast failure offline ---------------------------------------------------------------------------
def test_an_unreachable_hub_fails_in_seconds_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path))  # nothing listens: refused at once
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "siglip", "info", "google/siglip-not-cached"],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "hub cannot be reached" in done.stderr, done.stderr
    assert time.monotonic() - start < 15


# --- 6. input formats as other tools write them ------------------------------------------------------------
def test_pairs_files_as_spreadsheets_write_them(tmp_path):
    from siglip.errors import DataError
    from siglip.tools.inputs.data import PairsFile

    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    text = 'image,caption\r\na.jpg,"a cat,\r\non two lines"\r\nb.jpg,"a ""quoted"" dog"\r\n'
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())  # Excel's "CSV UTF-8"
    pairs = PairsFile(tmp_path / "excel.csv")
    assert pairs.images == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert pairs.captions == ["a cat,\r\non two lines", 'a "quoted" dog']

    (tmp_path / "gap.csv").write_bytes(b"\xef\xbb\xbf" + (text + "a.jpg,\r\n").encode())
    with pytest.raises(DataError, match=r"gap.csv line 5: empty or missing caption"):
        PairsFile(tmp_path / "gap.csv")
    (tmp_path / "rows.jsonl").write_bytes(
        b'\xef\xbb\xbf{"image": "a.jpg", "caption": "x"}\r\n\r\n{"image": \r\n'
    )
    with pytest.raises(DataError, match=r"rows.jsonl line 3: not valid JSON"):
        PairsFile(tmp_path / "rows.jsonl")


# --- 7. honest results ----------------------------------------------------------------------------------------
def test_texts_longer_than_the_model_reads_are_truncated_with_a_warning(embedder, caplog):
    positions = embedder.model.config.text_config.max_position_embeddings
    long = "a photo of " + "a very " * positions + "red dress"
    with caplog.at_level("WARNING", logger="siglip"):
        vectors = embedder.embed_texts([long, long.replace("red", "blue")])
    assert "truncated" in caplog.text and str(positions) in caplog.text
    np.testing.assert_array_equal(vectors[0], vectors[1])  # why the warning matters


def test_nan_weights_are_an_error_not_a_score(tmp_path, photos, capsys):
    model = tmp_path / "model"
    shutil.copytree(locate(BUNDLED).directory, model)
    weights = load_file(model / "model.safetensors")
    name = next(n for n in weights if n.startswith("text_model") and n.endswith("weight"))
    weights[name][0] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    directory, _ = photos
    line = _one_line_error(capsys, "classify", directory, "--labels", "cat", "--model", model, *QUIET)
    assert "NaN" in line and name in line


def test_an_empty_query_and_duplicate_labels_are_refused(embedder, photos, tmp_path, capsys):
    directory, _ = photos
    with SearchIndex(tmp_path / "index", embedder) as index:
        index.update([directory / "rocket.jpg"], workers=0, progress=False)
    line = _one_line_error(capsys, "search", " ", "--index", tmp_path / "index")
    assert "search text" in line
    line = _one_line_error(capsys, "classify", directory, "--labels", "cat", "dog", "cat")
    assert "'cat' is given twice" in line


def test_thumbnails_of_16_bit_images_look_like_the_image(tmp_path):
    from siglip.tools.search.thumbnails import thumbnail_jpeg

    grey = np.full((64, 64), 32896, dtype=np.uint16)  # mid-grey on 16 bits: 128 on 8
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    thumbnail = Image.open(io.BytesIO(thumbnail_jpeg(str(tmp_path / "grey16.png"))))
    assert abs(np.asarray(thumbnail.convert("L")).mean() - 128) < 3


# --- 9. messages name the fix the user can apply --------------------------------------------------------------
@pytest.fixture
def one_photo_index(embedder, photos, tmp_path) -> Path:
    directory, _ = photos
    with SearchIndex(tmp_path / "index", embedder) as index:
        index.update([directory / "rocket.jpg"], workers=0, progress=False)
    return tmp_path / "index"


def test_the_decompression_bomb_limit_is_named_and_the_option_changes_it(
    one_photo_index, photos, tmp_path, capsys, monkeypatch
):
    Image.new("RGB", (300, 200), "blue").save(tmp_path / "big.png")
    search = ["search", "--image", tmp_path / "big.png", "--index", one_photo_index]
    line = _one_line_error(capsys, *search, "--max-image-pixels", 59_999)
    assert f"'{tmp_path / 'big.png'}' has 300 x 200 = 60000 pixels, more than the limit of 59999:" in line
    assert "--max-image-pixels" in line
    code, _out, err = _run(capsys, "embed", tmp_path / "big.png", photos[0] / "rocket.jpg", "--out",
                           tmp_path / "v.npy", "--max-image-pixels", 59_999, "--model", BUNDLED, *QUIET)  # fmt: skip
    assert code == 0 and "big.png: has 300 x 200 = 60000 pixels, more than the limit of 59999:" in err
    # far over Pillow's own limit, which Pillow enforces itself at twice its value: the one limit is still ours
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert "more than the limit of 1000: refused" in _one_line_error(capsys, *search)
    code, out, err = _run(capsys, *search, "--max-image-pixels", 60_000, "-k", 1)
    assert code == 0 and "rocket.jpg" in out, err


def test_cli_errors_name_the_image_file_not_its_place_in_a_python_call(one_photo_index, photos, capsys):
    directory, _ = photos
    for name, reason in (("broken.jpg", " cannot be read (truncated"), ("gone.jpg", ": no such file")):
        line = _one_line_error(capsys, "search", "--image", directory / name, "--index", one_photo_index)
        assert line.startswith(f"siglip search: error: '{directory / name}'{reason}")


def test_the_mis_shaped_weights_hint_names_an_option_that_exists(photos, tmp_path, capsys):
    from siglip.tools.cli import build_parser
    from siglip.tools.training.trainer import TrainConfig, _build_model

    model = tmp_path / "model"
    shutil.copytree(locate(BUNDLED).directory, model)
    config = json.loads((model / "config.json").read_text())
    config["text_config"]["vocab_size"] += 7
    (model / "config.json").write_text(json.dumps(config))
    code, _out, err = _run(capsys, "classify", photos[0], "--labels", "cat", "--model", model)
    assert code == 2 and "mis-shaped weights" in err
    assert len(err.strip().splitlines()) == 1, err  # the per-weight listing folded into one line
    option = next(word.strip("`(),:") for word in err.split() if word.startswith("--"))
    argv = ["train", "--data", "d", "--output-dir", tmp_path / "out", "--model", model, option]
    args = build_parser().parse_args([str(a) for a in argv])  # the option exists, and it loads the model:
    trained = _build_model(
        TrainConfig(**{f: getattr(args, f) for f in TrainConfig.__dataclass_fields__}), None
    )
    assert trained.text_model.embeddings.token_embedding.num_embeddings == config["text_config"]["vocab_size"]
    reference = load_file(model / "model.safetensors")  # every weight of the right shape as saved
    name = next(n for n in reference if n.startswith("vision_model") and n.endswith("weight"))
    torch.testing.assert_close(trained.state_dict()[name], reference[name], rtol=0, atol=0)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited",))


def _as_pickle_checkpoint(folder: Path, state: dict, zipped: bool) -> Path:
    """The bundled model in `folder` with `pytorch_model.bin` (torch's zip format, or the legacy pickle)."""
    shutil.copytree(locate(BUNDLED).directory, folder)
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin", _use_new_zipfile_serialization=zipped)
    return folder


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_torch_checkpoints_of_both_formats_load_and_pickled_code_is_one_line(
    zipped, photos, tmp_path, capsys, monkeypatch
):
    from siglip.core.auto import AutoModel

    state = load_file(locate(BUNDLED).directory / "model.safetensors")
    loaded = AutoModel.from_pretrained(_as_pickle_checkpoint(tmp_path / "plain", state, zipped)).state_dict()
    for name, tensor in state.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)

    model = _as_pickle_checkpoint(tmp_path / "exploit", {**state, "logit_scale": _Exploit()}, zipped)
    monkeypatch.chdir(tmp_path)
    line = _one_line_error(capsys, "classify", photos[0], "--labels", "cat", "--model", model)
    assert f"'{model / 'pytorch_model.bin'}' as plain tensors: it holds pickled code" in line
    assert "never executes" in line and not (tmp_path / "exploited").exists()


def test_a_torch_checkpoint_that_cannot_be_opened_is_an_error_naming_it(tmp_path):
    """Not the file system's raw OSError: the one-line error of the loader (or of the converter) calling it."""
    from siglip.core.convert import ConversionError
    from siglip.core.weights import load_pickled_tensors
    from siglip.errors import CheckpointError

    for error in (CheckpointError, ConversionError):
        with pytest.raises(
            error, match=f"'{tmp_path / 'gone.bin'}' cannot be opened: no such file or directory"
        ):
            load_pickled_tensors(tmp_path / "gone.bin", error=error)
        with pytest.raises(error, match=f"'{tmp_path}' cannot be opened: is a directory"):
            load_pickled_tensors(tmp_path, error=error)


def test_a_weights_file_of_random_bytes_is_no_torch_file_not_pickled_code(photos, tmp_path, capsys):
    """torch's unpickler reads noise as unknown opcodes ("pickled code ()"): the first bytes say it first."""
    model = tmp_path / "model"
    shutil.copytree(locate(BUNDLED).directory, model)
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    line = _one_line_error(capsys, "classify", photos[0], "--labels", "cat", "--model", model)
    assert (
        f"'{model / 'pytorch_model.bin'}' is not a checkpoint format siglip reads: not a torch.save file"
        in line
    )
    assert "pickled code" not in line


# --- issue 23: processes and files after kill -9 (the kills themselves are in test_faults.py) --------------
_ORPHAN = """
import fcntl, os, sys, time
from siglip.tools.inputs import data
lock = open(sys.argv[1], "a")
fcntl.flock(lock, fcntl.LOCK_EX)
ready_r, ready_w = os.pipe()
init = data.worker_init_fn()  # in the parent, as a DataLoader takes it
if os.fork() == 0:  # a DataLoader worker, as a fork of the process that holds the lock
    if sys.argv[2] == "locks":
        data._close_inherited_locks()  # this step alone: the worker outlives its parent
    else:
        sys.platform = sys.argv[2]  # "darwin": the portable path, without Linux's parent-death signal
        init(0)
    os.write(ready_w, str(os.getpid()).encode())
    time.sleep(60)
    os._exit(0)
print(os.read(ready_r, 32).decode(), flush=True)
os._exit(0)  # dies holding the lock, as kill -9 would leave it
"""


def _orphaned_worker(lock: Path, mode: str) -> int:
    """Run a process that takes `lock`, forks a worker initialised as on `mode` ("linux", "darwin", or
    "locks": only dropping inherited locks) and dies; returns the worker's pid."""
    run = subprocess.Popen([sys.executable, "-c", _ORPHAN, str(lock), mode], stdout=subprocess.PIPE,
                           text=True)  # fmt: skip
    worker = int(run.stdout.readline())  # not read to the end: the worker holds the pipe until it dies
    run.wait(timeout=60)
    return worker


def _is_running(pid: int) -> bool:
    """Whether any thread of process `pid` is alive. The main thread alone is not enough: it turns zombie while
    another thread (the parent watcher that sent the SIGKILL) is still exiting, holding the shared files."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return False
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    return True
        except (FileNotFoundError, ProcessLookupError):
            continue
    return False


def _lock_is_free(lock: Path) -> bool:
    import fcntl

    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")
@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_a_dataloader_worker_dies_with_its_parent(platform, tmp_path):
    """Linux: the kernel's parent-death signal; elsewhere: the worker's own check of its parent (within a
    second or two). Then nothing holds the lock the parent held."""
    worker = _orphaned_worker(tmp_path / "update.lock", platform)
    try:
        deadline = time.monotonic() + (2 if platform == "linux" else 10)
        while _is_running(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _is_running(worker), "the worker outlived its parent"
        assert _lock_is_free(tmp_path / "update.lock")
    finally:
        if _is_running(worker):
            os.kill(worker, 9)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_dataloader_worker_does_not_hold_the_file_locks_it_inherited(tmp_path):
    worker = _orphaned_worker(tmp_path / "update.lock", "locks")
    try:
        assert _is_running(worker)
        assert _lock_is_free(tmp_path / "update.lock"), "the worker kept its dead parent's lock"
    finally:
        os.kill(worker, 9)


# --- issue 23: inputs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command",
    [["embed", "x", "--out", "o.npy"], ["index", "x", "--index", "i"], ["classify", "x", "--labels", "a"],
     ["train", "--data", "d", "--output-dir", "o", "--model", "m"]],
)  # fmt: skip
def test_a_patch_budget_past_the_bound_is_refused_while_parsing(command, capsys):
    line = _parse_error(capsys, *command, "--max-num-patches", "10000000")
    assert line.startswith(
        f"siglip {command[0]}: error: argument --max-num-patches: must be at least 1 and at most 4096, got "
    )


def test_a_patch_budget_past_the_bound_is_refused_before_anything_is_allocated():
    """The bound is the processor's (`Siglip2ImageProcessor.check_max_num_patches`): built, called, or set by
    the tools; the options of the command line take it from there."""
    from types import SimpleNamespace

    from siglip import Siglip2ImageProcessor
    from siglip.tools.embeddings.embedder import configure_images
    from siglip.tools.embeddings.options import ModelOptions

    with pytest.raises(ValueError, match=r"max_num_patches must be at most 4096 .*got 10000000"):
        Siglip2ImageProcessor(max_num_patches=10_000_000)
    processor, image = Siglip2ImageProcessor(), Image.new("RGB", (64, 48))
    with pytest.raises(ValueError, match="at most 4096"):
        processor(image, max_num_patches=10_000_000)
    processor.max_num_patches = 10_000_000  # an attribute set after the processor was built
    with pytest.raises(ValueError, match="at most 4096"):
        processor(image)
    with pytest.raises(UsageError, match="at most 4096"):
        configure_images(
            SimpleNamespace(image_processor=processor), "m", ModelOptions(max_num_patches=10_000_000)
        )
    assert processor(image, max_num_patches=4096, return_tensors="np")["pixel_values"].shape == (1, 4096, 768)
