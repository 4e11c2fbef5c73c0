"""Material of the Ray tests: 200 real photos (crops of scikit-image's) with unreadable files beside them,
and the in-process job's output over them, the oracle the Ray engine must match bit for bit."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import numpy as np

from _material import BUNDLED, PHOTOS

BATCH = 8  # images per model call, in both engines
SHARD = 24  # images per shard: 9 shards of 200 files
ACTOR_THREADS = 2  # what a CPU actor gets on the test clusters: CPUs // actors


# the threads Ray Data leaves running for a while after a dataset's last row (its executor, its metadata fetcher)
RAY_DATA_THREADS = ("StreamingExecutor-", "ray-data-metadata-prefetch")


def shutdown_ray(timeout_s: float = 60) -> None:
    """`ray.shutdown()` once the object references that only a garbage collection frees are freed and Ray
    Data's threads have ended: a reference freed, or a fetch made, after the shutdown makes Ray end the whole
    process ("The core worker has already been shutdown ... The process will exit", status 1), which took a
    pytest worker of the CI run down with it (its Ray driver log, 2026-12-06)."""
    import ray

    gc.collect()
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread.name.startswith(RAY_DATA_THREADS):
            thread.join(max(0.0, deadline - time.monotonic()))
    gc.collect()
    ray.shutdown()


def write_200_photos(directory: Path) -> list[Path]:
    """200 JPEG crops (48 to 96 pixels) of scikit-image's photos, a corrupt JPEG and an empty one; returns
    the files, sorted as the discovery rule lists them."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    sources = [Image.fromarray(getattr(skimage.data, name)()) for name in PHOTOS]
    for i in range(200):
        photo = sources[i % len(sources)]
        w, h = photo.size
        left, top = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        side = int(rng.integers(48, 97))
        crop = photo.crop((left, top, left + w // 2, top + h // 2)).resize((side, side))
        crop.convert("RGB").save(directory / f"{i:03d}.jpg", quality=85)
    (directory / "050b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (directory / "120b.jpg").write_bytes(b"")
    return sorted(directory.glob("*.jpg"), key=str)


def in_process(photos: Path | str, out: Path) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """(paths, vectors, unreadable) of the in-process job over `photos`, in fp32, with the threads per model
    call that the Ray tests' CPU actors have (float sums may differ in the last bit across thread counts)."""
    import torch

    from siglip import Embedder
    from siglip.tools.embeddings.writers import embed_to_file

    threads = torch.get_num_threads()
    torch.set_num_threads(ACTOR_THREADS)
    try:
        embedder = Embedder.from_pretrained(BUNDLED, device="cpu", precision="fp32")
        report = embed_to_file([photos], out, embedder, batch_size=BATCH, workers=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    return (*read_parquet(out), report.skipped)


def read_parquet(source: Path) -> tuple[list[str], np.ndarray]:
    """(paths, vectors) of a Parquet file or a folder of shards, in order."""
    import pyarrow.parquet as pq

    table = pq.read_table(source)
    vectors = table.column("vector").combine_chunks().flatten().to_numpy()
    return table.column("path").to_pylist(), vectors.reshape(table.num_rows, -1)


def write_shards(photos: list[Path], directory: Path, shards: int = 3) -> tuple[str, dict[str, str]]:
    """The `photos` packed in order into `shards` WebDataset shards (`KEY.jpg` and `KEY.txt` a sample, the key
    the file's stem), plus a sample `captiononly` with no image at the end of the last; returns the brace
    pattern, and each photo's expected sample name (`SHARD:KEY`)."""
    import io
    import tarfile

    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(photos), shards + 1).round().astype(int)
    names = {}

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    for s in range(shards):
        with tarfile.open(directory / f"{s:06d}.tar", "w") as tar:
            for photo in photos[bounds[s] : bounds[s + 1]]:
                add(tar, f"{photo.stem}.jpg", photo.read_bytes())
                add(tar, f"{photo.stem}.txt", f"photo {photo.stem}".encode())
                names[str(photo)] = f"{directory / f'{s:06d}.tar'}:{photo.stem}"
            if s == shards - 1:
                add(tar, "captiononly.txt", b"a caption without its image")
    return str(directory / f"{{000000..{shards - 1:06d}}}.tar"), names
