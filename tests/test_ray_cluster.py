"""`siglip embed --engine ray` on a simulated two-node cluster (`ray.cluster_utils.Cluster`, 2 CPUs a node):
the work spreads over both nodes with the in-process output, and a driver killed with SIGKILL mid-run
resumes with no duplicate, no missing row and no partial shard visible."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from _material import BUNDLED
from _ray_material import BATCH, SHARD, in_process, read_parquet, shutdown_ray, write_200_photos
from siglip import find_images
from siglip.tools.embeddings.ray_engine import embed_with_ray

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    nodes.add_node(num_cpus=2)
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, log_to_driver=False)
    yield nodes
    shutdown_ray()
    nodes.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ray2") / "photos"
    write_200_photos(directory)
    return directory


@pytest.fixture(scope="module")
def oracle(photos, tmp_path_factory):
    return in_process(photos, tmp_path_factory.mktemp("oracle") / "vectors.parquet")


def test_two_nodes_share_the_work_and_give_the_same_output(cluster, photos, oracle, tmp_path):
    paths, vectors, skipped = oracle
    report = embed_with_ray(
        [photos], tmp_path / "out", BUNDLED, precision="fp32", batch_size=BATCH, shard_size=SHARD, actors=2
    )
    assert len(ray.nodes()) == 2 and report.nodes == 2  # an actor on each node embedded
    got_paths, got_vectors = read_parquet(tmp_path / "out")
    assert got_paths == paths and np.array_equal(got_vectors, vectors)
    assert report.skipped == skipped


_KILLED_DRIVER = """
import os, signal, sys
from siglip.tools.embeddings import ray_engine
from siglip.tools.cli import main

commit = ray_engine._commit_shard
committed = []

def commit_then_die(pa, schema, out, shard, *args):
    if len(committed) == 3:  # the fourth shard is half written when the driver is killed
        (out / f".part-{shard:05d}.parquet.tmp").write_bytes(b"PAR1 half a shard")
        os.kill(os.getpid(), signal.SIGKILL)
    committed.append(shard)
    return commit(pa, schema, out, shard, *args)

ray_engine._commit_shard = commit_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_a_driver_killed_mid_run_resumes_without_duplicates_or_partial_shards(
    cluster, photos, oracle, tmp_path
):
    paths, vectors, skipped = oracle
    out = tmp_path / "out"
    args = ["embed", str(photos), "--out", str(out), "--engine", "ray", "--ray-address", cluster.address,
            "--model", BUNDLED, "--precision", "fp32", "--batch-size", str(BATCH), "--shard-size", str(SHARD),
            "--actors", "2", "--no-progress"]  # fmt: skip
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED_DRIVER), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    shards = sorted(out.glob("part-*.parquet"))
    assert len(shards) == 3 and not (out / "_manifest.json").exists()
    files = find_images([photos])
    for shard in shards:  # each committed shard is whole: the readable files of its slice of the list
        number = int(shard.stem.split("-")[1])
        assert read_parquet(shard)[0] == [
            p for p in files[number * SHARD : (number + 1) * SHARD] if p in paths
        ]
    visible, _ = read_parquet(out)  # a reader of the folder sees those shards only, not the half-written one
    assert len(visible) == len(set(visible)) == sum(len(read_parquet(s)[0]) for s in shards)

    report = embed_with_ray(
        [photos], out, BUNDLED, precision="fp32", batch_size=BATCH, shard_size=SHARD, actors=2
    )
    assert (report.resumed, report.shards, report.count) == (3, 9, 200)
    got_paths, got_vectors = read_parquet(out)
    assert got_paths == paths  # no duplicates, no missing rows, in order
    assert np.array_equal(got_vectors, vectors)
    assert report.skipped == skipped
