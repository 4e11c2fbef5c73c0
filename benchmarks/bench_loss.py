"""Peak memory and time of the sigmoid loss's forward + backward; ring vs all-gather across processes.

    python benchmarks/bench_loss.py                       # everything (minutes on 2 cores)
    python benchmarks/bench_loss.py --batch-sizes 4096    # a quick look
    MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/bench_loss.py --batch-sizes 16384 \
        --losses memory-bounded "memory-bounded, labels" --repeats 2 --skip-ring    # the cost of labels

(MALLOC_MMAP_THRESHOLD_ makes glibc hand blocks over 128 KiB back to the system when freed, so the peak counts
live tensors rather than heap the allocator keeps after many small blocks, such as labels' sign strips.)

Part 1, one process, B pairs of width D: the naive reference (`sigmoid_loss` of the B x B logits under
autograd, as `SiglipModel(return_loss=True)` computes it), `siglip_loss` without chunks (the same logits, with
fewer B x B temporaries), the memory-bounded `siglip_loss(chunk_size=...)`, and the same with labels
(`LABEL_CLASSES` classes drawn at random, so about B / LABEL_CLASSES positives per row).
Each configuration runs in a fresh subprocess; its peak memory is the kernel's resident-set high-water mark
(VmHWM, reset through /proc/self/clear_refs after a warm-up) minus the resident set just before the timed
forward + backward, so it counts every byte the loss allocates (torch's CPU tensors live outside Python's
allocator, where tracemalloc cannot see them). The naive loss is not run past `--naive-max-batch`, so as not
to exhaust a shared machine's memory; the largest batch whose inputs and loss fit `--budget-gib` is
extrapolated from the largest run (quadratic growth for the naive losses, linear for memory-bounded).

Part 2: time per step of `mode="ring"` and `mode="all_gather"` with `--world` gloo processes of `--per-rank`
pairs each, one thread per process.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from siglip import siglip_loss, sigmoid_loss


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _inputs(batch: int, width: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(batch, width, generator=gen), dim=-1).requires_grad_()
    texts = F.normalize(torch.randn(batch, width, generator=gen), dim=-1).requires_grad_()
    scale = torch.tensor([math.log(10.0)], requires_grad=True)
    bias = torch.tensor([-10.0], requires_grad=True)
    return [images, texts, scale, bias]


def _reference(images, texts, logit_scale, logit_bias) -> torch.Tensor:
    """The loss as `SiglipModel(return_loss=True)` computes it."""
    return sigmoid_loss(texts @ images.T * logit_scale.exp() + logit_bias)


LABEL_CLASSES = 1000


def _labelled(chunk: int):
    """The memory-bounded loss with a label per pair out of LABEL_CLASSES (made inside the timed step)."""

    def loss(images, texts, logit_scale, logit_bias):
        labels = torch.randint(LABEL_CLASSES, (len(images),), generator=torch.Generator().manual_seed(0))
        return siglip_loss(images, texts, logit_scale, logit_bias, chunk_size=chunk, labels=labels)

    return loss


# name: (loss function given the chunk size, how its peak grows with B)
LOSSES = {
    "reference": (lambda chunk: _reference, 2),
    "siglip_loss": (lambda chunk: siglip_loss, 2),
    "memory-bounded": (lambda chunk: functools.partial(siglip_loss, chunk_size=chunk), 1),
    "memory-bounded, labels": (_labelled, 1),
}


def _step(inputs: list[torch.Tensor], loss_fn) -> float:
    """Seconds for one forward + backward."""
    for t in inputs:
        t.grad = None
    start = time.perf_counter()
    loss_fn(*inputs).backward()
    return time.perf_counter() - start


def measure_one(name: str, batch: int, width: int, chunk: int, repeats: int = 1) -> dict:
    """Time (the fastest of `repeats`, the least disturbed by other work on the machine) and peak extra memory
    of one forward + backward in this process, after a small warm-up."""
    loss_fn = LOSSES[name][0](chunk)
    _step(_inputs(256, width), LOSSES[name][0](min(chunk, 128)))
    start = _status_mib("VmRSS")
    inputs = _inputs(batch, width)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    before = _status_mib("VmRSS")
    seconds = min(_step(inputs, loss_fn) for _ in range(repeats))
    return dict(seconds=seconds, inputs_mib=before - start, peak_mib=_status_mib("VmHWM") - before)


def _run_isolated(name: str, batch: int, width: int, chunk: int, repeats: int) -> dict:
    args = [sys.executable, __file__, "--one", name, str(batch), str(width), str(chunk), str(repeats)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def _largest_batch(runs: dict[int, dict], budget_mib: float, power: int) -> int:
    """Largest B whose inputs and loss fit the budget, extrapolated as a * B^power from the largest run."""
    batch, run = max(runs.items())
    return int(batch * (budget_mib / (run["inputs_mib"] + run["peak_mib"])) ** (1 / power))


def single_process(
    batch_sizes: list[int],
    width: int,
    chunk: int,
    naive_max: int,
    budget_gib: float,
    losses: list[str],
    repeats: int,
) -> str:
    lines = [
        f"Forward + backward on one process, D = {width}, float32, memory-bounded chunk {chunk}; peak = what the "
        "loss adds to the inputs\n",
        "| B | loss | peak MiB | time s | peak / reference's | time / reference's |",
        "|---|---|---|---|---|---|",
    ]
    runs = {name: {} for name in LOSSES}
    for batch in batch_sizes:
        for name in losses:
            if batch > naive_max and LOSSES[name][1] == 2:
                lines.append(f"| {batch} | {name} | not run | | | |")
                continue
            run = runs[name][batch] = _run_isolated(name, batch, width, chunk, repeats)
            ref = runs["reference"].get(batch)
            ratios = (
                f"{run['peak_mib'] / ref['peak_mib']:.1%} | {run['seconds'] / ref['seconds']:.2f}x"
                if ref
                else "|"
            )
            lines.append(f"| {batch} | {name} | {run['peak_mib']:.0f} | {run['seconds']:.2f} | {ratios} |")
            print(lines[-1], file=sys.stderr, flush=True)
    for batch, labelled in runs["memory-bounded, labels"].items():
        if batch in runs["memory-bounded"]:
            plain = runs["memory-bounded"][batch]
            lines.append(
                f"\nB = {batch}, labels against none: time {labelled['seconds'] / plain['seconds']:.3f}x, "
                f"peak {labelled['peak_mib']:.0f} MiB against {plain['peak_mib']:.0f} MiB"
            )
    largest = [
        f"{name} {_largest_batch(runs[name], budget_gib * 1024, LOSSES[name][1])}"
        for name in losses
        if runs[name]
    ]
    lines.append(
        f"\nLargest B within {budget_gib:g} GiB, inputs included (extrapolated from the largest run): "
        + ", ".join(largest)
    )
    return "\n".join(lines)


def _ring_worker(rank: int, world: int, store: str, per_rank: int, width: int, steps: int, out: str) -> None:
    torch.set_num_threads(1)  # the processes share the machine's cores
    dist.init_process_group(
        "gloo", f"file://{store}", rank=rank, world_size=world, timeout=timedelta(minutes=5)
    )
    inputs = _inputs(per_rank, width, seed=rank)
    results = {}
    for name, options in [
        ("ring", dict(mode="ring")),
        ("ring, chunk 256", dict(mode="ring", chunk_size=256)),
        ("all_gather", dict(mode="all_gather")),
    ]:
        loss_fn = functools.partial(siglip_loss, **options)
        _step(inputs, loss_fn)  # warm-up
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_mib("VmRSS")
        seconds = []
        for _ in range(steps):
            dist.barrier()
            seconds.append(_step(inputs, loss_fn))
        results[name] = dict(seconds=statistics.median(seconds), peak_mib=_status_mib("VmHWM") - before)
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(results, gathered)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.destroy_process_group()


def ring_vs_all_gather(world: int, per_rank: int, width: int, steps: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "results.json")
        args = (world, os.path.join(tmp, "store"), per_rank, width, steps, out)
        mp.spawn(_ring_worker, args=args, nprocs=world)
        per_rank_results = json.loads(Path(out).read_text())
    lines = [
        f"{world} gloo processes on this machine, {per_rank} pairs each (B = {world * per_rank}), D = {width}, "
        f"median of {steps} steps, slowest rank\n",
        "| mode | forward + backward s / step | peak MiB per rank |",
        "|---|---|---|",
    ]
    for name in per_rank_results[0]:
        seconds = max(r[name]["seconds"] for r in per_rank_results)
        peak = max(r[name]["peak_mib"] for r in per_rank_results)
        lines.append(f"| {name} | {seconds:.3f} | {peak:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--naive-max-batch", type=int, default=16384, help="larger naive runs are skipped")
    parser.add_argument("--budget-gib", type=float, default=16.0)
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--per-rank", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-ring", action="store_true")
    parser.add_argument("--losses", nargs="+", choices=list(LOSSES), default=list(LOSSES))
    parser.add_argument("--repeats", type=int, default=1, help="steps per run, the fastest counts")
    parser.add_argument("--one", nargs=5, metavar=("LOSS", "B", "D", "CHUNK", "R"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        name, batch, width, chunk, repeats = args.one
        print(json.dumps(measure_one(name, int(batch), int(width), int(chunk), int(repeats))))
        return
    print(
        single_process(
            args.batch_sizes, args.width, args.chunk, args.naive_max_batch, args.budget_gib, args.losses,
            args.repeats,
        )
    )  # fmt: skip
    if not args.skip_ring:
        print()
        print(ring_vs_all_gather(args.world, args.per_rank, args.width, args.steps))


if __name__ == "__main__":
    main()
