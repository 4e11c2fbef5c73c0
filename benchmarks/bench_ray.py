"""`siglip embed` in-process against `--engine ray` on this machine: images/s and Ray's overhead.

    python benchmarks/bench_ray.py --images 256                  # CPU: a local cluster of this machine's cores
    python benchmarks/bench_ray.py --images 4000 --device cuda   # a GPU machine (gpu_check.py runs this too)

Both runs embed the same 640x480 JPEGs with a random-weight base/16-224 model in its default mode, batch
--batch-size. The in-process time includes the model load; the Ray time is the job on an already started
local cluster (one actor per GPU, else one CPU actor with half the cores; decoding in CPU tasks), including
the actor's model load and the Parquet shards. The cluster start is reported on its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from _common import make_jpegs, random_checkpoint


def compare(model_dir: Path, paths: list[str], work: Path, batch_size: int, device: str) -> dict[str, float]:
    """Seconds of the in-process job and of the Ray job over `paths`, and of the Ray cluster start."""
    import ray

    import siglip
    from siglip.tools.embeddings.ray_engine import embed_with_ray
    from siglip.tools.embeddings.writers import embed_to_file

    start = time.perf_counter()
    embedder = siglip.Embedder.from_pretrained(model_dir, device=device)
    embed_to_file(paths, work / "local.npy", embedder, batch_size=batch_size, progress=False)
    local = time.perf_counter() - start
    del embedder
    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    cluster = time.perf_counter() - start
    try:
        start = time.perf_counter()
        embed_with_ray(paths, work / "shards", str(model_dir), batch_size=batch_size, shard_size=1024)
        on_ray = time.perf_counter() - start
    finally:
        ray.shutdown()
    shutil.rmtree(work / "shards")
    return {"in-process": local, "ray": on_ray, "cluster start": cluster}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        random_checkpoint("base16-224", tmp / "model")
        (tmp / "photos").mkdir()
        paths = [str(p) for p in make_jpegs(tmp / "photos", args.images)]
        seconds = compare(tmp / "model", paths, tmp, args.batch_size, args.device)
    n = args.images
    print(f"\n{os.cpu_count()} CPU cores, device {args.device}, {n} JPEGs, batch {args.batch_size}")
    print("| engine | seconds | images/s |\n|---|---|---|")
    for engine in ("in-process", "ray"):
        print(f"| {engine} | {seconds[engine]:.1f} | {n / seconds[engine]:.1f} |")
    print(
        f"| Ray overhead | {seconds['ray'] / seconds['in-process'] - 1:+.1%} | (cluster start {seconds['cluster start']:.1f} s, not included) |"
    )


if __name__ == "__main__":
    main()
