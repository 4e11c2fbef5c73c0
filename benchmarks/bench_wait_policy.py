"""OpenMP's wait policy: torch's threads spinning (the default) against sleeping (`OMP_WAIT_POLICY=PASSIVE`) at
their barriers, on an idle machine and beside a neighbour that holds one core.

    python benchmarks/bench_wait_policy.py [--modes int8 bf16] [--batches 1 8] [--calls 5] [--rounds 2]
                                           [--neighbour]

libgomp reads the variable once, when torch loads, so each measurement is its own process: the base image
tower (random weights, siglip's `InferenceMode`) in a mode, one warm-up call, then the median seconds of
`--calls` calls; the two policies take turns `--rounds` times. `--neighbour` runs a busy loop on one core
throughout (what a laptop's other work does to a two-thread job).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from _common import machine_line

ONE_RUN = """
import statistics, sys, time
import torch
import siglip
from siglip.tools.embeddings.inference import InferenceMode
mode, batch, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
config = siglip.SiglipConfig(
    vision_config=dict(image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072,
                       num_hidden_layers=12, num_attention_heads=12),
    text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2),
)
inference = InferenceMode(mode)
model = inference.apply(siglip.SiglipModel(config))
pixels = torch.rand(batch, 3, 224, 224).to(inference.dtype)
with torch.inference_mode():
    model.get_image_features(pixels)
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        model.get_image_features(pixels)
        seconds.append(time.perf_counter() - start)
print(statistics.median(seconds))
"""


def one_run(mode: str, batch: int, calls: int, passive: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    out = subprocess.run(
        [sys.executable, "-c", ONE_RUN, mode, str(batch), str(calls)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", nargs="+", default=["int8", "bf16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--neighbour", action="store_true", help="a busy loop on one core throughout")
    args = parser.parse_args()
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.neighbour else None
    try:
        time.sleep(1 if neighbour else 0)
        rows = []
        for mode in args.modes:
            for batch in args.batches:
                seconds: dict[bool, list[float]] = {False: [], True: []}
                for _ in range(args.rounds):
                    for passive in (False, True):
                        seconds[passive].append(one_run(mode, batch, args.calls, passive))
                rows.append((mode, batch, seconds))
                print(f"{mode} batch {batch}: {seconds}; load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        if neighbour:
            neighbour.kill()
    print(f"\n{machine_line()}; {'one busy neighbour' if neighbour else 'no neighbour started'}")
    print("\n| mode, batch | spinning s/call | passive s/call | passive speed-up |\n|---|---:|---:|---:|")
    for mode, batch, seconds in rows:
        spin, passive = statistics.median(seconds[False]), statistics.median(seconds[True])
        print(f"| {mode}, {batch} | {spin:.3f} | {passive:.3f} | {spin / passive:.2f}x |")


if __name__ == "__main__":
    main()
